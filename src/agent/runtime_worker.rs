//! The runtime worker: executes `RuntimeCommand`s on the drivers, concurrently but bounded, and
//! turns the results into `RuntimeEvent`s for the node loop. It never decides anything.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tracing::{info, warn};

use super::config::AgentConfig;
use crate::ids::InstanceKey;
use crate::runtime::docker::DockerDriver;
use crate::runtime::process::ProcessDriver;
use crate::runtime::{DriverError, Owner, Runtime, RuntimeCommand, RuntimeEvent};
use crate::spec::DriverKind;

/// At most this many driver calls run at once.
const MAX_IN_FLIGHT: usize = 16;

/// The drivers this node offers.
#[derive(Clone)]
pub struct Drivers {
    pub process: Option<Arc<ProcessDriver>>,
    pub docker: Option<Arc<DockerDriver>>,
}

/// Calls the same method on whichever driver `kind` names, or fails with `missing`.
macro_rules! on_driver {
    ($self:expr, $kind:expr, |$d:ident| $call:expr) => {
        match $kind {
            DriverKind::Process => match &$self.process {
                Some($d) => $call,
                None => Err(Drivers::missing($kind)),
            },
            DriverKind::Docker => match &$self.docker {
                Some($d) => $call,
                None => Err(Drivers::missing($kind)),
            },
        }
    };
}

impl Drivers {
    /// Sets up the drivers the config asks for (all that work, by default).
    pub async fn detect(
        cfg: &AgentConfig,
        owner: Owner,
        advertise_host: String,
    ) -> anyhow::Result<Drivers> {
        let want = |k: DriverKind| cfg.runtimes.is_empty() || cfg.runtimes.contains(&k);
        let process = if want(DriverKind::Process) {
            let driver = ProcessDriver::new(&cfg.data_dir, owner.clone(), advertise_host.clone())?;
            // Majority instances run under `shoal lease-run` of this very binary.
            let driver = match std::env::current_exe() {
                Ok(shoal) => driver
                    .with_lease_runner(shoal, crate::runtime::lease::lease_path(&cfg.data_dir)),
                Err(e) => {
                    warn!(error = %e, "cannot find this binary: majority instances run without their instance-side lease");
                    driver
                }
            };
            Some(Arc::new(driver))
        } else {
            None
        };
        let docker = if want(DriverKind::Docker) {
            match DockerDriver::connect(owner, advertise_host).await {
                Ok(d) => Some(Arc::new(d)),
                Err(e) if cfg.runtimes.contains(&DriverKind::Docker) => {
                    anyhow::bail!(
                        "--runtime docker was asked for, but {e}; start the docker daemon or drop --runtime docker"
                    )
                }
                Err(e) => {
                    info!(reason = %e, "docker is not available; this node offers the process runtime only");
                    None
                }
            }
        } else {
            None
        };
        Ok(Drivers { process, docker })
    }

    pub fn kinds(&self) -> BTreeSet<DriverKind> {
        let mut k = BTreeSet::new();
        if self.process.is_some() {
            k.insert(DriverKind::Process);
        }
        if self.docker.is_some() {
            k.insert(DriverKind::Docker);
        }
        k
    }

    /// Starts every driver's watch for instances that end on their own.
    pub async fn watch(&self, events: mpsc::Sender<RuntimeEvent>) {
        if let Some(p) = &self.process
            && let Err(e) = p.watch(events.clone()).await
        {
            warn!(error = %e, "cannot watch process instances; relying on periodic listing");
        }
        if let Some(d) = &self.docker
            && let Err(e) = d.watch(events.clone()).await
        {
            warn!(error = %e, "cannot watch docker events; relying on periodic listing");
        }
    }

    fn missing(kind: DriverKind) -> DriverError {
        DriverError::Unavailable {
            reason: format!(
                "this node does not offer the {} runtime",
                crate::placement::driver_name(kind)
            ),
        }
    }

    pub async fn logs(
        &self,
        kind: DriverKind,
        key: &InstanceKey,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<mpsc::Receiver<Vec<u8>>, DriverError> {
        on_driver!(self, kind, |d| d.logs(key, follow, tail).await)
    }

    async fn execute(
        &self,
        cmd: RuntimeCommand,
        events: &mpsc::Sender<RuntimeEvent>,
    ) -> Option<RuntimeEvent> {
        match cmd {
            RuntimeCommand::Start(spec) => {
                let key = spec.key.clone();
                Some(
                    match on_driver!(self, spec.driver(), |d| d.start(&spec, events).await) {
                        Ok(o) => RuntimeEvent::Started {
                            key,
                            revision: o.revision,
                            handle: o.handle,
                            endpoint: o.endpoint,
                        },
                        Err(e) => {
                            warn!(instance = %key, error = %e, "start failed");
                            RuntimeEvent::StartFailed {
                                key,
                                retryable: e.retryable(),
                                error: e.to_string(),
                            }
                        }
                    },
                )
            }
            RuntimeCommand::Stop {
                key,
                driver,
                grace_ms,
            } => Some(
                match on_driver!(self, driver, |d| d.stop(&key, grace_ms).await) {
                    Ok(()) => RuntimeEvent::Stopped { key },
                    Err(e) => RuntimeEvent::StopFailed {
                        key,
                        error: e.to_string(),
                    },
                },
            ),
            RuntimeCommand::List { driver } => match on_driver!(self, driver, |d| d.list().await) {
                Ok(instances) => Some(RuntimeEvent::Listed { driver, instances }),
                Err(e) => {
                    warn!(driver = ?driver, error = %e, "listing failed");
                    None
                }
            },
        }
    }
}

/// Runs commands as they come, at most `MAX_IN_FLIGHT` at once.
pub async fn run(
    drivers: Drivers,
    mut commands: mpsc::Receiver<RuntimeCommand>,
    events: mpsc::Sender<RuntimeEvent>,
) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(cmd) = commands.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let drivers = drivers.clone();
        let events = events.clone();
        tokio::spawn(async move {
            if let Some(ev) = drivers.execute(cmd, &events).await {
                let _ = events.send(ev).await;
            }
            drop(permit);
        });
    }
}
