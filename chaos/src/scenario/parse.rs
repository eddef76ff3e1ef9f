//! Reading and validating a scenario: the YAML parsed into `raw.rs`'s shape, then every step
//! checked (node numbers in range, fields the fault kind takes, `start` first) and turned into
//! the typed steps of `mod.rs`. Every error names the file and the line of the step at fault.
//! It runs nothing (`runner/`).

use std::path::Path;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::raw::{FaultKind, RawFault, RawScenario, RawStep, kind_name};
use super::{Fault, Located, Scenario, ScenarioError, Step};

/// Reads and validates a scenario file. `deploy.file` paths are relative to the scenario's
/// folder.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Read {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    parse(&file, &text, path.parent())
}

/// Parses and validates scenario text; `file` names it in errors.
pub fn parse(file: &str, text: &str, dir: Option<&Path>) -> Result<Scenario, ScenarioError> {
    let raw: RawScenario = serde_saphyr::from_str(text).map_err(|e| {
        let reason = match e.location() {
            Some(loc) if loc.line() > 0 => format!("line {}: {}", loc.line(), first_line(&e)),
            _ => first_line(&e),
        };
        ScenarioError::Yaml {
            file: file.to_string(),
            reason,
        }
    })?;
    let mut v = Validator {
        file,
        dir,
        nodes: None,
    };
    let steps = v.steps(raw.steps, true)?;
    if raw.name.trim().is_empty() {
        return Err(v.err(1, "name is empty"));
    }
    Ok(Scenario {
        name: raw.name,
        description: raw.description,
        converge_timeout: raw
            .converge_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(60)),
        bugs: raw.bugs,
        steps,
    })
}

/// The error's message without the source snippet serde-saphyr renders below it.
fn first_line(e: &serde_saphyr::Error) -> String {
    e.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

struct Validator<'a> {
    file: &'a str,
    dir: Option<&'a Path>,
    /// Node count, once `start` was seen.
    nodes: Option<usize>,
}

