//! WebSockets through sidekey (design.md, "WebSocket: realtime and live
//! APIs"): the handshake gets the route's credential and loses the
//! client's, bytes go through unchanged both ways, closes propagate, web
//! pages and rebound host names are refused, a rejected key falls back, and
//! shutdown closes what the grace period leaves open.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

mod common;

use std::time::Duration;

use common::client::{Resp, get, post_json, request, send};
use common::sidekey::{Running, start_in};
use common::tls::TestPki;
use common::ws::{self, Seen, WsMock, next};
use futures_util::SinkExt as _;
use http::Method;
use sidekey::MapEnv;
use tokio_tungstenite::tungstenite::Message;

const REAL: &str = "sk-real-key";

/// The mock's rule: the route's real key, as a Bearer token.
fn bearer_real() -> impl Fn(&Seen) -> Result<(), u16> + Send + Sync + 'static {
    ws::requires("authorization", format!("Bearer {REAL}"), 401)
}

/// A temp dir, its test PKI, and a mock provider that wants the real key.
struct Setup {
    dir: tempfile::TempDir,
    pki: TestPki,
    mock: WsMock,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let mock = WsMock::start(&pki, bearer_real()).await;
    Setup { dir, pki, mock }
}

/// sidekey with an `openai` route to `mock`, plus `extra` config.
async fn sidekey(dir: &std::path::Path, pki: &TestPki, mock: &WsMock, extra: &str) -> Running {
    let toml = format!(
        "ca_file = \"{ca}\"\n{extra}\n\
         [routes.openai]\ntype = \"openai\"\nupstream = \"{up}\"\nkey = \"env::OPENAI_API_KEY\"\n",
        ca = pki.ca_file.display(),
        up = mock.base(),
    );
    let env = MapEnv::new([("OPENAI_API_KEY", REAL), ("BAD_KEY", "sk-bad")]);
    start_in(dir, &toml, env).await
}

fn ws_url(sk: &Running, path: &str) -> String {
    format!("ws://{}{path}", sk.addr)
}

