//! The one fleet harness: real `shoal agent` processes started, stopped, killed, paused and
//! restarted from outside, the `shoal` CLI run against them with typed replies, and instances
//! counted from the process table. The integration tests (`tests/support`), the chaos harness
//! (`chaos/`, agents inside network namespaces) and `shoal-chaos measure` (agents on 127.0.0.1)
//! all start agents through it.
//!
//! - [`launch`]: how one agent process is started (data dir, ports, key, seeds, log file, and
//!   a launch hook: a network namespace to enter between fork and exec, a session of its own);
//! - [`cli`]: the `shoal` CLI run against one agent, bounded in time, its `-o json` read into
//!   the API's own types ([`crate::node::api`]);
//! - [`agent`]: one agent on 127.0.0.1 with its own process, and [`fleet`]: several joined
//!   through the first;
//! - [`procs`]: what runs, read from `/proc` (instances, RSS, CPU), whatever the agents say.
//!
//! It is test-only code: compiled with the `testing` feature, never into the shipped binary. It
//! decides nothing about the cluster and asserts nothing; callers decide what a figure or an
//! answer means.

pub mod agent;
pub mod cli;
pub mod fleet;
pub mod launch;
pub mod procs;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use agent::Agent;
pub use cli::AgentCli;
pub use fleet::Fleet;
pub use launch::{AgentLaunch, Hook, keygen};

/// Why a harness operation failed. Each variant names the thing that failed and carries what a
/// caller prints; none of them means the cluster misbehaved (that is for the caller to judge).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A process could not be started (no binary, no permission, the launch hook refused).
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A file or folder the harness needs could not be made or read.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A CLI command ran and failed.
    #[error("shoal {args}{where_}: {stderr}")]
    Cli {
        args: String,
        /// ` on n3` when the target has a name, else empty.
        where_: String,
        stderr: String,
    },
    /// A CLI command printed JSON that is not the reply the API promises.
    #[error("shoal {args}{where_} printed unexpected JSON ({reason}): {text}")]
    Json {
        args: String,
        where_: String,
        reason: String,
        /// The first 200 characters of what was printed.
        text: String,
    },
    /// Something did not happen in time (a paused agent never answers).
    #[error("timed out after {} waiting for {what}", humantime::format_duration(*.after))]
    Timeout { what: String, after: Duration },
    /// The agent process exited before it answered.
    #[error("the agent in {} exited ({status}) before its API answered; see {}", .dir.display(), .log.display())]
    Exited {
        dir: PathBuf,
        log: PathBuf,
        status: String,
    },
}

impl HarnessError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> HarnessError {
        HarnessError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Polls `f` every `every` until it returns `Some`, or gives up after `timeout` with a
/// [`HarnessError::Timeout`] naming `what`. The timeout is a correctness bound, not a figure.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, HarnessError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(HarnessError::Timeout {
                what: what.to_owned(),
                after: timeout,
            });
        }
        std::thread::sleep(every);
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for the agent to take).
pub fn free_port() -> Result<u16, HarnessError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| HarnessError::io("cannot find a free port on 127.0.0.1", e))
}

/// The `p`-th percentile of `xs` (nearest rank over `0..len-1`, ties to even); `None` when
/// empty. The same rule the measurement tables have always used, so figures stay comparable.
pub fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let k = (p / 100.0 * (v.len() - 1) as f64).round_ties_even() as usize;
    Some(v[k.min(v.len() - 1)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let xs = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&xs, 50.0), Some(3.0));
        assert_eq!(percentile(&xs, 99.0), Some(5.0));
        assert_eq!(percentile(&xs, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
        // Rank 4.5 of ten values rounds to the even rank 4.
        let ten: Vec<f64> = (0..10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 50.0), Some(4.0));
    }

    #[test]
    fn poll_gives_up_naming_what_it_waited_for() {
        let err = poll("nothing", Duration::ZERO, Duration::ZERO, || None::<()>).unwrap_err();
        assert_eq!(err.to_string(), "timed out after 0s waiting for nothing");
        assert_eq!(
            poll("one", Duration::ZERO, Duration::ZERO, || Some(1)).unwrap(),
            1
        );
    }
}
