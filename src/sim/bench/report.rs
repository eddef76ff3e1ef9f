//! What one `shoal-sim bench` run measured (`Report`) and how it is shown: the DESIGN.md §10
//! goals table in Markdown, the baselines beside ours, and the SVG plots. It measures nothing.

use super::{Figures, MembershipFigures, PackingFigures, percentile};

fn p(v: &[u64], q: f64) -> String {
    percentile(v, q).map_or("–".into(), |x| format!("{:.2} s", x as f64 / 1000.0))
}

/// Everything one `shoal-sim bench` run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub figs: Vec<Figures>,
    /// Detection with our `lan` profile and with memberlist's defaults, same seeds, by size.
    pub ours_membership: Vec<MembershipFigures>,
    pub memberlist: Vec<MembershipFigures>,
    pub packing: Vec<PackingFigures>,
    /// `(nodes, heal → exactly N ms per converged seed, seeds that did not converge)`.
    pub heal: Option<(usize, Vec<u64>, usize)>,
}

fn secs(v: Option<u64>) -> String {
    v.map_or("–".into(), |x| format!("{:.2} s", x as f64 / 1000.0))
}

fn detect(m: &MembershipFigures) -> String {
    let mut s = format!(
        "p50 {}, p99 {}",
        secs(percentile(&m.detect_ms, 0.5)),
        secs(percentile(&m.detect_ms, 0.99))
    );
    if m.undetected > 0 {
        s.push_str(&format!(", {} not within 60 s", m.undetected));
    }
    s
}

impl Report {
    /// The goals table of DESIGN.md §10 with the baseline measured beside ours, per size.
    pub fn goals_markdown(&self) -> String {
        let mut s = String::new();
        s.push_str("| goal (DESIGN.md §10) | anchor | nodes | baseline in this simulator | ours (simulated) | target |\n");
        s.push_str("| --- | --- | --- | --- | --- | --- |\n");
        for o in &self.ours_membership {
            // The baseline on the same fleet size, when it was measured.
            let m = self.memberlist.iter().find(|m| m.nodes == o.nodes);
            let base = |f: &dyn Fn(&MembershipFigures) -> String| {
                m.map_or("not measured".into(), |m| {
                    format!("memberlist defaults: {}", f(m))
                })
            };
            s.push_str(&format!(
                "| crash → known dead at 99% of nodes | memberlist defaults 12–72 s | {} | {} | {} ({} crashes) | p99 ≤ 3 s |\n",
                o.nodes,
                base(&|m| format!("{} ({} crashes)", detect(m), m.detect_ms.len() + m.undetected)),
                detect(o),
                o.detect_ms.len() + o.undetected
            ));
            s.push_str(&format!(
                "| no false deaths at 10% loss | – | {} | {} | {} | 0 |\n",
                o.nodes,
                base(&|m| m.false_deaths.to_string()),
                o.false_deaths
            ));
            s.push_str(&format!(
                "| idle SWIM traffic per node | Serf up to ≈ 42 KB/s | {} | {} | {:.0} B/s | (part of ≤ 1 KB/s) |\n",
                o.nodes,
                base(&|m| format!("{:.0} B/s", m.idle_swim_bytes_per_node_s)),
                o.idle_swim_bytes_per_node_s
            ));
        }
        for p in &self.packing {
            let ratio = |m: usize| {
                p.auction_machines.map_or("–".into(), |a| {
                    format!("{:.3}×", a as f64 / m.max(1) as f64)
                })
            };
            s.push_str(&format!(
                "| placement quality vs a central best-fit | Sparrow within 12% of ideal | {} | best-fit {} machines, FFD {}, volume bound {} ({} binpack slots) | {} machines: {} best-fit, {} FFD | ≤ 1.05× best-fit |\n",
                p.nodes,
                p.best_fit_machines,
                p.ffd_machines,
                p.lower_bound,
                p.slots,
                p.auction_machines.map_or("never placed".into(), |a| a.to_string()),
                ratio(p.best_fit_machines),
                ratio(p.ffd_machines)
            ));
        }
        for f in &self.figs {
            let n = f.nodes;
            s.push_str(&format!(
                "| node killed → replacement running | Kubernetes ≈ 350 s, Nomad ≈ 20–30 s, Swarm ≈ 15 s | {n} | – | p50 {}, p99 {} ({} crashes) | p50 ≤ 3 s, p99 ≤ 5 s |\n",
                p(&f.replace_ms, 0.5), p(&f.replace_ms, 0.99), f.replace_ms.len()
            ));
            s.push_str(&format!(
                "| write → visible on every node | Serf ≈ 2.2 s | {n} | – | p50 {}, p99 {} ({} writes) | p99 ≤ 1 s |\n",
                p(&f.write_ms, 0.5), p(&f.write_ms, 0.99), f.write_ms.len()
            ));
            let rate = f.place_ms.filter(|t| *t > 0).map_or("–".into(), |t| {
                format!("{:.0}/s", f.slots_placed as f64 * 1000.0 / t as f64)
            });
            s.push_str(&format!(
                "| placements per second | Nomad ≈ 1,500–3,750/s | {n} | – | {rate} ({} slots in one deploy, all started after {}) | ≥ 10,000/s simulated |\n",
                f.slots_placed,
                secs(f.place_ms)
            ));
            s.push_str(&format!(
                "| bids per placed slot | – | {n} | – | {:.2} bids in {:.2} bid messages | flat in fleet size |\n",
                f.bids_per_slot, f.bid_messages_per_slot
            ));
            if let Some((lo, hi)) = f.spread_min_max {
                s.push_str(&format!(
                    "| spread evenness ({} slots over {n} nodes) | – | {n} | – | {lo}–{hi} instances per node | – |\n",
                    f.slots_placed
                ));
            }
            s.push_str(&format!(
                "| idle traffic per node (all kinds) | Serf up to ≈ 42 KB/s | {n} | – | {:.0} B/s (SWIM {:.0}, anti-entropy {:.0}) | ≤ 1 KB/s |\n",
                f.idle_bytes_per_node_s, f.idle_swim_bytes_per_node_s, f.idle_sync_bytes_per_node_s
            ));
            s.push_str(&format!(
                "| simulator speed | – | {n} | – | {:.2} simulated s per wall s ({:.0} s in {:.0} s) | – |\n",
                f.virtual_ms as f64 / 1000.0 / f.wall_s.max(1e-9),
                f.virtual_ms as f64 / 1000.0,
                f.wall_s
            ));
        }
        if let Some((nodes, v, failed)) = &self.heal {
            s.push_str(&format!(
                "| exactly N after a partition heals | nobody publishes it | {nodes} | – | p50 {}, p99 {} ({} sweep seeds, {} did not converge) | p99 ≤ 5 s (LAN) |\n",
                p(v, 0.5), p(v, 0.99), v.len(), failed
            ));
        }
        s
    }