#[tokio::test]
async fn handshake_carries_the_route_key_and_bytes_go_through_unchanged() {
    let Setup { dir, pki, mock } = setup().await;
    let sk = sidekey(dir.path(), &pki, &mock, "").await;

    let url = ws_url(&sk, "/openai/v1/realtime?model=gpt-realtime&key=client-key");
    let mut c = ws::connect(
        &url,
        &[
            ("authorization", "Bearer sk-dummy"),
            ("x-api-key", "sk-dummy"),
            ("openai-beta", "realtime=v1"),
        ],
    )
    .await
    .expect("handshake accepted");

    let seen = &mock.handshakes()[0];
    assert_eq!(seen.path_and_query, "/v1/realtime?model=gpt-realtime");
    assert_eq!(
        seen.header("authorization").unwrap(),
        format!("Bearer {REAL}")
    );
    assert!(seen.header("x-api-key").is_none());
    assert_eq!(seen.header("openai-beta"), Some("realtime=v1"));
    assert_eq!(seen.header("host").unwrap(), mock.addr.to_string());

    // 1 MiB of binary, every byte value, one message.
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    c.send(Message::binary(big.clone())).await.unwrap();
    match next(&mut c).await.unwrap() {
        Message::Binary(b) => assert!(b[..] == big[..], "1 MiB came back changed"),
        other => panic!("expected binary, got {other:?}"),
    }
    // 200 text messages, sent back to back, come back in order.
    for i in 0..200 {
        c.send(Message::text(format!("message {i} ✓ {}", "x".repeat(i))))
            .await
            .unwrap();
    }
    for i in 0..200 {
        match next(&mut c).await.unwrap() {
            Message::Text(t) => assert_eq!(t.as_str(), format!("message {i} ✓ {}", "x".repeat(i))),
            other => panic!("expected text, got {other:?}"),
        }
    }
    c.close(None).await.unwrap();
    while next(&mut c).await.is_some() {}

    let metrics = get(&sk.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("sidekey_websockets_total{route=\"openai\",status=\"101\"} 1"),
        "{metrics}"
    );
    let bytes = |dir: &str| -> u64 {
        let prefix =
            format!("sidekey_websocket_bytes_total{{route=\"openai\",direction=\"{dir}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
            .parse()
            .unwrap()
    };
    assert!(bytes("upstream") > 1 << 20 && bytes("downstream") > 1 << 20);
    common::eventually(
        "the socket to count as closed",
        Duration::from_secs(5),
        || async {
            let m = get(&sk.admin_url("/metrics")).await.text();
            m.contains("sidekey_websockets_open 0").then_some(())
        },
    )
    .await;
    sk.stop().await;
    mock.join();
}

#[tokio::test]
async fn closes_reach_the_other_side_both_ways() {
    let Setup { dir, pki, mock } = setup().await;
    let sk = sidekey(dir.path(), &pki, &mock, "").await;
    let url = ws_url(&sk, "/openai/v1/realtime?model=gpt-realtime");

    // The client closes: the provider gets the close frame and its socket ends.
    let mut c = ws::connect(&url, &[]).await.unwrap();
    c.close(None).await.unwrap();
    assert!(matches!(next(&mut c).await, Some(Message::Close(_)) | None));
    common::eventually(
        "the provider to see the close",
        Duration::from_secs(5),
        || async {
            let log = mock.log.lock().unwrap();
            (log.client_closes == 1 && log.ended == 1).then_some(())
        },
    )
    .await;

    // The provider closes: the client gets the close frame, then the end.
    let mut c = ws::connect(&url, &[]).await.unwrap();
    c.send(Message::text("close-me")).await.unwrap();
    assert!(matches!(next(&mut c).await, Some(Message::Close(_))));
    assert!(
        next(&mut c).await.is_none(),
        "the stream ends after the close"
    );
    sk.stop().await;
    mock.join();
}

#[tokio::test]
async fn web_pages_and_rebound_host_names_are_refused() {
    let Setup { dir, pki, mock } = setup().await;
    let sk = sidekey(
        dir.path(),
        &pki,
        &mock,
        "allowed_origins = [\"http://localhost:3000\"]\nallowed_hosts = [\"sidekey.internal\"]",
    )
    .await;
    let url = ws_url(&sk, "/openai/v1/realtime?model=gpt-realtime");

    let (status, body) = ws::connect(&url, &[("origin", "https://evil.example")])
        .await
        .unwrap_err();
    assert_eq!(status, 403);
    assert!(body.contains("origin_not_allowed"), "{body}");
    let (status, body) = ws::connect(&url, &[("host", "evil.example:8787")])
        .await
        .unwrap_err();
    assert_eq!(status, 403);
    assert!(body.contains("host_not_allowed"), "{body}");
    assert!(mock.handshakes().is_empty(), "nothing reached the provider");

    // The listed origin and host name pass, and so do localhost and no Origin.
    ws::connect(&url, &[("origin", "http://localhost:3000")])
        .await
        .unwrap();
    ws::connect(&url, &[("host", "sidekey.internal:8787")])
        .await
        .unwrap();
    ws::connect(&url, &[("host", "localhost")]).await.unwrap();

    // Every request, not only upgrades: a simple cross-site POST.
    let resp = post_json(
        &sk.url("/openai/v1/chat/completions"),
        &[("origin", "https://evil.example")],
        r#"{"model":"gpt-4o"}"#,
    )
    .await;
    assert_refused(&resp, "origin_not_allowed");
    let resp = send(request(
        Method::GET,
        &sk.url("/openai/v1/models"),
        &[("host", "rebind.evil.example")],
        "",
    ))
    .await;
    assert_refused(&resp, "host_not_allowed");
    sk.stop().await;
    mock.join();
}

fn assert_refused(resp: &Resp, code: &str) {
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert_eq!(resp.error_code(), code);
}

#[tokio::test]
async fn a_browser_key_subprotocol_is_stripped_and_the_others_kept() {
    let Setup { dir, pki, mock } = setup().await;
    let sk = sidekey(dir.path(), &pki, &mock, "").await;
    let url = ws_url(&sk, "/openai/v1/realtime?model=gpt-realtime");
    let protocols = "realtime, openai-insecure-api-key.sk-dummy, openai-beta.realtime-v1";
    let mut c = ws::connect(&url, &[("sec-websocket-protocol", protocols)])
        .await
        .unwrap();
    let seen = &mock.handshakes()[0];
    assert_eq!(
        seen.header("sec-websocket-protocol"),
        Some("realtime, openai-beta.realtime-v1")
    );
    assert_eq!(
        seen.header("authorization").unwrap(),
        format!("Bearer {REAL}")
    );
    ws::echo_then_close(&mut c).await;
    sk.stop().await;
    mock.join();
}

#[tokio::test]
async fn a_handshake_rejected_for_its_key_falls_back_to_the_next() {
    let Setup { dir, pki, mock } = setup().await;
    let toml = format!(
        "ca_file = \"{ca}\"\n\
         [routes.openai]\ntype = \"openai\"\nupstream = \"{up}\"\n\
         key = {{ default = \"env::BAD_KEY\", fallback = \"env::OPENAI_API_KEY\" }}\n",
        ca = pki.ca_file.display(),
        up = mock.base(),
    );
    let env = MapEnv::new([("OPENAI_API_KEY", REAL), ("BAD_KEY", "sk-bad")]);
    let sk = start_in(dir.path(), &toml, env).await;
    let mut c = ws::connect(&ws_url(&sk, "/openai/v1/realtime?model=gpt-realtime"), &[])
        .await
        .expect("the fallback key opens the socket");
    let seen = mock.handshakes();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("authorization"), Some("Bearer sk-bad"));
    assert_eq!(
        seen[1].header("authorization").unwrap(),
        format!("Bearer {REAL}")
    );
    ws::echo_then_close(&mut c).await;
    sk.stop().await;
    mock.join();
}

