//! The runtime worker: executes `RuntimeCommand`s on the drivers, concurrently but bounded, and
//! turns the results into `RuntimeEvent`s for the node loop. It never decides anything.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tracing::{info, warn};

use super::config::AgentConfig;
use crate::ids::InstanceKey;
use crate::runtime::process::ProcessDriver;
use crate::runtime::{DriverError, Owner, Runtime, RuntimeCommand, RuntimeEvent};
use crate::spec::DriverKind;

/// At most this many driver calls run at once.
const MAX_IN_FLIGHT: usize = 16;

/// The drivers this node offers.
#[derive(Clone)]
pub struct Drivers {
    pub process: Option<Arc<ProcessDriver>>,
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
            Some(Arc::new(ProcessDriver::new(
                &cfg.data_dir,
                owner.clone(),
                advertise_host.clone(),
            )?))
        } else {
            None
        };
        if want(DriverKind::Docker) {
            info!("docker driver not available in this build; using the process driver");
        }
        Ok(Drivers { process })
    }

    pub fn kinds(&self) -> BTreeSet<DriverKind> {
        let mut k = BTreeSet::new();
        if self.process.is_some() {
            k.insert(DriverKind::Process);
        }
        k
    }

    /// Starts every driver's watch for instances that end on their own.
    pub async fn watch(&self, events: mpsc::Sender<RuntimeEvent>) {
        if let Some(p) = &self.process {
            if let Err(e) = p.watch(events.clone()).await {
                warn!(error = %e, "cannot watch process instances; relying on periodic listing");
            }
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
        match kind {
            DriverKind::Process => match &self.process {
                Some(p) => p.logs(key, follow, tail).await,
                None => Err(Self::missing(kind)),
            },
            DriverKind::Docker => Err(Self::missing(kind)),
        }
    }

    async fn execute(
        &self,
        cmd: RuntimeCommand,
        events: &mpsc::Sender<RuntimeEvent>,
    ) -> Option<RuntimeEvent> {
        match cmd {
            RuntimeCommand::Start(spec) => {
                let key = spec.key.clone();
                let result = match spec.driver() {
                    DriverKind::Process => match &self.process {
                        Some(p) => p.start(&spec, events).await,
                        None => Err(Self::missing(DriverKind::Process)),
                    },
                    DriverKind::Docker => Err(Self::missing(DriverKind::Docker)),
                };
                Some(match result {
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
                })
            }
            RuntimeCommand::Stop {
                key,
                driver,
                grace_ms,
            } => {
                let result = match driver {
                    DriverKind::Process => match &self.process {
                        Some(p) => p.stop(&key, grace_ms).await,
                        None => Err(Self::missing(driver)),
                    },
                    DriverKind::Docker => Err(Self::missing(driver)),
                };
                Some(match result {
                    Ok(()) => RuntimeEvent::Stopped { key },
                    Err(e) => RuntimeEvent::StopFailed {
                        key,
                        error: e.to_string(),
                    },
                })
            }
            RuntimeCommand::List { driver } => {
                let result = match driver {
                    DriverKind::Process => match &self.process {
                        Some(p) => p.list().await,
                        None => Err(Self::missing(driver)),
                    },
                    DriverKind::Docker => Err(Self::missing(driver)),
                };
                match result {
                    Ok(instances) => Some(RuntimeEvent::Listed { driver, instances }),
                    Err(e) => {
                        warn!(driver = ?driver, error = %e, "listing failed");
                        None
                    }
                }
            }
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
