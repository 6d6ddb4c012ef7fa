//! sidekey's optional TLS listener (design.md, "WebSocket: realtime and live
//! APIs"): it serves what the plain listener serves (requests, the host
//! check, WebSocket handshakes over `wss://`), a rotated certificate reaches
//! new connections and a bad pair keeps the last good one, and the SDKs that
//! force `wss://` (google-genai Live, `AzureOpenAI` realtime) work through it
//! with a CA the app trusts.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::kubelet::SecretVolume;
use common::sidekey::{Running, start_in};
use common::tls::TestPki;
use common::ws::{self, Seen, WsMock};
use futures_util::SinkExt as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use sidekey::MapEnv;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const REAL: &str = "sk-real-key";
const LIMIT: Duration = Duration::from_secs(10);

/// A TLS client trusting only the test CA, offering `alpn`.
fn connector(pki: &TestPki, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&pki.ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A verified TLS connection to `addr` (as `127.0.0.1`), offering http/1.1.
async fn tls_connect(pki: &TestPki, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio::time::timeout(LIMIT, connector(pki, &[b"http/1.1"]).connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
        .expect("the TLS listener's certificate is trusted")
}

/// The DER of the certificate a new connection to `addr` is shown.
async fn served_cert(pki: &TestPki, addr: SocketAddr) -> Vec<u8> {
    let tls = tls_connect(pki, addr).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One HTTP/1.1 request over TLS with `host`: (status, body).
async fn https_get(pki: &TestPki, addr: SocketAddr, path: &str, host: &str) -> (u16, String) {
    let mut tls = tls_connect(pki, addr).await;
    let req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, tls.read_to_end(&mut out))
        .await
        .expect("no answer")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 answer: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn bearer_real(s: &Seen) -> Result<(), u16> {
    if s.header("authorization") == Some(&format!("Bearer {REAL}")) {
        Ok(())
    } else {
        Err(401)
    }
}

/// The TLS settings: the test PKI's leaf in `volume`.
fn tls_toml(volume: &SecretVolume) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        volume.location("tls.crt"),
        volume.location("tls.key"),
    )
}

fn leaf_files(pki: &TestPki) -> [(&'static str, &str); 2] {
    [
        ("tls.crt", pki.leaf_cert_pem.as_str()),
        ("tls.key", pki.leaf_key_pem.as_str()),
    ]
}

/// sidekey with the TLS listener and an `openai` route to `mock`.
async fn sidekey(dir: &Path, pki: &TestPki, volume: &SecretVolume, mock: &WsMock) -> Running {
    sidekey_with(dir, pki, volume, mock, "").await
}

/// The same, with `extra` config tables before the route.
async fn sidekey_with(
    dir: &Path,
    pki: &TestPki,
    volume: &SecretVolume,
    mock: &WsMock,
    extra: &str,
) -> Running {
    let toml = format!(
        "ca_file = \"{ca}\"\n{tls}\n{extra}\n\
         [routes.openai]\ntype = \"openai\"\nupstream = \"{up}\"\nkey = \"env::OPENAI_API_KEY\"\n",
        ca = pki.ca_file.display(),
        tls = tls_toml(volume),
        up = mock.base(),
    );
    start_in(dir, &toml, MapEnv::new([("OPENAI_API_KEY", REAL)])).await
}

#[tokio::test]
async fn the_tls_listener_serves_requests_host_checks_and_wss_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let volume = SecretVolume::create(&dir.path().join("tls"), &leaf_files(&pki));
    let mock = WsMock::start(&pki, bearer_real).await;
    let sk = sidekey(dir.path(), &pki, &volume, &mock).await;
    let tls_addr = sk.tls.expect("the TLS listener is bound");

    // A normal request: sidekey's own answer, as on the plain listener.
    let (status, body) = https_get(&pki, tls_addr, "/nope/v1/models", "127.0.0.1").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("unknown_route"), "{body}");
    // The host check holds on a loopback TLS listener too.
    let (status, body) = https_get(&pki, tls_addr, "/openai/v1/models", "evil.example").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("host_not_allowed"), "{body}");

    // A wss:// handshake: the route's key replaces the client's, bytes go
    // through unchanged.
    let tls = tls_connect(&pki, tls_addr).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut req = format!(
        "wss://127.0.0.1:{}/openai/v1/realtime?model=gpt-realtime",
        tls_addr.port()
    )
    .into_client_request()
    .unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer sk-dummy".parse().unwrap());
    let (mut ws, _) = tokio::time::timeout(LIMIT, tokio_tungstenite::client_async(req, tls))
        .await
        .expect("handshake timed out")
        .expect("handshake accepted");
    let seen = &mock.handshakes()[0];
    assert_eq!(seen.path_and_query, "/v1/realtime?model=gpt-realtime");
    assert_eq!(
        seen.header("authorization").unwrap(),
        format!("Bearer {REAL}")
    );
    ws.send(Message::text("over wss")).await.unwrap();
    match tokio::time::timeout(LIMIT, futures_util::StreamExt::next(&mut ws))
        .await
        .unwrap()
    {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "over wss"),
        other => panic!("expected the echo, got {other:?}"),
    }
    ws.close(None).await.unwrap();

    // A client offering h2 first gets it (the same service speaks both).
    let tcp = TcpStream::connect(tls_addr).await.unwrap();
    let h2 = connector(&pki, &[b"h2", b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(h2);

    // The plain listener still answers as before.
    let resp = common::client::get(&sk.url("/nope/v1/models")).await;
    assert_eq!(resp.status.as_u16(), 404);
    sk.stop().await;
    mock.join();
}

#[tokio::test]
async fn shutdown_gives_wss_sockets_the_grace_period_then_closes_them() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let volume = SecretVolume::create(&dir.path().join("tls"), &leaf_files(&pki));
    let mock = WsMock::start(&pki, bearer_real).await;
    let mut sk = sidekey_with(
        dir.path(),
        &pki,
        &volume,
        &mock,
        "[shutdown]\ngrace_period = \"1s\"\n",
    )
    .await;
    let tls_addr = sk.tls.unwrap();
    let tls = tls_connect(&pki, tls_addr).await;
    let req = format!(
        "wss://127.0.0.1:{}/openai/v1/realtime?model=m",
        tls_addr.port()
    )
    .into_client_request()
    .unwrap();
    let (mut ws, _) = tokio::time::timeout(LIMIT, tokio_tungstenite::client_async(req, tls))
        .await
        .unwrap()
        .unwrap();
    let started = tokio::time::Instant::now();
    let stopping = sk.begin_shutdown();
    // Within the grace period the socket still works.
    tokio::time::sleep(Duration::from_millis(200)).await;
    ws.send(Message::text("during grace")).await.unwrap();
    let echo = tokio::time::timeout(LIMIT, futures_util::StreamExt::next(&mut ws))
        .await
        .unwrap();
    assert!(matches!(echo, Some(Ok(Message::Text(t))) if t.as_str() == "during grace"));
    // Then it is closed, and sidekey stops.
    let end = tokio::time::timeout(LIMIT, futures_util::StreamExt::next(&mut ws))
        .await
        .expect("closed within the grace period and a margin");
    assert!(
        matches!(end, None | Some(Ok(Message::Close(_)) | Err(_))),
        "{end:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    tokio::time::timeout(LIMIT, stopping)
        .await
        .expect("sidekey stops after the grace period")
        .unwrap();
    mock.join();
}

#[tokio::test]
async fn a_rotated_certificate_reaches_new_connections_and_a_bad_pair_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let mut volume = SecretVolume::create(&dir.path().join("tls"), &leaf_files(&pki));
    let mock = WsMock::start(&pki, bearer_real).await;
    let sk = sidekey(dir.path(), &pki, &volume, &mock).await;
    let tls_addr = sk.tls.unwrap();

    let first = CertificateDer::from_pem_slice(pki.leaf_cert_pem.as_bytes())
        .unwrap()
        .to_vec();
    assert_eq!(served_cert(&pki, tls_addr).await, first);
    // A connection opened before the rotation stays up.
    let mut before = tls_connect(&pki, tls_addr).await;

    // The kubelet swaps in a new pair.
    let (cert, key, second) = pki.another_leaf("rotated");
    volume.update(&[("tls.crt", &cert), ("tls.key", &key)]);
    common::eventually("the rotated certificate", LIMIT, || async {
        (served_cert(&pki, tls_addr).await == second).then_some(())
    })
    .await;
    before
        .write_all(b"GET /nope/x HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, before.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 404"),
        "{}",
        String::from_utf8_lossy(&out)
    );

    // A pair that does not match: rejected, the rotated pair still served.
    let (cert3, _, _) = pki.another_leaf("mismatched");
    let (_, key4, _) = pki.another_leaf("other");
    volume.update(&[("tls.crt", &cert3), ("tls.key", &key4)]);
    common::eventually("the rejection in the metrics", LIMIT, || async {
        let m = common::client::get(&sk.admin_url("/metrics")).await.text();
        m.lines()
            .any(|l| l.starts_with("sidekey_reloads_total{result=\"error\"}") && !l.ends_with(" 0"))
            .then_some(())
    })
    .await;
    assert_eq!(served_cert(&pki, tls_addr).await, second);
    // And key material that is not PEM at all: the same.
    volume.update(&[("tls.crt", "not a certificate"), ("tls.key", "not a key")]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(served_cert(&pki, tls_addr).await, second);

    sk.stop().await;
    mock.join();
}

