//! The report of a run: `report.json` (every result in full), `report.md` (a table per
//! scenario: pass/fail per invariant, detection/replacement/convergence p50 and p99), and one
//! SVG timeline per scenario, all under the output folder (default `target/chaos/`).
//! It decides no verdict (`runner/`) and lays out no plot (`svg.rs`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::Context;

use crate::invariants::Invariant;
use crate::runner::{ScenarioResult, Verdict};

/// The `p`th percentile (0–100) by nearest rank; None for no data.
pub fn percentile(values: &[u64], p: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

fn ms(v: Option<u64>) -> String {
    match v {
        Some(ms) => format!("{:.1}s", ms as f64 / 1000.0),
        None => "–".into(),
    }
}

/// One cell of the invariant table.
fn cell(r: &ScenarioResult, i: Invariant) -> String {
    let Some(res) = r.invariants.get(&i) else {
        return "–".into();
    };
    let expected = r.expect_fail == Some(i);
    match (res.checked, res.failed(), expected) {
        (_, true, true) => format!("FAIL ({}) as expected", res.count),
        (_, true, false) => format!("**FAIL** ({})", res.count),
        (true, false, true) => "**pass** (expected to fail)".into(),
        (true, false, false) => "pass".into(),
        (false, false, _) => "–".into(),
    }
}

/// Renders the Markdown summary.
pub fn markdown(results: &[ScenarioResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# shoal-chaos report\n");
    let passed = results
        .iter()
        .filter(|r| r.verdict == Verdict::Pass)
        .count();
    let _ = writeln!(s, "{passed} of {} runs passed.\n", results.len());
    let _ = write!(s, "| scenario | verdict |");
    for i in Invariant::ALL {
        let _ = write!(s, " {i} |");
    }
    let _ = writeln!(
        s,
        " detection p50/p99 | replacement p50/p99 | convergence p50/p99 | runs |"
    );
    let _ = write!(s, "|---|---|");
    for _ in Invariant::ALL {
        let _ = write!(s, "---|");
    }
    let _ = writeln!(s, "---|---|---|---|");
    // Repeated runs of one scenario share a row: the worst verdict, all measurements pooled.
    let mut groups: BTreeMap<String, Vec<&ScenarioResult>> = BTreeMap::new();
    let mut order = Vec::new();
    for r in results {
        let slug = r.slug();
        if !groups.contains_key(&slug) {
            order.push(slug.clone());
        }
        groups.entry(slug).or_default().push(r);
    }
    for slug in &order {
        let rs = &groups[slug];
        let worst = rs
            .iter()
            .find(|r| r.verdict != Verdict::Pass)
            .copied()
            .unwrap_or(rs[0]);
        let verdict = match worst.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "**FAIL**",
            Verdict::Error => "**ERROR**",
        };
        let _ = write!(s, "| {slug} | {verdict} |");
        for i in Invariant::ALL {
            let _ = write!(s, " {} |", cell(worst, i));
        }
        let pool = |f: fn(&ScenarioResult) -> &Vec<u64>| -> Vec<u64> {
            rs.iter().flat_map(|r| f(r).iter().copied()).collect()
        };
        for v in [
            pool(|r| &r.detection_ms),
            pool(|r| &r.replacement_ms),
            pool(|r| &r.convergence_ms),
        ] {
            let _ = write!(
                s,
                " {} / {} |",
                ms(percentile(&v, 50.0)),
                ms(percentile(&v, 99.0))
            );
        }
        let _ = writeln!(s, " {} |", rs.len());
    }
    let _ = writeln!(s);
    for r in results {
        if r.verdict == Verdict::Pass && r.notes.is_empty() {
            continue;
        }
        let _ = writeln!(s, "## {}\n", r.slug());
        if !r.description.is_empty() {
            let _ = writeln!(s, "{}\n", r.description);
        }
        if let Some(e) = &r.error {
            let _ = writeln!(s, "- error: {e}");
        }
        if let Some(b) = &r.bug {
            let _ = writeln!(
                s,
                "- deliberate bug `{b}`, expected to break `{}`",
                r.expect_fail.map(|i| i.name()).unwrap_or("?")
            );
        }
        for (i, res) in &r.invariants {
            for f in res.violations.iter().take(5) {
                let at = match f.line {
                    0 => "sampler".to_string(),
                    l => format!("line {l}"),
                };
                let _ = writeln!(
                    s,
                    "- {i} at {:.1}s ({at}): {}",
                    f.at_ms as f64 / 1000.0,
                    f.text
                );
            }
            if res.count > 5 {
                let _ = writeln!(s, "- {i}: {} more", res.count - 5);
            }
        }
        for n in &r.notes {
            let _ = writeln!(s, "- note: {n}");
        }
        if let Some(replay) = &r.replay {
            let _ = writeln!(s, "- replay: `{replay}`");
        }
        let _ = writeln!(s, "- logs: `{}`", r.logs);
        let _ = writeln!(s);
    }
    s
}

/// Writes `report.json`, `report.md` and `<scenario>.svg` under `out`.
pub fn write(out: &Path, results: &[ScenarioResult]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let json = serde_json::to_string_pretty(results).expect("results serialize");
    std::fs::write(out.join("report.json"), json).context("cannot write report.json")?;
    std::fs::write(out.join("report.md"), markdown(results)).context("cannot write report.md")?;
    for r in results {
        let svg = crate::svg::render(&r.slug(), &r.timeline);
        let path = out.join(format!("{}.svg", r.slug()));
        std::fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v = [5, 1, 4, 2, 3];
        assert_eq!(percentile(&v, 50.0), Some(3));
        assert_eq!(percentile(&v, 99.0), Some(5));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[], 50.0), None);
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 99.0), Some(99));
    }
}
