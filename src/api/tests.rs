//! Tests of the API over real HTTP on 127.0.0.1: the server in front of a fake node loop, driven
//! by raw requests and by the blocking client (run in `spawn_blocking`).

use std::io::Read;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::testing::{FakeAgent, NODE, TOKEN, WEB_YAML, spawn_fake_agent};
use super::{Client, ClientError, ErrorBody, MAX_BODY_BYTES};
use crate::node::api::{ApiRequest, WriteResult};
use crate::spec::ServiceName;

async fn agent() -> FakeAgent {
    spawn_fake_agent(Duration::from_secs(5)).await
}

/// One request without the client's checks: the status and the body.
async fn raw(
    agent: &FakeAgent,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let url = format!("{}{path}", agent.url());
    let method = method.to_owned();
    let token = token.map(str::to_owned);
    let body = body.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .build()
            .new_agent();
        let mut request = ureq::http::Request::builder()
            .method(method.as_str())
            .uri(url);
        if let Some(t) = token {
            request = request.header("Authorization", format!("Bearer {t}"));
        }
        let response = match body {
            Some(b) => http.run(
                request
                    .header("Content-Type", "application/json")
                    .body(b)
                    .unwrap(),
            ),
            None => http.run(request.body(()).unwrap()),
        };
        let mut response = response.unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    })
    .await
    .unwrap()
}

fn error_body(text: &str) -> ErrorBody {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not an error body ({e}): {text}"))
}

fn deploy_body(file: &str, text: &str) -> String {
    serde_json::json!({ "file": file, "text": text }).to_string()
}

/// Runs the blocking client against `agent` off the runtime's threads.
async fn with_client<T: Send + 'static>(
    agent: &FakeAgent,
    f: impl FnOnce(Client) -> T + Send + 'static,
) -> T {
    let client = Client::new(&agent.url(), TOKEN).unwrap();
    tokio::task::spawn_blocking(move || f(client))
        .await
        .unwrap()
}

// --- server ---