/// Runs a Python script from `tests/websocket` trusting the test CA.
async fn python(pki: &TestPki, script: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/websocket")
        .join(script);
    let mut cmd = tokio::process::Command::new(common::python());
    cmd.arg(path)
        .args(args)
        .env("SSL_CERT_FILE", &pki.ca_file)
        .env("REQUESTS_CA_BUNDLE", &pki.ca_file)
        .env_remove("GOOGLE_API_KEY")
        .env_remove("GEMINI_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("AZURE_OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL");
    common::run_json(cmd, script).await
}

#[tokio::test]
async fn google_genai_live_works_through_the_tls_listener_with_a_dummy_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let volume = SecretVolume::create(&dir.path().join("tls"), &leaf_files(&pki));
    let mock = WsMock::start(&pki, ws::requires("x-goog-api-key", "real-gemini", 403)).await;
    let toml = format!(
        "ca_file = \"{ca}\"\n{tls}\n\
         [routes.gemini]\ntype = \"gemini\"\nupstream = \"{up}\"\nkey = \"env::GEMINI_KEY\"\n",
        ca = pki.ca_file.display(),
        tls = tls_toml(&volume),
        up = mock.base(),
    );
    let sk = start_in(
        dir.path(),
        &toml,
        MapEnv::new([("GEMINI_KEY", "real-gemini")]),
    )
    .await;
    let base = format!("https://127.0.0.1:{}/gemini", sk.tls.unwrap().port());

    let lines = python(&pki, "gemini_live.py", &[&base]).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["text"], "live: hello");

    let seen = mock.handshakes();
    assert_eq!(seen.len(), 1);
    let path = &seen[0].path_and_query;
    assert!(
        path.starts_with("/ws/google.ai.generativelanguage.")
            && path.contains(".GenerativeService.BidiGenerateContent"),
        "{path}"
    );
    // The SDK's dummy key is gone, in the header and the query alike.
    assert!(
        !seen[0].path_and_query.contains("key="),
        "{}",
        seen[0].path_and_query
    );
    assert_eq!(seen[0].header("x-goog-api-key"), Some("real-gemini"));
    sk.stop().await;
    mock.join();
}

