//! The API bearer token: 32 random bytes, hex, in `<data_dir>/api-token` (mode 0600).
//!
//! The agent creates it once and reuses it across restarts, so clients on the same machine read
//! it from the data dir. This file holds the token file and a constant-time comparison; it does
//! not check requests (that is `server.rs`).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::TryRng;
use rand::rngs::SysRng;

/// The token's file name inside the data dir.
pub const TOKEN_FILE: &str = "api-token";

/// Random bytes in a token (64 hex characters).
const TOKEN_BYTES: usize = 32;

/// Reads `<data_dir>/api-token`, or creates it with a new random token if there is none.
///
/// The file appears whole or not at all: the token is written and synced to a private
/// temporary file (created with `create_new` and mode 0600, so it is never readable by others),
/// then hard-linked to its name, which fails rather than overwrite a token another process
/// created meanwhile (that one is then read and used).
pub fn load_or_create_token(data_dir: &Path) -> io::Result<String> {
    match read_token(data_dir) {
        Ok(token) => return Ok(token),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let path = data_dir.join(TOKEN_FILE);
    let mut bytes = [0u8; TOKEN_BYTES];
    SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| io::Error::other(format!("no OS randomness for the API token: {e}")))?;
    let token = hex(&bytes);

    let tmp = data_dir.join(format!(
        ".{TOKEN_FILE}.{}.{}.tmp",
        std::process::id(),
        hex(&bytes[..4])
    ));
    let written = write_private(&tmp, &token).and_then(|()| fs::hard_link(&tmp, &path));
    // The temporary name is only a staging area, linked or not.
    let _ = fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            sync_dir(data_dir);
            Ok(token)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_token(data_dir),
        Err(e) => Err(with_path(e, &path)),
    }
}

/// Reads the token from `<data_dir>/api-token` (surrounding whitespace ignored).
pub fn read_token(data_dir: &Path) -> io::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    let text = fs::read_to_string(&path).map_err(|e| with_path(e, &path))?;
    let token = text.trim();
    if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} does not hold a token (expected one line of hex)",
                path.display()
            ),
        ));
    }
    if let Ok(meta) = fs::metadata(&path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "api token file is readable by other users; chmod 600 it");
    }
    Ok(token.to_owned())
}

/// Compares a presented token with the expected one in time that does not depend on where they
/// differ (the length of the expected token is not a secret: it is always 64).
pub(crate) fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    if presented.len() != expected.len() {
        return false;
    }
    let diff = presented
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}

fn write_private(path: &Path, token: &str) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// Makes the new name durable; a failure only risks a new token after a power cut.
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// io errors do not name the file; these are read by people.
fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("{}: {}", path.display(), super::plain_io(&e)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let token = load_or_create_token(dir.path()).unwrap();
        assert_eq!(token.len(), 64);
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
        let path = dir.path().join(TOKEN_FILE);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), token);
        assert_eq!(read_token(dir.path()).unwrap(), token);
        // Nothing but the token is left in the data dir.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(TOKEN_FILE)]);
    }

    #[test]
    fn two_data_dirs_get_different_tokens() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert_ne!(
            load_or_create_token(a.path()).unwrap(),
            load_or_create_token(b.path()).unwrap()
        );
    }

    #[test]
    fn a_missing_token_file_is_not_found_and_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_token(dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            format!(
                "{}: no such file or directory",
                dir.path().join(TOKEN_FILE).display()
            )
        );
    }

    #[test]
    fn an_empty_token_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(TOKEN_FILE), "\n").unwrap();
        let e = load_or_create_token(dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(token_matches(b"abcd", b"abcd"));
        assert!(!token_matches(b"abce", b"abcd"));
        assert!(!token_matches(b"abc", b"abcd"));
        assert!(!token_matches(b"", b"abcd"));
    }
}