impl Validator<'_> {
    fn err(&self, line: u32, reason: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            file: self.file.to_string(),
            line,
            reason: reason.into(),
        }
    }

    fn steps(
        &mut self,
        raw: Vec<Spanned<RawStep>>,
        top: bool,
    ) -> Result<Vec<Located>, ScenarioError> {
        let mut out = Vec::with_capacity(raw.len());
        for (i, s) in raw.into_iter().enumerate() {
            let line = s.referenced.line() as u32;
            let step = self.step(line, s.value, top && i == 0)?;
            out.push(Located { line, step });
        }
        if top && out.is_empty() {
            return Err(self.err(1, "steps is empty: start with `- start: { nodes: 3 }`"));
        }
        Ok(out)
    }

    fn node_list(
        &self,
        line: u32,
        what: &str,
        nodes: &[usize],
    ) -> Result<Vec<usize>, ScenarioError> {
        let n = self.nodes.expect("checked by caller");
        if nodes.is_empty() {
            return Err(self.err(line, format!("{what} needs nodes, for example nodes: [1]")));
        }
        for &i in nodes {
            if i == 0 || i > n {
                return Err(self.err(
                    line,
                    format!("{what}: node {i} does not exist (nodes are numbered 1 to {n})"),
                ));
            }
        }
        let mut v = nodes.to_vec();
        v.sort_unstable();
        v.dedup();
        Ok(v)
    }

    fn via(&self, line: u32, via: Option<usize>) -> Result<Option<usize>, ScenarioError> {
        if let Some(v) = via {
            self.node_list(line, "via", &[v])?;
        }
        Ok(via)
    }

    fn step(&mut self, line: u32, raw: RawStep, first: bool) -> Result<Step, ScenarioError> {
        if let RawStep::Start(args) = raw {
            if !first {
                return Err(self.err(line, "start must be the first step, and only once"));
            }
            if args.nodes == 0 || args.nodes > 32 {
                return Err(self.err(line, "start: nodes must be between 1 and 32"));
            }
            for &k in args.node_env.keys() {
                if k == 0 || k > args.nodes {
                    return Err(self.err(
                        line,
                        format!("start: node_env names node {k}, which does not exist"),
                    ));
                }
            }
            self.nodes = Some(args.nodes);
            return Ok(Step::Start(args));
        }
        if self.nodes.is_none() {
            return Err(self.err(line, "the first step must be `start: { nodes: N }`"));
        }
        Ok(match raw {
            RawStep::Start(_) => unreachable!("handled above"),
            RawStep::Deploy { spec, file, via } => {
                let spec = match (spec, file) {
                    (Some(s), None) => s,
                    (None, Some(f)) => {
                        let p = self
                            .dir
                            .map(|d| d.join(&f))
                            .unwrap_or_else(|| f.clone().into());
                        std::fs::read_to_string(&p).map_err(|e| {
                            self.err(line, format!("deploy: cannot read {}: {e}", p.display()))
                        })?
                    }
                    _ => {
                        return Err(self.err(
                            line,
                            "deploy needs exactly one of spec (inline YAML) or file",
                        ));
                    }
                };
                if let Err(e) = crate::model::parse_specs(&spec) {
                    return Err(self.err(line, format!("deploy: {e}")));
                }
                Step::Deploy {
                    spec,
                    via: self.via(line, via)?,
                }
            }
            RawStep::Scale {
                service,
                replicas,
                via,
            } => Step::Scale {
                service,
                replicas,
                via: self.via(line, via)?,
            },
            RawStep::Rm { service, via } => Step::Rm {
                service,
                via: self.via(line, via)?,
            },
            RawStep::Fault(mut f) => {
                let owner_of = f.owner_of.take();
                if let Some(service) = &owner_of {
                    if !matches!(
                        f.kind,
                        FaultKind::Kill9
                            | FaultKind::Kill9WithInstances
                            | FaultKind::Pause
                            | FaultKind::Isolate
                            | FaultKind::Partition
                    ) {
                        return Err(self.err(
                            line,
                            format!("fault {} does not take owner_of", kind_name(f.kind)),
                        ));
                    }
                    if !f.nodes.is_empty() || !f.groups.is_empty() {
                        return Err(self.err(
                            line,
                            format!(
                                "fault {}: owner_of {service} picks the nodes; drop nodes/groups",
                                kind_name(f.kind)
                            ),
                        ));
                    }
                    // A placeholder the runner replaces with the owner.
                    f.nodes = vec![1];
                }
                Step::Fault {
                    fault: self.fault(line, f)?,
                    owner_of,
                }
            }
            RawStep::Heal => Step::Heal,
            RawStep::Recover => Step::Recover,
            RawStep::Wait { duration } => Step::Wait(duration.0),
            RawStep::WaitConverged { timeout } => Step::WaitConverged(timeout.map(|d| d.0)),
            RawStep::Check => Step::Check(Vec::new()),
            RawStep::CheckOnly(v) => {
                if v.is_empty() {
                    return Err(self.err(line, "check_only needs at least one invariant"));
                }
                Step::Check(v)
            }
            RawStep::Repeat { times, steps } => {
                if times == 0 || times > 1000 {
                    return Err(self.err(line, "repeat: times must be between 1 and 1000"));
                }
                let steps = self.steps(steps, false)?;
                if steps.is_empty() {
                    return Err(self.err(line, "repeat: steps is empty"));
                }
                Step::Repeat { times, steps }
            }
        })
    }

    fn fault(&self, line: u32, f: RawFault) -> Result<Fault, ScenarioError> {
        let n = self.nodes.expect("start seen");
        let name = format!("fault {}", kind_name(f.kind));
        let only = |allowed: &[&str]| -> Result<(), ScenarioError> {
            let given = [
                ("nodes", !f.nodes.is_empty()),
                ("groups", !f.groups.is_empty()),
                ("from", !f.from.is_empty()),
                ("to", !f.to.is_empty()),
                ("rate", f.rate.is_some()),
                ("delay", f.delay.is_some()),
                ("offset_ms", f.offset_ms.is_some()),
                ("graceful", f.graceful.is_some()),
                ("service", f.service.is_some()),
                ("slot", f.slot.is_some()),
            ];
            for (field, set) in given {
                if set && !allowed.contains(&field) {
                    return Err(self.err(line, format!("{name} does not take {field}")));
                }
            }
            Ok(())
        };
        let rate = |r: Option<f64>| -> Result<f64, ScenarioError> {
            match r {
                Some(r) if (0.0..=1.0).contains(&r) => Ok(r),
                Some(r) => Err(self.err(line, format!("{name}: rate {r} is not between 0 and 1"))),
                None => Err(self.err(line, format!("{name} needs rate, for example rate: 0.1"))),
            }
        };
        let fault = match f.kind {
            FaultKind::Kill9
            | FaultKind::Kill9WithInstances
            | FaultKind::Pause
            | FaultKind::Resume
            | FaultKind::Isolate => {
                only(&["nodes"])?;
                let nodes = self.node_list(line, &name, &f.nodes)?;
                match f.kind {
                    FaultKind::Kill9 => Fault::Kill9 { nodes },
                    FaultKind::Kill9WithInstances => Fault::Kill9WithInstances { nodes },
                    FaultKind::Pause => Fault::Pause { nodes },
                    FaultKind::Resume => Fault::Resume { nodes },
                    _ => Fault::Isolate { nodes },
                }
            }
            FaultKind::Restart => {
                only(&["nodes", "graceful"])?;
                Fault::Restart {
                    nodes: self.node_list(line, &name, &f.nodes)?,
                    graceful: f.graceful.unwrap_or(true),
                }
            }
            FaultKind::Partition => {
                only(&["nodes", "groups"])?;
                let groups = match (f.groups.is_empty(), f.nodes.is_empty()) {
                    (false, true) => {
                        let mut gs = Vec::new();
                        for g in &f.groups {
                            gs.push(self.node_list(line, &name, g)?);
                        }
                        gs
                    }
                    (true, false) => {
                        let side = self.node_list(line, &name, &f.nodes)?;
                        let rest: Vec<usize> = (1..=n).filter(|i| !side.contains(i)).collect();
                        vec![side, rest]
                    }
                    _ => {
                        return Err(self.err(
                            line,
                            "fault partition needs groups: [[1, 2, 3], [4, 5]] or nodes: [4, 5] (cut off from the rest)",
                        ));
                    }
                };
                let mut seen = vec![false; n + 1];
                for g in &groups {
                    for &i in g {
                        if std::mem::replace(&mut seen[i], true) {
                            return Err(self
                                .err(line, format!("fault partition: node {i} is in two groups")));
                        }
                    }
                }
                if groups.len() < 2 || groups.iter().any(Vec::is_empty) {
                    return Err(
                        self.err(line, "fault partition needs at least two non-empty groups")
                    );
                }
                Fault::Partition { groups }
            }
            FaultKind::OneWay => {
                only(&["from", "to"])?;
                let from = self.node_list(line, &format!("{name} from"), &f.from)?;
                let to = self.node_list(line, &format!("{name} to"), &f.to)?;
                if from.iter().any(|i| to.contains(i)) {
                    return Err(self.err(line, "fault one-way: a node is in both from and to"));
                }
                Fault::OneWay { from, to }
            }
            FaultKind::Bridge => {
                only(&[])?;
                if n < 4 {
                    return Err(self.err(line, "fault bridge needs at least 4 nodes"));
                }
                Fault::Bridge
            }
            FaultKind::LinkDown | FaultKind::LinkUp => {
                only(&["nodes"])?;
                let nodes = self.node_list(line, &name, &f.nodes)?;
                if nodes.len() != 2 {
                    return Err(self.err(line, format!("{name} needs exactly two nodes")));
                }
                Fault::Link {
                    nodes,
                    up: f.kind == FaultKind::LinkUp,
                }
            }
            FaultKind::Loss | FaultKind::Duplicate => {
                only(&["nodes", "rate"])?;
                let nodes = self.node_list(line, &name, &f.nodes)?;
                let rate = rate(f.rate)?;
                if f.kind == FaultKind::Loss {
                    Fault::Loss { nodes, rate }
                } else {
                    Fault::Duplicate { nodes, rate }
                }
            }
            FaultKind::Delay => {
                only(&["nodes", "delay"])?;
                let Some(d) = f.delay else {
                    return Err(self.err(line, "fault delay needs delay, for example delay: 50ms"));
                };
                Fault::Delay {
                    nodes: self.node_list(line, &name, &f.nodes)?,
                    delay_ms: d.0.as_millis() as u64,
                }
            }
            FaultKind::KillInstance => {
                only(&["service", "slot"])?;
                let Some(service) = f.service.clone() else {
                    return Err(self.err(
                        line,
                        "fault kill-instance needs service, for example service: web",
                    ));
                };
                Fault::KillInstance {
                    service,
                    slot: f.slot.unwrap_or(0),
                }
            }
            FaultKind::Skew => {
                only(&["nodes", "offset_ms"])?;
                let Some(offset_ms) = f.offset_ms else {
                    return Err(self.err(
                        line,
                        "fault skew needs offset_ms, for example offset_ms: 30000",
                    ));
                };
                Fault::Skew {
                    nodes: self.node_list(line, &name, &f.nodes)?,
                    offset_ms,
                }
            }
        };
        Ok(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants::Invariant;

    const SPEC: &str = "name: web\ncommand: [sleep, '100000']\nreplicas: 3\nresources: { cpu: 100m, memory: 16Mi }\n";

    fn parse_ok(text: &str) -> Scenario {
        parse("t.yaml", text, None).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_err(text: &str) -> String {
        parse("t.yaml", text, None)
            .expect_err("should fail")
            .to_string()
    }

    #[test]
    fn a_full_scenario_parses_into_typed_steps() {
        let text = format!(
            "name: kill-one
converge_timeout: 20s
bugs: {{ skip-reclaim: no-orphan }}
steps:
  - start: {{ nodes: 3, cpu: '1' }}
  - deploy:
      spec: |
{}
  - wait_converged: {{}}
  - fault: {{ kind: kill9, nodes: [2] }}
  - wait: {{ for: 500ms }}
  - fault: {{ kind: partition, nodes: [3] }}
  - heal
  - repeat:
      times: 2
      steps:
        - fault: {{ kind: link-down, nodes: [1, 2] }}
        - fault: {{ kind: link-up, nodes: [1, 2] }}
  - check_only: [capacity, majority]
  - check
",
            SPEC.lines()
                .map(|l| format!("        {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let s = parse_ok(&text);
        assert_eq!(s.name, "kill-one");
        assert_eq!(s.converge_timeout, Duration::from_secs(20));
        assert_eq!(s.bugs.get("skip-reclaim"), Some(&Invariant::NoOrphan));
        assert_eq!(s.start().nodes, 3);
        assert_eq!(s.start().cpu, "1");
        assert_eq!(s.start().memory, "2Gi");
        let steps: Vec<&Step> = s.steps.iter().map(|l| &l.step).collect();
        assert_eq!(
            steps[3],
            &Step::Fault {
                fault: Fault::Kill9 { nodes: vec![2] },
                owner_of: None
            }
        );
        assert_eq!(s.steps[3].line, 13);
        assert_eq!(steps[4], &Step::Wait(Duration::from_millis(500)));
        assert_eq!(
            steps[5],
            &Step::Fault {
                fault: Fault::Partition {
                    groups: vec![vec![3], vec![1, 2]]
                },
                owner_of: None
            }
        );
        assert_eq!(steps[6], &Step::Heal);
        match steps[7] {
            Step::Repeat { times: 2, steps } => {
                assert_eq!(steps.len(), 2);
                assert_eq!(steps[1].line, 21);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            steps[8],
            &Step::Check(vec![Invariant::Capacity, Invariant::Majority])
        );
        assert_eq!(steps[9], &Step::Check(vec![]));
    }

    #[test]
    fn an_unknown_field_names_its_line() {
        let e = parse_err(
            "name: x\nsteps:\n  - start: { nodes: 3 }\n  - fault: { kind: kill9, node: [2] }\n",
        );
        assert!(e.contains("line 4"), "{e}");
        assert!(e.contains("node"), "{e}");
    }

    #[test]
    fn an_unknown_fault_kind_names_its_line() {
        let e = parse_err(
            "name: x\nsteps:\n  - start: { nodes: 3 }\n  - wait: { for: 1s }\n  - fault: { kind: explode, nodes: [2] }\n",
        );
        assert!(e.contains("line 5"), "{e}");
    }

    #[test]
    fn a_node_out_of_range_names_the_line_and_the_range() {
        let e = parse_err(
            "name: x\nsteps:\n  - start: { nodes: 3 }\n  - wait: { for: 1s }\n  - fault: { kind: kill9, nodes: [4] }\n",
        );
        assert_eq!(
            e,
            "scenario t.yaml line 5: fault kill9: node 4 does not exist (nodes are numbered 1 to 3)"
        );
    }

    #[test]
    fn a_field_the_fault_kind_does_not_take_is_refused() {
        let e = parse_err(
            "name: x\nsteps:\n  - start: { nodes: 3 }\n  - fault: { kind: kill9, nodes: [1], rate: 0.5 }\n",
        );
        assert_eq!(e, "scenario t.yaml line 4: fault kill9 does not take rate");
    }

    #[test]
    fn a_bad_duration_names_its_line() {
        let e = parse_err("name: x\nsteps:\n  - start: { nodes: 3 }\n  - wait: { for: soon }\n");
        assert!(e.contains("line 4"), "{e}");
        assert!(e.contains("soon"), "{e}");
    }

    #[test]
    fn owner_of_aims_a_fault_at_a_service_and_excludes_nodes() {
        let s = parse_ok(
            "name: x\nsteps:\n  - start: { nodes: 5 }\n  - fault: { kind: partition, owner_of: leader }\n",
        );
        assert!(matches!(&s.steps[1].step, Step::Fault { owner_of: Some(o), .. } if o == "leader"));
        let e = parse_err(
            "name: x\nsteps:\n  - start: { nodes: 5 }\n  - fault: { kind: kill9, owner_of: leader, nodes: [2] }\n",
        );
        assert_eq!(
            e,
            "scenario t.yaml line 4: fault kill9: owner_of leader picks the nodes; drop nodes/groups"
        );
        let e = parse_err(
            "name: x\nsteps:\n  - start: { nodes: 5 }\n  - fault: { kind: loss, owner_of: leader, rate: 0.1 }\n",
        );
        assert_eq!(
            e,
            "scenario t.yaml line 4: fault loss does not take owner_of"
        );
    }

    #[test]
    fn start_must_come_first() {
        let e = parse_err("name: x\nsteps:\n  - heal\n  - start: { nodes: 3 }\n");
        assert_eq!(
            e,
            "scenario t.yaml line 3: the first step must be `start: { nodes: N }`"
        );
        let e = parse_err("name: x\nsteps:\n  - start: { nodes: 3 }\n  - start: { nodes: 3 }\n");
        assert_eq!(
            e,
            "scenario t.yaml line 4: start must be the first step, and only once"
        );
    }

    #[test]
    fn a_node_in_two_partition_groups_is_refused() {
        let e = parse_err(
            "name: x\nsteps:\n  - start: { nodes: 3 }\n  - fault: { kind: partition, groups: [[1, 2], [2, 3]] }\n",
        );
        assert_eq!(
            e,
            "scenario t.yaml line 4: fault partition: node 2 is in two groups"
        );
    }

    #[test]
    fn a_deploy_whose_spec_has_no_name_is_refused_with_its_line() {
        let e = parse_err(
            "name: x\nsteps:\n  - start: { nodes: 3 }\n  - deploy: { spec: 'replicas: 2' }\n",
        );
        assert!(e.starts_with("scenario t.yaml line 4: deploy:"), "{e}");
    }

    #[test]
    fn every_shipped_scenario_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).expect("chaos/scenarios exists") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                load(&path).unwrap_or_else(|e| panic!("{e}"));
                count += 1;
            }
        }
        assert!(count >= 12, "only {count} scenarios");
    }
}
