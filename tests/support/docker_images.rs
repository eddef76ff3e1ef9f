//! Support for the docker driver's tests: the skip-or-fail rule when docker, busybox or the
//! registry is missing, the `shoal-test/busybox:1` image built locally (tests reach no registry),
//! instance specs, a throwaway private registry, and drop guards that remove what a test created.
//!
//! It does not test anything itself; each test binary uses part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::pin::pin;
use std::sync::Mutex;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, ListContainersOptionsBuilder, PushImageOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
};
use futures::StreamExt;
use shoal::ids::{InstanceKey, NodeId, RevisionId, SlotId};
use shoal::runtime::{InstanceSpec, Owner, RuntimeEvent};
use shoal::spec::{
    PartitionMode, PortSpec, Resources, RestartPolicy, ServiceName, ServiceSpec, Strategy, Workload,
};
use tokio::sync::{OnceCell, mpsc};

/// The image every docker test runs: Debian's static busybox `FROM scratch`, applets installed
/// as links in `/bin`, `/www/index.html` for `httpd -h /www`, `ENTRYPOINT ["/bin/busybox"]`.
pub const TEST_IMAGE: &str = "shoal-test/busybox:1";
/// What `GET /` answers from the test image.
pub const INDEX_HTML: &str = "hello from the shoal test image\n";
const BUSYBOX: &str = "/bin/busybox";
const REGISTRY: &str = "/usr/bin/docker-registry";
/// Bumped when the image recipe changes, so an image left by an older run is rebuilt.
const RECIPE_LABEL: &str = "shoal-test.recipe";
const RECIPE: &str = "1";

/// `CI=true`: everything a test needs must be there, a missing piece fails the test.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Says why `test` does not run; panics instead under `CI=true`.
pub fn skip_or_fail(test: &str, why: &str) {
    assert!(!under_ci(), "{test}: {why} (required when CI=true)");
    eprintln!("skipping {test}: {why}");
}

/// A docker client with the API version negotiated, or `None` (after saying why) when no daemon
/// answers.
pub async fn docker_or_skip(test: &str) -> Option<Docker> {
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let docker = Docker::connect_with_defaults()?.negotiate_version().await?;
        docker.ping().await?;
        Ok::<_, bollard::errors::Error>(docker)
    })
    .await;
    match answer {
        Ok(Ok(docker)) => Some(docker),
        Ok(Err(e)) => {
            skip_or_fail(test, &format!("no docker daemon ({e})"));
            None
        }
        Err(_) => {
            skip_or_fail(test, "no docker daemon (no answer within 10s)");
            None
        }
    }
}

/// One test's world: a docker client, an owner of its own (so `list()` sees only this test's
/// instances), a unique service-name suffix, and the guard that removes it all.
pub struct TestBed {
    pub docker: Docker,
    pub owner: Owner,
    /// Unique per test and run: service names are `<name>-<suffix>`.
    pub suffix: String,
    pub cleanup: Cleanup,
}

impl TestBed {
    /// A service name unique to this test and run (a DNS label).
    pub fn service(&self, name: &str) -> String {
        format!("{name}-{}", self.suffix)
    }

    pub fn key(&self, service: &str, slot: u32, epoch: u64) -> InstanceKey {
        InstanceKey {
            slot: SlotId {
                service: ServiceName(service.into()),
                index: slot,
            },
            epoch,
        }
    }

    /// An instance of the test image running `sh -c <script>`.
    pub fn sh(&self, key: &InstanceKey, script: &str) -> InstanceSpec {
        instance(&self.owner, key, TEST_IMAGE, Some(sh(script)))
    }
}

