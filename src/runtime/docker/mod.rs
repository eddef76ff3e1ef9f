//! The docker driver: runs `image` workloads as containers through the Docker Engine API.
//!
//! This folder is the only place in the crate that imports `bollard`; none of its types cross the
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
//!
//! This file holds the driver (connection, owner labels, inspect) and the `Runtime` impl, which
//! routes to the parts:
//! - `lifecycle`: create, start, stop, remove, list and adopt containers, and their logs;
//! - `events`: the watch that turns the daemon's `die`/`oom` events into exits;
//! - `pull`: image pulls with progress;
//! - `auth`: registry credentials from the docker CLI's config file.

mod auth;
mod events;
mod lifecycle;
mod pull;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::InspectContainerOptions;
use tokio::sync::mpsc;
use tracing::info;

use self::events::{RecentIds, lock};
use super::{DriverError, InstanceSpec, Observed, Owner, Runtime, RuntimeEvent};
use crate::ids::InstanceKey;
use crate::spec::DriverKind;

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
    }
}
