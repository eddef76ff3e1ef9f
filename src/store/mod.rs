//! The local store: `ClusterState` and the node's incarnation in a redb database in the data dir
//! (`<data-dir>/state.redb`), encoded through `wire`.
//!
//! Invariants: a write is committed (fsync'd) before the caller acknowledges it; a database
//! written by a newer format version, or one that cannot be read, is refused with an error that
//! says what to do, and is never overwritten. A failed write leaves the store marked so that the
//! next write rewrites the whole state, so disk and memory cannot drift apart silently.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::ids::{NodeId, SlotId};
use crate::spec::ServiceName;
use crate::state::ClusterState;
use crate::wire;

/// The store format version. A newer one on disk is refused.
pub const FORMAT_VERSION: u64 = 1;
/// Largest value accepted when reading back (a service entry with 10 revisions is far smaller).
const MAX_VALUE_BYTES: usize = 16 << 20;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const CLAIMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("claims");
const REPORTS: TableDefinition<&str, &[u8]> = TableDefinition::new("reports");
const GRAVEYARD: TableDefinition<&str, &[u8]> = TableDefinition::new("graveyard");
const DRAINS: TableDefinition<&str, &[u8]> = TableDefinition::new("drains");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "data dir {dir}: state was written by a newer shoal (store format {found}, this build reads {FORMAT_VERSION}); upgrade shoal, or move the data dir away to start this node fresh"
    )]
    NewerFormat { dir: String, found: u64 },
    #[error(
        "data dir {dir}: {file} cannot be opened ({reason}); if it is corrupt, move it away to start this node fresh (it re-learns the fleet's state from its peers); it was not modified"
    )]
    Open {
        dir: String,
        file: String,
        reason: String,
    },
    #[error("data dir {dir}: another shoal agent is using it (the database is locked)")]
    Locked { dir: String },
    #[error(
        "data dir {dir}: stored {what} is unreadable ({reason}); move {file} away to start fresh"
    )]
    Corrupt {
        dir: String,
        file: String,
        what: String,
        reason: String,
    },
    #[error("data dir {dir}: write failed ({reason}); check free disk space and permissions")]
    Write { dir: String, reason: String },
}

fn read_format(db: &impl ReadableDatabase) -> Result<Option<u64>, String> {
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let table = match tx.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let v = table.get("format_version").map_err(|e| e.to_string())?;
    Ok(v.map(|g| g.value()))
}

pub struct Store {
    db: Database,
    dir: PathBuf,
    path: PathBuf,
    /// A previous write failed: the next one rewrites everything.
    needs_full_write: bool,
}

impl Store {
    /// Opens (or creates) the store in `dir`, refusing newer formats and unreadable files.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("state.redb");
        let d = dir.display().to_string();
        if path.exists() {
            // Check the format through a read-only handle first, so that a file this build must
            // refuse is never opened for writing (opening for writing may touch its header).
            // After a crash (kill -9, power loss) redb needs a repair that only a writable open
            // performs: then the check happens right after that open instead.
            match Database::builder().open_read_only(&path) {
                Ok(ro) => {
                    let found = read_format(&ro).map_err(|reason| StoreError::Corrupt {
                        dir: d.clone(),
                        file: path.display().to_string(),
                        what: "metadata".into(),
                        reason,
                    })?;
                    if let Some(v) = found.filter(|v| *v > FORMAT_VERSION) {
                        return Err(StoreError::NewerFormat { dir: d, found: v });
                    }
                }
                Err(redb::DatabaseError::RepairAborted) => {
                    tracing::warn!(file = %path.display(), "state was not closed cleanly (crash or kill); repairing it");
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(StoreError::Locked { dir: d });
                }
                Err(e) => {
                    return Err(StoreError::Open {
                        dir: d,
                        file: path.display().to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { dir: d.clone() },
            other => StoreError::Open {
                dir: d.clone(),
                file: path.display().to_string(),
                reason: other.to_string(),
            },
        })?;
        let store = Store {
            db,
            dir: dir.to_path_buf(),
            path,
            needs_full_write: false,
        };
        let found = store.read_meta("format_version")?;
        match found {
            Some(v) if v > FORMAT_VERSION => {
                return Err(StoreError::NewerFormat { dir: d, found: v });
            }
            Some(_) => {}
            None => store.write_meta("format_version", FORMAT_VERSION)?,
        }
        Ok(store)
    }

    fn dir(&self) -> String {
        self.dir.display().to_string()
    }

    fn write_err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Write {
            dir: self.dir(),
            reason: e.to_string(),
        }
    }

    fn corrupt(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            dir: self.dir(),
            file: self.path.display().to_string(),
            what: what.into(),
            reason: e.to_string(),
        }
    }

