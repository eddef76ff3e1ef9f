//! The docker driver against a real daemon: what a started container looks like from docker's
//! side, exits and OOM kills seen by the watch, the ownership rule, image errors and pulls.
//!
//! Every test says why it did not run when the daemon (or busybox, or docker-registry) is
//! missing, and fails instead under `CI=true`. The generic runtime conformance suite runs in
//! `docker_conformance.rs`; these tests do not depend on it.

#[path = "support/docker_images.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, RemoveImageOptionsBuilder,
};
use shoal::ids::InstanceKey;
use shoal::runtime::docker::DockerDriver;
use shoal::runtime::{DriverError, ExitInfo, Handle, ObservedStatus, Owner, Runtime, RuntimeEvent};
use shoal::spec::{PortSpec, Resources};
use support::{TEST_IMAGE, TestBed, instance, test_bed, wait_for};
use tokio::sync::mpsc;

const EVENT_WAIT: Duration = Duration::from_secs(30);

async fn driver(bed: &TestBed) -> DockerDriver {
    DockerDriver::connect(bed.owner.clone(), "127.0.0.1".into())
        .await
        .expect("connect to docker")
}

fn container_id(handle: &Handle) -> &str {
    match handle {
        Handle::Container { id } => id,
        other => panic!("docker driver returned {other:?}"),
    }
}

/// Collects a log stream until it ends (or 10 s pass) as text.
async fn read_logs(mut rx: mpsc::Receiver<Vec<u8>>) -> String {
    let mut text = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = rx.recv().await {
            text.extend(chunk);
        }
    })
    .await;
    String::from_utf8_lossy(&text).into_owned()
}

/// Waits until the instance's log contains `text`.
async fn wait_for_output(driver: &DockerDriver, key: &InstanceKey, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = read_logs(driver.logs(key, false, None).await.expect("logs")).await;
        if logs.contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "instance {key} never printed {text:?}: {logs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn deployed_container_has_labels_limits_and_answers_http() {
    let Some(bed) = test_bed(
        "deployed_container_has_labels_limits_and_answers_http",
        "http",
    )
    .await
    else {
        return;
    };
    let driver = driver(&bed).await;
    let (events, _rx) = mpsc::channel(64);
    let key = bed.key(&bed.service("web"), 0, 1);
    let mut spec = support::http_instance(&bed.owner, &key);
    spec.spec.resources = Resources {
        cpu_millis: 250,
        memory_bytes: 64 << 20,
    };
    spec.spec.env.insert("GREETING".into(), "hello".into());

    let observed = driver.start(&spec, &events).await.expect("start");
    assert_eq!(observed.key, key);
    assert_eq!(observed.status, ObservedStatus::Running);
    let host_port = observed.ports["http"];
    assert_ne!(host_port, 0);
    assert_eq!(observed.endpoint, Some(format!("127.0.0.1:{host_port}")));
    let id = container_id(&observed.handle).to_string();

    let inspected = bed
        .docker
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
        .expect("inspect the started container");
    assert_eq!(
        inspected.name.as_deref(),
        Some(format!("/{}", key.name()).as_str())
    );
    let labels = inspected
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    for (label, value) in spec.labels() {
        assert_eq!(labels.get(&label), Some(&value), "label {label}");
    }
    let env = inspected
        .config
        .as_ref()
        .and_then(|c| c.env.clone())
        .unwrap_or_default();
    for expected in [
        "GREETING=hello".to_string(),
        format!("SHOAL_SERVICE={}", key.slot.service),
        "SHOAL_SLOT=0".to_string(),
        "SHOAL_EPOCH=1".to_string(),
        "SHOAL_REVISION=1.test".to_string(),
    ] {
        assert!(env.contains(&expected), "env {env:?} lacks {expected}");
    }
    let host = inspected.host_config.expect("host config");
    assert_eq!(host.nano_cpus, Some(250_000_000));
    assert_eq!(host.memory, Some(64 << 20));
    let restart = host
        .restart_policy
        .and_then(|p| p.name)
        .map(|n| n.to_string());
    assert!(
        matches!(restart.as_deref(), Some("no") | Some("")),
        "restart policy {restart:?}"
    );

    let response = support::http_get(observed.endpoint.as_deref().unwrap())
        .await
        .unwrap();
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    assert!(response.contains(support::INDEX_HTML.trim()), "{response}");

    // Starting what runs reports the same container; list agrees.
    let again = driver.start(&spec, &events).await.expect("second start");
    assert_eq!(again.handle, observed.handle);
    assert_eq!(again.endpoint, observed.endpoint);
    let listed = driver.list().await.expect("list");
    assert_eq!(listed, vec![observed.clone()]);

    // Stopping removes it; stopping again, or what never existed, succeeds.
    driver.stop(&key, 1_000).await.expect("stop");
    driver.stop(&key, 1_000).await.expect("second stop");
    driver
        .stop(&bed.key(&bed.service("never"), 0, 1), 1_000)
        .await
        .expect("stop of nothing");
    assert!(driver.list().await.expect("list after stop").is_empty());
    let gone = bed
        .docker
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await;
    assert!(gone.is_err(), "container still exists after stop");
}