#[tokio::test]
async fn the_model_allowlist_applies_to_handshakes() {
    let Setup { dir, pki, mock } = setup().await;
    let toml = format!(
        "ca_file = \"{ca}\"\n\
         [routes.openai]\ntype = \"openai\"\nupstream = \"{up}\"\nkey = \"env::OPENAI_API_KEY\"\n\
         models = [\"gpt-realtime\"]\n",
        ca = pki.ca_file.display(),
        up = mock.base(),
    );
    let sk = start_in(dir.path(), &toml, MapEnv::new([("OPENAI_API_KEY", REAL)])).await;
    ws::connect(&ws_url(&sk, "/openai/v1/realtime?model=gpt-realtime"), &[])
        .await
        .unwrap();
    let (status, body) = ws::connect(
        &ws_url(&sk, "/openai/v1/realtime?model=gpt-4o-realtime"),
        &[],
    )
    .await
    .unwrap_err();
    assert_eq!(status, 403);
    assert!(body.contains("model_not_allowed"), "{body}");
    let (status, body) = ws::connect(&ws_url(&sk, "/openai/v1/realtime"), &[])
        .await
        .unwrap_err();
    assert_eq!(
        status, 400,
        "a list that omitting the model bypasses is none"
    );
    assert!(body.contains("model_missing"), "{body}");
    // The provider decodes parameter names and may read either of two
    // `model`s: every spelling and every copy is checked.
    for smuggled in [
        "model=gpt-realtime&model=gpt-4o-realtime",
        "model=gpt-realtime&%6dodel=gpt-4o-realtime",
    ] {
        let (status, body) = ws::connect(
            &ws_url(&sk, &format!("/openai/v1/realtime?{smuggled}")),
            &[],
        )
        .await
        .unwrap_err();
        assert_eq!(status, 403, "{smuggled}");
        assert!(body.contains("model_not_allowed"), "{body}");
    }
    assert_eq!(mock.handshakes().len(), 1);
    sk.stop().await;
    mock.join();
}

#[tokio::test]
async fn an_idle_socket_is_closed() {
    let Setup { dir, pki, mock } = setup().await;
    let sk = sidekey(
        dir.path(),
        &pki,
        &mock,
        "[limits]\nwebsocket_idle = \"300ms\"\n",
    )
    .await;
    let mut c = ws::connect(&ws_url(&sk, "/openai/v1/realtime?model=m"), &[])
        .await
        .unwrap();
    // Traffic keeps it open past the limit...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        c.send(Message::text("still here")).await.unwrap();
        assert_eq!(next(&mut c).await, Some(Message::text("still here")));
    }
    // ...silence closes it.
    assert!(ws::ended(&mut c).await);
    sk.stop().await;
    mock.join();
}

#[tokio::test]
async fn shutdown_gives_sockets_the_grace_period_then_closes_them() {
    let Setup { dir, pki, mock } = setup().await;
    let mut sk = sidekey(
        dir.path(),
        &pki,
        &mock,
        "[shutdown]\ngrace_period = \"1s\"\n",
    )
    .await;
    let mut c = ws::connect(&ws_url(&sk, "/openai/v1/realtime?model=m"), &[])
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let stopping = sk.begin_shutdown();
    // Within the grace period the socket still works.
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send(Message::text("during grace")).await.unwrap();
    assert_eq!(next(&mut c).await, Some(Message::text("during grace")));
    // Then it is closed, and sidekey stops.
    assert!(ws::ended(&mut c).await);
    assert!(started.elapsed() >= Duration::from_millis(900));
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("sidekey stops after the grace period")
        .unwrap();
    mock.join();
}

