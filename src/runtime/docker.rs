//! The docker driver: runs `image` workloads as containers through the Docker Engine API.
//!
//! This is the only file in the crate that imports `bollard`; none of its types cross the
//! `Runtime` boundary. The driver starts containers (pulling the image when it is missing, with
//! progress), stops, lists and watches them, and serves their logs. It decides nothing: restart
//! policy, backoff, adoption and reclaim live in `reconcile/`.
//!
//! The rule everything here keeps: the driver only ever touches containers that carry both of its
//! owner labels (`shoal.cluster` and `shoal.node`). A container that has one of our names but not
//! our labels is refused, never stopped or removed.
//!
//! Where an instance differs from a plain `docker run`, on purpose:
//! - restart policy `no`: the reconciler restarts, with its own backoff;
//! - `init: true`: docker's init is PID 1, so SIGTERM reaches a workload that installs no handler
//!   (the kernel drops default-action signals sent to PID 1) and zombies are reaped;
//! - swap is capped at the memory limit (`MemorySwap = Memory`): `memory_bytes` means what it says;
//! - a driver-private label, `shoal.ports` (`name=container_port,...`), keeps the port names so that
//!   `list()` can report published ports by name without the spec.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerState, ContainerStateStatusEnum,
    CreateImageInfo, EventMessage, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptions, EventsOptionsBuilder,
    InspectContainerOptions, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions, StopContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{
    DriverError, ExitInfo, Handle, InstanceSpec, Observed, ObservedStatus, Owner, Runtime,
    RuntimeEvent,
};
use crate::ids::{InstanceKey, RevisionId, SlotId};
use crate::spec::{DriverKind, PortSpec, ServiceName, Workload};

const LABEL_CLUSTER: &str = "shoal.cluster";
const LABEL_NODE: &str = "shoal.node";
const LABEL_SERVICE: &str = "shoal.service";
const LABEL_SLOT: &str = "shoal.slot";
const LABEL_EPOCH: &str = "shoal.epoch";
const LABEL_REVISION: &str = "shoal.revision";
/// Driver-private: `name=container_port,...` in the spec's order (see the module docs).
const LABEL_PORTS: &str = "shoal.ports";

/// How long `connect` waits for the daemon to answer before reporting it unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Added to a stop's grace period for the HTTP request's own timeout (docker answers a stop only
/// once the container is down, and bollard's default request timeout is two minutes).
const STOP_REQUEST_SLACK: Duration = Duration::from_secs(30);
/// At most one pull progress event per instance per interval.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Chunks buffered between the docker log stream and the reader of `logs()`.
const LOG_CHANNEL_CHUNKS: usize = 64;
/// How many container ids the driver remembers as "being stopped by us" or "OOM-killed".
const RECENT_IDS: usize = 512;
/// Reconnect backoff of the event watch after the stream ends (daemon restart).
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(500);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// When the daemon's clock cannot be read, the watch replays events from this long before now.
const WATCH_CLOCK_MARGIN: Duration = Duration::from_secs(5);

/// The docker runtime driver. Cheap to share behind an `Arc`; every method is idempotent.
pub struct DockerDriver {
    docker: Docker,
    owner: Owner,
    /// Host or address put in front of published ports in `Observed::endpoint`.
    advertise_host: String,
    /// Containers this driver is stopping (or failed to start): their `die` is not an exit "on
    /// its own", so the watch does not report it.
    stopping: Arc<Mutex<RecentIds>>,
}

