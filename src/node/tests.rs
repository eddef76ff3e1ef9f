//! Core state machine tests: feed inputs, assert the exact outputs.

use super::*;
use std::collections::BTreeMap;

use crate::ids::RevisionId;
use crate::membership::{MemberEvent, MemberState};
use crate::runtime::Handle;
use crate::runtime::{ExitInfo, Observed, ObservedStatus};
use crate::spec::{DriverKind, ServiceSpec};
use crate::spec::{RestartMode, ServiceName, Workload};
use crate::state::{Revision, RevisionBody};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn cfg(id: &str) -> NodeConfig {
    NodeConfig {
        id: NodeId(id.into()),
        incarnation: 1,
        cluster: "c1".into(),
        labels: BTreeMap::new(),
        capacity: Resources {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
        },
        runtimes: [DriverKind::Process].into(),
        agent_version: "test".into(),
        timing: CoreTiming::lan(),
        addrs: vec![],
        seeds: vec![],
        swim: crate::membership::Profile::Lan.tuning(3),
        bugs: TestBugs::default(),
    }
}

fn node(id: &str) -> Node<StdRng> {
    Node::new(cfg(id), ClusterState::default(), StdRng::seed_from_u64(7)).unwrap()
}

pub(super) fn web(replicas: u32) -> ServiceSpec {
    crate::state::cluster::tests::spec("web", replicas)
}

fn name(s: &str) -> ServiceName {
    ServiceName(s.into())
}

fn slot(s: &str, i: u32) -> SlotId {
    SlotId::new(&name(s), i)
}

fn key(s: &str, i: u32, epoch: u64) -> InstanceKey {
    InstanceKey {
        slot: slot(s, i),
        epoch,
    }
}

pub(super) fn api(n: &mut Node<StdRng>, now: u64, req: ApiRequest) -> Vec<Output> {
    let mut out = Vec::new();
    n.handle(Millis(now), Input::Api { id: 1, req }, &mut out);
    out
}

fn input(n: &mut Node<StdRng>, now: u64, i: Input) -> Vec<Output> {
    let mut out = Vec::new();
    n.handle(Millis(now), i, &mut out);
    out
}

fn starts(out: &[Output]) -> Vec<InstanceKey> {
    out.iter()
        .filter_map(|o| match o {
            Output::Runtime(RuntimeCommand::Start(s)) => Some(s.key.clone()),
            _ => None,
        })
        .collect()
}

fn stops(out: &[Output]) -> Vec<InstanceKey> {
    out.iter()
        .filter_map(|o| match o {
            Output::Runtime(RuntimeCommand::Stop { key, .. }) => Some(key.clone()),
            _ => None,
        })
        .collect()
}

fn reply(out: &[Output]) -> Result<ApiReply, ApiError> {
    out.iter()
        .find_map(|o| match o {
            Output::Reply { result, .. } => Some(result.clone()),
            _ => None,
        })
        .expect("a reply")
}

fn listed(n: &mut Node<StdRng>, now: u64, instances: Vec<Observed>) -> Vec<Output> {
    input(
        n,
        now,
        Input::Runtime(RuntimeEvent::Listed {
            driver: DriverKind::Process,
            instances,
        }),
    )
}

fn started(n: &mut Node<StdRng>, now: u64, k: InstanceKey) -> Vec<Output> {
    let rev = n.state().services[&k.slot.service]
        .current()
        .unwrap()
        .id
        .clone();
    input(
        n,
        now,
        Input::Runtime(RuntimeEvent::Started {
            key: k,
            revision: rev,
            handle: Handle::Pid {
                pid: 42,
                start_ticks: 1,
            },
            endpoint: None,
        }),
    )
}