#[tokio::test]
async fn sigterm_to_the_binary_gives_open_sockets_the_grace_period_then_closes_them() {
    let Setup { dir, pki, mock } = setup().await;
    let config = dir.path().join("sidekey.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nca_file = \"{ca}\"\n\
             [shutdown]\ngrace_period = \"1s\"\n\
             [routes.openai]\ntype = \"openai\"\nupstream = \"{up}\"\nkey = \"env::OPENAI_API_KEY\"\n",
            ca = pki.ca_file.display(),
            up = mock.base(),
        ),
    )
    .unwrap();
    let proc = common::process::spawn(
        &["--config", config.to_str().unwrap()],
        &[("OPENAI_API_KEY", REAL)],
    )
    .await;
    let url = format!("ws://{}/openai/v1/realtime?model=m", proc.listen);
    let mut c = ws::connect(&url, &[]).await.expect("handshake accepted");
    c.send(Message::text("before")).await.unwrap();
    assert_eq!(next(&mut c).await, Some(Message::text("before")));

    let started = tokio::time::Instant::now();
    proc.signal("-TERM").await;
    // Within the grace period the socket still carries messages.
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send(Message::text("during grace")).await.unwrap();
    assert_eq!(next(&mut c).await, Some(Message::text("during grace")));
    // Then it is closed, and the process exits cleanly.
    assert!(ws::ended(&mut c).await);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let (status, stderr) = proc.exited(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(stderr.contains("websocket closed"), "{stderr}");
    assert!(!stderr.contains(REAL), "the key leaked into the log");
    mock.join();
}

#[tokio::test]
async fn the_openai_sdk_realtime_and_responses_websockets_work_with_a_dummy_key() {
    let Setup { dir, pki, mock } = setup().await;
    let sk = sidekey(dir.path(), &pki, &mock, "").await;
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/websocket/openai_ws.py");
    let mut cmd = tokio::process::Command::new(common::python());
    cmd.arg(script)
        .arg(sk.url("/openai/v1"))
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL");
    let lines = common::run_json(cmd, "openai_ws.py").await;
    let stdout = format!("{lines:?}");
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["mode"], "realtime");
    assert_eq!(lines[0]["echo"]["type"], "session.update");
    assert_eq!(lines[1]["mode"], "responses");
    assert_eq!(lines[1]["echo"]["type"], "response.create");

    let seen = mock.handshakes();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].path_and_query, "/v1/realtime?model=gpt-realtime");
    assert!(
        seen[1].path_and_query.starts_with("/v1/responses"),
        "{}",
        seen[1].path_and_query
    );
    for s in &seen {
        assert_eq!(s.header("authorization").unwrap(), format!("Bearer {REAL}"));
    }
    common::eventually("both sockets to close", Duration::from_secs(10), || async {
        (mock.log.lock().unwrap().ended == 2).then_some(())
    })
    .await;
    sk.stop().await;
    mock.join();
}

#[tokio::test]
async fn an_azure_realtime_handshake_names_its_deployment_in_the_query() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let mock = WsMock::start(&pki, ws::requires("api-key", "real-azure", 401)).await;
    let toml = format!(
        "ca_file = \"{ca}\"\n\
         [routes.azure]\ntype = \"azure\"\nmodels = [\"gpt-realtime\", \"gpt-4o\"]\n\
         [routes.azure.deployments.gpt-realtime]\nendpoint = \"{up}\"\nkey = \"env::AZURE_KEY\"\n\
         [routes.azure.deployments.gpt-4o]\nendpoint = \"https://127.0.0.1:1\"\nkey = \"env::AZURE_KEY\"\n",
        ca = pki.ca_file.display(),
        up = mock.base(),
    );
    let sk = start_in(
        dir.path(),
        &toml,
        MapEnv::new([("AZURE_KEY", "real-azure")]),
    )
    .await;
    let path = "/azure/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-realtime";
    let mut c = ws::connect(&ws_url(&sk, path), &[("api-key", "dummy")])
        .await
        .expect("the deployment's endpoint and key");
    let seen = &mock.handshakes()[0];
    assert_eq!(
        seen.path_and_query,
        "/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-realtime"
    );
    ws::echo_then_close(&mut c).await;

    let (status, body) = ws::connect(
        &ws_url(&sk, "/azure/openai/realtime?api-version=x&deployment=nope"),
        &[],
    )
    .await
    .unwrap_err();
    assert_eq!(status, 404);
    assert!(body.contains("unknown_deployment"), "{body}");
    sk.stop().await;
    mock.join();
}
