//! Writes through the CLI of a running agent (`deploy`, `scale`, `rm`): what the harness
//! expects afterwards, the acknowledged writes the no-lost-write check needs, and a mark on the
//! timeline. It does not check anything itself (`checks.rs`).

use anyhow::{Context, bail};

use super::sampler::lock;
use super::{Runner, WRITE_TIMEOUT};
use crate::fleet::{Target, cli};
use crate::model::{AckedWrite, AgentState, WriteObs, parse_specs};

impl Runner<'_> {
    /// The node whose API takes a write: `via`, else the first running one.
    fn via(&self, via: Option<usize>) -> anyhow::Result<Target> {
        let targets = self.fleet()?.targets();
        match via {
            Some(i) => {
                let t = targets[i - 1].clone();
                if t.state != AgentState::Running {
                    bail!("cannot write through n{i}: its agent is {:?}", t.state);
                }
                Ok(t)
            }
            None => targets
                .into_iter()
                .find(|t| t.state == AgentState::Running)
                .context("no running agent to write through"),
        }
    }

    pub(super) fn write(
        &mut self,
        args: &[&str],
        via: Option<usize>,
    ) -> anyhow::Result<Vec<WriteObs>> {
        let t = self.via(via)?;
        let text = cli(self.shoal(), &t, args, WRITE_TIMEOUT)?;
        let writes: Vec<WriteObs> = serde_json::from_str::<Vec<WriteObs>>(&text)
            .or_else(|_| serde_json::from_str::<WriteObs>(&text).map(|w| vec![w]))
            .with_context(|| format!("shoal {} printed unexpected JSON: {text}", args.join(" ")))?;
        let at = self.now_ms();
        // Convergence is measured from the last fault or write.
        self.last_disruption_ms = at;
        let what = match args {
            ["deploy", ..] => "deploy".to_string(),
            _ => args.join(" "),
        };
        self.marks.push((at, format!("{what} via n{}", t.node)));
        Ok(writes)
    }

    pub(super) fn ack(&mut self, writes: Vec<WriteObs>, deleted: bool) {
        let at_ms = self.now_ms();
        for w in writes {
            self.acked.push(AckedWrite {
                at_ms,
                service: w.service,
                revision: w.revision,
                changed: w.changed,
                deleted,
            });
        }
    }

    pub(super) fn deploy(&mut self, spec: &str, via: Option<usize>) -> anyhow::Result<()> {
        let infos = parse_specs(spec)?;
        self.deploys += 1;
        let path = self
            .fleet()?
            .work
            .join(format!("deploy-{}.yaml", self.deploys));
        std::fs::write(&path, spec).with_context(|| format!("cannot write {}", path.display()))?;
        let path_s = path.to_string_lossy().into_owned();
        let writes = self.write(&["deploy", "-f", &path_s], via)?;
        {
            let mut e = lock(&self.shared.expected);
            for w in &writes {
                let Some(info) = infos.iter().find(|i| i.name == w.service) else {
                    continue;
                };
                let m = e.entry(w.service.clone()).or_default();
                m.replicas = info.replicas;
                m.majority = info.majority;
                m.deleted = false;
                m.latest = info.resources;
                m.resources.insert(w.revision.clone(), info.resources);
            }
        }
        self.ack(writes, false);
        Ok(())
    }
}
