//! An instance's log files: `logs/<name>.log` (the live log, appended to by the process),
//! `<name>.log.1` (the tail kept by the last rotation) and `<name>.log.old` (the log of a stopped
//! instance, for post-mortem); rotation by size, the offset of the last lines, and streaming a
//! log (following it) to a reader of `logs()`.
//!
//! Deliberately not here: writing the log (the instance's own stdout and stderr go straight to
//! the file), and any parsing of its contents.

use std::ffi::OsStr;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::Inner;
use crate::ids::InstanceKey;

/// How often a followed log is checked for appended bytes.
const LOG_FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Capacity of the channel a log is streamed through.
pub(super) const LOG_CHANNEL: usize = 16;
/// Largest chunk sent through a log channel.
const LOG_CHUNK: usize = 64 * 1024;
/// A live log larger than this is rotated.
const LOG_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// How much of a rotated log's end is kept in `<name>.log.1`.
const LOG_KEPT_BYTES: u64 = 1024 * 1024;
/// How often the watch task checks log sizes.
pub(super) const LOG_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How many `.log.old` files (logs of stopped instances) are kept; the oldest go first.
const OLD_LOGS_KEPT: usize = 64;

impl Inner {
    pub(super) fn log_path(&self, key: &InstanceKey) -> PathBuf {
        self.logs_dir.join(format!("{}.log", key.name()))
    }
}

/// Rotates every live log in `dir` larger than [`LOG_MAX_BYTES`].
pub(super) fn rotate_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(|e| Some(e.ok()?.path())) {
        if path.extension() != Some(OsStr::new("log")) {
            continue;
        }
        match rotate_log(&path, LOG_MAX_BYTES, LOG_KEPT_BYTES) {
            Ok(true) => info!(path = %path.display(), "log rotated"),
            Ok(false) => {}
            Err(e) => warn!(path = %path.display(), error = %e, "log rotation failed"),
        }
    }
}

/// If the log at `path` is larger than `max` bytes, copies its last `kept` bytes (from a line
/// start) to `<path>.1` and truncates it. The writer holds the file in append mode, so it goes on
/// at the new end; bytes written between the copy and the truncation are lost.
fn rotate_log(path: &Path, max: u64, kept: u64) -> io::Result<bool> {
    let len = std::fs::metadata(path)?.len();
    if len <= max {
        return Ok(false);
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let start = len.saturating_sub(kept);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    (&mut file).take(kept).read_to_end(&mut tail)?;
    if start > 0
        && let Some(newline) = tail.iter().position(|&b| b == b'\n')
    {
        tail.drain(..=newline);
    }
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(".1");
    let mut tmp = rotated.clone();
    tmp.push(".tmp");
    std::fs::write(&tmp, &tail)?;
    std::fs::rename(&tmp, &rotated)?;
    file.set_len(0)?;
    Ok(true)
}

/// The offset where the last `lines` lines of a file of length `len` start (a final newline
/// ends the last line; it does not start an empty one).
async fn tail_offset(file: &mut tokio::fs::File, len: u64, lines: usize) -> io::Result<u64> {
    if lines == 0 {
        return Ok(len);
    }
    let mut buf = vec![0u8; LOG_CHUNK];
    let mut end = len;
    let mut newlines = 0;
    while end > 0 {
        let n = (end.min(buf.len() as u64)) as usize;
        let start = end - n as u64;
        file.seek(SeekFrom::Start(start)).await?;
        file.read_exact(&mut buf[..n]).await?;
        for i in (0..n).rev() {
            let at = start + i as u64;
            if buf[i] == b'\n' && at + 1 != len {
                newlines += 1;
                if newlines == lines {
                    return Ok(at + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

/// Streams a log into `tx`: the whole file or its last `tail_lines` lines, then with `follow`
/// what is appended, until the instance's record is gone or the receiver is dropped.
pub(super) async fn stream_log(
    inner: Arc<Inner>,
    key: InstanceKey,
    follow: bool,
    tail_lines: Option<usize>,
    tx: mpsc::Sender<Vec<u8>>,
) {
    let path = inner.log_path(&key);
    let stream = async {
        let mut file = tokio::fs::File::open(&path).await?;
        let len = file.metadata().await?.len();
        let mut pos = match tail_lines {
            Some(n) => tail_offset(&mut file, len, n).await?,
            None => 0,
        };
        let mut buf = vec![0u8; LOG_CHUNK];
        loop {
            // Checked before draining, so the bytes written before the stop are still sent.
            let gone = !inner.record_path(&key).exists();
            if file.metadata().await?.len() < pos {
                pos = 0; // rotated: the writer went on from the start
            }
            file.seek(SeekFrom::Start(pos)).await?;
            loop {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                pos += n as u64;
                if tx.send(buf[..n].to_vec()).await.is_err() {
                    return Ok(());
                }
            }
            if !follow || gone {
                return Ok(());
            }
            tokio::select! {
                () = tokio::time::sleep(LOG_FOLLOW_POLL) => {}
                () = tx.closed() => return Ok(()),
            }
        }
    };
    let result: io::Result<()> = stream.await;
    if let Err(e) = result {
        warn!(instance = %key.name(), path = %path.display(), error = %e, "log stream ended");
    }
}

/// Keeps a stopped instance's log as `<name>.log.old` (replacing an older one), drops its
/// rotated tail, and keeps at most [`OLD_LOGS_KEPT`] old logs in `dir`.
pub(super) fn keep_old_log(log: &Path, dir: &Path) {
    let with_suffix = |suffix: &str| {
        let mut p = log.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    match std::fs::rename(log, with_suffix(".old")) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(path = %log.display(), error = %e, "log of a stopped instance could not be kept")
        }
    }
    let _ = std::fs::remove_file(with_suffix(".1"));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut old: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let path = e.path();
            if path.extension() != Some(OsStr::new("old")) {
                return None;
            }
            Some((e.metadata().ok()?.modified().ok()?, path))
        })
        .collect();
    if old.len() > OLD_LOGS_KEPT {
        old.sort();
        for (_, path) in &old[..old.len() - OLD_LOGS_KEPT] {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tail_offset_finds_the_start_of_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut text = "x".repeat(LOG_CHUNK + 10);
        text.push_str("\nsecond\nthird\n");
        std::fs::write(&path, &text).unwrap();
        let mut file = tokio::fs::File::open(&path).await.unwrap();
        let len = text.len() as u64;
        let at = |n| {
            text.len()
                - text
                    .split_inclusive('\n')
                    .rev()
                    .take(n)
                    .map(str::len)
                    .sum::<usize>()
        };
        for lines in 0..=3 {
            let offset = tail_offset(&mut file, len, lines).await.unwrap();
            assert_eq!(offset as usize, at(lines), "{lines} lines");
        }
        assert_eq!(tail_offset(&mut file, len, 10).await.unwrap(), 0);
    }

    #[test]
    fn oversized_log_is_rotated_keeping_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal-web-0-1.log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        assert!(!rotate_log(&path, text.len() as u64, 30).unwrap());
        assert!(rotate_log(&path, 100, 30).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        let kept = std::fs::read_to_string(dir.path().join("shoal-web-0-1.log.1")).unwrap();
        assert_eq!(kept, "line 97\nline 98\nline 99\n");
    }
}