    /// The plots: `(file name, SVG)`.
    pub fn charts(&self) -> Vec<(String, String)> {
        use crate::sim::plot::{Chart, Series};
        let mut out = Vec::new();
        let series = |name: &str, pts: Vec<(u64, f64)>| Series {
            name: name.into(),
            points: pts,
        };
        let p99 = |v: &[MembershipFigures]| -> Vec<(u64, f64)> {
            v.iter()
                .filter_map(|m| {
                    percentile(&m.detect_ms, 0.99).map(|t| (m.nodes as u64, t as f64 / 1000.0))
                })
                .collect()
        };
        out.push((
            "detection-p99.svg".into(),
            Chart {
                title: "crash → known dead at 99% of nodes, p99".into(),
                x_label: "nodes".into(),
                y_label: "seconds (virtual)".into(),
                series: vec![
                    series("ours (lan profile)", p99(&self.ours_membership)),
                    series("memberlist defaults", p99(&self.memberlist)),
                ],
                goal: Some(("goal 3 s".into(), 3.0)),
            }
            .svg(),
        ));
        let swim = |v: &[MembershipFigures]| -> Vec<(u64, f64)> {
            v.iter()
                .map(|m| (m.nodes as u64, m.idle_swim_bytes_per_node_s))
                .collect()
        };
        let total: Vec<(u64, f64)> = self
            .figs
            .iter()
            .map(|f| (f.nodes as u64, f.idle_bytes_per_node_s))
            .collect();
        out.push((
            "idle-bytes.svg".into(),
            Chart {
                title: "idle traffic sent per node".into(),
                x_label: "nodes".into(),
                y_label: "bytes per second".into(),
                series: vec![
                    series("ours, all kinds", total),
                    series("ours, SWIM only", swim(&self.ours_membership)),
                    series("memberlist defaults, SWIM only", swim(&self.memberlist)),
                ],
                goal: Some(("goal 1 KB/s".into(), 1000.0)),
            }
            .svg(),
        ));
        out.push((
            "bids-per-slot.svg".into(),
            Chart {
                title: "auction cost per placed slot".into(),
                x_label: "nodes".into(),
                y_label: "per slot".into(),
                series: vec![
                    series(
                        "bids",
                        self.figs
                            .iter()
                            .map(|f| (f.nodes as u64, f.bids_per_slot))
                            .collect(),
                    ),
                    series(
                        "bid messages",
                        self.figs
                            .iter()
                            .map(|f| (f.nodes as u64, f.bid_messages_per_slot))
                            .collect(),
                    ),
                ],
                goal: None,
            }
            .svg(),
        ));
        let pack = |m: fn(&PackingFigures) -> Option<usize>| -> Vec<(u64, f64)> {
            self.packing
                .iter()
                .filter_map(|p| m(p).map(|v| (p.nodes as u64, v as f64)))
                .collect()
        };
        out.push((
            "machines-vs-oracle.svg".into(),
            Chart {
                title: "machines hosting ≥ 1 instance, binpack workload".into(),
                x_label: "nodes".into(),
                y_label: "machines".into(),
                series: vec![
                    series("ours (auction)", pack(|p| p.auction_machines)),
                    series("central best-fit", pack(|p| Some(p.best_fit_machines))),
                    series("first-fit-decreasing", pack(|p| Some(p.ffd_machines))),
                    series("volume lower bound", pack(|p| Some(p.lower_bound))),
                ],
                goal: None,
            }
            .svg(),
        ));
        out
    }
}