impl DockerDriver {
    /// Connects to the daemon named by `DOCKER_HOST` (`unix://`, `tcp://`, `http://`), or the local
    /// socket `/var/run/docker.sock`. `Unavailable` (with the reason) when the daemon does not
    /// answer: the agent then runs without the docker driver.
    pub async fn connect(
        owner: Owner,
        advertise_host: String,
    ) -> Result<DockerDriver, DriverError> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        DockerDriver::connect_to(&host, owner, advertise_host).await
    }

    /// Connects to the daemon at `docker_host` (same forms as `DOCKER_HOST`), negotiates the API
    /// version once and logs the daemon's version.
    pub async fn connect_to(
        docker_host: &str,
        owner: Owner,
        advertise_host: String,
    ) -> Result<DockerDriver, DriverError> {
        let unavailable = |why: String| DriverError::Unavailable {
            reason: format!("docker at {docker_host}: {why}"),
        };
        let docker =
            Docker::connect_with_host(docker_host).map_err(|e| unavailable(error_chain(&e)))?;
        let answer = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let docker = docker.negotiate_version().await?;
            let version = docker.version().await?;
            Ok::<_, BollardError>((docker, version))
        })
        .await;
        let (docker, version) = match answer {
            Err(_) => {
                return Err(unavailable(format!(
                    "no answer within {}s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
            Ok(Err(e)) => return Err(unavailable(error_chain(&e))),
            Ok(Ok(answer)) => answer,
        };
        info!(
            docker_host,
            server_version = version.version.as_deref().unwrap_or("unknown"),
            api_version = %docker.client_version(),
            "docker daemon connected"
        );
        Ok(DockerDriver {
            docker,
            owner,
            advertise_host,
            stopping: Arc::new(Mutex::new(RecentIds::default())),
        })
    }

    /// What the daemon's host offers: `(cpu_millis, memory_bytes)` from `docker info` (`NCPU`,
    /// `MemTotal`).
    pub async fn capacity(&self) -> Result<(u64, u64), DriverError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| daemon_error("docker info", e))?;
        match (info.ncpu, info.mem_total) {
            (Some(cpus), Some(memory)) if cpus > 0 && memory > 0 => {
                Ok((cpus as u64 * 1000, memory as u64))
            }
            (cpus, memory) => Err(DriverError::Unavailable {
                reason: format!(
                    "docker info reports no capacity (NCPU {cpus:?}, MemTotal {memory:?})"
                ),
            }),
        }
    }

    fn owns(&self, labels: &HashMap<String, String>) -> bool {
        labels.get(LABEL_CLUSTER) == Some(&self.owner.cluster)
            && labels.get(LABEL_NODE) == Some(&self.owner.node.0.to_string())
    }

    fn owner_filters(&self) -> HashMap<&'static str, Vec<String>> {
        HashMap::from([(
            "label",
            vec![
                format!("{LABEL_CLUSTER}={}", self.owner.cluster),
                format!("{LABEL_NODE}={}", self.owner.node.0),
            ],
        )])
    }

    fn endpoint(&self, host_port: u16) -> String {
        if self.advertise_host.contains(':') && !self.advertise_host.starts_with('[') {
            format!("[{}]:{host_port}", self.advertise_host)
        } else {
            format!("{}:{host_port}", self.advertise_host)
        }
    }

    fn mark_stopping(&self, id: &str) {
        lock(&self.stopping).insert(id.to_string());
    }

    /// The container with this name or id, `None` when there is none.
    async fn inspect(
        &self,
        name_or_id: &str,
    ) -> Result<Option<ContainerInspectResponse>, DriverError> {
        match self
            .docker
            .inspect_container(name_or_id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(daemon_error(&format!("inspect container {name_or_id}"), e)),
        }
    }

    /// Removes a container (killing it if it runs) and its anonymous volumes; gone is fine.
    async fn remove(&self, id: &str) -> Result<(), DriverError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("already in progress") => Ok(()),
            Err(e) => Err(daemon_error(
                &format!("remove container {}", short_id(id)),
                e,
            )),
        }
    }

    /// The `Observed` for one of our containers, from its inspect document.
    fn observed_from_inspect(&self, c: &ContainerInspectResponse) -> Result<Observed, String> {
        let labels = c
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .ok_or("no labels")?;
        let (key, revision) = parse_identity(labels)?;
        let id = c.id.clone().ok_or("no container id")?;
        let status = status_from_state(c.state.as_ref());
        let port_map = c.network_settings.as_ref().and_then(|n| n.ports.as_ref());
        let (ports, endpoint) = self.published(labels, |container_port| {
            port_map?
                .get(&format!("{container_port}/tcp"))?
                .as_ref()?
                .iter()
                .find_map(|b| {
                    b.host_port
                        .as_deref()?
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                })
        });
        Ok(Observed {
            key,
            revision,
            handle: Handle::Container { id },
            endpoint,
            ports,
            status,
        })
    }

    /// Published ports by name and the endpoint (the first port in the spec's order that is
    /// published), given how to find the host port bound to a container port.
    fn published(
        &self,
        labels: &HashMap<String, String>,
        host_port_of: impl Fn(u16) -> Option<u16>,
    ) -> (BTreeMap<String, u16>, Option<String>) {
        let mut ports = BTreeMap::new();
        let mut endpoint = None;
        for (name, container_port) in port_names(labels) {
            if let Some(host_port) = host_port_of(container_port) {
                endpoint.get_or_insert_with(|| self.endpoint(host_port));
                ports.insert(name, host_port);
            }
        }
        (ports, endpoint)
    }

    /// The container to create for `spec`: labels, env, command, limits, ports, restart `no`.
    fn create_body(
        &self,
        spec: &InstanceSpec,
        image: &str,
        command: &Option<Vec<String>>,
    ) -> Result<ContainerCreateBody, DriverError> {
        let service = &spec.spec;
        let rejected = |reason: String| DriverError::Rejected { reason };

        let mut labels: HashMap<String, String> = spec.labels().into_iter().collect();
        let mut port_label = Vec::new();
        let mut exposed = Vec::new();
        let mut bindings = HashMap::new();
        for port in &service.ports {
            let Some(container_port) = port.container else {
                return Err(rejected(format!(
                    "service {} port {}: an image service needs a container port",
                    service.name, port.name
                )));
            };
            if port.name.contains([',', '=']) {
                return Err(rejected(format!(
                    "service {} port name {:?} contains ',' or '='",
                    service.name, port.name
                )));
            }
            port_label.push(format!("{}={container_port}", port.name));
            let proto_port = format!("{container_port}/tcp");
            exposed.push(proto_port.clone());
            // Host port 0: the daemon picks a free one; start() reads it back.
            let host_port = port.host.unwrap_or(0).to_string();
            bindings.insert(
                proto_port,
                Some(vec![PortBinding {
                    host_ip: None,
                    host_port: Some(host_port),
                }]),
            );
        }
        if !port_label.is_empty() {
            labels.insert(LABEL_PORTS.to_string(), port_label.join(","));
        }

        let mut env: Vec<String> = service
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!("SHOAL_SERVICE={}", spec.key.slot.service));
        env.push(format!("SHOAL_SLOT={}", spec.key.slot.index));
        env.push(format!("SHOAL_EPOCH={}", spec.key.epoch));
        env.push(format!("SHOAL_REVISION={}", spec.revision));

        let limit = |what: &str, value: u64| -> Result<Option<i64>, DriverError> {
            match value {
                0 => Ok(None), // unlimited
                v => i64::try_from(v).map(Some).map_err(|_| {
                    rejected(format!("service {} {what} {v} is too large", service.name))
                }),
            }
        };
        let nano_cpus = limit(
            "cpu",
            service.resources.cpu_millis.saturating_mul(1_000_000),
        )?;
        let memory = limit("memory", service.resources.memory_bytes)?;

        Ok(ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: command.clone(),
            env: Some(env),
            labels: Some(labels),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            host_config: Some(HostConfig {
                nano_cpus,
                memory,
                memory_swap: memory,
                port_bindings: (!bindings.is_empty()).then_some(bindings),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Makes sure `image` is present, pulling it (with progress events) when it is not.
    async fn ensure_image(
        &self,
        key: &InstanceKey,
        image: &str,
        events: &mpsc::Sender<RuntimeEvent>,
    ) -> Result<(), DriverError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => self.pull(key, image, events).await,
            // 400: not a valid reference; nothing can pull it.
            Err(BollardError::DockerResponseServerError {
                status_code: 400,
                message,
            }) => Err(DriverError::ImageNotFound {
                image: image.to_string(),
                reason: message,
            }),
            Err(e) => Err(daemon_error(&format!("inspect image {image}"), e)),
        }
    }

    async fn pull(
        &self,
        key: &InstanceKey,
        image: &str,
        events: &mpsc::Sender<RuntimeEvent>,
    ) -> Result<(), DriverError> {
        let (from_image, tag) = pull_reference(image);
        let mut options = CreateImageOptionsBuilder::new().from_image(&from_image);
        if let Some(tag) = &tag {
            options = options.tag(tag);
        }
        let credentials = load_credentials(image).await;
        info!(instance = %key, image, authenticated = credentials.is_some(), "pulling image");

        // Progress is advisory: a full channel drops an update rather than stall the pull.
        let report = |percent: u64| {
            let status = format!("pulling {percent}%");
            let _ = events.try_send(RuntimeEvent::Progress {
                key: key.clone(),
                status,
            });
        };
        report(0);
        let mut stream = pin!(
            self.docker
                .create_image(Some(options.build()), None, credentials)
        );
        let mut progress = PullProgress::default();
        let mut last_report = Instant::now();
        while let Some(item) = stream.next().await {
            let update = item.map_err(|e| pull_error(image, e))?;
            progress.update(&update);
            if last_report.elapsed() >= PROGRESS_INTERVAL {
                let percent = progress.percent();
                info!(instance = %key, image, percent, "pulling image");
                report(percent);
                last_report = Instant::now();
            }
        }
        report(100);
        info!(instance = %key, image, "image pulled");
        Ok(())
    }

    async fn start_instance(
        &self,
        spec: &InstanceSpec,
        events: &mpsc::Sender<RuntimeEvent>,
    ) -> Result<Observed, DriverError> {
        let Workload::Image { image, command } = &spec.spec.workload else {
            return Err(DriverError::Rejected {
                reason: format!(
                    "service {} has no image: the docker driver runs image workloads only",
                    spec.spec.name
                ),
            });
        };
        if spec.cluster != self.owner.cluster || spec.node != self.owner.node {
            return Err(DriverError::Rejected {
                reason: format!(
                    "instance {} belongs to cluster {} node {}, not to this driver's owner",
                    spec.key, spec.cluster, spec.node
                ),
            });
        }
        let name = spec.key.name();
        let body = self.create_body(spec, image, command)?;

        if let Some(c) = self.inspect(&name).await? {
            match self.existing(&name, &c)? {
                Some(running) => return Ok(running),
                None => {
                    let id = c.id.unwrap_or_default();
                    info!(instance = %spec.key, container = short_id(&id), "removing stale container");
                    self.remove(&id).await?;
                }
            }
        }

        self.ensure_image(&spec.key, image, events).await?;

        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let id = match self.docker.create_container(Some(options), body).await {
            Ok(created) => created.id,
            // Another start of the same instance got there first: adopt it if it is ours.
            Err(BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            }) => {
                if let Some(c) = self.inspect(&name).await?
                    && let Some(running) = self.existing(&name, &c)?
                {
                    return Ok(running);
                }
                return Err(DriverError::Rejected {
                    reason: format!("create {name}: {message}"),
                });
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 404,
                message,
            }) => {
                return Err(DriverError::ImageNotFound {
                    image: image.clone(),
                    reason: message,
                });
            }
            Err(e) => return Err(daemon_error(&format!("create container {name}"), e)),
        };

        if let Err(e) = self
            .docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
        {
            let error = start_error(&name, &spec.spec.ports, e);
            // A created-but-never-started container would hold the name: remove it. If it died
            // on the way, its `die` is this failure, already reported as the start's error.
            self.mark_stopping(&id);
            if let Err(cleanup) = self.remove(&id).await {
                warn!(instance = %spec.key, error = %cleanup, "cannot remove container that failed to start");
            }
            return Err(error);
        }

        let c = self
            .inspect(&id)
            .await?
            .ok_or_else(|| DriverError::Unavailable {
                reason: format!("container {name} vanished right after it started"),
            })?;
        let observed = self
            .observed_from_inspect(&c)
            .map_err(|why| DriverError::Unavailable {
                reason: format!("container {name}: {why}"),
            })?;
        info!(
            instance = %spec.key,
            container = short_id(&id),
            endpoint = observed.endpoint.as_deref().unwrap_or("-"),
            "instance started"
        );
        Ok(observed)
    }

    /// What an existing container with our instance's name means for a start: `Some` to report
    /// it (ours and running), `None` to replace it (ours, but exited or with labels we cannot
    /// read), an error if it is not ours.
    fn existing(
        &self,
        name: &str,
        c: &ContainerInspectResponse,
    ) -> Result<Option<Observed>, DriverError> {
        let labels = c
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        if !self.owns(&labels) {
            return Err(DriverError::Rejected {
                reason: format!(
                    "a container named {name} exists without this node's shoal labels; it is left alone"
                ),
            });
        }
        Ok(self
            .observed_from_inspect(c)
            .ok()
            .filter(|o| o.status == ObservedStatus::Running))
    }

    async fn stop_instance(&self, key: &InstanceKey, grace_ms: u64) -> Result<(), DriverError> {
        let name = key.name();
        let Some(c) = self.inspect(&name).await? else {
            return Ok(()); // already gone
        };
        let labels = c
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        if !self.owns(&labels) {
            warn!(instance = %key, "container with this instance's name is not ours; leaving it alone");
            return Ok(());
        }
        let id = c.id.unwrap_or_default();
        self.mark_stopping(&id);

        let grace_secs = grace_ms.div_ceil(1000);
        let options = StopContainerOptionsBuilder::new()
            .t(i32::try_from(grace_secs).unwrap_or(i32::MAX))
            .build();
        let docker = self
            .docker
            .clone()
            .with_timeout(Duration::from_secs(grace_secs) + STOP_REQUEST_SLACK);
        match docker.stop_container(&id, Some(options)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => {
                lock(&self.stopping).take(&id);
                return Err(daemon_error(&format!("stop container {name}"), e));
            }
        }
        self.remove(&id).await?;
        info!(instance = %key, container = short_id(&id), "instance stopped");
        Ok(())
    }

    /// Every container of this owner. Each is inspected: docker's container listing can lag its
    /// events (a container whose `die` the watch just reported was seen listed as running),
    /// while inspect reads the container's own state.
    async fn list_instances(&self) -> Result<Vec<Observed>, DriverError> {
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&self.owner_filters())
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| daemon_error("list containers", e))?;
        let mut observed = Vec::with_capacity(containers.len());
        for id in containers.into_iter().filter_map(|c| c.id) {
            let Some(c) = self.inspect(&id).await? else {
                continue; // removed while we looked
            };
            let labels = c
                .config
                .as_ref()
                .and_then(|c| c.labels.clone())
                .unwrap_or_default();
            if !self.owns(&labels) {
                // The daemon filtered on these labels; never report a container that lacks them.
                continue;
            }
            match self.observed_from_inspect(&c) {
                Ok(o) => observed.push(o),
                Err(why) => warn!(
                    container = short_id(&id),
                    name = c.name.as_deref().unwrap_or("?"),
                    why,
                    "skipping container with malformed shoal labels"
                ),
            }
        }
        observed.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(observed)
    }

    async fn start_watch(&self, events: mpsc::Sender<RuntimeEvent>) -> Result<(), DriverError> {
        let since_nanos = self.daemon_now_nanos().await?;
        let watcher = Watcher {
            docker: self.docker.clone(),
            filters: {
                let mut filters = self.owner_filters();
                filters.insert("type", vec!["container".to_string()]);
                filters.insert("event", vec!["die".to_string(), "oom".to_string()]);
                filters
            },
            stopping: self.stopping.clone(),
            oom_killed: RecentIds::default(),
            events,
            since_nanos,
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(watcher.run(ready_tx));
        ready_rx.await.unwrap_or_else(|_| {
            Err(DriverError::Unavailable {
                reason: "docker event watch ended while starting".into(),
            })
        })
    }

    /// The daemon's clock, read from `docker info`, so the watch replays from a time the daemon
    /// agrees with even when this host's clock differs.
    async fn daemon_now_nanos(&self) -> Result<i64, DriverError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| daemon_error("docker info", e))?;
        if let Some(nanos) = info.system_time.as_deref().and_then(parse_rfc3339_nanos) {
            return Ok(nanos);
        }
        warn!(system_time = ?info.system_time, "cannot read the docker daemon's clock; using this host's");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(WATCH_CLOCK_MARGIN);
        Ok(i64::try_from(now.as_nanos()).unwrap_or(i64::MAX))
    }

    async fn open_logs(
        &self,
        key: &InstanceKey,
        follow: bool,
        tail_lines: Option<usize>,
    ) -> Result<mpsc::Receiver<Vec<u8>>, DriverError> {
        let name = key.name();
        let c = self.inspect(&name).await?.filter(|c| {
            self.owns(
                &c.config
                    .as_ref()
                    .and_then(|c| c.labels.clone())
                    .unwrap_or_default(),
            )
        });
        let Some(id) = c.and_then(|c| c.id) else {
            return Err(DriverError::Rejected {
                reason: format!("no instance {key} on this node"),
            });
        };
        let tail = tail_lines.map_or_else(|| "all".to_string(), |n| n.to_string());
        let options = LogsOptionsBuilder::new()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        let docker = self.docker.clone();
        let (tx, rx) = mpsc::channel(LOG_CHANNEL_CHUNKS);
        let key = key.clone();
        tokio::spawn(async move {
            let mut stream = pin!(docker.logs(&id, Some(options)));
            loop {
                let item = tokio::select! {
                    () = tx.closed() => break,
                    item = stream.next() => item,
                };
                match item {
                    Some(Ok(output)) => {
                        if tx.send(output.into_bytes().to_vec()).await.is_err() {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        debug!(instance = %key, error = %error_chain(&e), "log stream ended");
                        break;
                    }
                    None => break,
                }
            }
        });
        Ok(rx)
    }
}

