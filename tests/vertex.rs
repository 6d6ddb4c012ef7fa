//! Vertex AI: access tokens minted from a service account (or the GKE
//! metadata server), cached, refreshed ahead of expiry, shared by concurrent
//! first requests, kept through a token-endpoint outage, refreshed on a 401,
//! and re-minted from a rotated key file. The token endpoint verifies each
//! assertion's RS256 signature and claims; the Vertex endpoint accepts only
//! the tokens it issued, until they expire.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::client::{self, Resp};
use common::google::{
    Account, Tokens, VertexOverTls, metadata_server, token_endpoint, vertex_endpoint,
    vertex_over_tls,
};
use common::kubelet::SecretVolume;
use common::mock::Transport;
use common::sidekey::{Running, start_in};
use common::tls::TestPki;
use sidekey::MapEnv;
use tokio::time::Instant;

const GENERATE: &str = "/vertex/v1/projects/proj/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent";

struct Setup {
    _dir: tempfile::TempDir,
    tokens: Arc<Tokens>,
    token_mock: common::mock::Mock,
    vertex: common::mock::Mock,
    sidekey: Running,
    volume: SecretVolume,
    token_uri: String,
}

/// Token endpoint and Vertex over TLS, a service account in a Secret volume,
/// sidekey with a vertex route pointed at the mock.
async fn setup(expires_in: u64, extra_route_settings: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let tokens = Tokens::new(expires_in);
    let account = Account::generate("sidekey@proj.iam.gserviceaccount.com", "proj");
    tokens.trust(&account);
    let (token_mock, token_uri) = token_endpoint(Transport::Tls(&pki), tokens.clone()).await;
    let vertex = vertex_endpoint(Transport::Tls(&pki), tokens.clone()).await;
    let volume = SecretVolume::create(
        &dir.path().join("secrets/vertex"),
        &[("sa.json", &account.json(&token_uri))],
    );
    // The credential the way TensorZero names it: an environment variable
    // holding the file's path (watched like a path:: location).
    let config = format!(
        "ca_file = \"{ca}\"\n[routes.vertex]\ntype = \"vertex\"\nupstream = \"{url}\"\ncredentials = \"env::GCP_VERTEX_CREDENTIALS_PATH\"\nlocation = \"us-east5\"\n{extra_route_settings}",
        ca = pki.ca_file.display(),
        url = vertex.url,
    );
    let sa_path = volume.path("sa.json");
    let env = MapEnv::new([("GCP_VERTEX_CREDENTIALS_PATH", sa_path.to_str().unwrap())]);
    let sidekey = start_in(dir.path(), &config, env).await;
    Setup {
        _dir: dir,
        tokens,
        token_mock,
        vertex,
        sidekey,
        volume,
        token_uri,
    }
}

async fn generate(sidekey: &Running, path: &str) -> Resp {
    client::post_json(
        &sidekey.url(path),
        &[("authorization", "Bearer app-dummy")],
        r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_concurrent_first_requests_share_one_token_request() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let tokens = Tokens::new(3600);
    // A slow token endpoint, so every request arrives before the first token.
    tokens.delay_ms.store(500, Ordering::Relaxed);
    let account = Account::generate("first@proj.iam.gserviceaccount.com", "proj");
    tokens.trust(&account);
    let VertexOverTls {
        token_mock: _token_mock,
        vertex,
        config,
    } = vertex_over_tls(dir.path(), &pki, &tokens, &account).await;
    let sidekey = Arc::new(start_in(dir.path(), &config, MapEnv::default()).await);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let sidekey = sidekey.clone();
            tokio::spawn(async move { generate(&sidekey, GENERATE).await })
        })
        .collect();
    for t in tasks {
        let resp = t.await.unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_eq!(
        tokens.requests.load(Ordering::Relaxed),
        1,
        "one token request for all of them"
    );
    assert!(
        tokens.problems.lock().unwrap().is_empty(),
        "{:?}",
        tokens.problems.lock().unwrap()
    );
    let seen = vertex.requests();
    assert_eq!(seen.len(), 100);
    assert!(
        seen.iter()
            .all(|r| r.header("authorization") == seen[0].header("authorization"))
    );
    assert!(seen.iter().all(|r| {
        !r.headers
            .iter()
            .any(|(_, v)| v.as_bytes() == b"Bearer app-dummy")
    }));
}

