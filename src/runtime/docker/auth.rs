//! Registry credentials for a pull, read from the docker CLI's `config.json` (`auths` entries:
//! base64 `user:password` or an identity token) at each pull, so a `docker login` takes effect
//! without restarting the agent.
//!
//! Deliberately not here: credential helpers (`credsStore`, `credHelpers`) are not consulted, and
//! credentials are never stored or logged.

use std::path::PathBuf;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bollard::auth::DockerCredentials;
use tracing::warn;

/// The registry an image comes from, the way docker decides it: the first path component when it
/// looks like a host (a dot, a port, or `localhost`), Docker Hub otherwise.
fn registry_host(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker").join("config.json"))
}

/// Registry credentials for `image` from the docker CLI's config file, read at each pull so a
/// `docker login` takes effect without a restart.
pub(super) async fn load_credentials(image: &str) -> Option<DockerCredentials> {
    let path = docker_config_path()?;
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read docker config; pulling without credentials");
            return None;
        }
    };
    match credentials_from_config(&text, registry_host(image)) {
        Ok(credentials) => credentials,
        Err(why) => {
            warn!(path = %path.display(), why, "malformed docker config; pulling without credentials");
            None
        }
    }
}

/// The `auths` entry for `registry` in a docker `config.json`: `auth` (base64 `user:password`)
/// or `identitytoken`. Credential helpers (`credsStore`, `credHelpers`) are not consulted.
fn credentials_from_config(
    config: &str,
    registry: &str,
) -> Result<Option<DockerCredentials>, String> {
    let config: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
    let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let hub_aliases = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    for (server, entry) in auths {
        let host = server_host(server);
        let matches = host == registry || (registry == "docker.io" && hub_aliases.contains(&host));
        if !matches {
            continue;
        }
        let text = |field: &str| {
            entry
                .get(field)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
        };
        let mut credentials = DockerCredentials {
            serveraddress: Some(server.clone()),
            ..Default::default()
        };
        if let Some(auth) = text("auth") {
            let decoded = base64_decode(auth)
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| format!("auths.{server}.auth is not base64 text"))?;
            let (user, password) = decoded
                .split_once(':')
                .ok_or_else(|| format!("auths.{server}.auth is not user:password"))?;
            credentials.username = Some(user.to_string());
            credentials.password = Some(password.to_string());
        }
        credentials.identitytoken = text("identitytoken").map(str::to_string);
        if credentials.username.is_some() || credentials.identitytoken.is_some() {
            return Ok(Some(credentials));
        }
    }
    Ok(None)
}

/// `https://index.docker.io/v1/` → `index.docker.io`.
fn server_host(server: &str) -> &str {
    let s = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .unwrap_or(server);
    s.split('/').next().unwrap_or(s)
}

/// Standard or URL-safe base64, padding optional (what docker's CLI and hand-edited configs
/// write). Leftover bits after the last whole byte are ignored.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, CONFIG);
    let text = text.trim_end_matches('=');
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_host_follows_docker_rules() {
        assert_eq!(registry_host("busybox"), "docker.io");
        assert_eq!(registry_host("library/busybox:1"), "docker.io");
        assert_eq!(registry_host("ghcr.io/org/app:2"), "ghcr.io");
        assert_eq!(registry_host("127.0.0.1:5000/x/y:1"), "127.0.0.1:5000");
        assert_eq!(registry_host("localhost/x"), "localhost");
    }

    #[test]
    fn credentials_come_from_the_matching_auths_entry() {
        // base64("alice:s3cr:et") and base64("bob:pw")
        let config = r#"{
            "auths": {
                "https://index.docker.io/v1/": { "auth": "Ym9iOnB3" },
                "registry.example.com:5000": { "auth": "YWxpY2U6czNjcjpldA==" },
                "token.example.com": { "identitytoken": "tok" }
            },
            "credsStore": "desktop"
        }"#;
        let private = credentials_from_config(config, "registry.example.com:5000")
            .unwrap()
            .unwrap();
        assert_eq!(private.username.as_deref(), Some("alice"));
        assert_eq!(private.password.as_deref(), Some("s3cr:et"));
        assert_eq!(
            private.serveraddress.as_deref(),
            Some("registry.example.com:5000")
        );
        let hub = credentials_from_config(config, "docker.io")
            .unwrap()
            .unwrap();
        assert_eq!(hub.username.as_deref(), Some("bob"));
        let token = credentials_from_config(config, "token.example.com")
            .unwrap()
            .unwrap();
        assert_eq!(token.identitytoken.as_deref(), Some("tok"));
        assert!(
            credentials_from_config(config, "other.example.com")
                .unwrap()
                .is_none()
        );
        assert!(
            credentials_from_config("{}", "docker.io")
                .unwrap()
                .is_none()
        );
        assert!(credentials_from_config("not json", "docker.io").is_err());
    }

    #[test]
    fn base64_decodes_padded_and_unpadded_text() {
        assert_eq!(base64_decode("Ym9iOnB3").unwrap(), b"bob:pw");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YWI").unwrap(), b"ab");
        assert!(base64_decode("a*b").is_none());
        // Both alphabets: `+/` (standard) and `-_` (URL-safe) for the same bytes.
        assert_eq!(base64_decode("+/8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(base64_decode("-_8").unwrap(), [0xfb, 0xff]);
    }
}
