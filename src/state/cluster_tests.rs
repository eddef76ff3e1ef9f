//! Tests of the replicated state: merge laws, compaction, the live-claim rule.

use super::*;
use crate::spec::{PartitionMode, RestartPolicy, Strategy as Placement, Workload};
use proptest::prelude::*;

pub fn spec(name: &str, replicas: u32) -> ServiceSpec {
    ServiceSpec {
        name: ServiceName(name.into()),
        workload: Workload::Command {
            command: vec!["sleep".into(), "1000".into()],
        },
        replicas,
        resources: Resources {
            cpu_millis: 100,
            memory_bytes: 64 << 20,
        },
        ports: vec![],
        env: Default::default(),
        constraints: vec![],
        spread: None,
        strategy: Placement::Spread,
        restart: RestartPolicy::default(),
        partition: PartitionMode::Available,
        stop_grace_ms: 10_000,
    }
}

/// A state holding `spec` at one revision (written by node `a` at 1 ms) and one claim per
/// `(index, node, epoch, released)`, at that revision: the fixture of the core's unit tests.
pub fn state_with(spec: ServiceSpec, claims: &[(u32, &str, u64, bool)]) -> ClusterState {
    let stamp = Hlc {
        wall_ms: 1,
        logical: 0,
        node: NodeId("a".into()),
    };
    let name = spec.name.clone();
    let mut s = ClusterState::default();
    s.put_revision(
        &name,
        Revision {
            id: RevisionId("1.0000".into()),
            stamp: stamp.clone(),
            body: RevisionBody::Spec(spec),
        },
    );
    for (index, n, epoch, released) in claims {
        s.put_claim(
            &SlotId::new(&name, *index),
            Claim {
                epoch: *epoch,
                score: 1,
                node: NodeId((*n).into()),
                released: *released,
                revision: stamp.clone(),
            },
        );
    }
    s
}

fn node(i: u8) -> NodeId {
    NodeId(format!("n{i}").into())
}

// Generators respect real invariants: a stamp (wall, logical, node) is unique per write, so a
// stamp always maps to the same revision content (derived from the stamp here).
fn stamp() -> impl Strategy<Value = Hlc> {
    (0u64..50, 0u32..3, 0u8..4).prop_map(|(w, l, n)| Hlc {
        wall_ms: w,
        logical: l,
        node: node(n),
    })
}

fn revision_for(name: &str, stamp: Hlc) -> Revision {
    let body = if stamp.wall_ms.is_multiple_of(7) {
        RevisionBody::Deleted
    } else {
        RevisionBody::Spec(spec(name, (stamp.wall_ms % 5) as u32))
    };
    Revision {
        id: RevisionId(format!("{}.{:04x}", stamp.wall_ms, stamp.logical)),
        stamp,
        body,
    }
}

fn claim() -> impl Strategy<Value = Claim> {
    (0u64..4, 0u64..3, 0u8..4, any::<bool>(), stamp()).prop_map(
        |(epoch, score, n, released, revision)| Claim {
            epoch,
            score,
            node: node(n),
            released,
            revision,
        },
    )
}

fn state() -> impl Strategy<Value = ClusterState> {
    let names = prop::sample::select(vec!["web", "db", "cache"]);
    (
        prop::collection::vec((names.clone(), stamp()), 0..8),
        prop::collection::vec(((names.clone(), 0u32..3), claim()), 0..6),
        prop::collection::vec((0u8..4, 0u64..3, 0u64..5), 0..4),
        prop::collection::vec((names, stamp()), 0..2),
        prop::collection::vec((0u8..4, stamp()), 0..3),
    )
        .prop_map(|(revs, claims, reports, graves, drains)| {
            let mut s = ClusterState::default();
            for (name, st) in revs {
                s.put_revision(&ServiceName(name.into()), revision_for(name, st));
            }
            for ((name, idx), c) in claims {
                s.put_claim(&SlotId::new(&ServiceName(name.into()), idx), c);
            }
            for (n, inc, seq) in reports {
                // Marker content is a function of the marker: one writer, unique markers.
                let report = NodeReport {
                    instances: BTreeMap::new(),
                    allocated: Resources {
                        cpu_millis: inc * 10 + seq,
                        memory_bytes: 0,
                    },
                };
                s.put_report(&node(n), report, (inc, seq));
            }
            for (name, st) in graves {
                let mut g = ClusterState::default();
                g.graveyard.insert(ServiceName(name.into()), st);
                s.merge(&g);
            }
            for (n, st) in drains {
                // One stamp, one value: derive the flag from the stamp.
                let on = st.wall_ms % 2 == 0;
                s.put_drain(&node(n), st, on);
            }
            s
        })
}