#[tokio::test]
async fn a_token_close_to_expiry_is_replaced_before_any_request_sees_it_expire() {
    // Four-second tokens: refreshed half way, so requests never meet an
    // expired one (the Vertex mock rejects expired tokens with 401).
    let s = setup(4, "").await;
    let deadline = Instant::now() + Duration::from_secs(9);
    let mut served = 0;
    while Instant::now() < deadline {
        let resp = generate(&s.sidekey, GENERATE).await;
        assert_eq!(resp.status, 200, "after {served} requests: {}", resp.text());
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let minted = s.tokens.requests.load(Ordering::Relaxed);
    assert!(
        minted >= 4,
        "expected background refreshes, saw {minted} token requests"
    );
    // Refreshes happen in the background: one token request per ~2 s, not per request.
    assert!(
        minted < served / 10,
        "{minted} token requests for {served} requests"
    );
    assert!(
        s.tokens.problems.lock().unwrap().is_empty(),
        "{:?}",
        s.tokens.problems.lock().unwrap()
    );
}

#[tokio::test]
async fn a_token_endpoint_outage_costs_no_request_while_the_token_is_valid() {
    let s = setup(6, "").await;
    assert_eq!(generate(&s.sidekey, GENERATE).await.status, 200);
    s.tokens.outage.store(true, Ordering::Relaxed);
    // The refresh at ~3 s fails and is retried with backoff; the token stays
    // valid until 6 s, and every request meanwhile is served.
    let deadline = Instant::now() + Duration::from_millis(4500);
    while Instant::now() < deadline {
        assert_eq!(generate(&s.sidekey, GENERATE).await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = client::get(&s.sidekey.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("sidekey_token_refreshes_total{route=\"vertex\",result=\"error\"}"),
        "{metrics}"
    );
    s.tokens.outage.store(false, Ordering::Relaxed);
    common::eventually(
        "the refresher to recover",
        Duration::from_secs(10),
        || async {
            let m = client::get(&s.sidekey.admin_url("/metrics")).await.text();
            m.contains("sidekey_token_refreshes_total{route=\"vertex\",result=\"ok\"} 2")
                .then_some(())
        },
    )
    .await;
    assert_eq!(generate(&s.sidekey, GENERATE).await.status, 200);
}

#[tokio::test]
async fn without_a_valid_token_requests_get_a_503_naming_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new(3600);
    tokens.outage.store(true, Ordering::Relaxed);
    let account = Account::generate("down@proj.iam.gserviceaccount.com", "proj");
    let (_token_mock, token_uri) = token_endpoint(Transport::Plain, tokens.clone()).await;
    let vertex = vertex_endpoint(Transport::Plain, tokens.clone()).await;
    let sa = dir.path().join("sa.json");
    std::fs::write(&sa, account.json(&token_uri)).unwrap();
    let config = format!(
        "[limits]\nrequest_timeout = \"2s\"\n[routes.vertex]\ntype = \"vertex\"\nupstream = \"{}\"\ncredentials = \"path::{}\"\n",
        vertex.url,
        sa.display()
    );
    let sidekey = start_in(dir.path(), &config, MapEnv::default()).await;
    let resp = generate(&sidekey, GENERATE).await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.error_code(), "credential_unavailable");
    let message = resp.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("down@proj.iam.gserviceaccount.com"),
        "{message}"
    );
    assert!(message.contains("503"), "{message}");
    assert!(vertex.requests().is_empty());
}

