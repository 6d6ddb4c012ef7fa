//! Fallback on a rejected key: the identical request goes out again with the
//! next key, the client sees only the final answer, the rejected key rests,
//! and pools spread the load around a revoked or rate-limited key.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::client::{self, Resp, request};
use common::kubelet::SecretVolume;
use common::mock::{Mock, Recorded, Reply, Transport};
use common::sidekey::{Running, start_in};
use common::tls::TestPki;
use http::Method;
use http_body_util::{BodyExt, Channel};
use sidekey::MapEnv;

/// The provider: keys starting `sk-bad` or listed in `revoked` get a 401
/// naming them; others get 200 with the key and a digest of the body.
fn provider(r: &Recorded) -> Reply {
    let auth = r.header("authorization").unwrap_or("").to_owned();
    if auth.contains("sk-bad") {
        return Reply::json(
            401,
            serde_json::json!({"error": {"message": format!("invalid key {auth}")}}).to_string(),
        );
    }
    if r.uri.path().ends_with("/stream") {
        return Reply::sse(
            (0..5).map(|i| format!("data: {i}\n\n")).collect(),
            Duration::from_millis(50),
        );
    }
    Reply::json(
        200,
        serde_json::json!({"auth": auth, "body_sha256": sha256(&r.body)}).to_string(),
    )
}

fn sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn route(name: &str, upstream: &str, key: &str) -> String {
    format!("[routes.{name}]\ntype = \"openai\"\nupstream = \"{upstream}\"\nkey = {key}\n")
}

/// The `provider` mock over plain HTTP behind one openai route named
/// `openai` with `key`; `prefix` goes before the route in the config.
async fn openai_route(prefix: &str, key: &str, env: MapEnv) -> (tempfile::TempDir, Mock, Running) {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, provider).await;
    let config = format!("{prefix}{}", route("openai", &mock.url, key));
    let sidekey = start_in(dir.path(), &config, env).await;
    (dir, mock, sidekey)
}

/// sidekey with a gemini route to `mock`, keyed `{ default = bad, fallback = good }`.
async fn gemini_route(dir: &std::path::Path, mock: &Mock, bad: &str, good: &str) -> Running {
    let config = format!(
        "[routes.gemini]\ntype = \"gemini\"\nupstream = \"{}\"\nkey = {{ default = \"env::BAD\", fallback = \"env::GOOD\" }}\n",
        mock.url
    );
    start_in(dir, &config, MapEnv::new([("BAD", bad), ("GOOD", good)])).await
}

async fn metric(sidekey: &Running, prefix: &str) -> f64 {
    let text = client::get(&sidekey.admin_url("/metrics")).await.text();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn post(sidekey: &Running, path: &str, body: impl Into<Bytes>) -> Resp {
    client::send(request(
        Method::POST,
        &sidekey.url(path),
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer client-dummy"),
            ("x-app", "1"),
            // Twice: a retry sends both values, in order.
            ("x-app", "2"),
        ],
        body,
    ))
    .await
}

/// A JSON body of about `size` bytes.
fn json_body(size: usize) -> Bytes {
    let filler: String = (0..size)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    Bytes::from(format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{filler}"}}]}}"#
    ))
}

#[tokio::test]
async fn a_rejected_default_is_replaced_by_the_fallback_with_the_same_request() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let mock = Mock::start(Transport::Tls(&pki), provider).await;
    let config = format!(
        "ca_file = \"{}\"\n{}",
        pki.ca_file.display(),
        route(
            "openai",
            &mock.url,
            "{ default = \"env::BAD\", fallback = \"env::GOOD\" }"
        )
    );
    let env = MapEnv::new([("BAD", "sk-bad-primary"), ("GOOD", "sk-good-fallback")]);
    let sidekey = start_in(dir.path(), &config, env).await;

    for size in [1 << 20, 20 << 20] {
        let body = json_body(size);
        let before = mock.requests().len();
        let resp = post(
            &sidekey,
            "/openai/v1/chat/completions?trace=1",
            body.clone(),
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["auth"], "Bearer sk-good-fallback");
        let seen: Vec<_> = mock.requests().into_iter().skip(before).collect();
        // After the first rejection the primary rests: later requests go
        // straight to the fallback.
        let expected_attempts = if before == 0 { 2 } else { 1 };
        assert_eq!(seen.len(), expected_attempts, "{size} bytes");
        for r in &seen {
            assert_eq!(
                sha256(&r.body),
                sha256(&body),
                "{size} bytes: the body was not replayed byte for byte"
            );
            assert_eq!(r.path_and_query(), "/v1/chat/completions?trace=1");
            assert_eq!(r.method, Method::POST);
        }
        if let [first, second] = seen.as_slice() {
            assert_eq!(first.header("authorization"), Some("Bearer sk-bad-primary"));
            assert_eq!(
                second.header("authorization"),
                Some("Bearer sk-good-fallback")
            );
            let mut a = first.headers.clone();
            let mut b = second.headers.clone();
            a.remove("authorization");
            b.remove("authorization");
            assert_eq!(a, b, "the retry's headers differ beyond the credential");
            let apps: Vec<_> = b.get_all("x-app").iter().collect();
            assert_eq!(apps, ["1", "2"], "the retry's repeated header");
        }
    }
    assert_eq!(
        metric(
            &sidekey,
            "sidekey_credential_failovers_total{route=\"openai\",reason=\"rejected\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&sidekey, "sidekey_credential_keys_rested{route=\"openai\"}").await,
        1.0
    );
}