impl Runtime for DockerDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Docker
    }

    async fn start(
        &self,
        spec: &InstanceSpec,
        events: &mpsc::Sender<RuntimeEvent>,
    ) -> Result<Observed, DriverError> {
        self.start_instance(spec, events).await
    }

    /// `docker stop -t ceil(grace_ms / 1000)` (SIGTERM, then SIGKILL), then `docker rm -f`.
    async fn stop(&self, key: &InstanceKey, grace_ms: u64) -> Result<(), DriverError> {
        self.stop_instance(key, grace_ms).await
    }

    async fn list(&self) -> Result<Vec<Observed>, DriverError> {
        self.list_instances().await
    }

    /// Subscribes to the daemon's `die` and `oom` events for this owner's containers. Returns once
    /// the subscription request is under way; events are replayed from the daemon's clock at the
    /// time of the call, so none is lost to the setup. A stream that ends (daemon restart) is
    /// reopened with backoff from the last event seen; the task ends when `events` is dropped.
    async fn watch(&self, events: mpsc::Sender<RuntimeEvent>) -> Result<(), DriverError> {
        self.start_watch(events).await
    }

    async fn logs(
        &self,
        key: &InstanceKey,
        follow: bool,
        tail_lines: Option<usize>,
    ) -> Result<mpsc::Receiver<Vec<u8>>, DriverError> {
        self.open_logs(key, follow, tail_lines).await
    }
}

