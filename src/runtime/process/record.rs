//! The per-instance records on disk: `instances/<name>.json`, one per instance, always replaced
//! whole (temp file + rename), versioned, and set aside as `*.corrupt` when unreadable. A record
//! names its owner through the instance's labels, and its process by pid and start time.
//!
//! Deliberately not here: whether the recorded process still runs (`proc`), and when a record is
//! written or removed (the driver, under the instance's lock).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::proc::{Proc, unknown_exit};
use super::{Inner, io_error};
use crate::ids::{InstanceKey, RevisionId};
use crate::runtime::{DriverError, ExitInfo, Handle, Observed, ObservedStatus, Owner};

/// Version of [`InstanceRecord`]'s JSON form; a record of another version is left alone.
pub(super) const RECORD_VERSION: u32 = 1;

/// What the driver remembers about one instance, in `instances/<name>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct InstanceRecord {
    pub(super) version: u32,
    pub(super) key: InstanceKey,
    pub(super) revision: RevisionId,
    /// `InstanceSpec::labels()`: the owner's cluster and node decide whose record this is.
    pub(super) labels: BTreeMap<String, String>,
    pub(super) pid: u32,
    /// Field 22 of `/proc/<pid>/stat` when the process was started.
    pub(super) start_ticks: u64,
    /// Published ports by name (`name -> host port`).
    pub(super) ports: BTreeMap<String, u16>,
    pub(super) endpoint: Option<String>,
    /// Set once the exit is known; the record stays until the instance is stopped.
    pub(super) exit: Option<ExitInfo>,
}

impl InstanceRecord {
    pub(super) fn owned_by(&self, owner: &Owner) -> bool {
        self.labels.get("shoal.cluster") == Some(&owner.cluster)
            && self.labels.get("shoal.node") == Some(&owner.node.0.to_string())
    }

    pub(super) fn proc(&self) -> Proc {
        Proc {
            pid: self.pid,
            start_ticks: self.start_ticks,
        }
    }

    /// What `list` reports: the recorded exit, else whether the process still runs.
    pub(super) fn observed(&self) -> Observed {
        let status = match &self.exit {
            Some(exit) => ObservedStatus::Exited(exit.clone()),
            None if self.proc().alive() => ObservedStatus::Running,
            None => ObservedStatus::Exited(unknown_exit()),
        };
        self.observed_as(status)
    }

    pub(super) fn observed_as(&self, status: ObservedStatus) -> Observed {
        Observed {
            key: self.key.clone(),
            revision: self.revision.clone(),
            handle: Handle::Pid {
                pid: self.pid,
                start_ticks: self.start_ticks,
            },
            endpoint: self.endpoint.clone(),
            ports: self.ports.clone(),
            status,
        }
    }
}

impl Inner {
    pub(super) fn record_path(&self, key: &InstanceKey) -> PathBuf {
        self.instances_dir.join(format!("{}.json", key.name()))
    }

    /// Reads one record file. `None` when it does not exist, is corrupt (set aside with a
    /// warning) or has another version.
    pub(super) fn read_record_file(
        &self,
        path: &Path,
    ) -> Result<Option<InstanceRecord>, DriverError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(path, e)),
        };
        match serde_json::from_slice::<InstanceRecord>(&bytes) {
            Ok(r) if r.version == RECORD_VERSION => Ok(Some(r)),
            Ok(r) => {
                let version = r.version;
                let path = path.display();
                warn!(%path, version, "instance record of another version ignored");
                Ok(None)
            }
            Err(e) => {
                let mut aside = path.as_os_str().to_owned();
                aside.push(".corrupt");
                warn!(path = %path.display(), error = %e, "corrupt instance record set aside");
                if let Err(e) = std::fs::rename(path, &aside) {
                    let path = path.display();
                    warn!(%path, error = %e, "corrupt record could not be renamed");
                }
                Ok(None)
            }
        }
    }

    /// This owner's record for `key`, if any.
    pub(super) fn read_record(
        &self,
        key: &InstanceKey,
    ) -> Result<Option<InstanceRecord>, DriverError> {
        Ok(self
            .read_record_file(&self.record_path(key))?
            .filter(|r| r.owned_by(&self.owner)))
    }

    /// Replaces the record whole: a crash leaves the old record or the new one, never half.
    pub(super) fn write_record(&self, record: &InstanceRecord) -> Result<(), DriverError> {
        let path = self.record_path(&record.key);
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(record).expect("an instance record serialises");
        let write = || -> io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.instances_dir)?.sync_all()
        };
        write().map_err(|e| io_error(&path, e))
    }

    /// Every record of this owner, in key order.
    pub(super) fn scan_records(&self) -> Result<Vec<InstanceRecord>, DriverError> {
        let dir =
            std::fs::read_dir(&self.instances_dir).map_err(|e| io_error(&self.instances_dir, e))?;
        let mut records = BTreeMap::new();
        for entry in dir {
            let path = entry.map_err(|e| io_error(&self.instances_dir, e))?.path();
            if path.extension() != Some(OsStr::new("json")) {
                continue;
            }
            match self.read_record_file(&path)? {
                Some(r) if r.owned_by(&self.owner) => {
                    records.insert(r.key.clone(), r);
                }
                Some(r) => debug!(instance = %r.key.name(), "record of another owner ignored"),
                None => {}
            }
        }
        Ok(records.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use crate::runtime::conformance;
    use crate::runtime::process::ProcessDriver;

    fn owner(node: &str) -> Owner {
        Owner {
            cluster: "c1".into(),
            node: NodeId(node.into()),
        }
    }

    fn record(name: &str, owner: &Owner) -> InstanceRecord {
        InstanceRecord {
            version: RECORD_VERSION,
            key: conformance::key(name),
            revision: RevisionId("1.abc".into()),
            labels: BTreeMap::from([
                ("shoal.cluster".to_string(), owner.cluster.clone()),
                ("shoal.node".to_string(), owner.node.0.to_string()),
            ]),
            pid: 4_000_000,
            start_ticks: 7,
            ports: BTreeMap::from([("http".to_string(), 8080)]),
            endpoint: Some("127.0.0.1:8080".into()),
            exit: None,
        }
    }

    #[test]
    fn records_are_read_back_whole_and_only_for_their_owner_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let mine = ProcessDriver::new(dir.path(), owner("n1"), "127.0.0.1".into()).unwrap();
        let inner = &mine.inner;

        let own = record("web", &owner("n1"));
        inner.write_record(&own).unwrap();
        assert_eq!(inner.read_record(&own.key).unwrap(), Some(own.clone()));
        assert!(
            !inner
                .record_path(&own.key)
                .with_extension("json.tmp")
                .exists()
        );

        let theirs = record("db", &owner("n2"));
        inner.write_record(&theirs).unwrap();
        assert_eq!(inner.read_record(&theirs.key).unwrap(), None);

        let mut future = record("cache", &owner("n1"));
        future.version = RECORD_VERSION + 1;
        inner.write_record(&future).unwrap();
        assert_eq!(inner.read_record(&future.key).unwrap(), None);
        assert!(
            inner.record_path(&future.key).exists(),
            "a record of another version is left alone"
        );

        assert_eq!(inner.scan_records().unwrap(), vec![own]);
    }
}
