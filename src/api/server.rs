//! The HTTP server side of the API: routes, bearer-token check, request bodies, and the hand-off
//! of each request to the node loop.
//!
//! Everything a client sends is checked here before it reaches the core: the token, body size,
//! JSON shape, service names and spec text (parsed again, never trusted from the client). This
//! file makes no decisions about services or nodes; it maps the core's answers and refusals to
//! HTTP and never panics on any input.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch};

use super::token::token_matches;
use super::{
    ApiCall, DeployBody, ErrorBody, LogSource, MAX_BODY_BYTES, REPLY_TIMEOUT, RollbackBody,
    ScaleBody, service_name,
};
use crate::node::api::{ApiError, ApiErrorKind, ApiReply, ApiRequest};

/// Serves the API on `listener` until `shutdown` completes, then finishes the requests in
/// flight (log streams end at once) and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    token: String,
    calls: mpsc::Sender<ApiCall>,
    logs: Arc<dyn LogSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, token, calls, logs, REPLY_TIMEOUT, shutdown).await
}

/// [`serve`] with the time to wait for the node loop as a parameter (tests shorten it).
pub(crate) async fn serve_with(
    listener: tokio::net::TcpListener,
    token: String,
    calls: mpsc::Sender<ApiCall>,
    logs: Arc<dyn LogSource>,
    reply_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Graceful shutdown waits for open connections; a `logs --follow` would hold it forever.
    let (stopping_tx, stopping) = watch::channel(false);
    let state = Arc::new(Server {
        token,
        calls,
        logs,
        reply_timeout,
        stopping,
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stopping_tx.send(true);
        })
        .await
}

struct Server {
    token: String,
    calls: mpsc::Sender<ApiCall>,
    logs: Arc<dyn LogSource>,
    reply_timeout: Duration,
    /// Becomes true when the server starts shutting down.
    stopping: watch::Receiver<bool>,
}

type Shared = Arc<Server>;

fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/deploy", post(deploy))
        .route("/v1/services/{name}", axum::routing::delete(remove))
        .route("/v1/services/{name}/scale", post(scale))
        .route("/v1/services/{name}/rollback", post(rollback))
        .route("/v1/services/{name}/history", get(history))
        .route("/v1/ps", get(ps))
        .route("/v1/status", get(status))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{id}/drain", post(drain))
        .route("/v1/nodes/{id}/undrain", post(undrain))
        .route("/v1/logs/{service}/{slot}", get(logs))
        .route("/v1/test/faults", post(test_faults))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// A refused request as it goes on the wire: a status and `{"error", "hint"}`.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    body: ErrorBody,
}

impl Refusal {
    fn new(status: StatusCode, error: impl Into<String>, hint: impl Into<String>) -> Refusal {
        Refusal {
            status,
            body: ErrorBody {
                error: error.into(),
                hint: Some(hint.into()),
            },
        }
    }

    fn unavailable(error: impl Into<String>, hint: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::SERVICE_UNAVAILABLE, error, hint)
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Refusal {
        let status = match e.kind {
            ApiErrorKind::NotFound => StatusCode::NOT_FOUND,
            ApiErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ApiErrorKind::Conflict => StatusCode::CONFLICT,
            ApiErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        Refusal {
            status,
            body: ErrorBody {
                error: e.error,
                hint: e.hint,
            },
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

type Reply = Result<axum::Json<ApiReply>, Refusal>;

async fn require_token(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()));
    match presented {
        Some(t) if token_matches(t, s.token.as_bytes()) => next.run(req).await,
        _ => {
            let mut response = Refusal::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API token",
                "pass --token or SHOAL_TOKEN, or --data-dir pointing at the agent's data dir (it holds api-token)",
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"shoal\""),
            );
            response
        }
    }
}

/// The credentials of `Bearer <token>` (the scheme is case-insensitive, RFC 9110).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

async fn no_route(method: Method, uri: Uri) -> Refusal {
    Refusal::new(
        StatusCode::NOT_FOUND,
        format!("no API route {method} {}", uri.path()),
        "this agent speaks API v1; check that the CLI and the agent are the same version",
    )
}

async fn wrong_method(method: Method, uri: Uri) -> Refusal {
    Refusal::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
        "this agent speaks API v1; check that the CLI and the agent are the same version",
    )
}

/// Hands `req` to the node loop and waits for its answer, at most `reply_timeout`.
async fn call(s: &Server, req: ApiRequest) -> Reply {
    let (tx, rx) = oneshot::channel();
    let call = ApiCall { req, reply: tx };
    match s.calls.try_send(call) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            return Err(Refusal::unavailable(
                "the agent is too busy to take the request",
                "try again in a moment",
            ));
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            return Err(Refusal::unavailable(
                "the agent is shutting down",
                "try again once `shoal agent` is back",
            ));
        }
    }
    match tokio::time::timeout(s.reply_timeout, rx).await {
        Ok(Ok(Ok(reply))) => Ok(axum::Json(reply)),
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Err(_dropped)) => Err(Refusal::unavailable(
            "the agent dropped the request",
            "it is probably shutting down; try again once `shoal agent` is back",
        )),
        Err(_elapsed) => Err(Refusal::unavailable(
            format!(
                "the agent did not answer within {}",
                humantime::format_duration(s.reply_timeout)
            ),
            "it may be overloaded; check its log, and `shoal status` once it answers",
        )),
    }
}