#[tokio::test]
async fn oom_kill_is_reported() {
    let Some(bed) = test_bed("oom_kill_is_reported", "oom").await else {
        return;
    };
    let driver = driver(&bed).await;
    let (events, mut rx) = mpsc::channel(64);
    driver.watch(events.clone()).await.expect("watch");

    let key = bed.key(&bed.service("hog"), 0, 1);
    // busybox tail keeps the whole (newline-free) input in memory: it grows until killed.
    let mut spec = bed.sh(&key, "exec tail /dev/zero");
    spec.spec.resources.memory_bytes = 8 << 20;
    driver.start(&spec, &events).await.expect("start");

    let exited = wait_for(
        &mut rx,
        EVENT_WAIT,
        |e| matches!(e, RuntimeEvent::Exited { key: k, .. } if *k == key),
    )
    .await
    .expect("an Exited event for the instance");
    let RuntimeEvent::Exited { exit, .. } = exited else {
        unreachable!()
    };
    assert!(
        exit.oom_killed,
        "exit {exit:?} is not marked as an OOM kill"
    );
    assert!(!exit.success());

    let listed = driver.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(
        matches!(
            &listed[0].status,
            ObservedStatus::Exited(ExitInfo {
                oom_killed: true,
                ..
            })
        ),
        "listed as {:?}",
        listed[0].status
    );
}

#[tokio::test]
async fn exit_code_is_reported_and_a_restart_replaces_the_exited_container() {
    let Some(bed) = test_bed(
        "exit_code_is_reported_and_a_restart_replaces_the_exited_container",
        "exit",
    )
    .await
    else {
        return;
    };
    let driver = driver(&bed).await;
    let (events, mut rx) = mpsc::channel(64);
    driver.watch(events.clone()).await.expect("watch");

    let key = bed.key(&bed.service("job"), 0, 1);
    let spec = bed.sh(&key, "sleep 1; exit 3");
    let first = driver.start(&spec, &events).await.expect("start");
    let exited = wait_for(
        &mut rx,
        EVENT_WAIT,
        |e| matches!(e, RuntimeEvent::Exited { key: k, .. } if *k == key),
    )
    .await
    .expect("an Exited event");
    let expected = ExitInfo {
        code: Some(3),
        signal: None,
        oom_killed: false,
    };
    assert_eq!(
        exited,
        RuntimeEvent::Exited {
            key: key.clone(),
            exit: expected.clone()
        }
    );
    let listed = driver.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, ObservedStatus::Exited(expected));
    assert_eq!(listed[0].handle, first.handle);

    // The reconciler restarts by starting the same key again: the stale container is replaced.
    let second = driver.start(&spec, &events).await.expect("start again");
    assert_ne!(second.handle, first.handle);
    assert_eq!(driver.list().await.expect("list").len(), 1);
}