/// The task behind `watch()`: turns docker events into `RuntimeEvent::Exited`.
struct Watcher {
    docker: Docker,
    filters: HashMap<&'static str, Vec<String>>,
    stopping: Arc<Mutex<RecentIds>>,
    /// Containers with an `oom` event whose `die` has not been seen yet.
    oom_killed: RecentIds,
    events: mpsc::Sender<RuntimeEvent>,
    /// Daemon time (ns since the epoch) from which the next subscription replays events.
    since_nanos: i64,
}

impl Watcher {
    fn options(&self) -> EventsOptions {
        EventsOptionsBuilder::new()
            .since(&since_param(self.since_nanos))
            .filters(&self.filters)
            .build()
    }

    async fn run(mut self, ready: oneshot::Sender<Result<(), DriverError>>) {
        let mut ready = Some(ready);
        let mut backoff = WATCH_BACKOFF_MIN;
        loop {
            let mut stream = Box::pin(self.docker.events(Some(self.options())));
            // Streams are lazy: the request goes out on the first poll. Poll once before
            // reporting ready.
            let mut pending_item = match futures::poll!(stream.next()) {
                Poll::Pending => None,
                Poll::Ready(item) => Some(item),
            };
            if let Some(ready) = ready.take() {
                if let Some(Some(Err(e))) = pending_item {
                    let _ = ready.send(Err(daemon_error("watch docker events", e)));
                    return;
                }
                let _ = ready.send(Ok(()));
                debug!("docker event watch started");
            }
            loop {
                let item = match pending_item.take() {
                    Some(item) => item,
                    None => tokio::select! {
                        () = self.events.closed() => return,
                        item = stream.next() => item,
                    },
                };
                match item {
                    Some(Ok(event)) => {
                        backoff = WATCH_BACKOFF_MIN;
                        if !self.handle(event).await {
                            return; // nobody listens any more
                        }
                    }
                    Some(Err(e)) => {
                        warn!(error = %error_chain(&e), retry_in_ms = backoff.as_millis() as u64, "docker event stream failed");
                        break;
                    }
                    None => {
                        warn!(
                            retry_in_ms = backoff.as_millis() as u64,
                            "docker event stream ended"
                        );
                        break;
                    }
                }
            }
            tokio::select! {
                () = self.events.closed() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
        }
    }

    /// Handles one event; false once the receiver of `events` is gone.
    async fn handle(&mut self, event: EventMessage) -> bool {
        if let Some(t) = event.time_nano {
            self.since_nanos = self.since_nanos.max(t.saturating_add(1));
        }
        let Some(actor) = event.actor else {
            return true;
        };
        let Some(id) = actor.id else { return true };
        let attributes = actor.attributes.unwrap_or_default();
        match event.action.as_deref() {
            // The kernel killed a process in the container; its `die` follows.
            Some("oom") => {
                debug!(container = short_id(&id), "container hit its memory limit");
                self.oom_killed.insert(id);
                true
            }
            Some("die") => {
                if lock(&self.stopping).take(&id) {
                    debug!(
                        container = short_id(&id),
                        "container stopped by this driver"
                    );
                    return true;
                }
                let key = match parse_identity(&attributes) {
                    Ok((key, _)) => key,
                    Err(why) => {
                        warn!(
                            container = short_id(&id),
                            why, "exit of a container with malformed shoal labels"
                        );
                        return true;
                    }
                };
                let code = attributes
                    .get("exitCode")
                    .and_then(|c| c.parse::<i32>().ok());
                let oom_killed = self.oom_killed.take(&id) || self.inspect_oom_killed(&id).await;
                info!(instance = %key, code = ?code, oom_killed, "instance exited");
                let exit = ExitInfo {
                    code,
                    signal: None,
                    oom_killed,
                };
                self.events
                    .send(RuntimeEvent::Exited { key, exit })
                    .await
                    .is_ok()
            }
            _ => true,
        }
    }

    async fn inspect_oom_killed(&self, id: &str) -> bool {
        match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => c.state.and_then(|s| s.oom_killed).unwrap_or(false),
            Err(e) => {
                debug!(container = short_id(id), error = %error_chain(&e), "cannot inspect exited container");
                false
            }
        }
    }
}

