//! The event watch behind `watch()`: subscribes to the daemon's `die` and `oom` events for this
//! owner's containers and turns a container's death into `RuntimeEvent::Exited`, replaying from
//! the daemon's own clock so no event is lost to the setup or to a daemon restart. Also the
//! bounded set of container ids the driver is stopping, whose `die` is not an exit on its own.
//!
//! Deliberately not here: what an exit means (restart or not is `reconcile/`'s call), and the
//! periodic re-list that repairs lost events (the agent shell does it through `list()`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::EventMessage;
use bollard::query_parameters::{EventsOptions, EventsOptionsBuilder, InspectContainerOptions};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::lifecycle::parse_identity;
use super::{DockerDriver, daemon_error, error_chain, short_id};
use crate::runtime::{DriverError, ExitInfo, RuntimeEvent};

/// How many container ids the driver remembers as "being stopped by us" or "OOM-killed".
const RECENT_IDS: usize = 512;
/// Reconnect backoff of the event watch after the stream ends (daemon restart).
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(500);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// When the daemon's clock cannot be read, the watch replays events from this long before now.
const WATCH_CLOCK_MARGIN: Duration = Duration::from_secs(5);

impl DockerDriver {
    pub(super) async fn start_watch(
        &self,
        events: mpsc::Sender<RuntimeEvent>,
    ) -> Result<(), DriverError> {
        let since_nanos = self.daemon_now_nanos().await?;
        let watcher = Watcher {
            docker: self.docker.clone(),
            filters: {
                let mut filters = self.owner_filters();
                filters.insert("type", vec!["container".to_string()]);
                filters.insert("event", vec!["die".to_string(), "oom".to_string()]);
                filters
            },
            stopping: self.stopping.clone(),
            oom_killed: RecentIds::default(),
            events,
            since_nanos,
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(watcher.run(ready_tx));
        ready_rx.await.unwrap_or_else(|_| {
            Err(DriverError::Unavailable {
                reason: "docker event watch ended while starting".into(),
            })
        })
    }

    /// The daemon's clock, read from `docker info`, so the watch replays from a time the daemon
    /// agrees with even when this host's clock differs.
    async fn daemon_now_nanos(&self) -> Result<i64, DriverError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| daemon_error("docker info", e))?;
        if let Some(nanos) = info.system_time.as_deref().and_then(parse_rfc3339_nanos) {
            return Ok(nanos);
        }
        warn!(system_time = ?info.system_time, "cannot read the docker daemon's clock; using this host's");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(WATCH_CLOCK_MARGIN);
        Ok(i64::try_from(now.as_nanos()).unwrap_or(i64::MAX))
    }
}

/// The task behind `watch()`: turns docker events into `RuntimeEvent::Exited`.
struct Watcher {
    docker: Docker,
    filters: HashMap<&'static str, Vec<String>>,
    stopping: Arc<Mutex<RecentIds>>,
    /// Containers with an `oom` event whose `die` has not been seen yet.
    oom_killed: RecentIds,
    events: mpsc::Sender<RuntimeEvent>,
    /// Daemon time (ns since the epoch) from which the next subscription replays events.
    since_nanos: i64,
}

impl Watcher {
    fn options(&self) -> EventsOptions {
        EventsOptionsBuilder::new()
            .since(&since_param(self.since_nanos))
            .filters(&self.filters)
            .build()
    }