#[tokio::test]
async fn stop_kills_an_instance_that_ignores_sigterm_after_the_grace_period() {
    let Some(bed) = test_bed(
        "stop_kills_an_instance_that_ignores_sigterm_after_the_grace_period",
        "term",
    )
    .await
    else {
        return;
    };
    let driver = driver(&bed).await;
    let (events, mut rx) = mpsc::channel(64);
    driver.watch(events.clone()).await.expect("watch");

    let key = bed.key(&bed.service("stubborn"), 0, 1);
    let spec = bed.sh(
        &key,
        "trap '' TERM; echo hello from shoal; while true; do sleep 1; done",
    );
    driver.start(&spec, &events).await.expect("start");
    // Let the shell install its trap before it is signalled.
    wait_for_output(&driver, &key, "hello from shoal").await;

    let stopping = Instant::now();
    driver.stop(&key, 1_500).await.expect("stop");
    let took = stopping.elapsed();
    assert!(
        took >= Duration::from_millis(1_400),
        "stop returned after {took:?}, before the grace period"
    );
    assert!(driver.list().await.expect("list").is_empty());
    // The driver stopped it: that is not an exit on its own.
    let exited = wait_for(&mut rx, Duration::from_secs(2), |e| {
        matches!(e, RuntimeEvent::Exited { .. })
    })
    .await;
    assert_eq!(exited, None);
}

