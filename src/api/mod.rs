//! The agent's HTTP+JSON API: the server the agent runs (`server.rs`), the blocking client the
//! CLI uses (`client.rs`) and the bearer token that guards it (`token.rs`).
//!
//! The request and reply types themselves live in `node/api.rs`: this module only carries them
//! over HTTP. It holds no decisions; every request goes to the node loop as an [`ApiCall`] and
//! the loop's answer comes back unchanged. Logs are the one exception: they do not pass through
//! the core but come from a [`LogSource`] the agent provides.
//!
//! Routes (all require `Authorization: Bearer <token>`; errors are `{"error": …, "hint": …}`):
//!
//! | method | path | request |
//! | --- | --- | --- |
//! | POST | `/v1/deploy` body `{"file", "text"}` | `Deploy` (the server parses the text) |
//! | DELETE | `/v1/services/{name}` | `Remove` |
//! | POST | `/v1/services/{name}/scale` body `{"replicas"}` | `Scale` |
//! | POST | `/v1/services/{name}/rollback` body `{"to"}` | `Rollback` |
//! | GET | `/v1/services/{name}/history` | `History` |
//! | GET | `/v1/ps?service=NAME` | `Ps` |
//! | GET | `/v1/status` | `Status` |
//! | GET | `/v1/nodes` | `Nodes` |
//! | POST | `/v1/nodes/{id}/drain`, `/v1/nodes/{id}/undrain` (`self`: this node) | `Drain` |
//! | GET | `/v1/logs/{service}/{slot}?follow=true&tail=100` | a [`LogSource`] stream |

use serde::{Deserialize, Serialize};

use crate::node::api::{ApiError, ApiReply, ApiRequest};
use crate::spec::ServiceName;

mod client;
mod server;
mod token;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

pub use client::{Client, ClientError};
pub use server::serve;
pub use token::{TOKEN_FILE, load_or_create_token, read_token};

/// Largest request body the server reads (a spec file is far smaller).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// How long the server waits for the node loop to answer a request.
pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One request handed to the node loop, with where to send its answer.
#[derive(Debug)]
pub struct ApiCall {
    pub req: ApiRequest,
    pub reply: tokio::sync::oneshot::Sender<Result<ApiReply, ApiError>>,
}

/// Where instance logs come from (the agent implements it over its runtime drivers).
///
/// The receiver yields chunks of the log as they are read; the stream ends when the sender is
/// dropped (the log is exhausted without `follow`, or the instance is gone).
pub trait LogSource: Send + Sync + 'static {
    fn logs(
        &self,
        service: String,
        slot: u32,
        follow: bool,
        tail: Option<usize>,
    ) -> futures::future::BoxFuture<'static, Result<tokio::sync::mpsc::Receiver<Vec<u8>>, ApiError>>;
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub hint: Option<String>,
}

/// `POST /v1/deploy`: the spec file as written; the server parses it again.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployBody {
    /// The file name, used only in error messages.
    pub file: String,
    pub text: String,
}

/// `POST /v1/services/{name}/scale`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleBody {
    pub replicas: u32,
}

/// `POST /v1/services/{name}/rollback`: a revision id or sequence number; `null` for the previous.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    pub to: Option<String>,
}

/// Checks a service name given in a path or on the command line, with the same words on both
/// sides of the API.
pub(crate) fn service_name(given: &str) -> Result<ServiceName, ApiError> {
    ServiceName::new(given).map_err(|why| {
        ApiError::invalid(
            format!("invalid service name {given:?}: {why}"),
            "see `shoal ps` for the services deployed",
        )
    })
}

/// An io error as a lowercase phrase without the OS code, for messages: `No such file or
/// directory (os error 2)` → `no such file or directory`.
pub fn plain_io(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_owned(),
        _ => s,
    };
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => s,
    }
}
