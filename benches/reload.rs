//! How long a rotated key takes to reach the provider.
//!
//! `cargo bench --bench reload`: sidekey in-process with its default reload
//! settings, a Secret volume written exactly as the kubelet writes it, and a
//! client sending requests back to back. For each of 50 rotations it measures
//! the time from the atomic `..data` swap to the first request that carries the
//! new key (its send time), and prints the median, p90 and max. Everything is
//! on 127.0.0.1 and every wait is bounded.

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

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::kubelet::SecretVolume;
use common::mock::{Mock, Reply, Transport};
use tokio::time::Instant;

const ROTATIONS: usize = 50;

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
    let mock = Mock::start(Transport::Plain, |r| {
        Reply::json(200, r.header("authorization").unwrap_or("").to_owned())
    })
    .await;
    let key = |i: usize| format!("sk-bench-{i:03}");
    let mut vol = SecretVolume::create(&dir.path().join("secrets"), &[("key", &key(0))]);
    let config = format!(
        "[routes.openai]\ntype = \"openai-compatible\"\nupstream = \"{}\"\nkey = \"{}\"\n",
        mock.url,
        vol.location("key")
    );
    let sidekey = common::sidekey::start_in(dir.path(), &config, sidekey::MapEnv::default()).await;

    // The rotation the client is waiting to see, and when it first saw it.
    let waiting_for = Arc::new(AtomicUsize::new(usize::MAX));
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let url = sidekey.url("/openai/v1/models");
    let client = {
        let waiting_for = waiting_for.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            while Instant::now() < deadline {
                let sent = Instant::now();
                let resp = common::client::get(&url).await;
                let want = waiting_for.load(Ordering::Acquire);
                if want != usize::MAX && resp.body == format!("Bearer {}", key(want)).as_bytes() {
                    waiting_for.store(usize::MAX, Ordering::Release);
                    let _ = seen_tx.send((want, sent));
                }
            }
        })
    };

    let mut delays = Vec::with_capacity(ROTATIONS);
    for i in 1..=ROTATIONS {
        waiting_for.store(i, Ordering::Release);
        let swapped = vol.update(&[("key", &key(i))]);
        let (rotation, sent) = tokio::time::timeout(Duration::from_secs(30), seen_rx.recv())
            .await
            .expect("the new key never arrived")
            .unwrap();
        assert_eq!(rotation, i);
        delays.push(sent.saturating_duration_since(swapped));
        // Let the directory settle before the next update.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.abort();

    delays.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "Key rotation: from the kubelet's ..data swap to the first request carrying the new key"
    );
    println!("  rotations {ROTATIONS}, reload.debounce 100ms (default)");
    println!(
        "  median {:.1} ms   p90 {:.1} ms   max {:.1} ms   min {:.1} ms",
        ms(delays[ROTATIONS / 2]),
        ms(delays[ROTATIONS * 9 / 10]),
        ms(delays[ROTATIONS - 1]),
        ms(delays[0])
    );
}
