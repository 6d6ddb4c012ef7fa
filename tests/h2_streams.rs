//! Long-lived streams over an HTTP/2 upstream that allows few streams per
//! connection: every stream starts at once (another connection is opened
//! when one is full) instead of queueing behind streams that may last
//! minutes.

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
use common::client::request;
use common::mock::{Mock, Reply, Transport};
use common::sidekey::start_in;
use common::tls::TestPki;
use http::{Method, Version};
use http_body_util::BodyExt;
use sidekey::MapEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_streams_than_one_connection_allows_all_start_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    // Two streams per connection; each answer streams for three seconds.
    let mock = Mock::start(Transport::TlsH2Streams(&pki, 2), |_| {
        Reply::sse(
            (0..4).map(|i| format!("data: {i}\n\n")).collect(),
            Duration::from_secs(1),
        )
    })
    .await;
    let config = format!(
        "ca_file = \"{}\"\n[limits]\nupstream_streams_per_connection = 2\n\
         [routes.llm]\ntype = \"openai\"\nupstream = \"{}\"\nkey = \"env::K\"\n",
        pki.ca_file.display(),
        mock.url
    );
    let sidekey = start_in(dir.path(), &config, MapEnv::new([("K", "sk-h2")])).await;

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let mut bodies = Vec::new();
    for _ in 0..5 {
        let req = request(
            Method::POST,
            &sidekey.url("/llm/v1/chat/completions"),
            &[],
            r#"{"stream":true}"#,
        );
        // Every stream's head and first event must arrive while the other
        // streams are still open (bounded well below their 3 s lifetime).
        let resp = tokio::time::timeout(Duration::from_millis(1500), client.request(req))
            .await
            .expect("a stream waited for another to finish: requests queue behind a full HTTP/2 connection")
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let first = tokio::time::timeout(Duration::from_millis(1500), body.frame())
            .await
            .unwrap();
        assert!(first.is_some());
        bodies.push(body);
    }
    let seen = mock.requests();
    assert_eq!(seen.len(), 5);
    assert!(seen.iter().all(|r| r.version == Version::HTTP_2));
    drop(bodies);
}
