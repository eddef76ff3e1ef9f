//! Image pulls: `ensure_image` pulls an image only when the daemon does not have it, reporting
//! progress as `RuntimeEvent::Progress` at most once a second, with the registry credentials
//! `auth` finds.
//!
//! Deliberately not here: where credentials come from (`auth`), and retrying a failed pull (the
//! reconciler retries the start with its backoff).

use std::collections::BTreeMap;
use std::pin::pin;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::CreateImageInfo;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::info;

use super::auth::load_credentials;
use super::{DockerDriver, daemon_error};
use crate::ids::InstanceKey;
use crate::runtime::{DriverError, RuntimeEvent};

/// At most one pull progress event per instance per interval.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

impl DockerDriver {
    /// Makes sure `image` is present, pulling it (with progress events) when it is not.
    pub(super) async fn ensure_image(
        &self,
        key: &InstanceKey,
        image: &str,
        events: &mpsc::Sender<RuntimeEvent>,
    ) -> Result<(), DriverError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => self.pull(key, image, events).await,
            // 400: not a valid reference; nothing can pull it.
            Err(BollardError::DockerResponseServerError {
                status_code: 400,
                message,
            }) => Err(DriverError::ImageNotFound {
                image: image.to_string(),
                reason: message,
            }),
            Err(e) => Err(daemon_error(&format!("inspect image {image}"), e)),
        }
    }

    async fn pull(
        &self,
        key: &InstanceKey,
        image: &str,
        events: &mpsc::Sender<RuntimeEvent>,
    ) -> Result<(), DriverError> {
        let (from_image, tag) = pull_reference(image);
        let mut options = CreateImageOptionsBuilder::new().from_image(&from_image);
        if let Some(tag) = &tag {
            options = options.tag(tag);
        }
        let credentials = load_credentials(image).await;
        info!(instance = %key, image, authenticated = credentials.is_some(), "pulling image");

        // Progress is advisory: a full channel drops an update rather than stall the pull.
        let report = |percent: u64| {
            let status = format!("pulling {percent}%");
            let _ = events.try_send(RuntimeEvent::Progress {
                key: key.clone(),
                status,
            });
        };
        report(0);
        let mut stream = pin!(
            self.docker
                .create_image(Some(options.build()), None, credentials)
        );
        let mut progress = PullProgress::default();
        let mut last_report = Instant::now();
        while let Some(item) = stream.next().await {
            let update = item.map_err(|e| pull_error(image, e))?;
            progress.update(&update);
            if last_report.elapsed() >= PROGRESS_INTERVAL {
                let percent = progress.percent();
                info!(instance = %key, image, percent, "pulling image");
                report(percent);
                last_report = Instant::now();
            }
        }
        report(100);
        info!(instance = %key, image, "image pulled");
        Ok(())
    }
}

/// A failed pull: what the daemon or registry said becomes `ImageNotFound`; an unreachable
/// daemon stays `Unavailable`.
fn pull_error(image: &str, e: BollardError) -> DriverError {
    match e {
        BollardError::DockerStreamError { error } => DriverError::ImageNotFound {
            image: image.to_string(),
            reason: error,
        },
        BollardError::DockerResponseServerError { message, .. } => DriverError::ImageNotFound {
            image: image.to_string(),
            reason: message,
        },
        other => daemon_error(&format!("pull {image}"), other),
    }
}

/// `(fromImage, tag)` for a pull. No tag means `latest` (an empty tag would pull every tag of
/// the repository); with a digest the tag is not used.
fn pull_reference(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_string(), None);
    }
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].rfind(':') {
        Some(i) => {
            let colon = name_start + i;
            (
                image[..colon].to_string(),
                Some(image[colon + 1..].to_string()),
            )
        }
        None => (image.to_string(), Some("latest".to_string())),
    }
}