#[tokio::test]
async fn requests_without_the_right_token_are_refused_with_401() {
    let a = agent().await;
    for token in [None, Some("wrong"), Some(&TOKEN[1..])] {
        let (status, body) = raw(&a, "GET", "/v1/status", token, None).await;
        assert_eq!(status, 401);
        let e = error_body(&body);
        assert_eq!(e.error, "missing or wrong API token");
        assert_eq!(
            e.hint.as_deref(),
            Some(
                "pass --token or SHOAL_TOKEN, or --data-dir pointing at the agent's data dir (it holds api-token)"
            )
        );
    }
    // Unknown routes are no way around it.
    let (status, _) = raw(&a, "GET", "/v2/anything", None, None).await;
    assert_eq!(status, 401);
    assert!(a.requests().is_empty());
    let (status, _) = raw(&a, "GET", "/v1/status", Some(TOKEN), None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_malformed_spec_is_refused_with_its_line_and_never_reaches_the_core() {
    let a = agent().await;
    let text = "name: web\ncommand: [sleep, \"1\"]\nreplica: 2\n";
    let body = deploy_body("web.yaml", text);
    let (status, body) = raw(&a, "POST", "/v1/deploy", Some(TOKEN), Some(&body)).await;
    assert_eq!(status, 400);
    let e = error_body(&body);
    assert!(
        e.error.starts_with("spec web.yaml line 3"),
        "error: {}",
        e.error
    );
    assert!(e.error.contains("replica"), "error: {}", e.error);
    assert_eq!(
        e.hint.as_deref(),
        Some("fix the spec and deploy again; nothing was changed")
    );
    assert!(a.requests().is_empty());
}

#[tokio::test]
async fn a_valid_spec_is_parsed_by_the_server_and_deployed() {
    let a = agent().await;
    let body = deploy_body("web.yaml", WEB_YAML);
    let (status, body) = raw(&a, "POST", "/v1/deploy", Some(TOKEN), Some(&body)).await;
    assert_eq!(status, 200, "{body}");
    let written: Vec<WriteResult> = serde_json::from_str(&body).unwrap();
    assert_eq!(written[0].service, "web");
    let specs = crate::spec::parse("web.yaml", WEB_YAML).unwrap();
    assert_eq!(a.requests(), vec![ApiRequest::Deploy { specs }]);
}

#[tokio::test]
async fn an_unknown_service_is_404_with_the_cores_hint() {
    let a = agent().await;
    let (status, body) = raw(&a, "GET", "/v1/services/db/history", Some(TOKEN), None).await;
    assert_eq!(status, 404);
    assert_eq!(
        error_body(&body),
        ErrorBody {
            error: "no service db".into(),
            hint: Some("see `shoal ps` for the services deployed".into()),
        }
    );
}

#[tokio::test]
async fn an_invalid_service_name_is_400_and_never_reaches_the_core() {
    let a = agent().await;
    for path in [
        "/v1/services/Web/history",
        "/v1/services/web%2Fx",
        "/v1/services/-web/scale",
        "/v1/ps?service=a_b",
        "/v1/logs/WEB/0",
    ] {
        let method = if path.ends_with("scale") {
            "POST"
        } else if path.starts_with("/v1/services/web%") {
            "DELETE"
        } else {
            "GET"
        };
        let body = method.eq("POST").then_some("{\"replicas\": 1}");
        let (status, text) = raw(&a, method, path, Some(TOKEN), body).await;
        assert_eq!(status, 400, "{path}: {text}");
        let e = error_body(&text);
        assert!(
            e.error.starts_with("invalid service name"),
            "{path}: {text}"
        );
    }
    assert!(a.requests().is_empty());
}

#[tokio::test]
async fn a_body_over_4_mib_is_413_without_being_read() {
    let a = agent().await;
    // Declared too large: refused on the headers, whatever follows.
    let mut s = tokio::net::TcpStream::connect(a.addr).await.unwrap();
    let head = format!(
        "POST /v1/deploy HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"file\": ",
        MAX_BODY_BYTES + 1
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(
        reply.contains("request body is larger than 4 MiB"),
        "{reply}"
    );

    // Not declared (chunked) and too large: refused once the limit is passed.
    let mut s = tokio::net::TcpStream::connect(a.addr).await.unwrap();
    let head = format!(
        "POST /v1/deploy HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
        // The server stops reading past the limit; a failed write is that.
        for _ in 0..(MAX_BODY_BYTES / (64 * 1024) + 8) {
            if wr.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let mut reply = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !reply.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = rd.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed without an answer");
        reply.extend_from_slice(&buf[..n]);
    }
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    writer.abort();
    assert!(a.requests().is_empty());
}

#[tokio::test]
async fn malformed_json_bodies_are_400_with_serdes_words() {
    let a = agent().await;
    for (path, body, words) in [
        ("/v1/deploy", "{not json", "key must be a string"),
        (
            "/v1/deploy",
            "{\"file\": \"a.yaml\"}",
            "missing field `text`",
        ),
        (
            "/v1/services/web/scale",
            "{\"replicas\": -1}",
            "invalid value: integer `-1`",
        ),
        (
            "/v1/services/web/scale",
            "{\"replicas\": 2, \"force\": true}",
            "unknown field `force`",
        ),
        ("/v1/services/web/rollback", "", "EOF while parsing"),
    ] {
        let (status, text) = raw(&a, "POST", path, Some(TOKEN), Some(body)).await;
        assert_eq!(status, 400, "{path} {body}: {text}");
        let e = error_body(&text);
        assert!(e.error.starts_with("malformed request body: "), "{text}");
        assert!(e.error.contains(words), "{body}: {text}");
    }
    assert!(a.requests().is_empty());
}

#[tokio::test]
async fn every_route_reaches_the_core_as_its_request() {
    let a = agent().await;
    let web = ServiceName("web".into());
    let calls: [(&str, &str, Option<&str>); 10] = [
        ("DELETE", "/v1/services/web", None),
        ("POST", "/v1/services/web/scale", Some("{\"replicas\": 5}")),
        ("POST", "/v1/services/web/rollback", Some("{\"to\": \"3\"}")),
        ("POST", "/v1/services/web/rollback", Some("{\"to\": null}")),
        ("GET", "/v1/services/web/history", None),
        ("GET", "/v1/ps?service=web", None),
        ("GET", "/v1/status", None),
        ("GET", "/v1/nodes", None),
        ("POST", "/v1/nodes/self/drain", None),
        ("POST", "/v1/nodes/12D3KooWab/undrain", None),
    ];
    for (method, path, body) in calls {
        let (status, text) = raw(&a, method, path, Some(TOKEN), body).await;
        assert_eq!(status, 200, "{method} {path}: {text}");
    }
    assert_eq!(
        a.requests(),
        vec![
            ApiRequest::Remove {
                service: web.clone()
            },
            ApiRequest::Scale {
                service: web.clone(),
                replicas: 5
            },
            ApiRequest::Rollback {
                service: web.clone(),
                to: Some("3".into())
            },
            ApiRequest::Rollback {
                service: web.clone(),
                to: None
            },
            ApiRequest::History {
                service: web.clone()
            },
            ApiRequest::Ps { service: Some(web) },
            ApiRequest::Status,
            ApiRequest::Nodes,
            ApiRequest::Drain {
                node: None,
                on: true
            },
            ApiRequest::Drain {
                node: Some("12D3KooWab".into()),
                on: false
            },
        ]
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let a = agent().await;
    let (status, text) = raw(&a, "GET", "/v1/nope", Some(TOKEN), None).await;
    assert_eq!(status, 404);
    assert_eq!(error_body(&text).error, "no API route GET /v1/nope");
    let (status, text) = raw(&a, "GET", "/v1/deploy", Some(TOKEN), None).await;
    assert_eq!(status, 405);
    assert_eq!(error_body(&text).error, "/v1/deploy does not take GET");
    let (status, text) = raw(&a, "GET", "/v1/logs/web/x", Some(TOKEN), None).await;
    assert_eq!(status, 400);
    assert_eq!(error_body(&text).error, "slot \"x\" is not a slot number");
    let (status, text) = raw(&a, "GET", "/v1/logs/web/0?tail=-1", Some(TOKEN), None).await;
    assert_eq!(status, 400);
    assert!(error_body(&text).error.starts_with("malformed query: "));
}

#[tokio::test]
async fn a_core_that_does_not_answer_is_503() {
    let a = spawn_fake_agent(Duration::from_millis(200)).await;
    let (status, text) = raw(&a, "GET", "/v1/services/slow/history", Some(TOKEN), None).await;
    assert_eq!(status, 503);
    assert_eq!(
        error_body(&text).error,
        "the agent did not answer within 200ms"
    );
    let (status, text) = raw(&a, "GET", "/v1/services/dropped/history", Some(TOKEN), None).await;
    assert_eq!(status, 503);
    assert_eq!(error_body(&text).error, "the agent dropped the request");
}

#[tokio::test]
async fn a_closed_node_loop_is_503() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (calls, rx) = tokio::sync::mpsc::channel(1);
    drop(rx);
    let logs = std::sync::Arc::new(super::testing::FakeLogs::default());
    tokio::spawn(super::serve(
        listener,
        TOKEN.into(),
        calls,
        logs,
        std::future::pending(),
    ));
    let e = tokio::task::spawn_blocking(move || {
        Client::new(&addr.to_string(), TOKEN)
            .unwrap()
            .status()
            .unwrap_err()
    })
    .await
    .unwrap();
    assert_eq!(e.status(), Some(503));
    assert_eq!(
        e.to_string(),
        "the agent is shutting down\nhint: try again once `shoal agent` is back"
    );
}

#[tokio::test]
async fn logs_stream_as_they_come_and_end_with_the_source() {
    let a = agent().await;
    let more = a.logs.more.clone();
    let (first, rest) = with_client(&a, move |c| {
        let mut reader = c.logs("web", 0, true, Some(10)).unwrap();
        // Both chunks arrive while the stream is still open.
        let mut first = Vec::new();
        while first.len() < 14 {
            let mut buf = [0u8; 64];
            let n = reader.read(&mut buf).unwrap();
            assert!(n > 0, "stream ended early");
            first.extend_from_slice(&buf[..n]);
        }
        more.notify_one();
        let mut rest = String::new();
        reader.read_to_string(&mut rest).unwrap();
        (String::from_utf8(first).unwrap(), rest)
    })
    .await;
    assert_eq!(first, "line 1\nline 2\n");
    assert_eq!(rest, "line 3\n");

    let e = with_client(&a, |c| c.logs("web", 3, false, None).err().unwrap()).await;
    assert_eq!(e.status(), Some(404));
    assert_eq!(
        e.to_string(),
        "no instance web/3 on this node\nhint: see `shoal ps` for where it runs"
    );
}

#[tokio::test]
async fn shutdown_ends_open_log_streams() {
    let mut a = agent().await;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let c = Client::new(&a.url(), TOKEN).unwrap();
    let reading = tokio::task::spawn_blocking(move || {
        let mut reader = c.logs("web", 0, true, None).unwrap();
        let mut buf = [0u8; 64];
        let _ = reader.read(&mut buf).unwrap();
        tx.send(()).unwrap();
        let mut rest = Vec::new();
        // Ends (cleanly or not) instead of waiting for a third line that never comes.
        let _ = reader.read_to_end(&mut rest);
    });
    let reading = async { reading.await.unwrap() };
    let stop = async {
        tokio::task::spawn_blocking(move || rx.recv().unwrap())
            .await
            .unwrap();
        a.stop();
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(reading, stop)
    })
    .await
    .expect("the log stream kept the server open");
    tokio::time::timeout(Duration::from_secs(10), &mut a.server)
        .await
        .expect("the server did not stop")
        .unwrap()
        .unwrap();
}

// --- client ---

#[tokio::test]
async fn the_client_has_a_typed_method_for_every_route() {
    let a = agent().await;
    with_client(&a, |c| {
        let w = c.deploy("web.yaml", WEB_YAML).unwrap();
        assert_eq!(w[0].revision, "web-1");
        assert_eq!(c.scale("web", 3).unwrap()[0].revision, "web-2");
        assert_eq!(c.remove("web").unwrap()[0].revision, "web-3");
        assert_eq!(c.rollback("web", Some("1")).unwrap()[0].revision, "web-4");
        assert_eq!(c.history("web").unwrap(), super::testing::history());
        assert_eq!(c.ps(Some("web")).unwrap(), super::testing::ps());
        assert_eq!(c.ps(None).unwrap().len(), 2);
        assert_eq!(c.status().unwrap().node, NODE);
        assert_eq!(c.nodes().unwrap(), vec![super::testing::node_view()]);
        assert_eq!(c.drain(None, true).unwrap()[0].revision, NODE);
        assert_eq!(
            c.drain(Some("12D3KooW/x"), false).unwrap()[0].revision,
            "12D3KooW/x"
        );
    })
    .await;
    assert_eq!(a.requests().len(), 11);
}

#[tokio::test]
async fn the_client_carries_the_agents_error_and_hint() {
    let a = agent().await;
    let e = with_client(&a, |c| c.scale("db", 2).unwrap_err()).await;
    assert_eq!(e.status(), Some(404));
    assert_eq!(
        e.to_string(),
        "no service db\nhint: see `shoal ps` for the services deployed"
    );
    let e = with_client(&a, |c| c.deploy("web.yaml", "name: web\n").unwrap_err()).await;
    assert_eq!(e.status(), Some(400));
    assert!(e.to_string().starts_with("spec web.yaml"), "{e}");
    assert!(
        e.to_string()
            .ends_with("\nhint: fix the spec and deploy again; nothing was changed"),
        "{e}"
    );
}

#[tokio::test]
async fn the_client_checks_service_names_before_sending() {
    let a = agent().await;
    let e = with_client(&a, |c| c.history("Web").unwrap_err()).await;
    assert!(matches!(e, ClientError::Invalid { .. }), "{e:?}");
    assert!(
        e.to_string().starts_with("invalid service name \"Web\""),
        "{e}"
    );
    assert!(a.requests().is_empty());
}

#[tokio::test]
async fn a_wrong_token_reads_as_the_servers_401() {
    let a = agent().await;
    let url = a.url();
    let e = tokio::task::spawn_blocking(move || {
        Client::new(&url, "nope").unwrap().status().unwrap_err()
    })
    .await
    .unwrap();
    assert_eq!(e.status(), Some(401));
    assert_eq!(
        e.to_string(),
        "missing or wrong API token\nhint: pass --token or SHOAL_TOKEN, or --data-dir pointing at the agent's data dir (it holds api-token)"
    );
}

#[test]
fn an_agent_that_is_not_running_is_reported_with_what_to_do() {
    // A port just freed: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = Client::new(&format!("127.0.0.1:{port}"), TOKEN)
        .unwrap()
        .status()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "cannot reach the shoal agent at http://127.0.0.1:{port}: connection refused\nhint: is `shoal agent` running? set --api or SHOAL_API to reach another"
        )
    );
}

#[test]
fn api_addresses_are_read_with_or_without_a_scheme() {
    let url = |s: &str| Client::new(s, "t").map(|c| c.url().to_owned());
    assert_eq!(url("127.0.0.1:7800").unwrap(), "http://127.0.0.1:7800");
    assert_eq!(
        url("http://127.0.0.1:7800/").unwrap(),
        "http://127.0.0.1:7800"
    );
    assert_eq!(url("HTTP://node-1:7800").unwrap(), "http://node-1:7800");
    assert_eq!(url("[::1]:7800").unwrap(), "http://[::1]:7800");
    for bad in ["", "https://x:1", "x:1/v1", "a b:1"] {
        assert!(
            matches!(url(bad), Err(ClientError::BadAddress { .. })),
            "{bad}"
        );
    }
}

#[test]
fn a_missing_token_file_says_where_it_looked_and_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let opts = crate::cli::ClientOpts {
        api: "127.0.0.1:7800".into(),
        data_dir: Some(dir.path().to_owned()),
        token: None,
        output: crate::cli::Output::Table,
    };
    let e = Client::from_opts(&opts).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "no API token: no token file at {}\nhint: start `shoal agent` with this data dir (it writes the token), or pass --token or SHOAL_TOKEN, or --data-dir pointing at the agent's data dir",
            dir.path().join("api-token").display()
        )
    );
    // Once the agent wrote it, the same options work.
    let token = super::load_or_create_token(dir.path()).unwrap();
    let c = Client::from_opts(&opts).unwrap();
    assert_eq!(c.auth, format!("Bearer {token}"));
    // A token given outright wins over the data dir.
    let c = Client::from_opts(&crate::cli::ClientOpts {
        token: Some("given".into()),
        ..opts
    })
    .unwrap();
    assert_eq!(c.auth, "Bearer given");
}

#[test]
fn a_spec_too_large_for_the_agent_is_refused_before_sending() {
    // Nothing listens on port 1: the check comes first.
    let c = Client::new("127.0.0.1:1", TOKEN).unwrap();
    let text = "#".repeat(MAX_BODY_BYTES);
    let e = c.deploy("big.yaml", &text).unwrap_err();
    assert!(matches!(e, ClientError::Invalid { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("spec big.yaml is too large to send (4096 KiB"),
        "{e}"
    );
}