    fn read_meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| self.corrupt("metadata", e))?;
        let table = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.corrupt("metadata", e)),
        };
        let v = table.get(key).map_err(|e| self.corrupt("metadata", e))?;
        Ok(v.map(|g| g.value()))
    }

    fn write_meta(&self, key: &str, value: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.write_err(e))?;
        {
            let mut t = tx.open_table(META).map_err(|e| self.write_err(e))?;
            t.insert(key, value).map_err(|e| self.write_err(e))?;
        }
        tx.commit().map_err(|e| self.write_err(e))
    }

    /// Increments and returns the node's incarnation (1 on first start).
    pub fn next_incarnation(&self) -> Result<u64, StoreError> {
        let next = self.read_meta("incarnation")?.unwrap_or(0) + 1;
        self.write_meta("incarnation", next)?;
        Ok(next)
    }

    /// Loads the whole state.
    pub fn load(&self) -> Result<ClusterState, StoreError> {
        let mut s = ClusterState::default();
        let tx = self.db.begin_read().map_err(|e| self.corrupt("state", e))?;
        macro_rules! each {
            ($def:expr, $what:expr, |$k:ident, $v:ident| $body:block) => {
                match tx.open_table($def) {
                    Ok(table) => {
                        for row in table.iter().map_err(|e| self.corrupt($what, e))? {
                            let (k, v) = row.map_err(|e| self.corrupt($what, e))?;
                            let $k = k.value();
                            let $v = v.value();
                            $body
                        }
                    }
                    Err(redb::TableError::TableDoesNotExist(_)) => {}
                    Err(e) => return Err(self.corrupt($what, e)),
                }
            };
        }
        each!(SERVICES, "services", |k, v| {
            let entry =
                wire::decode(v, MAX_VALUE_BYTES).map_err(|e| self.corrupt("services", e))?;
            s.services.insert(ServiceName(k.into()), entry);
        });
        each!(CLAIMS, "claims", |k, v| {
            let slot: SlotId =
                wire::decode(k, MAX_VALUE_BYTES).map_err(|e| self.corrupt("claims", e))?;
            let claim = wire::decode(v, MAX_VALUE_BYTES).map_err(|e| self.corrupt("claims", e))?;
            s.claims.insert(slot, claim);
        });
        each!(REPORTS, "reports", |k, v| {
            let r = wire::decode(v, MAX_VALUE_BYTES).map_err(|e| self.corrupt("reports", e))?;
            s.reports.insert(NodeId(k.into()), r);
        });
        each!(GRAVEYARD, "graveyard", |k, v| {
            let g = wire::decode(v, MAX_VALUE_BYTES).map_err(|e| self.corrupt("graveyard", e))?;
            s.graveyard.insert(ServiceName(k.into()), g);
        });
        each!(DRAINS, "drains", |k, v| {
            let d = wire::decode(v, MAX_VALUE_BYTES).map_err(|e| self.corrupt("drains", e))?;
            s.drains.insert(NodeId(k.into()), d);
        });
        Ok(s)
    }

    /// Writes the current value (from `state`) of every entry `delta` touches, in one committed
    /// transaction. After a failed write, the next call writes the whole state.
    pub fn persist(
        &mut self,
        state: &ClusterState,
        delta: &ClusterState,
    ) -> Result<(), StoreError> {
        self.persist_with(state, delta, true)
    }

    /// Like `persist`; with `durable: false` the commit is not fsync'd (it becomes durable with
    /// the next durable commit). For state learned from peers, which they can send again.
    pub fn persist_with(
        &mut self,
        state: &ClusterState,
        delta: &ClusterState,
        durable: bool,
    ) -> Result<(), StoreError> {
        let full = self.needs_full_write;
        let scope = if full { state } else { delta };
        let result = self.write(state, scope, durable);
        self.needs_full_write = result.is_err();
        result
    }

    fn write(
        &self,
        state: &ClusterState,
        scope: &ClusterState,
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(|e| self.write_err(e))?;
        if !durable {
            tx.set_durability(redb::Durability::None)
                .map_err(|e| self.write_err(e))?;
        }
        {
            let mut t = tx.open_table(SERVICES).map_err(|e| self.write_err(e))?;
            for name in scope.services.keys() {
                match state.services.get(name) {
                    Some(entry) => t.insert(&*name.0, wire::encode(entry).as_slice()).map(drop),
                    None => t.remove(&*name.0).map(drop),
                }
                .map_err(|e| self.write_err(e))?;
            }
            let mut t = tx.open_table(CLAIMS).map_err(|e| self.write_err(e))?;
            for slot in scope.claims.keys() {
                let k = wire::encode(slot);
                match state.claims.get(slot) {
                    Some(c) => t.insert(k.as_slice(), wire::encode(c).as_slice()).map(drop),
                    None => t.remove(k.as_slice()).map(drop),
                }
                .map_err(|e| self.write_err(e))?;
            }
            let mut t = tx.open_table(REPORTS).map_err(|e| self.write_err(e))?;
            for node in scope.reports.keys() {
                if let Some(r) = state.reports.get(node) {
                    t.insert(&*node.0, wire::encode(r).as_slice())
                        .map_err(|e| self.write_err(e))?;
                }
            }
            let mut t = tx.open_table(GRAVEYARD).map_err(|e| self.write_err(e))?;
            for name in scope.graveyard.keys() {
                if let Some(g) = state.graveyard.get(name) {
                    t.insert(&*name.0, wire::encode(g).as_slice())
                        .map_err(|e| self.write_err(e))?;
                }
            }
            let mut t = tx.open_table(DRAINS).map_err(|e| self.write_err(e))?;
            for node in scope.drains.keys() {
                if let Some(d) = state.drains.get(node) {
                    t.insert(&*node.0, wire::encode(d).as_slice())
                        .map_err(|e| self.write_err(e))?;
                }
            }
        }
        tx.commit().map_err(|e| self.write_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Claim, Hlc, Revision, RevisionBody};

    fn sample() -> ClusterState {
        let mut s = ClusterState::default();
        let web = ServiceName("web".into());
        let stamp = Hlc {
            wall_ms: 5,
            logical: 0,
            node: NodeId("a".into()),
        };
        s.put_revision(
            &web,
            Revision {
                id: crate::ids::RevisionId("1.0001".into()),
                stamp: stamp.clone(),
                body: RevisionBody::Spec(crate::state::cluster::tests::spec("web", 2)),
            },
        );
        s.put_claim(
            &SlotId::new(&web, 0),
            Claim {
                epoch: 1,
                score: 3,
                node: NodeId("a".into()),
                released: false,
                revision: stamp.clone(),
            },
        );
        s.put_drain(&NodeId("a".into()), stamp, true);
        s
    }

    #[test]
    fn a_persisted_state_is_loaded_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample();
        {
            let mut store = Store::open(dir.path()).unwrap();
            store.persist(&s, &s).unwrap();
            assert_eq!(store.next_incarnation().unwrap(), 1);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), s);
        assert_eq!(store.next_incarnation().unwrap(), 2);
    }

    #[test]
    fn a_newer_format_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .write_meta("format_version", FORMAT_VERSION + 1)
                .unwrap();
        }
        let hash =
            || xxhash_rust::xxh3::xxh3_64(&std::fs::read(dir.path().join("state.redb")).unwrap());
        let before = hash();
        let e = Store::open(dir.path()).err().expect("refused").to_string();
        assert!(e.contains("newer shoal"), "{e}");
        assert!(hash() == before, "the refused file was modified");
    }

    #[test]
    fn a_store_not_closed_cleanly_is_repaired_and_keeps_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample();
        let mut store = Store::open(dir.path()).unwrap();
        store.persist(&s, &s).unwrap();
        // Simulate a crash: the database is never closed.
        std::mem::forget(store);
        // A second open in the same process would find the file locked; a crashed process has
        // released its lock, which is what a copy of the file shows.
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(
            dir.path().join("state.redb"),
            copy.path().join("state.redb"),
        )
        .unwrap();
        let store = Store::open(copy.path()).unwrap();
        assert_eq!(store.load().unwrap(), s);
    }

    #[test]
    fn a_corrupt_file_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = vec![0x5au8; 8192];
        std::fs::write(dir.path().join("state.redb"), &garbage).unwrap();
        let e = Store::open(dir.path()).err().expect("refused").to_string();
        assert!(e.contains("move it away"), "{e}");
        assert!(
            std::fs::read(dir.path().join("state.redb")).unwrap() == garbage,
            "the refused file was modified"
        );
    }
}