/// A bounded set of container ids; the oldest is forgotten first.
#[derive(Default)]
struct RecentIds {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl RecentIds {
    fn insert(&mut self, id: String) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
            if self.order.len() > RECENT_IDS
                && let Some(oldest) = self.order.pop_front()
            {
                self.set.remove(&oldest);
            }
        }
    }

    /// Removes `id`; true if it was there.
    fn take(&mut self, id: &str) -> bool {
        let present = self.set.remove(id);
        if present {
            self.order.retain(|x| x != id);
        }
        present
    }
}

fn lock(ids: &Mutex<RecentIds>) -> MutexGuard<'_, RecentIds> {
    // The set holds no invariant a panic elsewhere could break.
    ids.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The instance key and revision from a container's labels (or a docker event's attributes,
/// which carry the labels).
fn parse_identity(labels: &HashMap<String, String>) -> Result<(InstanceKey, RevisionId), String> {
    let get = |name: &str| {
        labels
            .get(name)
            .ok_or_else(|| format!("label {name} missing"))
    };
    let service = get(LABEL_SERVICE)?;
    if service.is_empty() {
        return Err(format!("label {LABEL_SERVICE} is empty"));
    }
    let index = get(LABEL_SLOT)?
        .parse::<u32>()
        .map_err(|e| format!("label {LABEL_SLOT}: {e}"))?;
    let epoch = get(LABEL_EPOCH)?
        .parse::<u64>()
        .map_err(|e| format!("label {LABEL_EPOCH}: {e}"))?;
    let revision = get(LABEL_REVISION)?;
    let slot = SlotId {
        service: ServiceName(service.as_str().into()),
        index,
    };
    Ok((InstanceKey { slot, epoch }, RevisionId(revision.clone())))
}

/// `(name, container port)` pairs from the driver-private ports label, in the spec's order.
fn port_names(labels: &HashMap<String, String>) -> Vec<(String, u16)> {
    let Some(label) = labels.get(LABEL_PORTS) else {
        return Vec::new();
    };
    label
        .split(',')
        .filter_map(|pair| {
            let (name, port) = pair.split_once('=')?;
            Some((name.to_string(), port.parse().ok()?))
        })
        .collect()
}

