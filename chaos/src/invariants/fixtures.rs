//! Synthetic observations the invariants' unit tests share: a service model, instance
//! processes, `ps` rows, node snapshots, and a healthy three-node fleet to break.

use std::collections::BTreeMap;

use crate::model::{
    AgentState, Expected, InstanceProc, NodeSnap, PsObs, Res, ServiceModel, Snapshot, StatusObs,
};

pub(super) fn model(replicas: u32, majority: bool) -> ServiceModel {
    ServiceModel {
        replicas,
        majority,
        deleted: false,
        resources: BTreeMap::from([(
            "r1".to_string(),
            Res {
                cpu_millis: 500,
                memory_bytes: 100,
            },
        )]),
        latest: Res {
            cpu_millis: 500,
            memory_bytes: 100,
        },
    }
}

pub(super) fn proc_(pid: u32, node: usize, service: &str, slot: u32, epoch: u64) -> InstanceProc {
    InstanceProc {
        pid,
        node,
        service: service.into(),
        slot,
        epoch,
        revision: Some("r1".into()),
    }
}

pub(super) fn row(service: &str, slot: u32, node: usize, epoch: u64) -> PsObs {
    PsObs {
        service: service.into(),
        slot,
        node: Some(format!("id{node}")),
        epoch,
        revision: Some("r1".into()),
        state: "running".into(),
        pid: None,
    }
}

pub(super) fn node(n: usize, agent: AgentState, ps: Vec<PsObs>, digest: &str) -> NodeSnap {
    NodeSnap {
        node: n,
        id: Some(format!("id{n}")),
        agent,
        capacity: Res {
            cpu_millis: 1000,
            memory_bytes: 1000,
        },
        status: Some(StatusObs {
            node: format!("id{n}"),
            digest: digest.into(),
            capacity: Res {
                cpu_millis: 1000,
                memory_bytes: 1000,
            },
            ..StatusObs::default()
        }),
        ps: Some(ps),
        nodes: None,
        error: None,
    }
}

/// Three live nodes agreeing that web/0 is on n1 and web/1 on n2, both running there.
pub(super) fn healthy() -> (Expected, Snapshot) {
    let expected = BTreeMap::from([("web".to_string(), model(2, false))]);
    let ps = vec![row("web", 0, 1, 1), row("web", 1, 2, 1)];
    let snap = Snapshot {
        at_ms: 0,
        nodes: (1..=3)
            .map(|n| node(n, AgentState::Running, ps.clone(), "d1"))
            .collect(),
        procs: vec![proc_(100, 1, "web", 0, 1), proc_(200, 2, "web", 1, 1)],
    };
    (expected, snap)
}