/// Claims merged in from a peer's delta (its own copies of every name) hold the names this
/// state already keeps: one allocation per service and per node, however many claims.
#[test]
fn merged_claims_share_their_names_with_the_state() {
    let stamp = Hlc {
        wall_ms: 1,
        logical: 0,
        node: node(1),
    };
    let web = ServiceName("web".into());
    let mut s = ClusterState::default();
    s.put_revision(&web, revision_for("web", stamp.clone()));
    s.put_report(&node(1), NodeReport::default(), (1, 0));
    let mut delta = ClusterState::default();
    for index in 0..3 {
        delta.claims.insert(
            SlotId::new(&ServiceName("web".into()), index),
            Claim {
                epoch: 1,
                score: 1,
                node: node(1),
                released: false,
                revision: stamp.clone(),
            },
        );
    }
    assert!(s.merge(&delta));
    let held_name = s.services.get_key_value(&web).unwrap().0.clone();
    let held_node = s.reports.get_key_value(&node(1)).unwrap().0.clone();
    assert_eq!(s.claims.len(), 3);
    for (slot, c) in &s.claims {
        assert!(std::sync::Arc::ptr_eq(&slot.service.0, &held_name.0));
        assert!(std::sync::Arc::ptr_eq(&c.node.0, &held_node.0));
    }
    // A newer claim that replaces one held keeps the shared owner name too.
    let mut newer = delta.clone();
    newer.claims.values_mut().for_each(|c| c.epoch = 2);
    assert!(s.merge(&newer));
    assert!(
        s.claims
            .values()
            .all(|c| c.epoch == 2 && std::sync::Arc::ptr_eq(&c.node.0, &held_node.0))
    );
}

proptest! {
    #[test]
    fn cluster_state_merge_obeys_the_laws(a in state(), b in state(), c in state()) {
        if let Err(e) = crate::state::crdt::laws::check(&a, &b, &c) {
            prop_assert!(false, "{}", e);
        }
    }

    #[test]
    fn claim_merge_obeys_the_laws(a in claim(), b in claim(), c in claim()) {
        if let Err(e) = crate::state::crdt::laws::check(&a, &b, &c) {
            prop_assert!(false, "{}", e);
        }
    }

    #[test]
    fn service_history_merge_obeys_the_laws(
        a in prop::collection::vec(stamp(), 0..14),
        b in prop::collection::vec(stamp(), 0..14),
        c in prop::collection::vec(stamp(), 0..14),
    ) {
        let entry = |stamps: Vec<Hlc>| {
            let mut e = ServiceEntry::default();
            for s in stamps { e.history.insert(s.clone(), revision_for("web", s)); }
            e.trim();
            e
        };
        if let Err(e) = crate::state::crdt::laws::check(&entry(a), &entry(b), &entry(c)) {
            prop_assert!(false, "{}", e);
        }
    }

    #[test]
    fn merging_deltas_equals_merging_the_full_state(base in state(), writes in prop::collection::vec(stamp(), 1..6)) {
        // Apply writes on a copy, collect their deltas; a peer that merges only the deltas
        // ends where a peer that merges the full result ends.
        let mut writer = base.clone();
        let mut deltas = Vec::new();
        for st in writes {
            deltas.push(writer.put_revision(&ServiceName("web".into()), revision_for("web", st)));
        }
        let mut via_deltas = base.clone();
        for d in &deltas { via_deltas.merge(d); }
        let mut via_full = base.clone();
        via_full.merge(&writer);
        prop_assert_eq!(via_deltas, via_full);
    }
}

