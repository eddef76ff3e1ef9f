//! The majority lease file writer: keeps `<data-dir>/majority.lease` current from the core's
//! `majority_lease_ms`, off the node loop. What the lease means and how instances use it is
//! `runtime::lease`'s; when it is renewed is the node loop's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

/// Keeps `<data-dir>/majority.lease` current (see `runtime::lease`): rewritten at most once a
/// second, and at once when the lease runs out or comes back. The write runs on tokio's
/// blocking pool (the loop never waits on the disk), one at a time: a renewal due while the
/// previous write is still in flight waits for the next turn.
pub(super) struct LeaseWriter {
    path: std::path::PathBuf,
    last: Option<(Instant, bool)>,
    in_flight: Option<tokio::task::JoinHandle<()>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl LeaseWriter {
    pub(super) fn new(path: std::path::PathBuf) -> LeaseWriter {
        LeaseWriter {
            path,
            last: None,
            in_flight: None,
            failing: Arc::default(),
        }
    }

    pub(super) fn renew(&mut self, valid_for_ms: u64) {
        let holds = valid_for_ms > 0;
        if self
            .last
            .is_some_and(|(t, h)| h == holds && t.elapsed() < Duration::from_secs(1))
            || self.in_flight.as_ref().is_some_and(|w| !w.is_finished())
        {
            return;
        }
        self.last = Some((Instant::now(), holds));
        let path = self.path.clone();
        let failing = self.failing.clone();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            use std::sync::atomic::Ordering;
            match crate::runtime::lease::write_lease(&path, valid_for_ms) {
                Ok(()) => failing.store(false, Ordering::Relaxed),
                Err(e) => {
                    if !failing.swap(true, Ordering::Relaxed) {
                        warn!(path = %path.display(), error = %e, "cannot renew the majority lease: majority instances here will be stopped when it runs out; free disk space or fix the data dir's permissions");
                    }
                }
            }
        }));
    }
}