#[tokio::test]
async fn sigterm_reaches_a_workload_without_a_handler_so_stop_is_prompt() {
    let Some(bed) = test_bed(
        "sigterm_reaches_a_workload_without_a_handler_so_stop_is_prompt",
        "prompt",
    )
    .await
    else {
        return;
    };
    let driver = driver(&bed).await;
    let (events, _rx) = mpsc::channel(64);
    let key = bed.key(&bed.service("sleeper"), 0, 1);
    // `sleep` installs no SIGTERM handler; as PID 1 it would ignore SIGTERM and only die at
    // the SIGKILL after the grace period. The driver's init makes it die at SIGTERM.
    driver
        .start(
            &bed.sh(&key, "echo hello from shoal; exec sleep 1000"),
            &events,
        )
        .await
        .expect("start");
    wait_for_output(&driver, &key, "hello from shoal").await;
    let grace = Duration::from_secs(30);
    let stopping = Instant::now();
    driver
        .stop(&key, grace.as_millis() as u64)
        .await
        .expect("stop");
    let took = stopping.elapsed();
    assert!(
        took < grace / 2,
        "stop took {took:?}: SIGTERM did not end the instance"
    );
    assert!(driver.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn logs_return_what_the_instance_printed_and_follow_new_output() {
    let Some(bed) = test_bed(
        "logs_return_what_the_instance_printed_and_follow_new_output",
        "logs",
    )
    .await
    else {
        return;
    };
    let driver = driver(&bed).await;
    let (events, _rx) = mpsc::channel(64);
    let key = bed.key(&bed.service("talker"), 0, 1);
    let spec = bed.sh(&key, "echo one; echo two >&2; echo three; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done");
    driver.start(&spec, &events).await.expect("start");

    // Once it has printed a few lines, following with a tail of 1 starts at the latest line.
    wait_for_output(&driver, &key, "tick 2\n").await;
    let mut followed = driver.logs(&key, true, Some(1)).await.expect("follow logs");
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.matches("tick").count() < 3 && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(2), followed.recv()).await {
            Ok(Some(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(None) => break,
            Err(_) => {}
        }
    }
    assert!(seen.matches("tick").count() >= 3, "followed {seen:?}");
    assert!(!seen.contains("one"), "tail 1 returned old lines: {seen:?}");
    drop(followed);

    let all = read_logs(driver.logs(&key, false, None).await.expect("logs")).await;
    for line in ["one\n", "two\n", "three\n", "tick 1\n"] {
        assert!(all.contains(line), "logs {all:?} lack {line:?}");
    }

    let missing = driver
        .logs(&bed.key(&bed.service("nobody"), 0, 1), false, None)
        .await;
    assert!(
        matches!(missing, Err(DriverError::Rejected { .. })),
        "{missing:?}"
    );
}

#[tokio::test]
async fn foreign_container_is_never_listed_or_stopped() {
    let Some(bed) = test_bed("foreign_container_is_never_listed_or_stopped", "foreign").await
    else {
        return;
    };
    let driver = driver(&bed).await;
    let (events, _rx) = mpsc::channel(64);

    // One container squats the name of an instance of ours without any label; another carries
    // our cluster's labels but another node's.
    let squatted = bed.key(&bed.service("squat"), 0, 1);
    let other_node = Owner {
        cluster: bed.owner.cluster.clone(),
        node: shoal::ids::NodeId(format!("other-{}", bed.suffix).into()),
    };
    let neighbour = bed.key(&bed.service("neighbour"), 0, 1);
    let neighbour_spec = bed.sh(&neighbour, "exec sleep 1000");
    let mut foreign = Vec::new();
    for (name, labels) in [
        (squatted.name(), HashMap::new()),
        (
            neighbour.name(),
            neighbour_spec
                .labels()
                .into_iter()
                .chain([("shoal.node".to_string(), other_node.node.0.to_string())])
                .collect(),
        ),
    ] {
        bed.cleanup.container(&name);
        let body = bollard::models::ContainerCreateBody {
            image: Some(TEST_IMAGE.into()),
            cmd: Some(support::sh("exec sleep 1000")),
            labels: Some(labels),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = bed
            .docker
            .create_container(Some(options), body)
            .await
            .expect("create foreign container");
        bed.docker
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .expect("start foreign container");
        foreign.push(created.id);
    }

    // One instance of our own, so the listing is not trivially empty.
    let ours = bed.key(&bed.service("ours"), 0, 1);
    driver
        .start(&bed.sh(&ours, "exec sleep 1000"), &events)
        .await
        .expect("start ours");

    let listed = driver.list().await.expect("list");
    assert_eq!(
        listed.iter().map(|o| o.key.clone()).collect::<Vec<_>>(),
        vec![ours.clone()]
    );

    let refused = driver
        .start(&bed.sh(&squatted, "exec sleep 1000"), &events)
        .await;
    assert!(
        matches!(refused, Err(DriverError::Rejected { .. })),
        "{refused:?}"
    );

    for key in [&squatted, &neighbour, &ours] {
        driver.stop(key, 0).await.expect("stop");
    }
    for id in &foreign {
        let c = bed
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .expect("foreign container still exists");
        assert_eq!(
            c.state.and_then(|s| s.running),
            Some(true),
            "foreign container {id} no longer runs"
        );
    }
    assert!(driver.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn missing_image_gives_image_not_found_without_panicking() {
    let Some(bed) = test_bed(
        "missing_image_gives_image_not_found_without_panicking",
        "missing",
    )
    .await
    else {
        return;
    };
    let driver = driver(&bed).await;
    let (events, _rx) = mpsc::channel(64);
    // Nothing listens on 127.0.0.1 port 9 (discard): the pull fails at once, no network needed.
    let pid = std::process::id();
    for image in [
        format!("127.0.0.1:9/shoal-test/missing:{pid}"),
        "Not A Valid Reference".to_string(),
    ] {
        let key = bed.key(&bed.service("ghost"), 0, 1);
        let spec = instance(&bed.owner, &key, &image, None);
        match driver.start(&spec, &events).await {
            Err(DriverError::ImageNotFound {
                image: reported,
                reason,
            }) => {
                assert_eq!(reported, image);
                assert!(!reason.is_empty());
            }
            other => panic!("start of {image} gave {other:?}"),
        }
    }
    assert!(driver.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn fixed_host_port_conflict_is_rejected_naming_the_port() {
    let Some(bed) = test_bed(
        "fixed_host_port_conflict_is_rejected_naming_the_port",
        "port",
    )
    .await
    else {
        return;
    };
    let driver = driver(&bed).await;
    let (events, _rx) = mpsc::channel(64);
    let port = support::free_port();
    let spec_on = |slot: u32| {
        let mut spec = support::http_instance(&bed.owner, &bed.key(&bed.service("fixed"), slot, 1));
        spec.spec.ports = vec![PortSpec {
            name: "http".into(),
            container: Some(8080),
            host: Some(port),
        }];
        spec
    };
    let first = driver
        .start(&spec_on(0), &events)
        .await
        .expect("first start");
    assert_eq!(first.endpoint, Some(format!("127.0.0.1:{port}")));

    match driver.start(&spec_on(1), &events).await {
        Err(DriverError::Rejected { reason }) => {
            assert!(reason.contains(&port.to_string()), "{reason}")
        }
        other => panic!("second instance on port {port} gave {other:?}"),
    }
    // The failed instance leaves nothing behind.
    let listed = driver.list().await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
}

#[tokio::test]
async fn pull_from_local_registry_reports_progress() {
    const TEST: &str = "pull_from_local_registry_reports_progress";
    let Some(bed) = test_bed(TEST, "pull").await else {
        return;
    };
    let Some(registry) = support::Registry::start(TEST).await else {
        return;
    };

    // An image with a layer of its own, so the pull really downloads something.
    let repo = format!("{}/shoal-test/httpd", registry.address);
    let image = format!("{repo}:1");
    bed.cleanup.image(&image);
    let context = support::tar(&[
        (
            "Dockerfile",
            format!("FROM {TEST_IMAGE}\nCOPY blob /blob\n").as_bytes(),
            0o644,
        ),
        (
            "blob",
            &support::incompressible(4 << 20, u64::from(std::process::id())),
            0o644,
        ),
    ]);
    support::build_image(&bed.docker, &image, context)
        .await
        .expect("build the image to push");
    registry.push(&bed.docker, &repo, "1").await.expect("push");
    let options = RemoveImageOptionsBuilder::new().force(true).build();
    bed.docker
        .remove_image(&image, Some(options), None)
        .await
        .expect("remove the local copy");

    let driver = driver(&bed).await;
    let (events, mut rx) = mpsc::channel(256);
    let key = bed.key(&bed.service("pulled"), 0, 1);
    let mut spec = support::http_instance(&bed.owner, &key);
    spec.spec.workload = shoal::spec::Workload::Image {
        image: image.clone(),
        command: Some(
            ["httpd", "-f", "-p", "8080", "-h", "/www"]
                .map(String::from)
                .to_vec(),
        ),
    };
    let observed = driver
        .start(&spec, &events)
        .await
        .expect("start pulls the image");
    assert_eq!(observed.status, ObservedStatus::Running);

    let mut progress = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let RuntimeEvent::Progress { key: k, status } = event {
            assert_eq!(k, key);
            progress.push(status);
        }
    }
    eprintln!("progress events: {progress:?}");
    assert!(
        progress
            .iter()
            .all(|s| s.starts_with("pulling ") && s.ends_with('%')),
        "{progress:?}"
    );
    assert_eq!(
        progress.last().map(String::as_str),
        Some("pulling 100%"),
        "{progress:?}"
    );
    let response = support::http_get(observed.endpoint.as_deref().unwrap())
        .await
        .unwrap();
    assert!(response.contains(support::INDEX_HTML.trim()), "{response}");
    drop(registry);
}

#[tokio::test]
async fn capacity_is_what_docker_info_reports() {
    let Some(bed) = test_bed("capacity_is_what_docker_info_reports", "cap").await else {
        return;
    };
    let driver = driver(&bed).await;
    let info = bed.docker.info().await.expect("docker info");
    let (cpu_millis, memory_bytes) = driver.capacity().await.expect("capacity");
    assert_eq!(cpu_millis, info.ncpu.unwrap() as u64 * 1000);
    assert_eq!(memory_bytes, info.mem_total.unwrap() as u64);
}

#[tokio::test]
async fn connect_reports_unavailable_when_no_daemon_answers() {
    let owner = Owner {
        cluster: "test".into(),
        node: shoal::ids::NodeId("node".into()),
    };
    let closed = format!("tcp://127.0.0.1:{}", support::free_port());
    for host in ["unix:///nonexistent/docker.sock", closed.as_str()] {
        match DockerDriver::connect_to(host, owner.clone(), "127.0.0.1".into()).await {
            Err(DriverError::Unavailable { reason }) => assert!(reason.contains(host), "{reason}"),
            Err(other) => panic!("connect to {host} gave {other:?}"),
            Ok(_) => panic!("connect to {host} succeeded"),
        }
    }
}

#[test]
fn support_tar_headers_carry_a_valid_checksum() {
    let archive = support::tar(&[("a.txt", b"hello", 0o644)]);
    assert_eq!(archive.len(), 512 + 512 + 1024);
    let header = &archive[..512];
    let stored = u32::from_str_radix(std::str::from_utf8(&header[148..154]).unwrap(), 8).unwrap();
    let computed: u32 = header
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(b)
            }
        })
        .sum();
    assert_eq!(stored, computed);
    assert_eq!(&archive[512..517], b"hello");
}

#[test]
fn support_elf_check_tells_a_dynamic_executable() {
    // This test binary is linked dynamically (Rust's default on glibc).
    let this = std::fs::read("/proc/self/exe").expect("read this test binary");
    assert_eq!(support::has_interpreter(&this), Ok(true));
    assert!(support::has_interpreter(b"#!/bin/sh\n").is_err());
}
