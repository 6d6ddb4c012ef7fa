//! The test helpers themselves: a panic inside a mock provider fails the
//! test that started it, instead of costing only a 500 nobody looks at.

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

#[tokio::test]
#[should_panic(expected = "mock handler panicked")]
async fn a_panic_in_a_mock_handler_fails_the_test_when_the_mock_is_dropped() {
    let mock = Mock::start(Transport::Plain, |r| {
        assert_eq!(r.uri.path(), "/expected", "the mock's own check");
        Reply::ok()
    })
    .await;
    // The handler's assertion fails; the mock still answers, with a 500.
    let resp = client::get(&format!("{}/unexpected", mock.url)).await;
    assert_eq!(resp.status, 500);
    drop(mock);
}

#[tokio::test]
#[should_panic(expected = "the mock's own check")]
async fn join_reraises_a_panic_from_a_mock_handler() {
    let mock = Mock::start_early(Transport::Plain, |_| panic!("the mock's own check")).await;
    let resp = client::get(&format!("{}/x", mock.url)).await;
    assert_eq!(resp.status, 500);
    mock.join().await;
}

#[tokio::test]
async fn a_mock_without_panics_joins_cleanly() {
    let mock = Mock::start(Transport::Plain, |_| Reply::ok()).await;
    assert_eq!(client::get(&format!("{}/x", mock.url)).await.status, 200);
    mock.join().await;
}
