//! `shoal logs` for instances on this node: asks the node loop (through the API channel) where
//! the slot runs, then streams the instance's output from its driver. It does not read or
//! rotate log files itself (the drivers do).

use tokio::sync::{mpsc, oneshot};

use super::Drivers;
use crate::api::{ApiCall, LogSource};
use crate::ids::{InstanceKey, NodeId, SlotId};
use crate::node::api::{ApiErrorKind, PsEntry};
use crate::node::{ApiError, ApiReply, ApiRequest};
use crate::spec::{DriverKind, ServiceName};

/// Serves `shoal logs` for instances on this node.
pub(super) struct AgentLogs {
    pub calls: mpsc::Sender<ApiCall>,
    pub drivers: Drivers,
    pub me: NodeId,
}

impl LogSource for AgentLogs {
    fn logs(
        &self,
        service: String,
        slot: u32,
        follow: bool,
        tail: Option<usize>,
    ) -> futures::future::BoxFuture<'static, Result<mpsc::Receiver<Vec<u8>>, ApiError>> {
        let calls = self.calls.clone();
        let drivers = self.drivers.clone();
        let me = self.me.clone();
        Box::pin(async move {
            let name = ServiceName::new(&service)
                .map_err(|e| ApiError::invalid(e, "give a service name"))?;
            let (tx, rx) = oneshot::channel();
            calls
                .send(ApiCall {
                    req: ApiRequest::Ps {
                        service: Some(name.clone()),
                    },
                    reply: tx,
                })
                .await
                .map_err(|_| unavailable())?;
            let rows = match rx.await.map_err(|_| unavailable())?? {
                ApiReply::Ps(rows) => rows,
                _ => return Err(unavailable()),
            };
            let row: &PsEntry = rows.iter().find(|r| r.slot == slot).ok_or_else(|| {
                ApiError::not_found(
                    format!("service {service} has no slot {slot}"),
                    format!("see `shoal ps {service}`"),
                )
            })?;
            match &row.node {
                Some(n) if **n == *me.0 => {}
                Some(n) => {
                    return Err(ApiError::not_found(
                        format!("slot {service}/{slot} runs on node {n}, not on this node"),
                        "run `shoal logs` against that node's API (--api)",
                    ));
                }
                None => {
                    return Err(ApiError::not_found(
                        format!("slot {service}/{slot} is not placed"),
                        "see `shoal ps`",
                    ));
                }
            }
            let key = InstanceKey {
                slot: SlotId::new(&name, slot),
                epoch: row.epoch,
            };
            let driver = if row.container.is_some() {
                DriverKind::Docker
            } else {
                DriverKind::Process
            };
            drivers
                .logs(driver, &key, follow, tail)
                .await
                .map_err(|e| ApiError::not_found(e.to_string(), "see `shoal ps`"))
        })
    }
}

fn unavailable() -> ApiError {
    ApiError {
        kind: ApiErrorKind::Unavailable,
        error: "the agent is shutting down".into(),
        hint: None,
    }
}
