//! Graceful shutdown: readiness fails at once, new connections are refused,
//! requests in flight finish (within the grace period), and the server stops.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

mod common;

use std::time::Duration;

use common::client::{self, request};
use common::mock::{Mock, Reply, Transport};
use common::sidekey::start_in;
use http::Method;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sidekey::MapEnv;

#[tokio::test]
async fn in_flight_stream_finishes_after_shutdown_begins() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<String> = (0..6).map(|i| format!("data: {i}\n\n")).collect();
    let mock = Mock::start(Transport::Plain, move |_| {
        Reply::sse(chunks.clone(), Duration::from_millis(100))
    })
    .await;
    let config = format!(
        "[routes.llm]\ntype = \"vllm\"\nupstream = \"{}\"\n",
        mock.url
    );
    let mut sidekey = start_in(dir.path(), &config, MapEnv::default()).await;

    let client =
        Client::builder(TokioExecutor::new()).build_http::<http_body_util::Full<bytes::Bytes>>();
    let resp = client
        .request(request(
            Method::POST,
            &sidekey.url("/llm/v1/completions"),
            &[],
            "{}",
        ))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: 0\n\n");

    let done = sidekey.begin_shutdown();
    let ready = common::eventually("readiness to fail", Duration::from_secs(5), || async {
        let r = client::get(&sidekey.admin_url("/readyz")).await;
        (r.status == 503).then_some(r)
    })
    .await;
    assert!(ready.text().contains("shutting down"));
    common::eventually("the listener to close", Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(sidekey.addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;

    let mut rest = Vec::new();
    while let Some(frame) = body.frame().await {
        rest.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert_eq!(
        String::from_utf8(rest).unwrap(),
        (1..6).map(|i| format!("data: {i}\n\n")).collect::<String>()
    );
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn grace_period_bounds_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |_| Reply::Hang).await;
    let config = format!(
        "[shutdown]\ngrace_period = \"300ms\"\n[routes.llm]\ntype = \"vllm\"\nupstream = \"{}\"\n",
        mock.url
    );
    let mut sidekey = start_in(dir.path(), &config, MapEnv::default()).await;
    let url = sidekey.url("/llm/v1/completions");
    let stuck = tokio::spawn(async move { client::get(&url).await });
    common::eventually(
        "the request to reach the mock",
        Duration::from_secs(5),
        || async { (!mock.requests().is_empty()).then_some(()) },
    )
    .await;
    let done = sidekey.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .unwrap()
        .unwrap();
    stuck.abort();
}

#[tokio::test]
async fn drain_delay_keeps_accepting_while_readiness_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |_| Reply::ok()).await;
    let config = format!(
        "[shutdown]\ndrain_delay = \"1s\"\n[routes.llm]\ntype = \"vllm\"\nupstream = \"{}\"\n",
        mock.url
    );
    let mut sidekey = start_in(dir.path(), &config, MapEnv::default()).await;
    let done = sidekey.begin_shutdown();
    common::eventually("readiness to fail", Duration::from_secs(5), || async {
        (client::get(&sidekey.admin_url("/readyz")).await.status == 503).then_some(())
    })
    .await;
    // Still serving new requests during the delay.
    assert_eq!(
        client::get(&sidekey.url("/llm/v1/models")).await.status,
        200
    );
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .unwrap()
        .unwrap();
}
