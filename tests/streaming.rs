//! Responses stream back chunk by chunk as they arrive: for each provider
//! family, a chunk reaches the client before the mock has even sent the next
//! one (chunks are sent 50 ms apart). Proven by ordering of events on one
//! clock, not by a speed threshold.

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
use common::sidekey::start_in;
use common::tls::TestPki;
use http::Method;
use sidekey::MapEnv;

const GAP: Duration = Duration::from_millis(50);

fn events(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("data: {{\"chunk\":{i}}}\n\n"))
        .collect()
}

#[tokio::test]
async fn every_family_streams_incrementally() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let mock = Mock::start(Transport::Tls(&pki), |_| Reply::sse(events(5), GAP)).await;
    let config = format!(
        "ca_file = \"{ca}\"\n\
         [routes.openai]\ntype = \"openai\"\nupstream = \"{url}\"\nkey = \"env::K\"\n\
         [routes.azure]\ntype = \"azure\"\n[routes.azure.deployments.d]\nendpoint = \"{url}\"\nkey = \"env::K\"\n\
         [routes.anthropic]\ntype = \"anthropic\"\nupstream = \"{url}\"\nkey = \"env::K\"\n\
         [routes.gemini]\ntype = \"gemini\"\nupstream = \"{url}\"\nkey = \"env::K\"\n",
        ca = pki.ca_file.display(),
        url = mock.url
    );
    let sidekey = start_in(dir.path(), &config, MapEnv::new([("K", "sk-stream")])).await;

    let paths = [
        "/openai/v1/chat/completions",
        "/azure/openai/deployments/d/chat/completions?api-version=2024-10-21",
        "/anthropic/v1/messages",
        "/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
    ];
    for (i, path) in paths.iter().enumerate() {
        let req = request(
            Method::POST,
            &sidekey.url(path),
            &[("content-type", "application/json")],
            r#"{"model":"m","stream":true}"#,
        );
        let (status, chunks) = client::stream(req).await;
        assert_eq!(status, 200, "{path}");
        let body: Vec<u8> = chunks.iter().flat_map(|(_, b)| b.to_vec()).collect();
        assert_eq!(
            Bytes::from(body),
            Bytes::from(events(5).concat()),
            "{path}: stream altered"
        );

        let sent = mock.sent_times(i);
        assert_eq!(sent.len(), 5, "{path}");
        // Chunk k arrived at the client before chunk k+1 left the mock: nothing
        // in between held it back.
        for k in 0..4 {
            let needle = format!("\"chunk\":{k}}}");
            let arrived = chunks
                .iter()
                .find(|(_, b)| String::from_utf8_lossy(b).contains(&needle))
                .map(|(t, _)| *t)
                .unwrap_or_else(|| panic!("{path}: chunk {k} not seen as its own frame"));
            assert!(
                arrived < sent[k + 1],
                "{path}: chunk {k} reached the client only after chunk {} was sent",
                k + 1
            );
        }
    }
}

/// sidekey with `request_timeout = 1s` in front of an upstream that streams
/// `n` events `gap` apart, and the streamed response to a request.
async fn stream_through_one_second_timeout(
    dir: &std::path::Path,
    n: usize,
    gap: Duration,
) -> (
    http::Response<hyper::body::Incoming>,
    Mock,
    common::sidekey::Running,
) {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let pki = TestPki::new(dir);
    let mock = Mock::start(Transport::Tls(&pki), move |_| Reply::sse(events(n), gap)).await;
    let config = format!(
        "ca_file = \"{ca}\"\n[limits]\nrequest_timeout = \"1s\"\n\
         [routes.openai]\ntype = \"openai\"\nupstream = \"{url}\"\nkey = \"env::K\"\n",
        ca = pki.ca_file.display(),
        url = mock.url
    );
    let sidekey = start_in(dir, &config, MapEnv::new([("K", "sk-stream")])).await;
    let req = request(
        Method::POST,
        &sidekey.url("/openai/v1/chat/completions"),
        &[("content-type", "application/json")],
        r#"{"model":"m","stream":true}"#,
    );
    let client = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    (resp, mock, sidekey)
}

/// An upstream that goes silent mid-stream is cut after
/// `limits.request_timeout` of silence: the client gets what came, then an
/// error, rather than waiting for ever. Bounded: the whole test has 20 s.
#[tokio::test]
async fn a_stream_that_goes_silent_is_cut_after_the_request_timeout() {
    use http_body_util::BodyExt as _;

    let dir = tempfile::tempdir().unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        // The second event would come a minute later.
        let (resp, _mock, _sidekey) =
            stream_through_one_second_timeout(dir.path(), 2, Duration::from_secs(60)).await;
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, Bytes::from(events(1).concat()));
        let silent = tokio::time::Instant::now();
        assert!(
            matches!(body.frame().await, Some(Err(_))),
            "the stream should end with an error"
        );
        let waited = silent.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
            "cut after {waited:?}, not about 1 s"
        );
    })
    .await
    .expect("the silent stream was not cut");
}

/// The timeout is for silence, not for the whole stream: each event starts
/// it again, so a stream whose events come 400 ms apart runs well past the
/// 1 s `request_timeout` and arrives whole. Bounded: the whole test has 20 s.
#[tokio::test]
async fn a_stream_that_keeps_talking_outlives_the_request_timeout() {
    use http_body_util::BodyExt as _;

    let dir = tempfile::tempdir().unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        let began = tokio::time::Instant::now();
        let (resp, _mock, _sidekey) =
            stream_through_one_second_timeout(dir.path(), 6, Duration::from_millis(400)).await;
        let body = resp.into_body().collect().await;
        let body = body.expect("the stream was cut").to_bytes();
        assert_eq!(body, Bytes::from(events(6).concat()));
        assert!(
            began.elapsed() >= Duration::from_secs(2),
            "the stream should have lasted 2 s, past the timeout"
        );
    })
    .await
    .expect("the stream did not end");
}
