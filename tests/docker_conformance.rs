//! The runtime conformance suite (`shoal::runtime::conformance`) against the docker driver, with
//! the suite's workloads expressed as busybox commands in the locally built test image.
//!
//! Says why it did not run when docker or busybox is missing, and fails instead under `CI=true`.

#[path = "support/docker_images.rs"]
mod support;

use shoal::ids::{InstanceKey, NodeId};
use shoal::runtime::conformance::{Fixture, instance_spec, run_all};
use shoal::runtime::docker::DockerDriver;
use shoal::runtime::{InstanceSpec, Owner};
use shoal::spec::{PortSpec, Workload};

/// The suite's workloads as busybox commands.
struct BusyboxFixture {
    owner: Owner,
}

impl BusyboxFixture {
    fn sh(&self, key: InstanceKey, script: &str) -> InstanceSpec {
        let workload = Workload::Image {
            image: support::TEST_IMAGE.into(),
            command: Some(support::sh(script)),
        };
        instance_spec(&self.owner, key, workload, Vec::new())
    }
}

impl Fixture for BusyboxFixture {
    fn long_running(&self, key: InstanceKey) -> InstanceSpec {
        self.sh(key, "echo hello from shoal; exec sleep 1000")
    }

    fn exits_with(&self, key: InstanceKey, code: i32) -> InstanceSpec {
        self.sh(key, &format!("exit {code}"))
    }

    fn ignores_sigterm(&self, key: InstanceKey) -> InstanceSpec {
        self.sh(
            key,
            "trap '' TERM; echo hello from shoal; while true; do sleep 1; done",
        )
    }

    fn serves_http(&self, key: InstanceKey) -> Option<InstanceSpec> {
        let workload = Workload::Image {
            image: support::TEST_IMAGE.into(),
            command: Some(
                ["httpd", "-f", "-p", "8080", "-h", "/www"]
                    .map(String::from)
                    .to_vec(),
            ),
        };
        let ports = vec![PortSpec {
            name: "http".into(),
            container: Some(8080),
            host: None,
        }];
        Some(instance_spec(&self.owner, key, workload, ports))
    }
}

#[tokio::test]
async fn docker_driver_passes_the_runtime_conformance_suite() {
    const TEST: &str = "docker_driver_passes_the_runtime_conformance_suite";
    let Some(docker) = support::docker_or_skip(TEST).await else {
        return;
    };
    if let Err(why) = support::ensure_test_image(&docker).await {
        support::skip_or_fail(TEST, &why);
        return;
    }
    // The suite names its instances itself (`shoal-conformance-*-0-1`). A fixed owner lets a
    // rerun clear what a killed run left, instead of being refused the names.
    let owner = Owner {
        cluster: "shoal-test-conformance".into(),
        node: NodeId("docker-conformance".into()),
    };
    let _cleanup = support::Cleanup::for_owner(&owner);
    let driver = DockerDriver::connect(owner.clone(), "127.0.0.1".into())
        .await
        .expect("connect to docker");
    run_all(&driver, &BusyboxFixture { owner }).await;
}