/// Sets up a test bed, or returns `None` (after saying why) when docker or busybox is missing.
/// `tag` is short, lowercase and unique among the tests of one binary.
pub async fn test_bed(test: &str, tag: &str) -> Option<TestBed> {
    let docker = docker_or_skip(test).await?;
    if let Err(why) = ensure_test_image(&docker).await {
        skip_or_fail(test, &why);
        return None;
    }
    let pid = std::process::id();
    let owner = Owner {
        cluster: format!("test-{pid}"),
        node: NodeId(format!("node-{tag}").into()),
    };
    let cleanup = Cleanup::for_owner(&owner);
    Some(TestBed {
        docker,
        owner,
        suffix: format!("{tag}-{pid}"),
        cleanup,
    })
}

/// `["sh", "-c", script]`.
pub fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// An instance spec for `owner` with defaults a test can change: no limits, no ports.
pub fn instance(
    owner: &Owner,
    key: &InstanceKey,
    image: &str,
    command: Option<Vec<String>>,
) -> InstanceSpec {
    InstanceSpec {
        key: key.clone(),
        revision: RevisionId("1.test".into()),
        cluster: owner.cluster.clone(),
        node: owner.node.clone(),
        spec: ServiceSpec {
            name: key.slot.service.clone(),
            workload: Workload::Image {
                image: image.to_string(),
                command,
            },
            replicas: 1,
            resources: Resources::default(),
            ports: Vec::new(),
            env: BTreeMap::new(),
            constraints: Vec::new(),
            spread: None,
            strategy: Strategy::default(),
            restart: RestartPolicy::default(),
            partition: PartitionMode::default(),
            stop_grace_ms: 2_000,
        },
    }
}

/// `httpd` in the foreground on container port 8080, published on an ephemeral host port.
pub fn http_instance(owner: &Owner, key: &InstanceKey) -> InstanceSpec {
    let command = ["httpd", "-f", "-p", "8080", "-h", "/www"]
        .map(String::from)
        .to_vec();
    let mut spec = instance(owner, key, TEST_IMAGE, Some(command));
    spec.spec.ports = vec![PortSpec {
        name: "http".into(),
        container: Some(8080),
        host: None,
    }];
    spec
}

