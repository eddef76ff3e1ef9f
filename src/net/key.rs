//! The cluster key (libp2p `pnet` pre-shared key, `swarm.key` file format) and the node's own
//! Ed25519 identity kept in its data dir.
//!
//! Only files and key material; the transport that uses them is `swarm.rs`.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;

use super::NetError;
use crate::ids::NodeId;

const KEY_HEADER: &str = "/key/swarm/psk/1.0.0/";
const KEY_ENCODING: &str = "/base16/";

/// The 32-byte pre-shared key every node of a cluster holds. Nodes with another key cannot
/// open any connection to this cluster (libp2p `pnet`). Never logged: `Debug` shows the
/// cluster id only.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey(pub [u8; 32]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey({})", self.cluster_id())
    }
}

impl ClusterKey {
    /// A new random key from the OS random source.
    pub fn generate() -> Self {
        ClusterKey(rand::random())
    }

    /// The libp2p `swarm.key` format, compatible with go-libp2p and IPFS:
    /// `/key/swarm/psk/1.0.0/\n/base16/\n<64 hex>\n`.
    pub fn to_file_text(&self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("{KEY_HEADER}\n{KEY_ENCODING}\n{hex}\n")
    }

    /// Parses the `swarm.key` format (trailing whitespace tolerated, nothing else).
    pub fn parse(text: &str) -> Result<Self, NetError> {
        let bad = |reason: &str| NetError::KeyFormat(reason.to_string());
        let mut lines = text.lines().map(str::trim_end);
        if lines.next() != Some(KEY_HEADER) {
            return Err(bad("first line must be /key/swarm/psk/1.0.0/"));
        }
        if lines.next() != Some(KEY_ENCODING) {
            return Err(bad("second line must be /base16/"));
        }
        let hex = lines
            .next()
            .ok_or_else(|| bad("third line must hold 64 hex digits"))?;
        if lines.any(|l| !l.is_empty()) {
            return Err(bad("unexpected text after the key"));
        }
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad("the key must be 64 hex digits"));
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| bad("the key must be 64 hex digits"))?;
        }
        Ok(ClusterKey(key))
    }

    /// Reads a key file. Warns if other users may read it.
    pub fn load(path: &Path) -> Result<Self, NetError> {
        let text = fs::read_to_string(path).map_err(|e| NetError::io(path, e))?;
        warn_if_readable_by_others(path);
        Self::parse(&text).map_err(|e| match e {
            NetError::KeyFormat(reason) => {
                NetError::KeyFormat(format!("{}: {reason}", path.display()))
            }
            other => other,
        })
    }

    /// Writes a new key file with mode 0600. Refuses to overwrite an existing file: replacing
    /// a cluster key splits the cluster.
    pub fn save(&self, path: &Path) -> Result<(), NetError> {
        write_secret_file(path, self.to_file_text().as_bytes())
    }

    /// A short stable id of the key (16 hex digits of the libp2p pnet fingerprint), safe to
    /// show and to put in labels: it tells clusters apart without revealing the key.
    pub fn cluster_id(&self) -> String {
        let mut id = PreSharedKey::new(self.0).fingerprint().to_string();
        id.truncate(16);
        id
    }

    pub(crate) fn psk(&self) -> PreSharedKey {
        PreSharedKey::new(self.0)
    }
}

/// Loads `<data_dir>/node.key` (a protobuf-encoded Ed25519 keypair), creating it (mode 0600)
/// on first start. The node id derived from it is stable across restarts.
pub fn load_or_create_identity(data_dir: &Path) -> Result<Keypair, NetError> {
    let path = data_dir.join("node.key");
    match fs::read(&path) {
        Ok(bytes) => {
            warn_if_readable_by_others(&path);
            return Keypair::from_protobuf_encoding(&bytes).map_err(|e| NetError::Identity {
                path,
                reason: e.to_string(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(NetError::io(&path, e)),
    }
    fs::create_dir_all(data_dir).map_err(|e| NetError::io(data_dir, e))?;
    let kp = Keypair::generate_ed25519();
    let bytes = kp.to_protobuf_encoding().map_err(|e| NetError::Identity {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    match write_secret_file(&path, &bytes) {
        Ok(()) => Ok(kp),
        // Another process created it first: use theirs.
        Err(NetError::AlreadyExists(_)) => load_or_create_identity(data_dir),
        Err(e) => Err(e),
    }
}

/// The node id of a keypair: the base58 text of its libp2p `PeerId`.
pub fn node_id(kp: &Keypair) -> NodeId {
    NodeId(kp.public().to_peer_id().to_base58().into())
}

fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<(), NetError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => NetError::AlreadyExists(path.to_path_buf()),
            _ => NetError::io(path, e),
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| NetError::io(path, e))
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        let path: PathBuf = path.to_path_buf();
        tracing::warn!(path = %path.display(), "secret key file is readable by other users, chmod 600 it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_text_round_trips_and_matches_libp2p() {
        let key = ClusterKey::generate();
        let text = key.to_file_text();
        assert_eq!(ClusterKey::parse(&text).unwrap(), key);
        assert_eq!(text, PreSharedKey::new(key.0).to_key_file());
        let parsed: PreSharedKey = text.parse().unwrap();
        assert_eq!(
            parsed.fingerprint().to_string(),
            key.psk().fingerprint().to_string()
        );
    }

    #[test]
    fn malformed_key_files_are_refused_with_a_reason() {
        let good = ClusterKey([7; 32]).to_file_text();
        assert!(ClusterKey::parse(&good.replace("base16", "base64")).is_err());
        assert!(ClusterKey::parse(&good.replace("07", "0g")).is_err());
        assert!(ClusterKey::parse(&good[..good.len() - 3]).is_err());
        assert!(ClusterKey::parse(&format!("{good}extra\n")).is_err());
        assert!(ClusterKey::parse("").is_err());
        assert!(ClusterKey::parse(&format!("{good}\n\n")).is_ok());
    }

    #[test]
    fn cluster_id_is_short_stable_and_differs_between_keys() {
        let a = ClusterKey([1; 32]);
        assert_eq!(a.cluster_id().len(), 16);
        assert_eq!(a.cluster_id(), ClusterKey([1; 32]).cluster_id());
        assert_ne!(a.cluster_id(), ClusterKey([2; 32]).cluster_id());
        assert!(!format!("{a:?}").contains("0101"));
    }

    #[test]
    fn save_writes_mode_0600_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swarm.key");
        let key = ClusterKey::generate();
        key.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ClusterKey::load(&path).unwrap(), key);
        assert!(matches!(
            ClusterKey::generate().save(&path),
            Err(NetError::AlreadyExists(_))
        ));
        assert_eq!(ClusterKey::load(&path).unwrap(), key);
    }

    #[test]
    fn identity_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let a = load_or_create_identity(&data).unwrap();
        let b = load_or_create_identity(&data).unwrap();
        assert_eq!(node_id(&a), node_id(&b));
        assert!(node_id(&a).0.starts_with("12D3KooW"));
        let mode = fs::metadata(data.join("node.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
