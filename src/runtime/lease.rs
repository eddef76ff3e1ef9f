//! The instance-side lease of `partition: majority` services (process driver).
//!
//! A node may run a majority instance only while it has seen a majority of the fleet within the
//! last `lease_ms`; the other side re-places the slot only after `lease_ms + drift_margin_ms`.
//! The agent enforces that itself (`Fence::fenced`, src/node/fence.rs), but an agent that is paused (SIGSTOP, a
//! hung process) or killed with its instances left running cannot: its instance would run on
//! beside the replacement. So the agent also writes how long its lease still holds to
//! `<data-dir>/majority.lease`, as a deadline on `CLOCK_BOOTTIME`, and the process driver starts
//! each majority instance under `shoal lease-run`, a small supervisor in the instance's own
//! session that kills the instance as soon as that deadline passes without renewal. The
//! supervisor is a separate process, so it keeps counting while the agent is stopped.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The lease file's name in the data dir.
pub const LEASE_FILE: &str = "majority.lease";

/// How often the supervisor checks its instance and the lease.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Milliseconds on `CLOCK_BOOTTIME`: monotonic, shared by every process of the machine, and
/// counting through a suspend (a suspended machine's lease must not look fresh on resume).
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_BOOTTIME exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

pub fn lease_path(data_dir: &Path) -> PathBuf {
    data_dir.join(LEASE_FILE)
}

/// Records that this node's lease holds for `valid_for_ms` more (0: it has expired). Written to
/// a temporary file and renamed, so a reader never sees half of it.
pub fn write_lease(path: &Path, valid_for_ms: u64) -> io::Result<()> {
    let until = boottime_ms().saturating_add(valid_for_ms);
    let tmp = path.with_extension("lease.tmp");
    std::fs::write(&tmp, format!("{until}\n"))?;
    std::fs::rename(&tmp, path)
}

/// The deadline in a lease file, if it is there and readable.
pub fn read_lease(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Why `lease_run` could not run its instance.
#[derive(Debug, thiserror::Error)]
pub enum LeaseRunError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot wait for the instance: {0}")]
    Wait(#[source] io::Error),
}

/// `shoal lease-run`: runs `program` as a child and exits as it does (same code, same signal);
/// kills it when the lease at `lease` has expired, or when there is no lease file `grace_ms`
/// after the start. Never returns when the child ends by a signal (it re-raises it).
pub fn lease_run(
    lease: &Path,
    grace_ms: u64,
    program: &OsStr,
    arg0: Option<&OsStr>,
    args: &[OsString],
) -> Result<i32, LeaseRunError> {
    // The driver signals the whole session; the instance decides how to stop and this
    // supervisor leaves when it does.
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: installing SIG_IGN has no preconditions.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let mut cmd = std::process::Command::new(program);
    if let Some(a) = arg0 {
        cmd.arg0(a);
    }
    cmd.args(args);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| LeaseRunError::Spawn {
        program: program.to_string_lossy().into_owned(),
        source,
    })?;
    let started = boottime_ms();
    loop {
        if let Some(status) = child.try_wait().map_err(LeaseRunError::Wait)? {
            if let Some(sig) = status.signal() {
                // Leave the way the instance did, so the driver reports the same signal.
                // SAFETY: restoring the default action and raising a signal at ourselves.
                unsafe {
                    libc::signal(sig, libc::SIG_DFL);
                    libc::raise(sig);
                }
            }
            return Ok(status.code().unwrap_or(1));
        }
        let now = boottime_ms();
        let expired = match read_lease(lease) {
            Some(until) => now > until,
            None => now > started.saturating_add(grace_ms),
        };
        if expired {
            eprintln!(
                "shoal lease-run: this node's majority lease ({}) expired without renewal \
                 (its agent is stopped, hung or cut off): stopping the instance so that it \
                 never runs beside its replacement",
                lease.display()
            );
            let _ = child.kill();
            let _ = child.wait();
            return Ok(137);
        }
        std::thread::sleep(CHECK_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_round_trips_and_expires() {
        let dir = std::env::temp_dir().join(format!("shoal-lease-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = lease_path(&dir);
        assert_eq!(read_lease(&p), None);
        write_lease(&p, 60_000).unwrap();
        let until = read_lease(&p).unwrap();
        assert!(until > boottime_ms() + 50_000);
        write_lease(&p, 0).unwrap();
        assert!(read_lease(&p).unwrap() <= boottime_ms());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_expired_lease_kills_the_instance_and_a_valid_one_lets_it_finish() {
        let dir = std::env::temp_dir().join(format!("shoal-lease-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = lease_path(&dir);
        write_lease(&p, 60_000).unwrap();
        let sh = OsStr::new("/bin/sh");
        let code = lease_run(&p, 0, sh, None, &["-c".into(), "exit 3".into()]).unwrap();
        assert_eq!(code, 3, "a valid lease: the instance's own exit code");
        write_lease(&p, 0).unwrap();
        let code = lease_run(&p, 0, sh, None, &["-c".into(), "sleep 30".into()]).unwrap();
        assert_eq!(code, 137, "an expired lease: killed");
        std::fs::remove_file(&p).unwrap();
        let code = lease_run(&p, 0, sh, None, &["-c".into(), "sleep 30".into()]).unwrap();
        assert_eq!(code, 137, "no lease file after the grace period: killed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