fn status_from_state(state: Option<&ContainerState>) -> ObservedStatus {
    let never_ran = ExitInfo {
        code: None,
        signal: None,
        oom_killed: false,
    };
    let Some(state) = state else {
        return ObservedStatus::Exited(never_ran);
    };
    match state.status {
        Some(
            ContainerStateStatusEnum::RUNNING
            | ContainerStateStatusEnum::PAUSED
            | ContainerStateStatusEnum::RESTARTING
            | ContainerStateStatusEnum::STOPPING,
        ) => ObservedStatus::Running,
        // Created but never started: there is no exit code to report.
        Some(ContainerStateStatusEnum::CREATED) => ObservedStatus::Exited(never_ran),
        // Exited, dead, being removed. Docker reports a death by signal N as code 128 + N.
        _ => ObservedStatus::Exited(ExitInfo {
            code: state.exit_code.and_then(|c| i32::try_from(c).ok()),
            signal: None,
            oom_killed: state.oom_killed.unwrap_or(false),
        }),
    }
}

/// Maps a failed Docker API call to the driver's error. Callers first handle the statuses that
/// mean something specific to them (404 = gone, 404 on an image = pull).
fn daemon_error(what: &str, e: BollardError) -> DriverError {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => {
            let client_error =
                (400..500).contains(&status_code) && status_code != 408 && status_code != 429;
            if client_error || is_permanent_failure(&message) {
                DriverError::Rejected {
                    reason: format!("{what}: {message}"),
                }
            } else {
                DriverError::Unavailable {
                    reason: format!("{what}: docker answered {status_code}: {message}"),
                }
            }
        }
        BollardError::RequestTimeoutError => DriverError::Unavailable {
            reason: format!("{what}: docker did not answer in time"),
        },
        other => DriverError::Unavailable {
            reason: format!("{what}: {}", error_chain(&other)),
        },
    }
}

/// Daemon 500s that say the request itself cannot work (a bad command in the image).
fn is_permanent_failure(message: &str) -> bool {
    message.contains("executable file not found") || message.contains("OCI runtime create failed")
}

/// A failed `start_container`: a taken host port is named; the rest is `daemon_error`.
fn start_error(name: &str, ports: &[PortSpec], e: BollardError) -> DriverError {
    if let BollardError::DockerResponseServerError { message, .. } = &e
        && (message.contains("port is already allocated")
            || message.contains("address already in use"))
    {
        let port = allocated_port(message).or_else(|| {
            let fixed: Vec<String> = ports
                .iter()
                .filter_map(|p| p.host)
                .map(|p| p.to_string())
                .collect();
            (!fixed.is_empty()).then(|| fixed.join(", "))
        });
        return DriverError::Rejected {
            reason: format!(
                "start {name}: host port {} is already allocated ({message})",
                port.as_deref().unwrap_or("?")
            ),
        };
    }
    daemon_error(&format!("start container {name}"), e)
}

/// The port in docker's "Bind for 0.0.0.0:8080 failed: port is already allocated" or
/// "listen tcp4 0.0.0.0:8080: bind: address already in use".
fn allocated_port(message: &str) -> Option<String> {
    let address = if let Some(rest) = message.split("Bind for ").nth(1) {
        rest.split(" failed").next()?
    } else {
        let before = message.split(": bind: address already in use").next()?;
        before.rsplit(' ').next()?
    };
    let port = address.rsplit(':').next()?;
    port.parse::<u16>().ok().map(|p| p.to_string())
}

/// A failed pull: what the daemon or registry said becomes `ImageNotFound`; an unreachable
/// daemon stays `Unavailable`.
fn pull_error(image: &str, e: BollardError) -> DriverError {
    match e {
        BollardError::DockerStreamError { error } => DriverError::ImageNotFound {
            image: image.to_string(),
            reason: error,
        },
        BollardError::DockerResponseServerError { message, .. } => DriverError::ImageNotFound {
            image: image.to_string(),
            reason: message,
        },
        other => daemon_error(&format!("pull {image}"), other),
    }
}

/// `(fromImage, tag)` for a pull. No tag means `latest` (an empty tag would pull every tag of
/// the repository); with a digest the tag is not used.
fn pull_reference(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_string(), None);
    }
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].rfind(':') {
        Some(i) => {
            let colon = name_start + i;
            (
                image[..colon].to_string(),
                Some(image[colon + 1..].to_string()),
            )
        }
        None => (image.to_string(), Some("latest".to_string())),
    }
}

/// The registry an image comes from, the way docker decides it: the first path component when it
/// looks like a host (a dot, a port, or `localhost`), Docker Hub otherwise.
fn registry_host(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker").join("config.json"))
}

/// Registry credentials for `image` from the docker CLI's config file, read at each pull so a
/// `docker login` takes effect without a restart.
async fn load_credentials(image: &str) -> Option<DockerCredentials> {
    let path = docker_config_path()?;
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read docker config; pulling without credentials");
            return None;
        }
    };
    match credentials_from_config(&text, registry_host(image)) {
        Ok(credentials) => credentials,
        Err(why) => {
            warn!(path = %path.display(), why, "malformed docker config; pulling without credentials");
            None
        }
    }
}

/// The `auths` entry for `registry` in a docker `config.json`: `auth` (base64 `user:password`)
/// or `identitytoken`. Credential helpers (`credsStore`, `credHelpers`) are not consulted.
fn credentials_from_config(
    config: &str,
    registry: &str,
) -> Result<Option<DockerCredentials>, String> {
    let config: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
    let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let hub_aliases = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    for (server, entry) in auths {
        let host = server_host(server);
        let matches = host == registry || (registry == "docker.io" && hub_aliases.contains(&host));
        if !matches {
            continue;
        }
        let text = |field: &str| {
            entry
                .get(field)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
        };
        let mut credentials = DockerCredentials {
            serveraddress: Some(server.clone()),
            ..Default::default()
        };
        if let Some(auth) = text("auth") {
            let decoded = base64_decode(auth)
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| format!("auths.{server}.auth is not base64 text"))?;
            let (user, password) = decoded
                .split_once(':')
                .ok_or_else(|| format!("auths.{server}.auth is not user:password"))?;
            credentials.username = Some(user.to_string());
            credentials.password = Some(password.to_string());
        }
        credentials.identitytoken = text("identitytoken").map(str::to_string);
        if credentials.username.is_some() || credentials.identitytoken.is_some() {
            return Ok(Some(credentials));
        }
    }
    Ok(None)
}