#[tokio::test]
async fn a_401_forces_one_refresh_and_one_retry() {
    let s = setup(3600, "").await;
    assert_eq!(generate(&s.sidekey, GENERATE).await.status, 200);
    // The provider revokes the token: the next request gets a 401, sidekey
    // mints a fresh token and retries once; the client sees 200.
    s.tokens.revoke_all();
    let resp = generate(&s.sidekey, GENERATE).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(s.tokens.requests.load(Ordering::Relaxed), 2);
    let seen = s.vertex.requests();
    assert_eq!(seen.len(), 3);
    assert_ne!(
        seen[1].header("authorization"),
        seen[2].header("authorization")
    );
    assert_eq!(seen[1].body, seen[2].body, "the retry replays the body");
}

#[tokio::test]
async fn a_second_service_account_is_the_fallback_when_the_first_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new(3600);
    let first = Account::generate("first@proj.iam.gserviceaccount.com", "proj");
    let second = Account::generate("second@proj.iam.gserviceaccount.com", "proj");
    tokens.trust(&first);
    tokens.trust(&second);
    let (_token_mock, token_uri) = token_endpoint(Transport::Plain, tokens.clone()).await;
    // The first account's tokens are refused outright (a disabled account).
    let vertex = {
        let tokens = tokens.clone();
        common::mock::Mock::start(Transport::Plain, move |r| {
            match tokens.check(r.header("authorization")) {
                Some(iss) if iss.starts_with("second") => {
                    common::mock::Reply::json(200, format!(r#"{{"account":"{iss}"}}"#))
                }
                _ => common::mock::Reply::json(401, r#"{"error":{"status":"UNAUTHENTICATED"}}"#),
            }
        })
        .await
    };
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    std::fs::write(&a, first.json(&token_uri)).unwrap();
    std::fs::write(&b, second.json(&token_uri)).unwrap();
    let config = format!(
        "[routes.vertex]\ntype = \"vertex\"\nupstream = \"{}\"\ncredentials = {{ default = \"path::{}\", fallback = \"path::{}\" }}\n",
        vertex.url,
        a.display(),
        b.display()
    );
    let sidekey = start_in(dir.path(), &config, MapEnv::default()).await;
    let resp = generate(&sidekey, GENERATE).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json()["account"],
        "second@proj.iam.gserviceaccount.com"
    );
    // First token, refreshed first token (still refused), then the fallback's.
    assert_eq!(vertex.requests().len(), 3);
    // The first account now rests: the next request goes straight to the second.
    assert_eq!(generate(&sidekey, GENERATE).await.status, 200);
    assert_eq!(vertex.requests().len(), 4);
}

#[tokio::test]
async fn a_rotated_service_account_file_mints_from_the_new_key() {
    let mut s = setup(3600, "").await;
    let resp = generate(&s.sidekey, GENERATE).await;
    assert_eq!(
        resp.json()["account"],
        "sidekey@proj.iam.gserviceaccount.com"
    );

    let rotated = Account::generate("rotated@proj.iam.gserviceaccount.com", "proj");
    s.tokens.trust(&rotated);
    let swapped = s.volume.update(&[("sa.json", &rotated.json(&s.token_uri))]);
    let seen_at = common::eventually(
        "a token from the rotated key",
        Duration::from_secs(10),
        || async {
            let r = generate(&s.sidekey, GENERATE).await;
            (r.json()["account"] == "rotated@proj.iam.gserviceaccount.com").then(Instant::now)
        },
    )
    .await;
    assert!(seen_at > swapped);
    // From then on, no request uses a token minted from the old key.
    for _ in 0..10 {
        assert_eq!(
            generate(&s.sidekey, GENERATE).await.json()["account"],
            "rotated@proj.iam.gserviceaccount.com"
        );
    }
    drop(s.token_mock);
}

#[tokio::test]
async fn short_paths_get_the_project_from_the_json_and_the_configured_location() {
    let s = setup(3600, "").await;
    let resp = generate(
        &s.sidekey,
        "/vertex/publishers/anthropic/models/claude-sonnet-4-5:rawPredict",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        s.vertex.last().uri.path(),
        "/v1/projects/proj/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5:rawPredict"
    );
    // The OpenAI-compatible endpoint too.
    let resp = generate(&s.sidekey, "/vertex/endpoints/openapi/chat/completions").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        s.vertex.last().uri.path(),
        "/v1/projects/proj/locations/us-east5/endpoints/openapi/chat/completions"
    );
    // A location that is not one is refused before anything is sent.
    let resp = generate(
        &s.sidekey,
        "/vertex/v1/projects/p/locations/evil.example.com/x",
    )
    .await;
    assert_eq!(
        (resp.status.as_u16(), resp.error_code().as_str()),
        (400, "bad_vertex_path")
    );
}

