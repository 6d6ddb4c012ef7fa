//! What keeping a request body for a fallback retry costs.
//!
//! `cargo bench --bench replay`: sidekey in-process with two routes to the
//! same mock provider, one with a single key (the body streams through) and
//! one with `{ default, fallback }` (the body is kept, as a retry would need,
//! while it streams; no retry happens). For 1 KiB, 100 KiB and 10 MiB JSON
//! bodies it sends requests one after another and prints the median and p90
//! round trip of each route and the difference. Bounded; 127.0.0.1 only.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    missing_docs,
    reason = "a benchmark driver: it prints and fails loudly"
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::mock::{Mock, Reply, Transport};
use tokio::time::Instant;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |_| Reply::ok()).await;
    let config = format!(
        "[routes.stream]\ntype = \"openai\"\nupstream = \"{url}\"\nkey = \"env::K\"\n\
         [routes.replay]\ntype = \"openai\"\nupstream = \"{url}\"\nkey = {{ default = \"env::K\", fallback = \"env::F\" }}\n",
        url = mock.url
    );
    let env = sidekey::MapEnv::new([("K", "sk-bench"), ("F", "sk-fallback")]);
    let sidekey = common::sidekey::start_in(dir.path(), &config, env).await;

    println!(
        "Request body kept for replay vs streamed: round trip through sidekey (sequential requests)"
    );
    println!(
        "  {:>8} {:>14} {:>14} {:>14} {:>12}",
        "body", "stream p50", "replay p50", "added p50", "added p90"
    );
    for (label, size, n) in [
        ("1 KiB", 1 << 10, 400),
        ("100 KiB", 100 << 10, 200),
        ("10 MiB", 10 << 20, 30),
    ] {
        let body = Bytes::from(format!(r#"{{"model":"m","input":"{}"}}"#, "x".repeat(size)));
        let mut stream = measure(&sidekey.url("/stream/v1/x"), &body, n).await;
        let mut replay = measure(&sidekey.url("/replay/v1/x"), &body, n).await;
        // Interleave a second round to spread any drift over both.
        stream.extend(measure(&sidekey.url("/stream/v1/x"), &body, n).await);
        replay.extend(measure(&sidekey.url("/replay/v1/x"), &body, n).await);
        let (s50, s90) = pct(&mut stream);
        let (r50, r90) = pct(&mut replay);
        println!(
            "  {label:>8} {:>11.0} µs {:>11.0} µs {:>11.0} µs {:>9.0} µs",
            s50,
            r50,
            r50 - s50,
            r90 - s90
        );
    }
}

async fn measure(url: &str, body: &Bytes, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..n + 5 {
        assert!(Instant::now() < deadline, "benchmark took too long");
        let t = Instant::now();
        let resp = common::client::post_json(url, &[], std::str::from_utf8(body).unwrap()).await;
        assert_eq!(resp.status, 200);
        if i >= 5 {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    out
}

fn pct(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() * 9 / 10])
}
