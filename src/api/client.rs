//! The blocking API client the CLI uses: one typed method per route.
//!
//! It finds the agent (`--api`) and the token (`--token`, else `<data-dir>/api-token`), sends
//! requests with `ureq`, and turns every failure into a [`ClientError`] that says what went
//! wrong and what to do. It does not print anything or decide how replies are shown (that is
//! `cli/commands.rs` and `cli/commands/render.rs`).

use std::io::{self, Read};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{DeployBody, ErrorBody, RollbackBody, ScaleBody, service_name};
use crate::cli::ClientOpts;
use crate::node::api::{HistoryEntry, NodeView, PsEntry, StatusView, WriteResult};

/// How long to wait for a TCP connection to the agent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole JSON request may take (the server gives the core 30 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(45);
/// Largest JSON reply read (`ps` of a large fleet is a few MiB).
const MAX_REPLY_BYTES: u64 = 64 * 1024 * 1024;
/// How much of an error reply is read.
const MAX_ERROR_BYTES: u64 = 64 * 1024;

const UNREACHABLE_HINT: &str = "is `shoal agent` running? set --api or SHOAL_API to reach another";
const TOKEN_HINT: &str = "start `shoal agent` with this data dir (it writes the token), or pass --token or SHOAL_TOKEN, or --data-dir pointing at the agent's data dir";

/// Why a request to the agent failed: each variant says what a person should do next.
///
/// Displayed as the error, then `hint: …` on the next line when there is a hint.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The agent answered and refused the request.
    #[error("{error}{}", hint_line(.hint.as_deref()))]
    Refused {
        status: u16,
        error: String,
        hint: Option<String>,
    },
    /// Refused before sending: the request could never succeed (a bad service name).
    #[error("{error}{}", hint_line(Some(.hint.as_str())))]
    Invalid { error: String, hint: String },
    /// Nothing answered at the address.
    #[error(
        "cannot reach the shoal agent at {url}: {reason}{}",
        hint_line(Some(UNREACHABLE_HINT))
    )]
    Unreachable { url: String, reason: String },
    /// Something answered, but not as the API promises (not a shoal agent, or another version).
    #[error(
        "unexpected answer from {url}: {reason}{}",
        hint_line(Some("is --api pointing at a shoal agent of the same version as this CLI?"))
    )]
    BadReply { url: String, reason: String },
    /// `--api` is not `host:port` or `http://host:port`.
    #[error(
        "--api {given:?} is not an address{}",
        hint_line(Some("give host:port or http://host:port, e.g. 127.0.0.1:7800"))
    )]
    BadAddress { given: String },
    /// No token given and none could be read from the data dir.
    #[error("no API token: {reason}{}", hint_line(Some(TOKEN_HINT)))]
    NoToken {
        path: Option<PathBuf>,
        reason: String,
    },
}

fn hint_line(hint: Option<&str>) -> String {
    hint.map(|h| format!("\nhint: {h}")).unwrap_or_default()
}

impl ClientError {
    /// The HTTP status of a refusal (404 for an unknown service, and so on).
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A connection to one agent's API.
#[derive(Clone, Debug)]
pub struct Client {
    /// `http://host:port`, no trailing slash.
    base: String,
    /// The `Authorization` header value.
    pub(super) auth: String,
    /// For JSON requests: bounded in time.
    agent: ureq::Agent,
    /// For log streams: no overall deadline (`--follow` runs until Ctrl-C).
    stream_agent: ureq::Agent,
}

impl Client {
    /// The client the CLI flags describe: `--api`, and `--token` or the token in `--data-dir`
    /// (the platform default data dir when neither is given).
    pub fn from_opts(opts: &ClientOpts) -> Result<Client, ClientError> {
        let token = match &opts.token {
            Some(t) if !t.trim().is_empty() => t.trim().to_owned(),
            _ => {
                let Some(dir) = opts
                    .data_dir
                    .clone()
                    .or_else(crate::agent::config::default_data_dir)
                else {
                    return Err(ClientError::NoToken {
                        path: None,
                        reason: "no --data-dir given and no home directory to find the default"
                            .into(),
                    });
                };
                let path = dir.join(super::TOKEN_FILE);
                super::read_token(&dir).map_err(|e| ClientError::NoToken {
                    reason: match e.kind() {
                        io::ErrorKind::NotFound => {
                            format!("no token file at {}", path.display())
                        }
                        // read_token's message names the file.
                        _ => format!("cannot read it: {e}"),
                    },
                    path: Some(path),
                })?
            }
        };
        Client::new(&opts.api, &token)
    }