/// A JSON request body read by hand: at most [`MAX_BODY_BYTES`] (413 otherwise, checked against
/// `Content-Length` before reading), and serde's own words on a malformed body.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Refusal;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let bytes = read_body(&parts.headers, body).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("malformed request body: {e}"),
                    "the body must be the JSON object this route takes; check that the CLI and the agent are the same version",
                )
            })
    }
}

async fn read_body(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, Refusal> {
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body is larger than {} MiB",
                MAX_BODY_BYTES / (1024 * 1024)
            ),
            "split the spec into several files and deploy each",
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
                "send the request again",
            )
        })?;
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// A path segment taken as a service name: checked before it reaches the core.
fn path_service(
    p: Result<Path<String>, PathRejection>,
) -> Result<crate::spec::ServiceName, Refusal> {
    let Path(name) = p.map_err(bad_path)?;
    Ok(service_name(&name)?)
}

fn bad_path(e: PathRejection) -> Refusal {
    Refusal::new(
        StatusCode::BAD_REQUEST,
        format!("malformed path: {}", e.body_text()),
        "names in the path are plain words (percent-encoded UTF-8)",
    )
}

fn bad_query(e: QueryRejection) -> Refusal {
    Refusal::new(
        StatusCode::BAD_REQUEST,
        format!("malformed query: {}", e.body_text()),
        "check the query parameters this route takes",
    )
}

async fn deploy(State(s): State<Shared>, body: Result<JsonBody<DeployBody>, Refusal>) -> Reply {
    let JsonBody(DeployBody { file, text }) = body?;
    let specs = crate::spec::parse(&file, &text).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            e.to_string(),
            "fix the spec and deploy again; nothing was changed",
        )
    })?;
    call(&s, ApiRequest::Deploy { specs }).await
}

async fn remove(State(s): State<Shared>, name: Result<Path<String>, PathRejection>) -> Reply {
    let service = path_service(name)?;
    call(&s, ApiRequest::Remove { service }).await
}

async fn scale(
    State(s): State<Shared>,
    name: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<ScaleBody>, Refusal>,
) -> Reply {
    let service = path_service(name)?;
    let JsonBody(ScaleBody { replicas }) = body?;
    call(&s, ApiRequest::Scale { service, replicas }).await
}

async fn rollback(
    State(s): State<Shared>,
    name: Result<Path<String>, PathRejection>,
    body: Result<JsonBody<RollbackBody>, Refusal>,
) -> Reply {
    let service = path_service(name)?;
    let JsonBody(RollbackBody { to }) = body?;
    call(&s, ApiRequest::Rollback { service, to }).await
}

async fn test_faults(
    State(s): State<Shared>,
    body: Result<JsonBody<crate::node::api::TestFaults>, Refusal>,
) -> Reply {
    let JsonBody(faults) = body?;
    if !(0.0..=1.0).contains(&faults.drop_rate) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("drop_rate {} is not between 0 and 1", faults.drop_rate),
            "give a probability such as 0.1",
        ));
    }
    call(&s, ApiRequest::TestFaults(faults)).await
}

async fn history(State(s): State<Shared>, name: Result<Path<String>, PathRejection>) -> Reply {
    let service = path_service(name)?;
    call(&s, ApiRequest::History { service }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PsQuery {
    service: Option<String>,
}

async fn ps(State(s): State<Shared>, q: Result<Query<PsQuery>, QueryRejection>) -> Reply {
    let Query(PsQuery { service }) = q.map_err(bad_query)?;
    let service = service.as_deref().map(service_name).transpose()?;
    call(&s, ApiRequest::Ps { service }).await
}

async fn status(State(s): State<Shared>) -> Reply {
    call(&s, ApiRequest::Status).await
}

async fn nodes(State(s): State<Shared>) -> Reply {
    call(&s, ApiRequest::Nodes).await
}

async fn drain(State(s): State<Shared>, id: Result<Path<String>, PathRejection>) -> Reply {
    drain_to(&s, id, true).await
}

async fn undrain(State(s): State<Shared>, id: Result<Path<String>, PathRejection>) -> Reply {
    drain_to(&s, id, false).await
}

async fn drain_to(s: &Server, id: Result<Path<String>, PathRejection>, on: bool) -> Reply {
    let Path(id) = id.map_err(bad_path)?;
    // `self` is never a node id: those are base58 peer ids.
    let node = (id != "self").then_some(id);
    call(s, ApiRequest::Drain { node, on }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<usize>,
}

async fn logs(
    State(s): State<Shared>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, Refusal> {
    let Path((service, slot)) = path.map_err(bad_path)?;
    let service = service_name(&service)?;
    let slot: u32 = slot.parse().map_err(|_| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("slot {slot:?} is not a slot number"),
            "slots are numbered from 0; see `shoal ps`",
        )
    })?;
    let Query(LogsQuery { follow, tail }) = q.map_err(bad_query)?;
    let rx = s
        .logs
        .logs(service.0.to_string(), slot, follow, tail)
        .await?;

    let mut stopping = s.stopping.clone();
    let stopped = async move {
        // An error means the server is gone: stop as well.
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Bytes::from(chunk)), rx))
    })
    .take_until(Box::pin(stopped));
    let mut response = Body::from_stream(chunks).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}