#[tokio::test]
async fn a_chunked_body_of_unknown_length_is_replayed_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let good = Mock::start(Transport::Plain, provider).await;
    let config = route(
        "openai",
        &good.url,
        "{ default = \"env::BAD\", fallback = \"env::GOOD\" }",
    );
    let env = MapEnv::new([("BAD", "sk-bad-1"), ("GOOD", "sk-good-1")]);
    let sidekey = start_in(dir.path(), &config, env).await;

    // A chunked body (no Content-Length), sent in pieces with pauses.
    let (mut tx, body) = Channel::<Bytes, std::convert::Infallible>::new(4);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Channel<Bytes, std::convert::Infallible>>();
    let req = http::Request::post(sidekey.url("/openai/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let chunks: Vec<Bytes> = (0..8)
        .map(|i| Bytes::from(vec![b'0' + i as u8; 64 << 10]))
        .collect();
    let expected = sha256(&chunks.concat());
    let sender = tokio::spawn(async move {
        for c in chunks {
            tx.send_data(c).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let resp = client.request(req).await.unwrap();
    sender.await.unwrap();
    assert_eq!(resp.status(), 200);
    let json: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(json["auth"], "Bearer sk-good-1");
    assert_eq!(json["body_sha256"], expected);
    let seen = good.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| sha256(&r.body) == expected));
    assert!(
        seen.iter().all(|r| r.header("content-length").is_none()),
        "a chunked body stays chunked"
    );
}

#[tokio::test]
async fn early_rejection_then_replay_continues_from_the_client_stream() {
    // One upstream that answers 401 from the head for the bad key (without
    // reading the body) and reads the body in full for the good key. Over
    // HTTP/2, as providers serve: an early answer ends the stream cleanly.
    // (Over HTTP/1.1 a server that answers early and closes races the
    // client's body write; no client can always read such an answer.)
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let reads_body = Arc::new(AtomicBool::new(false));
    let mock = {
        let reads_body = reads_body.clone();
        Mock::start_early(Transport::Tls(&pki), move |r| {
            if r.header("authorization").unwrap_or("").contains("sk-bad") {
                Reply::json(401, r#"{"error":"bad key"}"#)
            } else {
                reads_body.store(true, Ordering::Relaxed);
                Reply::json(200, r#"{"ok":true}"#)
            }
        })
        .await
    };
    let config = format!(
        "ca_file = \"{}\"\n{}",
        pki.ca_file.display(),
        route(
            "openai",
            &mock.url,
            "{ default = \"env::BAD\", fallback = \"env::GOOD\" }"
        )
    );
    let env = MapEnv::new([("BAD", "sk-bad-early"), ("GOOD", "sk-good-early")]);
    let sidekey = start_in(dir.path(), &config, env).await;
    let body = json_body(4 << 20);
    let resp = post(&sidekey, "/openai/v1/chat/completions", body.clone()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(reads_body.load(Ordering::Relaxed));
    let seen = mock.requests();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[0].body.is_empty(),
        "the rejection came before the body was read"
    );
    assert_eq!(
        sha256(&seen[1].body),
        sha256(&body),
        "the retry carried the whole body"
    );
}

#[tokio::test]
async fn a_stream_after_a_failover_arrives_incrementally() {
    let (_dir, mock, sidekey) = openai_route(
        "",
        "{ default = \"env::BAD\", fallback = \"env::GOOD\" }",
        MapEnv::new([("BAD", "sk-bad-s"), ("GOOD", "sk-good-s")]),
    )
    .await;
    let (status, chunks) = client::stream(request(
        Method::POST,
        &sidekey.url("/openai/v1/stream"),
        &[],
        r#"{"stream":true}"#,
    ))
    .await;
    assert_eq!(status, 200);
    let sent = mock.sent_times(0);
    assert_eq!(sent.len(), 5);
    for k in 0..4 {
        let arrived = chunks
            .iter()
            .find(|(_, b)| b.starts_with(format!("data: {k}").as_bytes()))
            .map(|(t, _)| *t)
            .unwrap();
        assert!(arrived < sent[k + 1], "chunk {k} was held back");
    }
}

#[tokio::test]
async fn when_every_key_is_rejected_the_client_gets_the_last_answer_unchanged() {
    let (_dir, mock, sidekey) = openai_route(
        "",
        "{ default = \"env::A\", fallback = \"env::B\" }",
        MapEnv::new([("A", "sk-bad-a"), ("B", "sk-bad-b")]),
    )
    .await;
    let resp = post(&sidekey, "/openai/v1/chat/completions", r#"{"model":"m"}"#).await;
    assert_eq!(resp.status, 401);
    assert_eq!(
        resp.json(),
        serde_json::json!({"error": {"message": "invalid key Bearer sk-bad-b"}})
    );
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test]
async fn a_rested_key_is_skipped_then_probed_once_and_restored() {
    let dir = tempfile::tempdir().unwrap();
    let primary_ok = Arc::new(AtomicBool::new(false));
    let mock = {
        let primary_ok = primary_ok.clone();
        Mock::start(Transport::Plain, move |r| {
            let auth = r.header("authorization").unwrap_or("");
            if auth.contains("primary") && !primary_ok.load(Ordering::Relaxed) {
                Reply::json(401, r#"{"error":"revoked"}"#)
            } else {
                Reply::json(200, serde_json::json!({"auth": auth}).to_string())
            }
        })
        .await
    };
    let config = format!(
        "[keys]\nrest = \"1s\"\n{}",
        route(
            "openai",
            &mock.url,
            "{ default = \"env::P\", fallback = \"env::F\" }"
        )
    );
    let sidekey = start_in(
        dir.path(),
        &config,
        MapEnv::new([("P", "sk-primary"), ("F", "sk-fallback")]),
    )
    .await;
    let auth = |r: Resp| r.json()["auth"].as_str().unwrap().to_owned();

    assert_eq!(
        auth(post(&sidekey, "/openai/v1/x", "{}").await),
        "Bearer sk-fallback"
    );
    for _ in 0..5 {
        assert_eq!(
            auth(post(&sidekey, "/openai/v1/x", "{}").await),
            "Bearer sk-fallback"
        );
    }
    let primary_tries = || {
        mock.requests()
            .iter()
            .filter(|r| r.header("authorization") == Some("Bearer sk-primary"))
            .count()
    };
    assert_eq!(
        primary_tries(),
        1,
        "a rested key must not be tried again during its rest"
    );

    // The provider reinstates the key; after the rest one request probes it
    // and it serves again.
    primary_ok.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        auth(post(&sidekey, "/openai/v1/x", "{}").await),
        "Bearer sk-primary"
    );
    assert_eq!(
        auth(post(&sidekey, "/openai/v1/x", "{}").await),
        "Bearer sk-primary"
    );
    assert_eq!(primary_tries(), 3);
    assert_eq!(
        metric(&sidekey, "sidekey_credential_keys_rested{route=\"openai\"}").await,
        0.0
    );
}

#[tokio::test]
async fn rotating_a_rested_key_ends_its_rest_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, provider).await;
    let mut vol = SecretVolume::create(
        &dir.path().join("secrets"),
        &[("primary", "sk-bad-old\n"), ("fallback", "sk-good-fb\n")],
    );
    let key = format!(
        "{{ default = \"{}\", fallback = \"{}\" }}",
        vol.location("primary"),
        vol.location("fallback")
    );
    let config = format!(
        "[keys]\nrest = \"1h\"\n{}",
        route("openai", &mock.url, &key)
    );
    let sidekey = start_in(dir.path(), &config, MapEnv::default()).await;
    let auth = |r: Resp| r.json()["auth"].as_str().unwrap().to_owned();
    assert_eq!(
        auth(post(&sidekey, "/openai/v1/x", "{}").await),
        "Bearer sk-good-fb"
    );
    assert_eq!(
        auth(post(&sidekey, "/openai/v1/x", "{}").await),
        "Bearer sk-good-fb"
    );

    let _ = vol.update(&[
        ("primary", "sk-new-primary\n"),
        ("fallback", "sk-good-fb\n"),
    ]);
    common::eventually(
        "the rotated primary to serve",
        Duration::from_secs(10),
        || async {
            let a = auth(post(&sidekey, "/openai/v1/x", "{}").await);
            (a == "Bearer sk-new-primary").then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_body_over_the_replay_limit_is_forwarded_without_retry() {
    let (_dir, mock, sidekey) = openai_route(
        "[limits]\nmax_replay_body = \"64KiB\"\n",
        "{ default = \"env::BAD\", fallback = \"env::GOOD\" }",
        MapEnv::new([("BAD", "sk-bad-big"), ("GOOD", "sk-good-big")]),
    )
    .await;
    let body = json_body(256 << 10);
    let resp = post(&sidekey, "/openai/v1/chat/completions", body.clone()).await;
    assert_eq!(resp.status, 401, "no retry for a body over the limit");
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        sha256(&seen[0].body),
        sha256(&body),
        "the body still went through in full"
    );
    // A small body on the same route is retried.
    assert_eq!(
        post(&sidekey, "/openai/v1/chat/completions", "{}")
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_a_revoked_key_serves_300_concurrent_requests_without_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let mock = Mock::start(Transport::Tls(&pki), provider).await;
    let config = format!(
        "ca_file = \"{}\"\n{}",
        pki.ca_file.display(),
        route(
            "openai",
            &mock.url,
            "[\"env::K1\", \"env::K2\", \"env::K3\"]"
        )
    );
    let env = MapEnv::new([
        ("K1", "sk-good-one"),
        ("K2", "sk-bad-revoked"),
        ("K3", "sk-good-three"),
    ]);
    let sidekey = Arc::new(start_in(dir.path(), &config, env).await);
    let tasks: Vec<_> = (0..300)
        .map(|_| {
            let sidekey = sidekey.clone();
            tokio::spawn(async move {
                post(&sidekey, "/openai/v1/chat/completions", r#"{"model":"m"}"#).await
            })
        })
        .collect();
    let mut used = std::collections::BTreeMap::new();
    for t in tasks {
        let resp = t.await.unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        *used
            .entry(resp.json()["auth"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(
        used.keys().collect::<Vec<_>>(),
        ["Bearer sk-good-one", "Bearer sk-good-three"]
    );
    assert!(
        used.values().all(|n| *n > 50),
        "the load was not spread: {used:?}"
    );
    assert_eq!(
        metric(&sidekey, "sidekey_credential_keys_rested{route=\"openai\"}").await,
        1.0
    );
}

#[tokio::test]
async fn a_429_in_a_pool_rests_the_key_for_retry_after_and_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |r| {
        let auth = r.header("authorization").unwrap_or("").to_owned();
        if auth.contains("limited") {
            return Reply::Full {
                status: 429,
                headers: vec![
                    ("retry-after".into(), "30".into()),
                    ("content-type".into(), "application/json".into()),
                ],
                body: Bytes::from_static(br#"{"error":"slow down"}"#),
            };
        }
        Reply::json(200, serde_json::json!({"auth": auth}).to_string())
    })
    .await;
    let config = route("pool", &mock.url, "[\"env::A\", \"env::B\"]")
        + &route("single", &mock.url, "\"env::A\"");
    let sidekey = start_in(
        dir.path(),
        &config,
        MapEnv::new([("A", "sk-limited"), ("B", "sk-free")]),
    )
    .await;
    for _ in 0..4 {
        let resp = post(&sidekey, "/pool/v1/x", "{}").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["auth"], "Bearer sk-free");
    }
    let limited = mock
        .requests()
        .iter()
        .filter(|r| r.header("authorization") == Some("Bearer sk-limited"))
        .count();
    assert_eq!(limited, 1, "the rate-limited key rests for Retry-After");
    assert_eq!(
        metric(
            &sidekey,
            "sidekey_credential_failovers_total{route=\"pool\",reason=\"rate_limited\"}"
        )
        .await,
        1.0
    );
    // With a single key, a 429 goes to the client.
    let resp = post(&sidekey, "/single/v1/x", "{}").await;
    assert_eq!(resp.status, 429);
    assert_eq!(resp.headers["retry-after"], "30");
}

#[tokio::test]
async fn a_missing_or_rejected_dynamic_credential_falls_back_to_the_static_one() {
    let (_dir, mock, sidekey) = openai_route(
        "",
        "{ default = \"dynamic::tenant\", fallback = \"env::STATIC\" }",
        MapEnv::new([("STATIC", "sk-static")]),
    )
    .await;
    let call = |tenant: Option<&'static str>| {
        let url = sidekey.url("/openai/v1/x");
        async move {
            let mut h = vec![("content-type", "application/json")];
            if let Some(t) = tenant {
                h.push(("x-sidekey-credential-tenant", t));
            }
            client::send(request(Method::POST, &url, &h, "{}")).await
        }
    };
    assert_eq!(
        call(None).await.json()["auth"],
        "Bearer sk-static",
        "missing dynamic credential"
    );
    assert_eq!(
        call(Some("sk-bad-tenant")).await.json()["auth"],
        "Bearer sk-static",
        "rejected dynamic credential"
    );
    assert_eq!(
        call(Some("sk-tenant-ok")).await.json()["auth"],
        "Bearer sk-tenant-ok"
    );
    let seen = mock.requests();
    assert_eq!(seen.len(), 4, "None: 1, rejected: 2, ok: 1");
    assert!(
        seen.iter()
            .all(|r| r.header("x-sidekey-credential-tenant").is_none())
    );
}

#[tokio::test]
async fn gemini_key_errors_in_the_body_trigger_the_fallback_and_others_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |r| {
        let key = r.header("x-goog-api-key").unwrap_or("");
        if key == "AIza-bad" {
            return Reply::json(
                400,
                r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#,
            );
        }
        if r.uri.path().contains("bad-request") {
            return Reply::json(400, r#"{"error":{"code":400,"message":"Invalid JSON payload","status":"INVALID_ARGUMENT"}}"#);
        }
        Reply::json(200, serde_json::json!({"key": key}).to_string())
    })
    .await;
    let sidekey = gemini_route(dir.path(), &mock, "AIza-bad", "AIza-good").await;
    let resp = post(&sidekey, "/gemini/v1beta/models/m:generateContent", "{}").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["key"], "AIza-good");
    // A 400 about the request itself reaches the client untouched.
    let resp = post(
        &sidekey,
        "/gemini/v1beta/models/bad-request:generateContent",
        "{}",
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"]["message"], "Invalid JSON payload");
}

#[tokio::test]
async fn a_gzipped_gemini_key_error_is_read_and_triggers_the_fallback() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |r| {
        let key = r.header("x-goog-api-key").unwrap_or("");
        if key == "AIza-bad-gz" {
            // What Google's front end does for a client accepting gzip.
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#).unwrap();
            return Reply::Full {
                status: 400,
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("content-encoding".into(), "gzip".into()),
                ],
                body: Bytes::from(gz.finish().unwrap()),
            };
        }
        Reply::json(200, serde_json::json!({"key": key}).to_string())
    })
    .await;
    let sidekey = gemini_route(dir.path(), &mock, "AIza-bad-gz", "AIza-good-gz").await;
    let resp = client::send(request(
        Method::POST,
        &sidekey.url("/gemini/v1beta/models/m:generateContent"),
        &[
            ("content-type", "application/json"),
            ("accept-encoding", "gzip, deflate"),
        ],
        "{}",
    ))
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["key"], "AIza-good-gz");
    assert_eq!(mock.requests().len(), 2);
}

/// Issue 21, finding 4: a Gemini error too long to read whole (2 MiB, cut
/// at the peek limit) is not searched for key errors, so a message merely
/// quoting `API_KEY_INVALID` rests no key: the client gets the answer,
/// whole, from the first key, and the next request uses the first key too.
#[tokio::test]
async fn a_long_gemini_error_quoting_a_key_error_rests_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let filler = "x".repeat(2 << 20);
    let long = serde_json::json!({"error": {
        "code": 400,
        "message": format!("Invalid value at 'contents' (API_KEY_INVALID): {filler}"),
        "status": "INVALID_ARGUMENT",
    }})
    .to_string();
    let mock = {
        let long = long.clone();
        Mock::start(Transport::Plain, move |r| {
            if r.uri.path().contains("long-error") {
                return Reply::json(400, long.clone());
            }
            let key = r.header("x-goog-api-key").unwrap_or("");
            Reply::json(200, serde_json::json!({"key": key}).to_string())
        })
        .await
    };
    let sidekey = gemini_route(dir.path(), &mock, "AIza-first", "AIza-second").await;
    let resp = post(
        &sidekey,
        "/gemini/v1beta/models/long-error:generateContent",
        "{}",
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.body.len(),
        long.len(),
        "the answer reaches the client whole"
    );
    assert_eq!(mock.requests().len(), 1, "no failover");
    let resp = post(&sidekey, "/gemini/v1beta/models/m:generateContent", "{}").await;
    assert_eq!(
        resp.json()["key"],
        "AIza-first",
        "the first key is not resting"
    );
    assert_eq!(
        metric(&sidekey, "sidekey_credential_keys_rested{route=\"gemini\"}").await,
        0.0
    );
}

/// Issue 21, finding 5: a request every key is rejected for (here a path
/// the provider answers 401 to whatever the key) is the request's problem:
/// no key rests, so such requests cannot take a pool out of use. It is
/// counted; the next good requests are served by both keys at once.
#[tokio::test]
async fn requests_every_key_rejects_rest_no_key() {
    let mock = Mock::start(Transport::Plain, |r| {
        let auth = r.header("authorization").unwrap_or("").to_owned();
        if r.uri.path().contains("poison") {
            return Reply::json(401, r#"{"error":{"message":"no"}}"#);
        }
        Reply::json(200, serde_json::json!({"auth": auth}).to_string())
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[keys]\nrest = \"1h\"\n{}",
        route("openai", &mock.url, "[\"env::A\", \"env::B\"]")
    );
    let env = MapEnv::new([("A", "sk-pool-a"), ("B", "sk-pool-b")]);
    let sidekey = start_in(dir.path(), &config, env).await;
    for _ in 0..5 {
        let resp = post(&sidekey, "/openai/v1/poison", "{}").await;
        assert_eq!(resp.status, 401);
    }
    assert_eq!(mock.requests().len(), 10, "each tried both keys");
    assert_eq!(
        metric(&sidekey, "sidekey_credential_keys_rested{route=\"openai\"}").await,
        0.0
    );
    assert_eq!(
        metric(
            &sidekey,
            "sidekey_requests_all_keys_rejected_total{route=\"openai\"}"
        )
        .await,
        5.0
    );
    let mut served = Vec::new();
    for _ in 0..2 {
        let resp = post(&sidekey, "/openai/v1/chat/completions", "{}").await;
        assert_eq!(resp.status, 200);
        served.push(resp.json()["auth"].as_str().unwrap().to_owned());
    }
    served.sort();
    assert_eq!(served, ["Bearer sk-pool-a", "Bearer sk-pool-b"]);
    assert_eq!(
        mock.requests().len(),
        12,
        "one attempt each: nothing rested"
    );
}

/// Issue 21, finding 5: a Vertex endpoint that answers 401 to everything
/// (whatever the token) costs one forced token refresh, not one per
/// request: 20 such requests make at most 2 token grants.
#[tokio::test]
async fn requests_rejected_whatever_the_token_do_not_mint_a_token_each() {
    use common::google::{Account, Tokens, token_endpoint};
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new(3600);
    let account = Account::generate("sa@proj.iam.gserviceaccount.com", "proj");
    tokens.trust(&account);
    let (_token_mock, token_uri) = token_endpoint(Transport::Plain, tokens.clone()).await;
    let vertex = Mock::start(Transport::Plain, |_| {
        Reply::json(
            401,
            r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}"#,
        )
    })
    .await;
    let sa = dir.path().join("sa.json");
    std::fs::write(&sa, account.json(&token_uri)).unwrap();
    let config = format!(
        "[routes.vertex]\ntype = \"vertex\"\nupstream = \"{}\"\ncredentials = \"path::{}\"\n",
        vertex.url,
        sa.display()
    );
    let sidekey = start_in(dir.path(), &config, MapEnv::default()).await;
    for _ in 0..20 {
        let resp = post(
            &sidekey,
            "/vertex/v1/projects/proj/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent",
            "{}",
        )
        .await;
        assert_eq!(resp.status, 401);
    }
    let grants = tokens.requests.load(Ordering::Relaxed);
    assert!(
        grants <= 2,
        "{grants} token grants for 20 rejected requests"
    );
    assert!(vertex.requests().len() <= 21, "one retry at most, once");
}