    /// A client for the agent at `api` (`host:port` or `http://host:port`) with `token`.
    pub fn new(api: &str, token: &str) -> Result<Client, ClientError> {
        let base = base_url(api)?;
        let agent = |global: Option<Duration>| -> ureq::Agent {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                // The API is local or on a LAN: an HTTP_PROXY meant for the internet must not
                // carry the token.
                .proxy(None)
                .max_redirects(0)
                .timeout_connect(Some(CONNECT_TIMEOUT))
                .timeout_global(global)
                .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
                .build()
                .new_agent()
        };
        Ok(Client {
            base,
            auth: format!("Bearer {token}"),
            agent: agent(Some(REQUEST_TIMEOUT)),
            stream_agent: agent(None),
        })
    }

    /// The agent's base URL, `http://host:port`.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Deploys the spec `text` (the agent parses it again; `file` names it in messages).
    pub fn deploy(&self, file: &str, text: &str) -> Result<Vec<WriteResult>, ClientError> {
        let body = DeployBody {
            file: file.to_owned(),
            text: text.to_owned(),
        };
        // The agent would refuse it on the headers, and closing the connection while a large
        // body is still being written reads as a broken pipe here: say it plainly instead.
        let size = serde_json::to_vec(&body).map_or(usize::MAX, |b| b.len());
        if size > super::MAX_BODY_BYTES {
            return Err(ClientError::Invalid {
                error: format!(
                    "spec {file} is too large to send ({} KiB, the agent takes at most {} KiB)",
                    size / 1024,
                    super::MAX_BODY_BYTES / 1024
                ),
                hint: "split it into several files and deploy each".into(),
            });
        }
        self.send("POST", "/v1/deploy".into(), &[], Some(&body))
    }

    pub fn remove(&self, service: &str) -> Result<Vec<WriteResult>, ClientError> {
        let path = format!("/v1/services/{}", checked(service)?);
        self.send::<(), _>("DELETE", path, &[], None)
    }

    pub fn scale(&self, service: &str, replicas: u32) -> Result<Vec<WriteResult>, ClientError> {
        let path = format!("/v1/services/{}/scale", checked(service)?);
        self.send("POST", path, &[], Some(&ScaleBody { replicas }))
    }

    /// Rolls back to `to` (a revision id or sequence number), or to the previous revision.
    pub fn rollback(
        &self,
        service: &str,
        to: Option<&str>,
    ) -> Result<Vec<WriteResult>, ClientError> {
        let path = format!("/v1/services/{}/rollback", checked(service)?);
        let body = RollbackBody {
            to: to.map(str::to_owned),
        };
        self.send("POST", path, &[], Some(&body))
    }

    pub fn history(&self, service: &str) -> Result<Vec<HistoryEntry>, ClientError> {
        let path = format!("/v1/services/{}/history", checked(service)?);
        self.send::<(), _>("GET", path, &[], None)
    }

    pub fn ps(&self, service: Option<&str>) -> Result<Vec<PsEntry>, ClientError> {
        let query = match service {
            Some(s) => vec![("service", checked(s)?)],
            None => Vec::new(),
        };
        self.send::<(), _>("GET", "/v1/ps".into(), &query, None)
    }

    pub fn status(&self) -> Result<StatusView, ClientError> {
        self.send::<(), _>("GET", "/v1/status".into(), &[], None)
    }

    pub fn nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        self.send::<(), _>("GET", "/v1/nodes".into(), &[], None)
    }

    /// Drains (`on`) or undrains `node` (an id or unique prefix), or this agent's node.
    pub fn drain(&self, node: Option<&str>, on: bool) -> Result<Vec<WriteResult>, ClientError> {
        let id = match node {
            Some(n) if !n.is_empty() && n != "self" => encode_segment(n),
            Some(n) if !n.is_empty() => {
                return Err(ClientError::Invalid {
                    error: "\"self\" is not a node id".into(),
                    hint: "leave the node out to mean this agent's node".into(),
                });
            }
            _ => "self".to_owned(),
        };
        let verb = if on { "drain" } else { "undrain" };
        self.send::<(), _>("POST", format!("/v1/nodes/{id}/{verb}"), &[], None)
    }

