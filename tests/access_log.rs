//! One access-log line per request, written when the response ends: normal
//! and streamed responses log at INFO with the fingerprint and no outcome; a
//! client that goes away mid-stream is a WARN with `outcome`; sidekey's own
//! errors carry the message (5xx at WARN). The query is never logged. What a
//! request's steps log (a failover) carries the request span of its access
//! line.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::client::{self, request};
use common::mock::{Mock, Reply, Transport};
use common::process::{Proc, spawn_config};
use common::write_key;
use http::Method;
use http_body_util::BodyExt;
use serde_json::Value;

/// The lines of the binary's log so far, as JSON.
fn json_lines(proc: &Proc) -> Vec<Value> {
    proc.stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

#[tokio::test]
async fn access_lines_describe_each_request() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |r| match r.uri.path() {
        "/v1/stream" => Reply::sse(
            (0..5).map(|i| format!("data: {i}\n\n")).collect(),
            Duration::from_millis(30),
        ),
        _ => Reply::ok(),
    })
    .await;
    let key = write_key(dir.path(), "key", "sk-access-log");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.path().join("sidekey.toml");
    std::fs::write(
        &config,
        format!(
            "[routes.ok]\ntype = \"openai\"\nupstream = \"{}\"\nkey = \"path::{key}\"\n\
             [routes.down]\ntype = \"vllm\"\nupstream = \"http://{closed}\"\n",
            mock.url
        ),
    )
    .unwrap();
    let proc = spawn_config(&config, &[], &[]).await;

    // 1. A JSON answer with Content-Length; the query must not be logged.
    assert_eq!(
        client::get(&proc.url("/ok/v1/models?key=hidden&x=1"))
            .await
            .status,
        200
    );
    // 2. A chunked stream read to the end.
    let (status, _) = client::stream(request(
        Method::GET,
        &proc.url("/ok/v1/stream"),
        &[],
        Bytes::new(),
    ))
    .await;
    assert_eq!(status, 200);
    // 3. A stream the client abandons after the first chunk.
    {
        let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Full<Bytes>>();
        let resp = c
            .request(request(
                Method::GET,
                &proc.url("/ok/v1/stream"),
                &[],
                Bytes::new(),
            ))
            .await
            .unwrap();
        let mut body = resp.into_body();
        body.frame().await.unwrap().unwrap();
    }
    // 4. sidekey's own answers.
    assert_eq!(client::get(&proc.url("/nope/x")).await.status, 404);
    assert_eq!(client::get(&proc.url("/down/x")).await.status, 502);

    let lines: Vec<Value> =
        common::eventually("five access lines", Duration::from_secs(10), || async {
            let lines: Vec<Value> = json_lines(&proc)
                .into_iter()
                .filter(|v| v["target"] == "sidekey::access")
                .collect();
            (lines.len() >= 5).then_some(lines)
        })
        .await;
    let (status, logs) = proc.terminate().await;
    assert_eq!(status.code(), Some(0));
    assert!(
        !logs.contains("hidden"),
        "a query string was logged:\n{logs}"
    );
    assert_eq!(lines.len(), 5, "{lines:#?}");

    let fingerprint = sidekey::Secret::new(b"sk-access-log".to_vec())
        .unwrap()
        .fingerprint()
        .to_string();
    let find = |pred: &dyn Fn(&Value) -> bool| lines.iter().find(|l| pred(l)).cloned();

    let json = find(&|l| l["path"] == "/ok/v1/models").expect("no line for the JSON request");
    assert_eq!(json["level"], "INFO", "{json}");
    assert_eq!(json["route"], "ok");
    assert_eq!(json["method"], "GET");
    assert_eq!(json["status"], 200);
    assert_eq!(json["fingerprint"], fingerprint.as_str());
    assert_eq!(json["attempts"], 1);
    assert!(json["elapsed_ms"].as_f64().unwrap() > 0.0);
    assert!(
        json.get("outcome").is_none(),
        "a complete response has no outcome: {json}"
    );

    let streams: Vec<_> = lines
        .iter()
        .filter(|l| l["path"] == "/ok/v1/stream")
        .collect();
    assert_eq!(streams.len(), 2, "{streams:#?}");
    assert!(
        streams
            .iter()
            .any(|l| l["level"] == "INFO" && l.get("outcome").is_none()),
        "{streams:#?}"
    );
    assert!(
        streams
            .iter()
            .any(|l| l["level"] == "WARN" && l["outcome"] == "client_closed"),
        "{streams:#?}"
    );

    let unknown = find(&|l| l["status"] == 404).unwrap();
    assert_eq!(unknown["level"], "INFO");
    assert!(
        unknown["error"].as_str().unwrap().contains("unknown route"),
        "{unknown}"
    );
    let down = find(&|l| l["status"] == 502).unwrap();
    assert_eq!(down["level"], "WARN");
    assert_eq!(down["route"], "down");
    assert!(
        down["error"].as_str().unwrap().contains("unreachable"),
        "{down}"
    );
}

/// A request's steps run in its `request` span: the failover warning they
/// write carries the same span (`id`, `route`) as the request's access
/// line, which is how the two are tied together in a log.
#[tokio::test]
async fn a_failover_warning_carries_the_span_of_its_access_line() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |r| {
        if r.header("authorization") == Some("Bearer sk-good") {
            Reply::ok()
        } else {
            Reply::json(401, r#"{"error":{"message":"Incorrect API key"}}"#)
        }
    })
    .await;
    let bad = write_key(dir.path(), "bad", "sk-bad");
    let good = write_key(dir.path(), "good", "sk-good");
    let config = dir.path().join("sidekey.toml");
    std::fs::write(
        &config,
        format!(
            "[routes.fb]\ntype = \"openai\"\nupstream = \"{}\"\n\
             key = {{ default = \"path::{bad}\", fallback = \"path::{good}\" }}\n",
            mock.url
        ),
    )
    .unwrap();
    let proc = spawn_config(&config, &[], &[]).await;
    // Two requests, so that a line could carry the wrong one's id.
    for _ in 0..2 {
        assert_eq!(client::get(&proc.url("/fb/v1/models")).await.status, 200);
    }

    let lines: Vec<Value> =
        common::eventually("two access lines", Duration::from_secs(10), || async {
            let lines = json_lines(&proc);
            let access = lines
                .iter()
                .filter(|v| v["target"] == "sidekey::access")
                .count();
            (access >= 2).then_some(lines)
        })
        .await;
    let (status, _) = proc.terminate().await;
    assert_eq!(status.code(), Some(0));

    let of = |message: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["message"] == message || l["fields"]["message"] == message)
            .collect()
    };
    let failovers = of("credential failover");
    let accesses = of("request");
    // The rejected key rests once the fallback has answered: only the
    // first request fails over.
    assert_eq!(failovers.len(), 1, "{lines:#?}");
    assert_eq!(accesses.len(), 2, "{lines:#?}");
    let failover = failovers[0];
    assert_eq!(failover["span"]["name"], "request", "{failover}");
    assert_eq!(failover["span"]["route"], "fb", "{failover}");
    let first = accesses
        .iter()
        .find(|a| a["attempts"] == 2)
        .expect("the request that failed over");
    assert_eq!(failover["span"], first["span"], "{failover}\n{first}");
    assert_ne!(accesses[0]["span"]["id"], accesses[1]["span"]["id"]);
}