    async fn run(mut self, ready: oneshot::Sender<Result<(), DriverError>>) {
        let mut ready = Some(ready);
        let mut backoff = WATCH_BACKOFF_MIN;
        loop {
            let mut stream = Box::pin(self.docker.events(Some(self.options())));
            // Streams are lazy: the request goes out on the first poll. Poll once before
            // reporting ready.
            let mut pending_item = match futures::poll!(stream.next()) {
                Poll::Pending => None,
                Poll::Ready(item) => Some(item),
            };
            if let Some(ready) = ready.take() {
                if let Some(Some(Err(e))) = pending_item {
                    let _ = ready.send(Err(daemon_error("watch docker events", e)));
                    return;
                }
                let _ = ready.send(Ok(()));
                debug!("docker event watch started");
            }
            loop {
                let item = match pending_item.take() {
                    Some(item) => item,
                    None => tokio::select! {
                        () = self.events.closed() => return,
                        item = stream.next() => item,
                    },
                };
                match item {
                    Some(Ok(event)) => {
                        backoff = WATCH_BACKOFF_MIN;
                        if !self.handle(event).await {
                            return; // nobody listens any more
                        }
                    }
                    Some(Err(e)) => {
                        warn!(error = %error_chain(&e), retry_in_ms = backoff.as_millis() as u64, "docker event stream failed");
                        break;
                    }
                    None => {
                        warn!(
                            retry_in_ms = backoff.as_millis() as u64,
                            "docker event stream ended"
                        );
                        break;
                    }
                }
            }
            tokio::select! {
                () = self.events.closed() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
        }
    }

    /// Handles one event; false once the receiver of `events` is gone.
    async fn handle(&mut self, event: EventMessage) -> bool {
        if let Some(t) = event.time_nano {
            self.since_nanos = self.since_nanos.max(t.saturating_add(1));
        }
        let Some(actor) = event.actor else {
            return true;
        };
        let Some(id) = actor.id else { return true };
        let attributes = actor.attributes.unwrap_or_default();
        match event.action.as_deref() {
            // The kernel killed a process in the container; its `die` follows.
            Some("oom") => {
                debug!(container = short_id(&id), "container hit its memory limit");
                self.oom_killed.insert(id);
                true
            }
            Some("die") => {
                if lock(&self.stopping).take(&id) {
                    debug!(
                        container = short_id(&id),
                        "container stopped by this driver"
                    );
                    return true;
                }
                let key = match parse_identity(&attributes) {
                    Ok((key, _)) => key,
                    Err(why) => {
                        warn!(
                            container = short_id(&id),
                            why, "exit of a container with malformed shoal labels"
                        );
                        return true;
                    }
                };
                let code = attributes
                    .get("exitCode")
                    .and_then(|c| c.parse::<i32>().ok());
                let oom_killed = self.oom_killed.take(&id) || self.inspect_oom_killed(&id).await;
                info!(instance = %key, code = ?code, oom_killed, "instance exited");
                let exit = ExitInfo {
                    code,
                    signal: None,
                    oom_killed,
                };
                self.events
                    .send(RuntimeEvent::Exited { key, exit })
                    .await
                    .is_ok()
            }
            _ => true,
        }
    }

    async fn inspect_oom_killed(&self, id: &str) -> bool {
        match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => c.state.and_then(|s| s.oom_killed).unwrap_or(false),
            Err(e) => {
                debug!(container = short_id(id), error = %error_chain(&e), "cannot inspect exited container");
                false
            }
        }
    }
}

/// A bounded set of container ids; the oldest is forgotten first.
#[derive(Default)]
pub(super) struct RecentIds {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl RecentIds {
    pub(super) fn insert(&mut self, id: String) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
            if self.order.len() > RECENT_IDS
                && let Some(oldest) = self.order.pop_front()
            {
                self.set.remove(&oldest);
            }
        }
    }

    /// Removes `id`; true if it was there.
    pub(super) fn take(&mut self, id: &str) -> bool {
        let present = self.set.remove(id);
        if present {
            self.order.retain(|x| x != id);
        }
        present
    }
}

pub(super) fn lock(ids: &Mutex<RecentIds>) -> MutexGuard<'_, RecentIds> {
    // The set holds no invariant a panic elsewhere could break.
    ids.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Unix time in nanoseconds of an RFC 3339 timestamp as docker writes it
/// (`2026-11-25T12:52:43.44186225Z`, or with a `+01:00` offset). A timestamp without a zone is
/// refused: it names no instant. `humantime` reads the date and clock (UTC only, 1970 onwards,
/// any number of fraction digits, truncated to nanoseconds); the offset is applied here.
fn parse_rfc3339_nanos(text: &str) -> Option<i64> {
    let (clock, offset_secs) = split_utc_offset(text)?;
    let since_epoch = humantime::parse_rfc3339_weak(clock)
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?;
    let nanos = i64::try_from(since_epoch.as_nanos()).ok()?;
    nanos.checked_sub(offset_secs.checked_mul(1_000_000_000)?)
}