    /// An instance's log as a reader that yields output as the agent sends it; with `follow`
    /// it ends only when the instance's log does (or the agent stops).
    pub fn logs(
        &self,
        service: &str,
        slot: u32,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<impl Read + Send + 'static, ClientError> {
        let path = format!("/v1/logs/{}/{slot}", checked(service)?);
        let mut query = vec![("follow", follow.to_string())];
        if let Some(n) = tail {
            query.push(("tail", n.to_string()));
        }
        let url = format!("{}{path}", self.base);
        let response = self
            .stream_agent
            .get(&url)
            .header("Authorization", &self.auth)
            .query_pairs(query.iter().map(|(k, v)| (*k, v.as_str())))
            .call()
            .map_err(|e| self.transport_error(e))?;
        let response = self.check(&url, response)?;
        Ok(response.into_body().into_reader())
    }

    /// One JSON round trip: the reply as `T`, or the agent's refusal.
    fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: String,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let pairs = query.iter().map(|(k, v)| (*k, v.as_str()));
        let result = match method {
            "GET" => self
                .agent
                .get(&url)
                .header("Authorization", &self.auth)
                .query_pairs(pairs)
                .call(),
            "DELETE" => self
                .agent
                .delete(&url)
                .header("Authorization", &self.auth)
                .query_pairs(pairs)
                .call(),
            _ => {
                let request = self
                    .agent
                    .post(&url)
                    .header("Authorization", &self.auth)
                    .query_pairs(pairs);
                match body {
                    Some(b) => request.send_json(b),
                    None => request.send_empty(),
                }
            }
        };
        let response = result.map_err(|e| self.transport_error(e))?;
        let mut response = self.check(&url, response)?;
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_REPLY_BYTES)
            .read_to_vec()
            .map_err(|e| self.transport_error(e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadReply {
            url: url.clone(),
            reason: format!("the reply is not what this CLI expects: {e}"),
        })
    }

    /// Passes a 2xx response on; turns any other into the agent's refusal.
    fn check(
        &self,
        url: &str,
        mut response: ureq::http::Response<ureq::Body>,
    ) -> Result<ureq::http::Response<ureq::Body>, ClientError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ERROR_BYTES)
            .lossy_utf8(true)
            .read_to_string()
            .unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(ErrorBody { error, hint }) => Err(ClientError::Refused {
                status: status.as_u16(),
                error,
                hint,
            }),
            Err(_) => Err(ClientError::BadReply {
                url: url.to_owned(),
                reason: format!(
                    "{status} {}",
                    text.trim().chars().take(200).collect::<String>()
                )
                .trim_end()
                .to_owned(),
            }),
        }
    }

    fn transport_error(&self, e: ureq::Error) -> ClientError {
        let reason = match &e {
            ureq::Error::Io(io) => super::plain_io(io),
            ureq::Error::Timeout(_) => "no answer in time".into(),
            ureq::Error::HostNotFound => "host not found".into(),
            ureq::Error::ConnectionFailed => "connection failed".into(),
            ureq::Error::Protocol(p) => {
                return ClientError::BadReply {
                    url: self.base.clone(),
                    reason: format!("not HTTP/1.1: {p}"),
                };
            }
            other => other.to_string(),
        };
        ClientError::Unreachable {
            url: self.base.clone(),
            reason,
        }
    }
}

/// `127.0.0.1:7800` or `http://127.0.0.1:7800/` → `http://127.0.0.1:7800`.
fn base_url(api: &str) -> Result<String, ClientError> {
    let bad = || ClientError::BadAddress {
        given: api.to_owned(),
    };
    let trimmed = api.trim();
    let authority = match trimmed.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some(_) => return Err(bad()),
        None => trimmed,
    };
    let authority = authority.trim_end_matches('/');
    let valid = !authority.is_empty()
        && authority
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._:[]%".contains(c));
    if !valid {
        return Err(bad());
    }
    Ok(format!("http://{authority}"))
}

/// A service name checked with the server's words before it goes into a URL.
fn checked(service: &str) -> Result<String, ClientError> {
    service_name(service)
        .map(|n| n.0.to_string())
        .map_err(|e| ClientError::Invalid {
            error: e.error,
            hint: e.hint.unwrap_or_default(),
        })
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode_segment(s: &str) -> String {
    use std::fmt::Write as _;
    s.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}