/// `https://index.docker.io/v1/` → `index.docker.io`.
fn server_host(server: &str) -> &str {
    let s = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .unwrap_or(server);
    s.split('/').next().unwrap_or(s)
}

/// Standard or URL-safe base64, padding optional.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A pull's progress over all its layers: bytes downloaded plus bytes extracted, over twice the
/// bytes of the layers being fetched (layers already present count for nothing). The reported
/// percentage never goes down, although layer sizes become known one by one.
#[derive(Default)]
struct PullProgress {
    layers: BTreeMap<String, LayerProgress>,
    reported: u64,
}

#[derive(Clone, Copy, Default)]
struct LayerProgress {
    total: u64,
    downloaded: u64,
    extracted: u64,
}

impl PullProgress {
    fn update(&mut self, info: &CreateImageInfo) {
        let (Some(id), Some(status)) = (&info.id, &info.status) else {
            return;
        };
        let detail = info.progress_detail.as_ref();
        let current = detail.and_then(|d| d.current).unwrap_or(0).max(0) as u64;
        let total = detail.and_then(|d| d.total).unwrap_or(0).max(0) as u64;
        let layer = || LayerProgress::default();
        match status.as_str() {
            "Downloading" => {
                let l = self.layers.entry(id.clone()).or_insert_with(layer);
                l.total = l.total.max(total);
                l.downloaded = current.min(l.total);
            }
            "Verifying Checksum" | "Download complete" => {
                if let Some(l) = self.layers.get_mut(id) {
                    l.downloaded = l.total;
                }
            }
            "Extracting" => {
                let l = self.layers.entry(id.clone()).or_insert_with(layer);
                l.total = l.total.max(total);
                l.downloaded = l.total;
                l.extracted = current.min(l.total);
            }
            "Pull complete" => {
                if let Some(l) = self.layers.get_mut(id) {
                    l.downloaded = l.total;
                    l.extracted = l.total;
                }
            }
            _ => {}
        }
    }

    fn percent(&mut self) -> u64 {
        let (done, all) = self.layers.values().fold((0u64, 0u64), |(done, all), l| {
            (done + l.downloaded + l.extracted, all + 2 * l.total)
        });
        let percent = (done * 100).checked_div(all).unwrap_or(0).min(100);
        self.reported = self.reported.max(percent);
        self.reported
    }
}

/// Unix time in nanoseconds of an RFC 3339 timestamp as docker writes it
/// (`2026-11-25T12:52:43.44186225Z`, or with a `+01:00` offset).
fn parse_rfc3339_nanos(text: &str) -> Option<i64> {
    let (date, rest) = text.split_once('T')?;
    let mut parts = date.splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    let (clock, offset_secs) = match rest.strip_suffix(['Z', 'z']) {
        Some(clock) => (clock, 0),
        None => {
            let at = rest.rfind(['+', '-'])?;
            let (clock, offset) = rest.split_at(at);
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let (h, m) = offset[1..].split_once(':')?;
            (
                clock,
                sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60),
            )
        }
    };
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut hms = hms.splitn(3, ':');
    let hour: i64 = hms.next()?.parse().ok()?;
    let minute: i64 = hms.next()?.parse().ok()?;
    let second: i64 = hms.next()?.parse().ok()?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut nanos: i64 = 0;
    for i in 0..9 {
        nanos = nanos * 10
            + fraction
                .as_bytes()
                .get(i)
                .map_or(0, |b| i64::from(b - b'0'));
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Docker's `since` parameter: `seconds.nanoseconds`.
fn since_param(nanos: i64) -> String {
    format!(
        "{}.{:09}",
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000)
    )
}