#[test]
fn last_writer_wins_and_history_keeps_both_concurrent_revisions() {
    let web = ServiceName("web".into());
    let a = Hlc {
        wall_ms: 10,
        logical: 0,
        node: node(1),
    };
    let b = Hlc {
        wall_ms: 10,
        logical: 0,
        node: node(2),
    };
    let mut s1 = ClusterState::default();
    s1.put_revision(&web, revision_for("web", a.clone()));
    let mut s2 = ClusterState::default();
    s2.put_revision(&web, revision_for("web", b.clone()));
    s1.merge(&s2);
    s2.merge(&s1);
    assert_eq!(s1, s2);
    assert_eq!(s1.services[&web].current().unwrap().stamp, b);
    assert_eq!(s1.services[&web].history.len(), 2);
}

#[test]
fn history_keeps_the_newest_ten() {
    let web = ServiceName("web".into());
    let mut s = ClusterState::default();
    for w in 1..=15 {
        s.put_revision(
            &web,
            revision_for(
                "web",
                Hlc {
                    wall_ms: w,
                    logical: 0,
                    node: node(1),
                },
            ),
        );
    }
    let h = &s.services[&web].history;
    assert_eq!(h.len(), HISTORY_LEN);
    assert_eq!(h.keys().next().unwrap().wall_ms, 6);
}

#[test]
fn compacted_tombstone_cannot_be_resurrected_by_an_old_peer() {
    let web = ServiceName("web".into());
    let mut old_peer = ClusterState::default();
    old_peer.put_revision(
        &web,
        revision_for(
            "web",
            Hlc {
                wall_ms: 1,
                logical: 0,
                node: node(1),
            },
        ),
    );
    let mut s = old_peer.clone();
    s.put_revision(
        &web,
        Revision {
            id: RevisionId("2.0000".into()),
            stamp: Hlc {
                wall_ms: 2,
                logical: 0,
                node: node(1),
            },
            body: RevisionBody::Deleted,
        },
    );
    assert!(s.compact(Millis(TOMBSTONE_TTL_MS + 10)));
    assert!(!s.services.contains_key(&web));
    s.merge(&old_peer);
    assert!(!s.services.contains_key(&web), "old revision came back");
    // And the peer learns the burial from us.
    old_peer.merge(&s);
    assert!(!old_peer.services.contains_key(&web));
}

#[test]
fn digest_is_equal_for_equal_states_and_differs_otherwise() {
    let web = ServiceName("web".into());
    let mut a = ClusterState::default();
    let mut b = ClusterState::default();
    assert_eq!(a.digest(), b.digest());
    a.put_revision(
        &web,
        revision_for(
            "web",
            Hlc {
                wall_ms: 1,
                logical: 0,
                node: node(1),
            },
        ),
    );
    assert_ne!(a.digest(), b.digest());
    b.merge(&a);
    assert_eq!(a.digest(), b.digest());
}

#[test]
fn a_live_claim_is_unreleased_of_a_live_service_and_within_its_replicas() {
    let stamp = Hlc {
        wall_ms: 3,
        logical: 0,
        node: node(0),
    };
    let mut s = ClusterState::default();
    let web = ServiceName("web".into());
    s.put_revision(&web, revision_for("web", stamp.clone()));
    let replicas = s.live_spec(&web).expect("just written").replicas;
    assert_eq!(replicas, 3);
    let claim = |n: u8, released: bool| Claim {
        epoch: 1,
        score: 1,
        node: node(n),
        released,
        revision: stamp.clone(),
    };
    s.put_claim(&SlotId::new(&web, 0), claim(1, false));
    s.put_claim(&SlotId::new(&web, 1), claim(1, true));
    s.put_claim(&SlotId::new(&web, replicas), claim(1, false));
    s.put_claim(
        &SlotId::new(&ServiceName("gone".into()), 0),
        claim(1, false),
    );
    let live: Vec<u32> = s.live_claims().map(|(slot, ..)| slot.index).collect();
    assert_eq!(live, vec![0]);
    assert!(s.live_claim(&SlotId::new(&web, 0)).is_some());
    assert!(s.live_claim(&SlotId::new(&web, 1)).is_none());
    assert_eq!(s.live_claims_held_by(&node(1)).count(), 1);
    assert_eq!(s.live_claims_held_by(&node(2)).count(), 0);
    assert!(claim(1, false).held_by(&node(1)));
    assert!(!claim(1, true).held_by(&node(1)));
    assert!(!claim(1, false).held_by(&node(2)));
}
