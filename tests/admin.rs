//! The admin port: liveness, readiness derived from the snapshot, and
//! Prometheus metrics by route and status.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

mod common;

use common::client;
use common::mock::{Mock, Reply, Transport};
use common::sidekey::start_in;
use common::write_key;
use sidekey::MapEnv;

#[tokio::test]
async fn healthz_readyz_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |_| Reply::ok()).await;
    let key = write_key(dir.path(), "key", "sk-admin-test");
    let config = format!(
        "[routes.ok]\ntype = \"openai\"\nupstream = \"{}\"\nkey = \"path::{key}\"\n",
        mock.url
    );
    let sidekey = start_in(dir.path(), &config, MapEnv::default()).await;

    let health = client::get(&sidekey.admin_url("/healthz")).await;
    assert_eq!(
        (health.status.as_u16(), health.text().as_str()),
        (200, "ok\n")
    );
    let ready = client::get(&sidekey.admin_url("/readyz")).await;
    assert_eq!(
        (ready.status.as_u16(), ready.text().as_str()),
        (200, "ready\n")
    );

    for _ in 0..3 {
        assert_eq!(client::get(&sidekey.url("/ok/v1/models")).await.status, 200);
    }
    assert_eq!(client::get(&sidekey.url("/missing/x")).await.status, 404);

    let metrics = client::get(&sidekey.admin_url("/metrics")).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text();
    for line in [
        "sidekey_requests_total{route=\"ok\",status=\"200\"} 3",
        "sidekey_requests_total{route=\"\",status=\"404\"} 1",
        "sidekey_request_duration_seconds_count{route=\"ok\"} 3",
        "sidekey_request_duration_seconds_bucket{route=\"ok\",le=\"+Inf\"} 3",
        "sidekey_reloads_total{result=\"ok\"} 1",
        "# TYPE sidekey_request_duration_seconds histogram",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("sidekey_"), "unprefixed metric: {line}");
    }
    assert_eq!(client::get(&sidekey.admin_url("/nope")).await.status, 404);
}

#[tokio::test]
async fn readyz_names_missing_credentials_without_values() {
    let dir = tempfile::tempdir().unwrap();
    let present = write_key(dir.path(), "present", "sk-present-value");
    let config = format!(
        "[routes.a]\ntype = \"openai\"\nkey = \"path::{present}\"\n\
         [routes.b]\ntype = \"anthropic\"\nkey = \"path::{}\"\n",
        dir.path().join("absent").display()
    );
    let sidekey = start_in(dir.path(), &config, MapEnv::default()).await;
    let ready = client::get(&sidekey.admin_url("/readyz")).await;
    assert_eq!(ready.status, 503);
    let body = ready.text();
    assert!(body.contains("routes.b.key"), "{body}");
    assert!(body.contains("absent: no such file"), "{body}");
    assert!(!body.contains("routes.a"), "{body}");
    assert!(!body.contains("sk-present"), "{body}");
}

#[tokio::test]
async fn builtin_routes_do_not_hold_readiness_hostage() {
    // The built-in default config has a route per provider type; only the
    // keys the environment provides are present. It is still ready.
    let loopback = Some("127.0.0.1:0".parse().unwrap());
    let server = sidekey::Server::start(sidekey::Options {
        config: sidekey::ConfigSource::BuiltIn,
        env: std::sync::Arc::new(MapEnv::new([("OPENAI_API_KEY", "sk-x")])),
        overrides: sidekey::Overrides {
            listen: loopback,
            admin_listen: loopback,
        },
    })
    .await
    .unwrap();
    let admin = server.admin_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let ready = client::get(&format!("http://127.0.0.1:{}/readyz", admin.port())).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    stop.send(()).unwrap();
    task.await.unwrap();
}