#[tokio::test]
async fn metadata_server_mode_takes_tokens_from_gce_metadata_host() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new(3600);
    let metadata = metadata_server(tokens.clone(), "wi@proj.iam.gserviceaccount.com").await;
    let vertex = vertex_endpoint(Transport::Plain, tokens.clone()).await;
    let config = format!(
        "[routes.vertex]\ntype = \"vertex\"\nupstream = \"{}\"\ncredentials = \"metadata\"\nproject = \"wi-proj\"\n",
        vertex.url
    );
    let env = MapEnv::new([("GCE_METADATA_HOST", metadata.addr.to_string())]);
    let sidekey = start_in(dir.path(), &config, env).await;
    let resp = generate(
        &sidekey,
        "/vertex/publishers/google/models/gemini-2.0-flash:generateContent",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["account"], "wi@proj.iam.gserviceaccount.com");
    assert_eq!(
        vertex.last().uri.path(),
        "/v1/projects/wi-proj/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent"
    );
    let asked = metadata.last();
    assert_eq!(asked.header("metadata-flavor"), Some("Google"));
    assert!(
        asked.uri.query().unwrap_or("").contains("scopes="),
        "{}",
        asked.path_and_query()
    );
}

#[tokio::test]
async fn check_loads_the_key_offline_and_never_calls_the_token_endpoint() {
    let s = setup(3600, "").await;
    // The running sidekey mints its own first token; wait for it so only
    // `check` could add a token request.
    assert_eq!(generate(&s.sidekey, GENERATE).await.status, 200);
    let before = s.tokens.requests.load(Ordering::Relaxed);
    let sa_path = s.volume.path("sa.json");
    let out = common::process::command(
        &["check", "--config", s.sidekey.config_path.to_str().unwrap()],
        &[("GCP_VERTEX_CREDENTIALS_PATH", sa_path.to_str().unwrap())],
    )
    .output()
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("tokens from service account sidekey@proj.iam.gserviceaccount.com"),
        "{text}"
    );
    assert!(text.contains("project   proj"), "{text}");
    assert!(!text.contains("PRIVATE KEY"));
    assert_eq!(s.tokens.requests.load(Ordering::Relaxed), before);

    // A JSON whose key does not load fails check with the location, not the key.
    let mut broken: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.volume.path("sa.json")).unwrap()).unwrap();
    broken["private_key"] = serde_json::Value::String(
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
    );
    let bad = s.volume.dir.parent().unwrap().join("bad.json");
    std::fs::write(&bad, broken.to_string()).unwrap();
    let config = format!(
        "[routes.vertex]\ntype = \"vertex\"\ncredentials = \"path::{}\"\n",
        bad.display()
    );
    let cfg = s.volume.dir.parent().unwrap().join("bad.toml");
    std::fs::write(&cfg, config).unwrap();
    let out = common::process::command(&["check", "--config", cfg.to_str().unwrap()], &[])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(err.contains("private_key is not a PEM RSA key"), "{err}");
}

