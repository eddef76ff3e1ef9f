//! The life of one container: the create body built from an `InstanceSpec`, start (adopting a
//! running container of ours that already has the name, replacing an exited one), stop and
//! remove, list, logs, and reading an instance's identity back from a container's labels.
//!
//! Deliberately not here: pulling the image (`pull`), the event watch that reports exits
//! (`events`), and any decision about when to start or stop (`reconcile/`).

use std::collections::{BTreeMap, HashMap};
use std::pin::pin;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerState, ContainerStateStatusEnum,
    HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions, StopContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::events::lock;
use super::{
    DockerDriver, LABEL_EPOCH, LABEL_PORTS, LABEL_REVISION, LABEL_SERVICE, LABEL_SLOT,
    daemon_error, error_chain, short_id,
};
use crate::ids::{InstanceKey, RevisionId, SlotId};
use crate::runtime::{
    DriverError, ExitInfo, Handle, InstanceSpec, Observed, ObservedStatus, RuntimeEvent,
};
use crate::spec::{PortSpec, ServiceName, Workload};

/// Added to a stop's grace period for the HTTP request's own timeout (docker answers a stop only
/// once the container is down, and bollard's default request timeout is two minutes).
const STOP_REQUEST_SLACK: Duration = Duration::from_secs(30);
/// Chunks buffered between the docker log stream and the reader of `logs()`.
const LOG_CHANNEL_CHUNKS: usize = 64;

impl DockerDriver {
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

    pub(super) async fn start_instance(
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

    pub(super) async fn stop_instance(
        &self,
        key: &InstanceKey,
        grace_ms: u64,
    ) -> Result<(), DriverError> {
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
    pub(super) async fn list_instances(&self) -> Result<Vec<Observed>, DriverError> {
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

    pub(super) async fn open_logs(
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

/// The instance key and revision from a container's labels (or a docker event's attributes,
/// which carry the labels).
pub(super) fn parse_identity(
    labels: &HashMap<String, String>,
) -> Result<(InstanceKey, RevisionId), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn taken_host_port_is_named_in_the_start_error() {
        let server = |status_code: u16, message: &str| BollardError::DockerResponseServerError {
            status_code,
            message: message.to_string(),
        };
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