/// The first event on `rx` that `wanted` accepts, within `within`.
pub async fn wait_for(
    rx: &mut mpsc::Receiver<RuntimeEvent>,
    within: Duration,
    wanted: impl Fn(&RuntimeEvent) -> bool,
) -> Option<RuntimeEvent> {
    tokio::time::timeout(within, async {
        while let Some(event) = rx.recv().await {
            if wanted(&event) {
                return Some(event);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// `GET /` on `host:port` over HTTP/1.0, retried for a few seconds while the server comes up.
/// Returns the whole response.
pub async fn http_get(endpoint: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut last_error = String::new();
    for _ in 0..50 {
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect(endpoint).await?;
            stream
                .write_all(b"GET / HTTP/1.0\r\nHost: shoal\r\n\r\n")
                .await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(response)) if response.starts_with("HTTP/") => return Ok(response),
            Ok(Ok(response)) => last_error = format!("unexpected answer {response:?}"),
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = "no answer within 2s".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("GET / on {endpoint}: {last_error}"))
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

// ---------------------------------------------------------------------------------------------
// The test image

static TEST_IMAGE_READY: OnceCell<()> = OnceCell::const_new();

/// Builds `shoal-test/busybox:1` once per test binary, unless an image of the current recipe is
/// already there.
pub async fn ensure_test_image(docker: &Docker) -> Result<(), String> {
    TEST_IMAGE_READY
        .get_or_try_init(|| async {
            if let Ok(image) = docker.inspect_image(TEST_IMAGE).await {
                let labels = image.config.and_then(|c| c.labels).unwrap_or_default();
                if labels.get(RECIPE_LABEL).map(String::as_str) == Some(RECIPE) {
                    return Ok(());
                }
            }
            let busybox = static_busybox()?;
            let dockerfile = format!(
                "FROM scratch\n\
                 COPY busybox /bin/busybox\n\
                 RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
                 COPY index.html /www/index.html\n\
                 LABEL {RECIPE_LABEL}={RECIPE}\n\
                 ENTRYPOINT [\"/bin/busybox\"]\n"
            );
            let context = tar(&[
                ("Dockerfile", dockerfile.as_bytes(), 0o644),
                ("busybox", &busybox, 0o755),
                ("index.html", INDEX_HTML.as_bytes(), 0o644),
            ]);
            build_image(docker, TEST_IMAGE, context).await
        })
        .await
        .map(|_| ())
}

/// Builds `tag` from a tar build context.
pub async fn build_image(docker: &Docker, tag: &str, context: Vec<u8>) -> Result<(), String> {
    let options = BuildImageOptionsBuilder::new()
        .t(tag)
        .rm(true)
        .forcerm(true)
        .build();
    let mut output =
        pin!(docker.build_image(options, None, Some(bollard::body_full(context.into()))));
    let mut log = String::new();
    while let Some(item) = output.next().await {
        let info = item.map_err(|e| format!("building {tag}: {e}\n{log}"))?;
        if let Some(error) = info.error_detail.and_then(|d| d.message) {
            return Err(format!("building {tag}: {error}\n{log}"));
        }
        log.extend(info.stream);
    }
    docker
        .inspect_image(tag)
        .await
        .map_err(|e| format!("built {tag} but cannot find it: {e}\n{log}"))?;
    Ok(())
}

/// The bytes of Debian's static busybox, or why they cannot be used.
fn static_busybox() -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(BUSYBOX).map_err(|e| {
        format!("{BUSYBOX} is missing ({e}): install Debian's busybox-static to build {TEST_IMAGE}")
    })?;
    if has_interpreter(&bytes)? {
        return Err(format!(
            "{BUSYBOX} is dynamically linked and cannot run FROM scratch: install busybox-static"
        ));
    }
    Ok(bytes)
}

/// Whether an ELF executable names a program interpreter (`PT_INTERP`), i.e. is dynamically
/// linked.
pub fn has_interpreter(elf: &[u8]) -> Result<bool, String> {
    const PT_INTERP: u32 = 3;
    let not_elf = || format!("{BUSYBOX} is not a little-endian ELF executable");
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[5] != 1 {
        return Err(not_elf());
    }
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    let (phoff, phentsize, phnum) = match elf[4] {
        1 => (u32_at(0x1c).map(|v| v as usize), u16_at(0x2a), u16_at(0x2c)),
        2 => (u64_at(0x20).map(|v| v as usize), u16_at(0x36), u16_at(0x38)),
        _ => return Err(not_elf()),
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return Err(not_elf());
    };
    for i in 0..phnum {
        match u32_at(phoff + i * phentsize) {
            Some(PT_INTERP) => return Ok(true),
            Some(_) => {}
            None => return Err(not_elf()),
        }
    }
    Ok(false)
}

/// A ustar archive of regular files `(name, contents, mode)`; names up to 100 bytes.
pub fn tar(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    fn octal(field: &mut [u8], value: u64) {
        let text = format!("{value:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    }
    let mut archive = Vec::new();
    for (name, contents, mode) in files {
        assert!(
            name.len() <= 100,
            "tar name {name} is longer than 100 bytes"
        );
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut header[100..108], u64::from(*mode));
        octal(&mut header[108..116], 0); // uid
        octal(&mut header[116..124], 0); // gid
        octal(&mut header[124..136], contents.len() as u64);
        octal(&mut header[136..148], 0); // mtime
        header[148..156].fill(b' '); // the checksum counts itself as spaces
        header[156] = b'0'; // regular file
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        let checksum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
        archive.extend_from_slice(&header);
        archive.extend_from_slice(contents);
        archive.resize(archive.len().next_multiple_of(512), 0);
    }
    archive.resize(archive.len() + 1024, 0); // two zero blocks end the archive
    archive
}

/// `len` bytes that do not compress, so a layer holding them is really transferred.
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Cleanup

/// Removes, when dropped (also when the test panics), every container of the test's owner, the
/// extra containers and images registered with it.
pub struct Cleanup {
    owner_labels: Vec<String>,
    containers: Mutex<Vec<String>>,
    images: Mutex<Vec<String>>,
}

impl Cleanup {
    /// Removes every container labelled with `owner`'s cluster and node.
    pub fn for_owner(owner: &Owner) -> Cleanup {
        Cleanup {
            owner_labels: vec![
                format!("shoal.cluster={}", owner.cluster),
                format!("shoal.node={}", owner.node),
            ],
            containers: Mutex::new(Vec::new()),
            images: Mutex::new(Vec::new()),
        }
    }

    /// Also remove this container (a name or id) at the end.
    pub fn container(&self, name: &str) {
        self.containers.lock().unwrap().push(name.to_string());
    }

    /// Also remove this image reference at the end.
    pub fn image(&self, reference: &str) {
        self.images.lock().unwrap().push(reference.to_string());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let labels = self.owner_labels.clone();
        let containers =
            std::mem::take(&mut *self.containers.lock().unwrap_or_else(|e| e.into_inner()));
        let images = std::mem::take(&mut *self.images.lock().unwrap_or_else(|e| e.into_inner()));
        // Drop cannot await, and the test's runtime may be gone or busy: clean up from a thread
        // with a runtime of its own.
        let cleaned = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(remove_all(labels, containers, images));
            Ok::<_, std::io::Error>(())
        })
        .join();
        if !matches!(cleaned, Ok(Ok(()))) {
            eprintln!("cleanup of docker test resources failed: {cleaned:?}");
        }
    }
}

async fn remove_all(labels: Vec<String>, mut containers: Vec<String>, images: Vec<String>) {
    let Ok(Ok(docker)) = tokio::time::timeout(Duration::from_secs(10), async {
        Docker::connect_with_defaults()?.negotiate_version().await
    })
    .await
    else {
        return;
    };
    let filters = HashMap::from([("label", labels)]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    if let Ok(ours) = docker.list_containers(Some(options)).await {
        containers.extend(ours.into_iter().filter_map(|c| c.id));
    }
    for container in containers {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let _ = docker.remove_container(&container, Some(options)).await;
    }
    for image in images {
        let options = RemoveImageOptionsBuilder::new().force(true).build();
        let _ = docker.remove_image(&image, Some(options), None).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A private registry

/// Debian's `docker-registry` serving from a temporary directory on `127.0.0.1:<port>`, killed
/// when dropped. Docker treats `127.0.0.0/8` registries as insecure by default, so plain HTTP
/// works without daemon configuration.
pub struct Registry {
    child: std::process::Child,
    /// `127.0.0.1:<port>`
    pub address: String,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts the registry, or says why it cannot (`None` when it is not installed).
    pub async fn start(test: &str) -> Option<Registry> {
        if !Path::new(REGISTRY).exists() {
            skip_or_fail(
                test,
                &format!("{REGISTRY} is missing: install Debian's docker-registry"),
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let address = format!("127.0.0.1:{}", free_port());
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {address}\n",
            dir.path().join("storage").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = std::process::Command::new(REGISTRY)
            .arg("serve")
            .arg(&config_path)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("registry log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {REGISTRY}: {e}"));
        let mut registry = Registry {
            child,
            address,
            dir,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&registry.address)
                .await
                .is_ok()
            {
                return Some(registry);
            }
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!("{REGISTRY} exited with {status}: {}", registry.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{REGISTRY} does not listen on {} after 10s: {}",
            registry.address,
            registry.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes a local image (`<address>/<repo>:<tag>`) to this registry.
    pub async fn push(&self, docker: &Docker, repo: &str, tag: &str) -> Result<(), String> {
        let options = PushImageOptionsBuilder::new().tag(tag).build();
        let mut output = pin!(docker.push_image(repo, Some(options), None));
        while let Some(item) = output.next().await {
            let info = item.map_err(|e| format!("push {repo}:{tag}: {e}\n{}", self.log()))?;
            if let Some(error) = info.error_detail.and_then(|d| d.message) {
                return Err(format!("push {repo}:{tag}: {error}\n{}", self.log()));
            }
        }
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