/// Splits `<date>T<clock><zone>` into the date and clock, and the zone's offset east of UTC in
/// seconds (`Z` is 0). `None` when there is no zone. The sign is looked for after the seconds
/// (byte 19 on), so the date's dashes are never taken for a negative offset.
fn split_utc_offset(text: &str) -> Option<(&str, i64)> {
    if let Some(clock) = text.strip_suffix(['Z', 'z']) {
        return Some((clock, 0));
    }
    let at = 19 + text.get(19..)?.rfind(['+', '-'])?;
    let (clock, offset) = text.split_at(at);
    let (hours, minutes) = offset[1..].split_once(':')?;
    let two_digits = |s: &str| -> Option<i64> {
        if s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    let secs = two_digits(hours)? * 3600 + two_digits(minutes)? * 60;
    Some((clock, if offset.starts_with('-') { -secs } else { secs }))
}

/// Docker's `since` parameter: `seconds.nanoseconds`.
fn since_param(nanos: i64) -> String {
    format!(
        "{}.{:09}",
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_timestamps_parse_to_unix_nanos() {
        assert_eq!(parse_rfc3339_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_nanos("2026-11-25T12:52:43.44186225Z"),
            Some(1_795_611_163_441_862_250)
        );
        assert_eq!(
            parse_rfc3339_nanos("2026-11-25T13:52:43.44186225+01:00"),
            parse_rfc3339_nanos("2026-11-25T12:52:43.44186225Z")
        );
        assert_eq!(
            parse_rfc3339_nanos("2000-02-29T00:00:01-00:30"),
            Some(951_784_201_000_000_000)
        );
        assert_eq!(parse_rfc3339_nanos("yesterday"), None);
        assert_eq!(
            since_param(1_795_611_163_441_862_250),
            "1795611163.441862250"
        );
    }

    #[test]
    fn rfc3339_timestamps_docker_emits_parse() {
        // `docker info`'s SystemTime: nine fraction digits, `Z` or the daemon's local offset.
        assert_eq!(
            parse_rfc3339_nanos("2024-05-01T10:00:00.123456789Z"),
            Some(1_714_557_600_123_456_789)
        );
        assert_eq!(
            parse_rfc3339_nanos("2024-05-01T12:00:00.123456789+02:00"),
            Some(1_714_557_600_123_456_789)
        );
        assert_eq!(
            parse_rfc3339_nanos("2024-05-01T10:00:00z"),
            Some(1_714_557_600_000_000_000)
        );
        // More than nine fraction digits are truncated, not rounded.
        assert_eq!(
            parse_rfc3339_nanos("1970-01-01T00:00:01.0000000019Z"),
            Some(1_000_000_001)
        );
        // Go's zero time, which docker writes for "never" (a container that never started):
        // before 1970, so not an instant the watch could replay from.
        assert_eq!(parse_rfc3339_nanos("0001-01-01T00:00:00Z"), None);
        // No zone, or a malformed one, names no instant.
        assert_eq!(parse_rfc3339_nanos("2024-05-01T10:00:00"), None);
        assert_eq!(parse_rfc3339_nanos("2024-05-01T10:00:00+2:00"), None);
        assert_eq!(parse_rfc3339_nanos("2024-05-01T10:00:00.5+02"), None);
        assert_eq!(parse_rfc3339_nanos("2024-13-01T10:00:00Z"), None);
    }

    #[test]
    fn recent_ids_are_bounded_and_taken_once() {
        let mut ids = RecentIds::default();
        for i in 0..RECENT_IDS + 10 {
            ids.insert(i.to_string());
        }
        assert!(!ids.take("0"), "the oldest ids are forgotten");
        assert!(ids.take(&(RECENT_IDS + 9).to_string()));
        assert!(!ids.take(&(RECENT_IDS + 9).to_string()));
        assert!(ids.set.len() <= RECENT_IDS && ids.order.len() == ids.set.len());
    }
}