/// A pull's progress over all its layers: bytes downloaded plus bytes extracted, over twice the
/// bytes of the layers being fetched (layers already present count for nothing). The reported
/// percentage never goes down, although layer sizes become known one by one.
#[derive(Default)]
struct PullProgress {
    layers: BTreeMap<String, LayerProgress>,
    reported: u64,
}

#[derive(Clone, Copy, Default)]
struct LayerProgress {
    total: u64,
    downloaded: u64,
    extracted: u64,
}

impl PullProgress {
    fn update(&mut self, info: &CreateImageInfo) {
        let (Some(id), Some(status)) = (&info.id, &info.status) else {
            return;
        };
        let detail = info.progress_detail.as_ref();
        let current = detail.and_then(|d| d.current).unwrap_or(0).max(0) as u64;
        let total = detail.and_then(|d| d.total).unwrap_or(0).max(0) as u64;
        let layer = || LayerProgress::default();
        match status.as_str() {
            "Downloading" => {
                let l = self.layers.entry(id.clone()).or_insert_with(layer);
                l.total = l.total.max(total);
                l.downloaded = current.min(l.total);
            }
            "Verifying Checksum" | "Download complete" => {
                if let Some(l) = self.layers.get_mut(id) {
                    l.downloaded = l.total;
                }
            }
            "Extracting" => {
                let l = self.layers.entry(id.clone()).or_insert_with(layer);
                l.total = l.total.max(total);
                l.downloaded = l.total;
                l.extracted = current.min(l.total);
            }
            "Pull complete" => {
                if let Some(l) = self.layers.get_mut(id) {
                    l.downloaded = l.total;
                    l.extracted = l.total;
                }
            }
            _ => {}
        }
    }

    fn percent(&mut self) -> u64 {
        let (done, all) = self.layers.values().fold((0u64, 0u64), |(done, all), l| {
            (done + l.downloaded + l.extracted, all + 2 * l.total)
        });
        let percent = (done * 100).checked_div(all).unwrap_or(0).min(100);
        self.reported = self.reported.max(percent);
        self.reported
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_reference_defaults_to_latest_and_keeps_registry_ports() {
        let cases = [
            ("busybox", "busybox", Some("latest")),
            ("busybox:1.36", "busybox", Some("1.36")),
            (
                "127.0.0.1:5000/shoal-test/httpd",
                "127.0.0.1:5000/shoal-test/httpd",
                Some("latest"),
            ),
            (
                "127.0.0.1:5000/shoal-test/httpd:1",
                "127.0.0.1:5000/shoal-test/httpd",
                Some("1"),
            ),
            ("busybox@sha256:abcd", "busybox@sha256:abcd", None),
        ];
        for (image, repo, tag) in cases {
            assert_eq!(
                pull_reference(image),
                (repo.to_string(), tag.map(str::to_string)),
                "{image}"
            );
        }
    }

    #[test]
    fn pull_progress_aggregates_layers_and_never_goes_down() {
        let event = |id: &str, status: &str, current: i64, total: i64| CreateImageInfo {
            id: Some(id.to_string()),
            status: Some(status.to_string()),
            progress_detail: Some(bollard::models::ProgressDetail {
                current: Some(current),
                total: Some(total),
            }),
            ..Default::default()
        };
        let mut p = PullProgress::default();
        p.update(&event("a", "Already exists", 0, 0));
        p.update(&event("b", "Downloading", 50, 100));
        assert_eq!(p.percent(), 25);
        // A second layer's size becomes known: the raw ratio drops, the report does not.
        p.update(&event("c", "Downloading", 0, 300));
        assert_eq!(p.percent(), 25);
        p.update(&event("b", "Pull complete", 0, 0));
        p.update(&event("c", "Extracting", 150, 300));
        assert_eq!(p.percent(), (200 + 300 + 150) * 100 / 800);
        p.update(&event("c", "Pull complete", 0, 0));
        assert_eq!(p.percent(), 100);
    }
}