#[tokio::test]
async fn an_azure_openai_realtime_handshake_works_through_the_tls_listener() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let volume = SecretVolume::create(&dir.path().join("tls"), &leaf_files(&pki));
    let mock = WsMock::start(&pki, ws::requires("api-key", "real-azure", 401)).await;
    let toml = format!(
        "ca_file = \"{ca}\"\n{tls}\n\
         [routes.azure]\ntype = \"azure\"\n\
         [routes.azure.deployments.gpt-realtime]\nendpoint = \"{up}\"\nkey = \"env::AZURE_KEY\"\n",
        ca = pki.ca_file.display(),
        tls = tls_toml(&volume),
        up = mock.base(),
    );
    let sk = start_in(
        dir.path(),
        &toml,
        MapEnv::new([("AZURE_KEY", "real-azure")]),
    )
    .await;
    // Plain HTTP for ordinary calls, the TLS listener for the socket.
    let endpoint = sk.url("/azure");
    let wss = format!("wss://127.0.0.1:{}/azure/openai", sk.tls.unwrap().port());

    let lines = python(&pki, "azure_realtime.py", &[&endpoint, &wss]).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["echo"]["type"], "session.update");

    let seen = mock.handshakes();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].path_and_query.starts_with("/openai/realtime?"),
        "{}",
        seen[0].path_and_query
    );
    assert!(seen[0].path_and_query.contains("deployment=gpt-realtime"));
    assert_eq!(seen[0].header("api-key"), Some("real-azure"));
    sk.stop().await;
    mock.join();
}