/// An error with its causes, `: `-separated (bollard's connection errors say little on top).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_reference_defaults_to_latest_and_keeps_registry_ports() {
        let cases = [
            ("busybox", "busybox", Some("latest")),
            ("busybox:1.36", "busybox", Some("1.36")),
            (
                "127.0.0.1:5000/shoal-test/httpd",
                "127.0.0.1:5000/shoal-test/httpd",
                Some("latest"),
            ),
            (
                "127.0.0.1:5000/shoal-test/httpd:1",
                "127.0.0.1:5000/shoal-test/httpd",
                Some("1"),
            ),
            ("busybox@sha256:abcd", "busybox@sha256:abcd", None),
        ];
        for (image, repo, tag) in cases {
            assert_eq!(
                pull_reference(image),
                (repo.to_string(), tag.map(str::to_string)),
                "{image}"
            );
        }
    }

    #[test]
    fn registry_host_follows_docker_rules() {
        assert_eq!(registry_host("busybox"), "docker.io");
        assert_eq!(registry_host("library/busybox:1"), "docker.io");
        assert_eq!(registry_host("ghcr.io/org/app:2"), "ghcr.io");
        assert_eq!(registry_host("127.0.0.1:5000/x/y:1"), "127.0.0.1:5000");
        assert_eq!(registry_host("localhost/x"), "localhost");
    }

    #[test]
    fn credentials_come_from_the_matching_auths_entry() {
        // base64("alice:s3cr:et") and base64("bob:pw")
        let config = r#"{
            "auths": {
                "https://index.docker.io/v1/": { "auth": "Ym9iOnB3" },
                "registry.example.com:5000": { "auth": "YWxpY2U6czNjcjpldA==" },
                "token.example.com": { "identitytoken": "tok" }
            },
            "credsStore": "desktop"
        }"#;
        let private = credentials_from_config(config, "registry.example.com:5000")
            .unwrap()
            .unwrap();
        assert_eq!(private.username.as_deref(), Some("alice"));
        assert_eq!(private.password.as_deref(), Some("s3cr:et"));
        assert_eq!(
            private.serveraddress.as_deref(),
            Some("registry.example.com:5000")
        );
        let hub = credentials_from_config(config, "docker.io")
            .unwrap()
            .unwrap();
        assert_eq!(hub.username.as_deref(), Some("bob"));
        let token = credentials_from_config(config, "token.example.com")
            .unwrap()
            .unwrap();
        assert_eq!(token.identitytoken.as_deref(), Some("tok"));
        assert!(
            credentials_from_config(config, "other.example.com")
                .unwrap()
                .is_none()
        );
        assert!(
            credentials_from_config("{}", "docker.io")
                .unwrap()
                .is_none()
        );
        assert!(credentials_from_config("not json", "docker.io").is_err());
    }

    #[test]
    fn base64_decodes_padded_and_unpadded_text() {
        assert_eq!(base64_decode("Ym9iOnB3").unwrap(), b"bob:pw");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YWI").unwrap(), b"ab");
        assert!(base64_decode("a*b").is_none());
    }

    #[test]
    fn rfc3339_timestamps_parse_to_unix_nanos() {
        assert_eq!(parse_rfc3339_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_nanos("2026-11-25T12:52:43.44186225Z"),
            Some(1_795_611_163_441_862_250)
        );
        assert_eq!(
            parse_rfc3339_nanos("2026-11-25T13:52:43.44186225+01:00"),
            parse_rfc3339_nanos("2026-11-25T12:52:43.44186225Z")
        );
        assert_eq!(
            parse_rfc3339_nanos("2000-02-29T00:00:01-00:30"),
            Some(951_784_201_000_000_000)
        );
        assert_eq!(parse_rfc3339_nanos("yesterday"), None);
        assert_eq!(
            since_param(1_795_611_163_441_862_250),
            "1795611163.441862250"
        );
    }

    #[test]
    fn pull_progress_aggregates_layers_and_never_goes_down() {
        let event = |id: &str, status: &str, current: i64, total: i64| CreateImageInfo {
            id: Some(id.to_string()),
            status: Some(status.to_string()),
            progress_detail: Some(bollard::models::ProgressDetail {
                current: Some(current),
                total: Some(total),
            }),
            ..Default::default()
        };
        let mut p = PullProgress::default();
        p.update(&event("a", "Already exists", 0, 0));
        p.update(&event("b", "Downloading", 50, 100));
        assert_eq!(p.percent(), 25);
        // A second layer's size becomes known: the raw ratio drops, the report does not.
        p.update(&event("c", "Downloading", 0, 300));
        assert_eq!(p.percent(), 25);
        p.update(&event("b", "Pull complete", 0, 0));
        p.update(&event("c", "Extracting", 150, 300));
        assert_eq!(p.percent(), (200 + 300 + 150) * 100 / 800);
        p.update(&event("c", "Pull complete", 0, 0));
        assert_eq!(p.percent(), 100);
    }

    #[test]
    fn allocated_port_is_read_from_docker_messages() {
        let bind = "driver failed programming external connectivity on endpoint shoal-web-0-1 \
                    (abc): Bind for 0.0.0.0:8080 failed: port is already allocated";
        assert_eq!(allocated_port(bind).as_deref(), Some("8080"));
        let listen = "driver failed programming external connectivity on endpoint x (y): \
                      Error starting userland proxy: listen tcp4 0.0.0.0:9090: bind: address already in use";
        assert_eq!(allocated_port(listen).as_deref(), Some("9090"));
        assert_eq!(allocated_port("something else"), None);
    }

    #[test]
    fn identity_and_port_names_come_from_labels() {
        let labels: HashMap<String, String> = [
            (LABEL_SERVICE, "web"),
            (LABEL_SLOT, "2"),
            (LABEL_EPOCH, "7"),
            (LABEL_REVISION, "3.a1f3"),
            (LABEL_PORTS, "http=8080,metrics=9090"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (key, revision) = parse_identity(&labels).unwrap();
        assert_eq!(key.name(), "shoal-web-2-7");
        assert_eq!(revision, RevisionId("3.a1f3".into()));
        assert_eq!(
            port_names(&labels),
            vec![("http".into(), 8080), ("metrics".into(), 9090)]
        );

        let mut bad = labels.clone();
        bad.insert(LABEL_SLOT.into(), "two".into());
        assert!(parse_identity(&bad).unwrap_err().contains(LABEL_SLOT));
        bad.remove(LABEL_EPOCH);
        assert!(parse_identity(&bad).is_err());
    }

    #[test]
    fn recent_ids_are_bounded_and_taken_once() {
        let mut ids = RecentIds::default();
        for i in 0..RECENT_IDS + 10 {
            ids.insert(i.to_string());
        }
        assert!(!ids.take("0"), "the oldest ids are forgotten");
        assert!(ids.take(&(RECENT_IDS + 9).to_string()));
        assert!(!ids.take(&(RECENT_IDS + 9).to_string()));
        assert!(ids.set.len() <= RECENT_IDS && ids.order.len() == ids.set.len());
    }

    #[test]
    fn daemon_errors_say_whether_retrying_helps() {
        let server = |status_code: u16, message: &str| BollardError::DockerResponseServerError {
            status_code,
            message: message.to_string(),
        };
        assert!(matches!(
            daemon_error("x", server(409, "conflict")),
            DriverError::Rejected { .. }
        ));
        assert!(matches!(
            daemon_error("x", server(400, "bad")),
            DriverError::Rejected { .. }
        ));
        assert!(matches!(
            daemon_error("x", server(500, "boom")),
            DriverError::Unavailable { .. }
        ));
        assert!(matches!(
            daemon_error(
                "x",
                server(
                    500,
                    "OCI runtime create failed: exec: \"nope\": executable file not found in $PATH"
                )
            ),
            DriverError::Rejected { .. }
        ));
        assert!(matches!(
            daemon_error("x", BollardError::RequestTimeoutError),
            DriverError::Unavailable { .. }
        ));
        let taken = start_error(
            "shoal-web-0-1",
            &[],
            server(
                500,
                "Bind for 0.0.0.0:8080 failed: port is already allocated",
            ),
        );
        assert!(
            matches!(&taken, DriverError::Rejected { reason } if reason.contains("host port 8080"))
        );
    }
}