/// sidekey as a process logging text (what `kubectl logs` shows a person),
/// with the config `toml` in `dir`; returns it, its stderr lines and the
/// proxy's address, read from the "serving" line.
async fn spawn_text_logs(
    dir: &std::path::Path,
    toml: &str,
) -> (
    tokio::process::Child,
    Arc<std::sync::Mutex<Vec<String>>>,
    String,
) {
    use tokio::io::AsyncBufReadExt;
    let config = dir.join("sidekey.toml");
    std::fs::write(&config, common::sidekey::with_ephemeral_ports(toml)).unwrap();
    let mut child = common::process::command(
        &["--log-format", "text", "--config", config.to_str().unwrap()],
        &[],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true)
    .spawn()
    .unwrap();
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut reader = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        while let Ok(Some(line)) = reader.next_line().await {
            if line.contains("sidekey is serving")
                && let Some(listen) = line.split(' ').find_map(|w| w.strip_prefix("listen="))
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(listen.to_owned());
            }
            sink.lock().unwrap().push(line);
        }
    });
    let Ok(Ok(listen)) = tokio::time::timeout(Duration::from_secs(20), rx).await else {
        panic!(
            "sidekey did not start:\n{}",
            lines.lock().unwrap().join("\n")
        );
    };
    (child, lines, format!("http://{listen}"))
}

/// Issue 21, finding 8: a token endpoint's `error_description` is text an
/// attacker on that path controls. A newline in it must not write a forged
/// line into text logs or the 503 body, and 10 KiB of it (control
/// characters, which escaping lengthens) must reach neither beyond 256
/// characters.
#[tokio::test]
async fn a_token_endpoints_error_text_is_escaped_and_cut_in_logs_and_the_503() {
    let dir = tempfile::tempdir().unwrap();
    let forged = format!(
        "bad\n{{\"level\":\"ERROR\",\"message\":\"forged\"}}\r\nFORGED-TEXT-LINE{}",
        "\u{7}".repeat(10 << 10)
    );
    let body = serde_json::json!({"error": "invalid_grant", "error_description": forged});
    let token_mock = common::mock::Mock::start(Transport::Plain, move |r| {
        assert!(
            String::from_utf8_lossy(&r.body).contains("assertion="),
            "a JWT bearer grant"
        );
        common::mock::Reply::json(400, body.to_string())
    })
    .await;
    let vertex = vertex_endpoint(Transport::Plain, Tokens::new(3600)).await;
    let account = Account::generate("forged@proj.iam.gserviceaccount.com", "proj");
    let sa = dir.path().join("sa.json");
    std::fs::write(&sa, account.json(&format!("{}/token", token_mock.url))).unwrap();
    let config = format!(
        "[limits]\nrequest_timeout = \"2s\"\n[routes.vertex]\ntype = \"vertex\"\nupstream = \"{}\"\ncredentials = \"path::{}\"\n",
        vertex.url,
        sa.display()
    );
    let (_child, logs, base) = spawn_text_logs(dir.path(), &config).await;

    let resp = generate_at(&base, GENERATE).await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    let message = resp.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("invalid_grant bad"), "{message}");
    assert!(
        !message.contains('\n') && !message.contains('\r'),
        "{message}"
    );
    assert!(message.contains(r#"bad\n{\"level\""#), "{message}");
    assert!(message.len() < 640, "{} bytes: {message}", message.len());
    assert!(!token_mock.requests().is_empty());
    assert!(vertex.requests().is_empty());

    let logs = common::eventually("the mint failure logged", Duration::from_secs(10), || {
        let logs = logs.lock().unwrap().clone();
        async move {
            logs.iter()
                .any(|l| l.contains("invalid_grant"))
                .then_some(logs)
        }
    })
    .await;
    for line in &logs {
        assert!(
            !line.starts_with("{\"level\"") && !line.starts_with("FORGED-TEXT-LINE"),
            "a forged log line:\n{}",
            logs.join("\n")
        );
        assert!(line.len() < 1024, "a {}-byte log line: {line}", line.len());
    }
}

async fn generate_at(base: &str, path: &str) -> Resp {
    client::post_json(
        &format!("{base}{path}"),
        &[("authorization", "Bearer app-dummy")],
        r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
    )
    .await
}