/// A fresh node that has listed an empty runtime.
pub(super) fn ready(id: &str) -> Node<StdRng> {
    let mut n = node(id);
    let out = input(&mut n, 0, Input::Tick);
    // It lists its runtime first, and announces its (empty) report.
    assert_eq!(
        out[0],
        Output::Runtime(RuntimeCommand::List {
            driver: DriverKind::Process
        })
    );
    assert!(matches!(&out[1], Output::Persist(d) if d.reports.contains_key(&NodeId(id.into()))));
    listed(&mut n, 0, vec![]);
    n
}

#[test]
fn lone_node_claims_an_open_slot_and_starts_it() {
    let mut n = ready("a");
    let out = api(
        &mut n,
        10,
        ApiRequest::Deploy {
            specs: vec![web(1)],
        },
    );
    // The write is persisted, then gossiped, then acknowledged; then the auction with one
    // bidder claims slot 0 at epoch 1 and the reconciler starts it.
    assert!(matches!(&out[0], Output::Persist(d) if d.services.contains_key(&name("web"))));
    assert!(matches!(
        &out[1],
        Output::Broadcast {
            topic: Topic::State,
            ..
        }
    ));
    let reply_at = out
        .iter()
        .position(|o| matches!(o, Output::Reply { .. }))
        .unwrap();
    assert_eq!(reply_at, 2, "acknowledged right after persisting: {out:#?}");
    match reply(&out).unwrap() {
        ApiReply::Written(w) => {
            assert_eq!(w.len(), 1);
            assert_eq!(w[0].service, "web");
            assert!(w[0].revision.starts_with("1."));
            assert!(w[0].changed);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(starts(&out), vec![key("web", 0, 1)]);
    let claim = &n.state().claims[&slot("web", 0)];
    assert_eq!(
        (claim.epoch, &claim.node, claim.released),
        (1, &NodeId("a".into()), false)
    );
}

#[test]
fn nothing_starts_before_the_runtime_has_listed_what_already_runs() {
    let mut n = node("a");
    let out = api(
        &mut n,
        0,
        ApiRequest::Deploy {
            specs: vec![web(1)],
        },
    );
    assert!(starts(&out).is_empty());
    let out = listed(&mut n, 5, vec![]);
    assert_eq!(starts(&out), vec![key("web", 0, 1)]);
}

#[test]
fn deploying_the_same_spec_again_writes_nothing() {
    let mut n = ready("a");
    api(
        &mut n,
        10,
        ApiRequest::Deploy {
            specs: vec![web(1)],
        },
    );
    let out = api(
        &mut n,
        20,
        ApiRequest::Deploy {
            specs: vec![web(1)],
        },
    );
    assert!(
        !out.iter().any(|o| matches!(o, Output::Persist(_))),
        "{out:#?}"
    );
    match reply(&out).unwrap() {
        ApiReply::Written(w) => assert!(!w[0].changed),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn scale_up_starts_new_slots_and_scale_down_retires_the_highest() {
    let mut n = ready("a");
    api(
        &mut n,
        10,
        ApiRequest::Deploy {
            specs: vec![web(1)],
        },
    );
    let out = api(
        &mut n,
        20,
        ApiRequest::Scale {
            service: name("web"),
            replicas: 3,
        },
    );
    assert_eq!(starts(&out), vec![key("web", 1, 1), key("web", 2, 1)]);
    let out = api(
        &mut n,
        30,
        ApiRequest::Scale {
            service: name("web"),
            replicas: 1,
        },
    );
    assert_eq!(stops(&out), vec![key("web", 1, 1), key("web", 2, 1)]);
    assert!(starts(&out).is_empty());
}

#[test]
fn removing_a_service_stops_every_instance() {
    let mut n = ready("a");
    api(
        &mut n,
        10,
        ApiRequest::Deploy {
            specs: vec![web(2)],
        },
    );
    let out = api(
        &mut n,
        20,
        ApiRequest::Remove {
            service: name("web"),
        },
    );
    assert_eq!(stops(&out), vec![key("web", 0, 1), key("web", 1, 1)]);
    let out = api(&mut n, 30, ApiRequest::Ps { service: None });
    assert_eq!(reply(&out).unwrap(), ApiReply::Ps(vec![]));
    // The history keeps the removal.
    let out = api(
        &mut n,
        40,
        ApiRequest::History {
            service: name("web"),
        },
    );
    match reply(&out).unwrap() {
        ApiReply::History(h) => {
            assert_eq!(h.len(), 2);
            assert!(h[0].deleted && h[0].current);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_new_revision_replaces_each_instance_stop_then_start() {
    let mut n = ready("a");
    api(
        &mut n,
        10,
        ApiRequest::Deploy {
            specs: vec![web(1)],
        },
    );
    started(&mut n, 11, key("web", 0, 1));
    let mut v2 = web(1);
    v2.env.insert("V".into(), "2".into());
    let out = api(&mut n, 20, ApiRequest::Deploy { specs: vec![v2] });
    assert_eq!(stops(&out), vec![key("web", 0, 1)]);
    assert!(
        starts(&out).is_empty(),
        "start only after the stop completed"
    );
    let out = input(
        &mut n,
        25,
        Input::Runtime(RuntimeEvent::Stopped {
            key: key("web", 0, 1),
        }),
    );
    assert_eq!(starts(&out), vec![key("web", 0, 1)]);
    let spec = out.iter().find_map(|o| match o {
        Output::Runtime(RuntimeCommand::Start(s)) => Some(s.clone()),
        _ => None,
    });
    assert_eq!(
        spec.unwrap().spec.env.get("V").map(String::as_str),
        Some("2")
    );
}

#[test]
fn rollback_writes_a_new_revision_with_the_previous_spec() {
    let mut n = ready("a");
    api(
        &mut n,
        10,
        ApiRequest::Deploy {
            specs: vec![web(1)],
        },
    );
    api(
        &mut n,
        20,
        ApiRequest::Scale {
            service: name("web"),
            replicas: 2,
        },
    );
    let out = api(
        &mut n,
        30,
        ApiRequest::Rollback {
            service: name("web"),
            to: None,
        },
    );
    match reply(&out).unwrap() {
        ApiReply::Written(w) => assert!(w[0].revision.starts_with("3.")),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(n.state().live_spec(&name("web")).unwrap().replicas, 1);
    assert_eq!(stops(&out), vec![key("web", 1, 1)]);
    // And to an explicit revision by its sequence number.
    let out = api(
        &mut n,
        40,
        ApiRequest::Rollback {
            service: name("web"),
            to: Some("2".into()),
        },
    );
    assert!(reply(&out).is_ok());
    assert_eq!(n.state().live_spec(&name("web")).unwrap().replicas, 2);
    let out = api(
        &mut n,
        50,
        ApiRequest::Rollback {
            service: name("web"),
            to: Some("9".into()),
        },
    );
    assert!(reply(&out).unwrap_err().error.contains("no revision 9"));
}

#[test]
fn unknown_services_are_errors_with_a_hint() {
    let mut n = ready("a");
    for req in [
        ApiRequest::Remove {
            service: name("nope"),
        },
        ApiRequest::Scale {
            service: name("nope"),
            replicas: 2,
        },
        ApiRequest::History {
            service: name("nope"),
        },
        ApiRequest::Rollback {
            service: name("nope"),
            to: None,
        },
    ] {
        let out = api(&mut n, 10, req);
        let e = reply(&out).unwrap_err();
        assert_eq!(e.error, "no service nope");
        assert!(e.hint.is_some());
        assert!(!out.iter().any(|o| matches!(o, Output::Persist(_))));
    }
}

fn exited(n: &mut Node<StdRng>, now: u64, k: InstanceKey, code: i32) -> Vec<Output> {
    input(
        n,
        now,
        Input::Runtime(RuntimeEvent::Exited {
            key: k,
            exit: ExitInfo {
                code: Some(code),
                signal: None,
                oom_killed: false,
            },
        }),
    )
}

#[test]
fn an_exited_instance_restarts_with_exponential_backoff() {
    let mut n = ready("a");
    api(
        &mut n,
        0,
        ApiRequest::Deploy {
            specs: vec![web(1)],
        },
    );
    started(&mut n, 1, key("web", 0, 1));
    let out = exited(&mut n, 100, key("web", 0, 1), 1);
    assert!(starts(&out).is_empty(), "waits for the backoff");
    assert!(starts(&input(&mut n, 1099, Input::Tick)).is_empty());
    assert_eq!(
        starts(&input(&mut n, 1100, Input::Tick)),
        vec![key("web", 0, 1)]
    );
    started(&mut n, 1200, key("web", 0, 1));
    exited(&mut n, 1300, key("web", 0, 1), 1);
    assert!(
        starts(&input(&mut n, 3299, Input::Tick)).is_empty(),
        "second delay is twice the first"
    );
    assert_eq!(
        starts(&input(&mut n, 3300, Input::Tick)),
        vec![key("web", 0, 1)]
    );
}

#[test]
fn a_crash_loop_releases_the_slot_and_the_node_stays_out_of_it() {
    let mut n = ready("a");
    let mut s = web(1);
    s.restart.max_restarts = 2;
    api(&mut n, 0, ApiRequest::Deploy { specs: vec![s] });
    let mut now = 1;
    for _ in 0..3 {
        started(&mut n, now, key("web", 0, 1));
        exited(&mut n, now + 1, key("web", 0, 1), 1);
        now += 10_000;
        input(&mut n, now, Input::Tick);
    }
    let c = &n.state().claims[&slot("web", 0)];
    assert!(c.released, "{c:?}");
    // Alone in the fleet, nobody can take it: ps says why instead of a silent pending.
    let out = api(&mut n, now + 10, ApiRequest::Ps { service: None });
    match reply(&out).unwrap() {
        ApiReply::Ps(rows) => {
            assert_eq!(rows[0].state, "pending");
            assert!(
                rows[0]
                    .detail
                    .as_deref()
                    .unwrap_or("")
                    .contains("crash loop"),
                "{rows:?}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_new_revision_ends_the_crash_loop_hold_at_once() {
    let mut n = ready("a");
    let mut s = web(1);
    s.restart.max_restarts = 2;
    api(
        &mut n,
        0,
        ApiRequest::Deploy {
            specs: vec![s.clone()],
        },
    );
    let mut now = 1;
    for _ in 0..3 {
        started(&mut n, now, key("web", 0, 1));
        exited(&mut n, now + 1, key("web", 0, 1), 1);
        now += 10_000;
        input(&mut n, now, Input::Tick);
    }
    assert!(n.state().claims[&slot("web", 0)].released);
    // The crashed instance is removed (the stop the release asked for has finished).
    input(
        &mut n,
        now,
        Input::Runtime(RuntimeEvent::Stopped {
            key: key("web", 0, 1),
        }),
    );
    // Held out: ticks well past the bid window start nothing.
    for _ in 0..5 {
        now += 1_000;
        assert!(starts(&input(&mut n, now, Input::Tick)).is_empty());
    }
    // The fix is deployed: the hold ends with the revision that crashed, so the slot is bid
    // for, claimed at the next epoch and started without waiting out the exclusion.
    s.env.insert("FIXED".into(), "1".into());
    let mut started_again = starts(&api(&mut n, now, ApiRequest::Deploy { specs: vec![s] }));
    for _ in 0..10 {
        now += 500;
        started_again.extend(starts(&input(&mut n, now, Input::Tick)));
    }
    assert_eq!(started_again, vec![key("web", 0, 2)]);
    let c = &n.state().claims[&slot("web", 0)];
    assert!(!c.released && c.epoch == 2, "{c:?}");
}

#[test]
fn restart_policy_never_leaves_a_failed_instance_failed() {
    let mut n = ready("a");
    let mut s = web(1);
    s.restart.mode = RestartMode::Never;
    api(&mut n, 0, ApiRequest::Deploy { specs: vec![s] });
    started(&mut n, 1, key("web", 0, 1));
    exited(&mut n, 2, key("web", 0, 1), 3);
    assert!(starts(&input(&mut n, 100_000, Input::Tick)).is_empty());
    let out = api(&mut n, 100_001, ApiRequest::Ps { service: None });
    match reply(&out).unwrap() {
        ApiReply::Ps(rows) => {
            assert_eq!(rows[0].state, "failed");
            assert_eq!(rows[0].detail.as_deref(), Some("exited with code 3"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn observed(k: InstanceKey, rev: &str, status: ObservedStatus) -> Observed {
    Observed {
        key: k,
        revision: RevisionId(rev.into()),
        handle: Handle::Pid {
            pid: 77,
            start_ticks: 5,
        },
        endpoint: None,
        ports: BTreeMap::new(),
        status,
    }
}

/// A first life of node `a` that deployed `web` with one replica: its state and the revision id.
fn first_life_with_web() -> (ClusterState, String) {
    let mut first = ready("a");
    api(
        &mut first,
        0,
        ApiRequest::Deploy {
            specs: vec![web(1)],
        },
    );
    let rev = first.state().services[&name("web")]
        .current()
        .unwrap()
        .id
        .0
        .clone();
    (first.state().clone(), rev)
}

#[test]
fn a_restarted_node_adopts_what_matches_its_claims_and_reclaims_the_rest() {
    // First life: deploy and run.
    let (state, rev) = first_life_with_web();
    // Second life from the persisted state.
    let mut cfg2 = cfg("a");
    cfg2.incarnation = 2;
    let mut n = Node::new(cfg2, state, StdRng::seed_from_u64(1)).unwrap();
    input(&mut n, 1000, Input::Tick);
    let out = listed(
        &mut n,
        1000,
        vec![
            observed(key("web", 0, 1), &rev, ObservedStatus::Running),
            observed(key("old", 0, 3), "1.0000", ObservedStatus::Running),
        ],
    );
    assert!(starts(&out).is_empty(), "adopted, not restarted: {out:#?}");
    assert_eq!(stops(&out), vec![key("old", 0, 3)]);
    let out = api(&mut n, 1001, ApiRequest::Ps { service: None });
    match reply(&out).unwrap() {
        ApiReply::Ps(rows) => {
            assert_eq!(rows.len(), 1);
            assert_eq!((rows[0].state.as_str(), rows[0].pid), ("running", Some(77)));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn an_instance_that_vanished_from_the_runtime_is_restarted() {
    let mut n = ready("a");
    api(
        &mut n,
        0,
        ApiRequest::Deploy {
            specs: vec![web(1)],
        },
    );
    started(&mut n, 1, key("web", 0, 1));
    listed(&mut n, 10_000, vec![]);
    let out = input(&mut n, 11_000, Input::Tick);
    assert_eq!(starts(&out), vec![key("web", 0, 1)]);
}

#[test]
fn a_slot_that_does_not_fit_says_why() {
    let mut n = ready("a");
    let mut s = web(1);
    s.resources.cpu_millis = 6000;
    api(&mut n, 0, ApiRequest::Deploy { specs: vec![s] });
    let out = api(&mut n, 5000, ApiRequest::Status);
    match reply(&out).unwrap() {
        ApiReply::Status(st) => {
            assert_eq!(st.unplaceable.len(), 1);
            assert_eq!(st.unplaceable[0].reason, "needs cpu 6, largest free 4 on a");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_process_node_never_claims_an_image_service() {
    let mut n = ready("a");
    let mut s = web(1);
    s.workload = Workload::Image {
        image: "nginx".into(),
        command: None,
    };
    s.ports = vec![];
    let out = api(&mut n, 0, ApiRequest::Deploy { specs: vec![s] });
    assert!(n.state().claims.is_empty());
    assert!(starts(&out).is_empty());
    let out = api(&mut n, 5000, ApiRequest::Status);
    match reply(&out).unwrap() {
        ApiReply::Status(st) => assert_eq!(
            st.unplaceable[0].reason,
            "no alive node offers the docker runtime"
        ),
        other => panic!("unexpected {other:?}"),
    }
}

/// Delivers every Broadcast of `from` to `to` as messages.
fn deliver(out: &[Output], from: &str, to: &mut Node<StdRng>, now: u64) -> Vec<Output> {
    let mut next = Vec::new();
    for o in out {
        if let Output::Broadcast { msg, .. } = o {
            to.handle(
                Millis(now),
                Input::Message {
                    from: NodeId(from.into()),
                    msg: msg.clone(),
                },
                &mut next,
            );
        }
    }
    next
}

/// Membership reports `peer` in `state` (with the metadata of a node like `cfg(peer)`): the
/// event goes through the same path as one from SWIM, then the node flushes.
pub(super) fn member(
    n: &mut Node<StdRng>,
    peer: &str,
    state: MemberState,
    now: u64,
) -> Vec<Output> {
    let c = cfg(peer);
    let meta = Arc::new(NodeMeta {
        cpu_millis: c.capacity.cpu_millis,
        memory_bytes: c.capacity.memory_bytes,
        runtimes: c.runtimes.into_iter().collect(),
        ..Default::default()
    });
    let id = NodeId(peer.into());
    let m = crate::membership::Member {
        id: id.clone(),
        incarnation: 1,
        state,
        meta: (state == MemberState::Alive).then_some(meta),
        addrs: Vec::new().into(),
        last_heard: Millis(now),
        state_since: Millis(now),
    };
    let ev = match state {
        MemberState::Alive => MemberEvent::Up(id),
        MemberState::Suspect => MemberEvent::Suspect(id),
        MemberState::Down => MemberEvent::Down(id),
        MemberState::Left => MemberEvent::Left(id),
    };
    let mut out = Vec::new();
    n.on_member_event(Millis(now), &ev, &m, &mut out);
    n.flush(Millis(now), &mut out);
    out
}

fn alive(n: &mut Node<StdRng>, peer: &str, now: u64) {
    member(n, peer, MemberState::Alive, now);
}

#[test]
fn two_nodes_agree_on_one_winner_per_slot_and_spread_the_replicas() {
    let mut a = ready("a");
    let mut b = ready("b");
    alive(&mut a, "b", 0);
    alive(&mut b, "a", 0);
    let out_a = api(
        &mut a,
        10,
        ApiRequest::Deploy {
            specs: vec![web(4)],
        },
    );
    let out_b = deliver(&out_a, "a", &mut b, 20);
    let _ = deliver(&out_b, "b", &mut a, 30);
    // Close the bid windows on both and exchange the claims.
    let mut t = 40;
    for _ in 0..6 {
        let oa = input(&mut a, t, Input::Tick);
        let ob = input(&mut b, t, Input::Tick);
        deliver(&oa, "a", &mut b, t + 1);
        deliver(&ob, "b", &mut a, t + 1);
        t += 200;
    }
    assert_eq!(a.state().claims, b.state().claims);
    let owners: Vec<String> = a
        .state()
        .claims
        .values()
        .map(|c| c.node.0.to_string())
        .collect();
    assert_eq!(owners.len(), 4, "{owners:?}");
    let on_a = owners.iter().filter(|o| *o == "a").count();
    assert_eq!(on_a, 2, "spread within one of even: {owners:?}");
}

#[test]
fn a_down_nodes_slots_are_re_placed_at_the_next_epoch() {
    let mut a = ready("a");
    // b owned web/0 at epoch 3.
    let mut st = ClusterState::default();
    let spec = web(1);
    let rev = Revision {
        id: RevisionId("1.0000".into()),
        stamp: crate::state::Hlc {
            wall_ms: 1,
            logical: 0,
            node: NodeId("b".into()),
        },
        body: RevisionBody::Spec(spec),
    };
    let stamp = rev.stamp.clone();
    st.put_revision(&name("web"), rev);
    st.put_claim(
        &slot("web", 0),
        Claim {
            epoch: 3,
            score: 1,
            node: NodeId("b".into()),
            released: false,
            revision: stamp,
        },
    );
    input(
        &mut a,
        0,
        Input::Message {
            from: NodeId("b".into()),
            msg: Message::Delta(st),
        },
    );
    alive(&mut a, "b", 0);
    assert!(starts(&input(&mut a, 100, Input::Tick)).is_empty());
    let out = member(&mut a, "b", MemberState::Down, 200);
    assert_eq!(starts(&out), vec![key("web", 0, 4)]);
}

#[test]
fn a_thousand_slot_deploy_spreads_evenly_in_bounded_messages() {
    let mut a = ready("a");
    let mut b = ready("b");
    alive(&mut a, "b", 0);
    alive(&mut b, "a", 0);
    let mut spec = web(1000);
    spec.resources = Resources {
        cpu_millis: 1,
        memory_bytes: 1 << 20,
    };
    let out_a = api(&mut a, 10, ApiRequest::Deploy { specs: vec![spec] });
    // `b` takes `a`'s deploy and bids in one batch (as the agent does with whatever is queued)
    // and only then runs its auction: it must still bid at once, within `a`'s window, rather
    // than take `a`'s bids as a round it already examined and wait a re-bid period while `a`
    // wins everything.
    let mut out_b = Vec::new();
    for o in &out_a {
        if let Output::Broadcast { msg, .. } = o {
            let from = NodeId("a".into());
            let msg = msg.clone();
            b.absorb(Millis(20), Input::Message { from, msg }, &mut out_b);
        }
    }
    b.flush(Millis(20), &mut out_b);
    let bids_of_b: usize = out_b
        .iter()
        .map(|o| match o {
            Output::Broadcast {
                msg: Message::Bids(bids),
                ..
            } => bids.len(),
            _ => 0,
        })
        .sum();
    assert!(bids_of_b >= 500, "b bid for {bids_of_b} slots");
    let mut all = out_a.clone();
    all.extend(out_b.iter().cloned());
    let _ = deliver(&out_b, "b", &mut a, 30);
    let mut t = 40;
    for _ in 0..6 {
        let oa = input(&mut a, t, Input::Tick);
        let ob = input(&mut b, t, Input::Tick);
        deliver(&oa, "a", &mut b, t + 1);
        deliver(&ob, "b", &mut a, t + 1);
        all.extend(oa);
        all.extend(ob);
        t += 200;
    }
    // Every gossiped message fits the 64 KiB gossip limit (bigger ones would be dropped).
    for o in &all {
        if let Output::Broadcast { msg, .. } = o {
            let len = crate::wire::encode(msg).len();
            assert!(len <= 64 * 1024, "a {len}-byte broadcast");
        }
    }
    // Claims go out in batches, not one delta per claim.
    let claim_deltas = all
        .iter()
        .filter(|o| {
            matches!(o, Output::Broadcast { msg: Message::Delta(d), .. } if !d.claims.is_empty())
        })
        .count();
    assert!(
        claim_deltas <= 16,
        "{claim_deltas} claim deltas for 1,000 claims"
    );
    assert_eq!(a.state().claims, b.state().claims);
    let on_a = a
        .state()
        .claims
        .values()
        .filter(|c| &*c.node.0 == "a")
        .count();
    assert_eq!(a.state().claims.len(), 1000);
    assert_eq!(on_a, 500, "spread within one of even");
}

#[test]
fn the_skip_reclaim_bug_also_keeps_what_a_restarted_node_finds_running() {
    // The deliberate bug must cover the restart path too, or the chaos harness cannot show
    // that its no-orphan check catches a node that fails to reclaim after a crash.
    let (mut state, rev) = first_life_with_web();
    // While it was gone, its slot moved to `b` at the next epoch.
    let mut moved = state.claims[&slot("web", 0)].clone();
    moved.epoch += 1;
    moved.node = NodeId("b".into());
    state.put_claim(&slot("web", 0), moved);
    for bug in [false, true] {
        let mut c = cfg("a");
        c.incarnation = 2;
        c.bugs.skip_reclaim = bug;
        let mut n = Node::new(c, state.clone(), StdRng::seed_from_u64(1)).unwrap();
        alive(&mut n, "b", 1000);
        let mut out = input(&mut n, 1000, Input::Tick);
        out.extend(listed(
            &mut n,
            1000,
            vec![observed(key("web", 0, 1), &rev, ObservedStatus::Running)],
        ));
        for t in [1100, 5000, 30_000, 61_000, 70_000] {
            out.extend(input(&mut n, t, Input::Tick));
        }
        let expect = if bug { vec![] } else { vec![key("web", 0, 1)] };
        assert_eq!(stops(&out), expect, "skip-reclaim {bug}");
    }
}

#[test]
fn a_deploy_of_several_services_goes_out_as_one_delta_within_the_gossip_limit() {
    let deltas = |out: &[Output]| -> Vec<(usize, usize)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Broadcast {
                    msg: msg @ Message::Delta(d),
                    ..
                } if !d.services.is_empty() => {
                    Some((d.services.len(), crate::wire::encode(msg).len()))
                }
                _ => None,
            })
            .collect()
    };
    // Three small services: one delta holding all three, so no node sees part of the deploy.
    let mut a = ready("a");
    let specs: Vec<ServiceSpec> = ["api", "db", "web"]
        .iter()
        .map(|n| ServiceSpec {
            name: ServiceName((*n).into()),
            ..web(2)
        })
        .collect();
    let out = api(&mut a, 10, ApiRequest::Deploy { specs });
    assert_eq!(
        deltas(&out).iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![3]
    );
    // Forty services of ~4 KB each do not fit one gossip message: several deltas, every one
    // under the limit, every service in one of them.
    let mut b = ready("b");
    let specs: Vec<ServiceSpec> = (0..40)
        .map(|i| {
            let mut s = web(2);
            s.name = ServiceName(format!("s{i:02}").into());
            s.env = (0..16)
                .map(|k| (format!("KEY_{k:02}"), "v".repeat(240)))
                .collect();
            s
        })
        .collect();
    let out = api(&mut b, 10, ApiRequest::Deploy { specs });
    let d = deltas(&out);
    assert!(d.len() > 1, "{d:?}");
    assert_eq!(d.iter().map(|d| d.0).sum::<usize>(), 40);
    assert!(d.iter().all(|(_, len)| *len <= 64 * 1024), "{d:?}");
}

#[test]
fn a_lone_node_dials_its_seeds_until_a_member_answers() {
    let seed = "/ip4/127.0.0.1/tcp/7801".to_string();
    let mut c = cfg("a");
    c.seeds = vec![seed.clone()];
    let mut n = Node::new(c, ClusterState::default(), StdRng::seed_from_u64(7)).unwrap();
    let out = input(&mut n, 0, Input::Tick);
    assert!(out.contains(&Output::Dial { addr: seed }));
    assert!(n.next_wake(Millis(0)) <= Millis(750));
    member(&mut n, "b", MemberState::Alive, 1);
    let out = input(&mut n, 60_000, Input::Tick);
    assert!(!out.iter().any(|o| matches!(o, Output::Dial { .. })));
}
