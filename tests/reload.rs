//! Hot reload: keys and config change by changing files, with no restart and
//! no failed request. Files are changed exactly as the kubelet changes a
//! Secret volume, and as people and editors change files.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::client;
use common::echo::{self, WAIT, route};
use common::kubelet::{SecretVolume, editor_replace, truncate_then_write, write_in_place};
use common::sidekey::{Running, start_in};
use sidekey::MapEnv;
use tokio::time::Instant;

/// The credential the provider saw for one request through `route`.
async fn key_seen(sidekey: &Running, route: &str) -> String {
    echo::key_seen(&sidekey.url(""), route).await
}

async fn wait_for_key(sidekey: &Running, route: &str, want: &str) {
    echo::wait_for_key(&sidekey.url(""), route, want).await;
}

async fn metric(sidekey: &Running, line_prefix: &str) -> f64 {
    echo::metric(&sidekey.admin_url(""), line_prefix)
        .await
        .unwrap_or_else(|| panic!("no {line_prefix} in /metrics"))
}

#[tokio::test]
async fn kubelet_secret_updates_are_picked_up_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let mock = echo::mock().await;
    let mut vol =
        SecretVolume::create(&dir.path().join("secrets/openai"), &[("key", "sk-gen-1\n")]);
    let config = route("openai", &mock.url, &vol.location("key"));
    let sidekey = start_in(dir.path(), &config, MapEnv::default()).await;
    assert_eq!(key_seen(&sidekey, "openai").await, "Bearer sk-gen-1");

    // A watch on the file itself would see the first swap and then nothing:
    // three updates in a row must all arrive.
    for generation in 2..=4 {
        let key = format!("sk-gen-{generation}");
        let _ = vol.update(&[("key", &format!("{key}\n"))]);
        wait_for_key(&sidekey, "openai", &key).await;
    }
    assert!(metric(&sidekey, "sidekey_reloads_total{result=\"ok\"}").await >= 4.0);
    assert!(metric(&sidekey, "sidekey_last_reload_success_timestamp_seconds").await > 0.0);
    assert!(metric(&sidekey, "sidekey_reload_duration_seconds_count").await >= 4.0);

    // A key added to the Secret and named by a new route in the config.
    let _ = vol.update(&[("key", "sk-gen-4\n"), ("second", "sk-second\n")]);
    let config = format!(
        "{config}{}",
        route("second", &mock.url, &vol.location("second"))
    );
    editor_replace(
        &sidekey.config_path,
        &common::sidekey::with_ephemeral_ports(&config),
    );
    wait_for_key(&sidekey, "second", "sk-second").await;
}

#[tokio::test]
async fn plain_writes_truncations_and_editor_renames_are_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let mock = echo::mock().await;
    let key = echo::key_file(dir.path(), "keys/openai", "sk-plain-0\n");
    let config = route("openai", &mock.url, &format!("path::{}", key.display()));
    let sidekey = start_in(dir.path(), &config, MapEnv::default()).await;
    assert_eq!(key_seen(&sidekey, "openai").await, "Bearer sk-plain-0");

    write_in_place(&key, "sk-plain-1\n");
    wait_for_key(&sidekey, "openai", "sk-plain-1").await;

    // The file is empty for a while: sidekey keeps the previous key meanwhile
    // (an empty key must never be sent) and takes the new one once written.
    let writer = {
        let key = key.clone();
        tokio::spawn(async move {
            truncate_then_write(&key, "sk-plain-2\n", Duration::from_millis(300)).await
        })
    };
    let deadline = Instant::now() + Duration::from_millis(250);
    while Instant::now() < deadline {
        let seen = key_seen(&sidekey, "openai").await;
        assert!(
            seen == "Bearer sk-plain-1" || seen == "Bearer sk-plain-2",
            "sent {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    writer.await.unwrap();
    wait_for_key(&sidekey, "openai", "sk-plain-2").await;

    editor_replace(&key, "sk-plain-3\n");
    wait_for_key(&sidekey, "openai", "sk-plain-3").await;
}

#[tokio::test]
async fn config_changes_add_and_remove_routes() {
    let dir = tempfile::tempdir().unwrap();
    let mock = echo::mock().await;
    let config = route("a", &mock.url, "env::KEY_A");
    let env = MapEnv::new([("KEY_A", "sk-a"), ("KEY_B", "sk-b")]);
    let sidekey = start_in(dir.path(), &config, env).await;
    assert_eq!(client::get(&sidekey.url("/b/v1/models")).await.status, 404);

    let both = format!("{config}{}", route("b", &mock.url, "env::KEY_B"));
    write_in_place(
        &sidekey.config_path,
        &common::sidekey::with_ephemeral_ports(&both),
    );
    wait_for_key(&sidekey, "b", "sk-b").await;

    let only_b = route("b", &mock.url, "env::KEY_B");
    editor_replace(
        &sidekey.config_path,
        &common::sidekey::with_ephemeral_ports(&only_b),
    );
    common::eventually("route a to be removed", WAIT, || async {
        let resp = client::get(&sidekey.url("/a/v1/models")).await;
        (resp.status == 404).then_some(())
    })
    .await;
    assert_eq!(key_seen(&sidekey, "b").await, "Bearer sk-b");
}

#[tokio::test]
async fn a_broken_config_keeps_the_last_good_one_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let (mock, mut vol, sidekey) = echo::volume_route(dir.path(), "openai", "sk-good\n").await;
    let good = route("openai", &mock.url, &vol.location("key"));
    assert_eq!(key_seen(&sidekey, "openai").await, "Bearer sk-good");

    let missing = format!("path::{}", dir.path().join("nope/key").display());
    let broken = [
        ("bad TOML", "[routes.openai\ntype = \"openai\"\n".to_owned()),
        // Caught between the truncation and the write.
        ("an empty file", String::new()),
        (
            "unknown provider type",
            good.replace("openai-compatible", "opneai"),
        ),
        (
            "a credential file that does not exist",
            route("openai", &mock.url, &missing),
        ),
    ];
    for (i, (what, text)) in broken.iter().enumerate() {
        let text = if text.is_empty() {
            String::new()
        } else {
            common::sidekey::with_ephemeral_ports(text)
        };
        write_in_place(&sidekey.config_path, &text);
        let errors = (i + 1) as f64;
        common::eventually(&format!("the reload of {what} to fail"), WAIT, || async {
            (metric(&sidekey, "sidekey_reloads_total{result=\"error\"}").await >= errors)
                .then_some(())
        })
        .await;
        // Still serving, with the previous key, and still ready.
        assert_eq!(
            key_seen(&sidekey, "openai").await,
            "Bearer sk-good",
            "{what}"
        );
        assert_eq!(
            client::get(&sidekey.admin_url("/readyz")).await.status,
            200,
            "{what}"
        );
    }
    // A key rotated while the config is broken is not picked up (the config
    // does not load); once the config is fixed, both apply.
    let _ = vol.update(&[("key", "sk-rotated\n")]);
    write_in_place(
        &sidekey.config_path,
        &common::sidekey::with_ephemeral_ports(&good),
    );
    wait_for_key(&sidekey, "openai", "sk-rotated").await;
}

#[tokio::test]
async fn a_key_file_that_disappears_keeps_the_previous_key() {
    let dir = tempfile::tempdir().unwrap();
    let mock = echo::mock().await;
    let key = dir.path().join("key");
    std::fs::write(&key, "sk-kept\n").unwrap();
    let sidekey = start_in(
        dir.path(),
        &route("openai", &mock.url, &format!("path::{}", key.display())),
        MapEnv::default(),
    )
    .await;
    std::fs::remove_file(&key).unwrap();
    common::eventually("the reload to be rejected", WAIT, || async {
        (metric(&sidekey, "sidekey_reloads_total{result=\"error\"}").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(key_seen(&sidekey, "openai").await, "Bearer sk-kept");
    std::fs::write(&key, "sk-back\n").unwrap();
    wait_for_key(&sidekey, "openai", "sk-back").await;
}

/// One request as the client saw it.
struct Observed {
    sent: Instant,
    status: u16,
    key: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_rotations_under_continuous_load_lose_nothing() {
    const ROTATIONS: usize = 20;
    const CLIENTS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let mock = echo::mock().await;
    let key = |i: usize| format!("sk-rotation-{i:02}");
    let mut vol = SecretVolume::create(
        &dir.path().join("secrets"),
        &[("key", &format!("{}\n", key(0)))],
    );
    let config = route("openai", &mock.url, &vol.location("key"));
    let sidekey = Arc::new(start_in(dir.path(), &config, MapEnv::default()).await);

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (sidekey, stop) = (sidekey.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                // Bounded: the rotations below end within 20 × WAIT.
                let deadline = Instant::now() + WAIT * 25;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let sent = Instant::now();
                    let resp = client::get(&sidekey.url("/openai/v1/models")).await;
                    let key = if resp.status == 200 {
                        resp.json()["auth"].as_str().unwrap_or("").to_owned()
                    } else {
                        resp.text()
                    };
                    seen.push(Observed {
                        sent,
                        status: resp.status.as_u16(),
                        key,
                    });
                }
                seen
            })
        })
        .collect();

    // For each rotation: when the new key was first seen by a client.
    let mut first_seen = Vec::new();
    for i in 1..=ROTATIONS {
        let _ = vol.update(&[("key", &format!("{}\n", key(i)))]);
        let swapped = Instant::now();
        let want = format!("Bearer {}", key(i));
        let seen_at = common::eventually(&format!("rotation {i}"), WAIT, || async {
            (key_seen(&sidekey, "openai").await == want).then(Instant::now)
        })
        .await;
        assert!(seen_at - swapped < WAIT);
        first_seen.push(seen_at);
    }
    stop.store(true, Ordering::Relaxed);
    let mut observed = Vec::new();
    for c in clients {
        observed.extend(c.await.unwrap());
    }

    assert!(
        observed.len() > 200,
        "too little load to mean anything: {} requests",
        observed.len()
    );
    for o in &observed {
        assert_eq!(o.status, 200, "a request failed during rotation: {}", o.key);
        let index = (0..=ROTATIONS)
            .find(|i| o.key == format!("Bearer {}", key(*i)))
            .unwrap_or_else(|| {
                panic!(
                    "the provider received {:?}: neither an old nor a new key",
                    o.key
                )
            });
        // A request that started after rotation i was first observed cannot
        // carry an older key: the swap happened before it loaded its snapshot.
        let newest_started_before = first_seen.iter().take_while(|t| **t < o.sent).count();
        assert!(
            index >= newest_started_before,
            "a request started after rotation {newest_started_before} was seen still used key {index}"
        );
    }
}

/// The provider's view of one request through a subprocess sidekey.
async fn key_via(proc: &common::process::Proc) -> String {
    echo::key_seen(&proc.url(""), "openai").await
}

#[tokio::test]
async fn sighup_reloads_and_the_timer_rereads_without_watches() {
    let dir = tempfile::tempdir().unwrap();
    let mock = echo::mock().await;
    let key = dir.path().join("key");
    std::fs::write(&key, "sk-hup-0\n").unwrap();
    let config = dir.path().join("sidekey.toml");
    let write_config = |interval: &str| {
        std::fs::write(
            &config,
            format!(
                "[reload]\nwatch = false\ninterval = \"{interval}\"\n{}",
                route("openai", &mock.url, &format!("path::{}", key.display()))
            ),
        )
        .unwrap();
    };
    write_config("1h");
    let proc = common::process::spawn_config(&config, &[], &[]).await;
    assert_eq!(key_via(&proc).await, "Bearer sk-hup-0");

    // No watches and an hour-long timer: only SIGHUP can bring the new key.
    std::fs::write(&key, "sk-hup-1\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        key_via(&proc).await,
        "Bearer sk-hup-0",
        "picked up without watches or SIGHUP"
    );
    proc.signal("-HUP").await;
    common::eventually("SIGHUP to reload", WAIT, || async {
        (key_via(&proc).await == "Bearer sk-hup-1").then_some(())
    })
    .await;

    // A short timer picks changes up on its own, and an unchanged re-read
    // swaps nothing and logs nothing.
    write_config("200ms");
    proc.signal("-HUP").await;
    common::eventually("the timer setting to apply", WAIT, || async {
        proc.stderr().contains("settings changed").then_some(())
    })
    .await;
    std::fs::write(&key, "sk-hup-2\n").unwrap();
    common::eventually("the timer to re-read", WAIT, || async {
        (key_via(&proc).await == "Bearer sk-hup-2").then_some(())
    })
    .await;
    let reloads_before = proc.stderr().matches("reloaded").count();
    tokio::time::sleep(Duration::from_millis(1200)).await; // ~6 unchanged re-reads
    let (status, logs) = proc.terminate().await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        logs.matches("reloaded").count(),
        reloads_before,
        "an unchanged re-read logged:\n{logs}"
    );
    assert_eq!(logs.matches("\"trigger\":\"SIGHUP\"").count(), 2, "{logs}");
    assert!(logs.contains("\"trigger\":\"periodic re-read\""), "{logs}");
    let fingerprint = sidekey::Secret::new(b"sk-hup-2".to_vec())
        .unwrap()
        .fingerprint()
        .to_string();
    assert!(
        logs.contains(&fingerprint),
        "the reload line names the new key's fingerprint:\n{logs}"
    );
    assert!(!logs.contains("sk-hup"), "a key was logged:\n{logs}");
}

#[tokio::test]
async fn a_new_listen_address_is_reported_as_needing_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mock = echo::mock().await;
    let config = dir.path().join("sidekey.toml");
    let body = route("openai", &mock.url, "env::K");
    std::fs::write(
        &config,
        format!("listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{body}"),
    )
    .unwrap();
    let proc = common::process::spawn(
        &["--config", config.to_str().unwrap()],
        &[("K", "sk-listen")],
    )
    .await;

    editor_replace(
        &config,
        &format!("listen = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:0\"\n{body}"),
    );
    common::eventually("the restart warning", WAIT, || async {
        let logs = proc.stderr();
        (logs.contains("needs a restart") && logs.contains("\"setting\":\"listen\"")).then_some(())
    })
    .await;
    // Still serving on the address it has.
    assert_eq!(key_via(&proc).await, "Bearer sk-listen");
    let (status, _) = proc.terminate().await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_reload_cannot_drop_the_inbound_token_of_a_public_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mock = echo::mock().await;
    let body = route("openai", &mock.url, "env::K");
    // Bound on every interface (traffic in this test stays on 127.0.0.1).
    let public = format!("listen = \"0.0.0.0:0\"\ninbound_token = \"env::INBOUND\"\n{body}");
    let sidekey = start_in(
        dir.path(),
        &public,
        MapEnv::new([("K", "sk-gw"), ("INBOUND", "inbound-secret")]),
    )
    .await;
    let url = format!("http://127.0.0.1:{}/openai/v1/x", sidekey.addr.port());
    let call = |token: Option<&'static str>| {
        let url = url.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                token.map(|t| ("x-sidekey-token", t)).into_iter().collect();
            client::send(common::client::request(
                http::Method::GET,
                &url,
                &headers,
                "",
            ))
            .await
            .status
        }
    };
    assert_eq!(call(None).await, 401);
    assert_eq!(call(Some("inbound-secret")).await, 200);

    // The new config says loopback and has no token; the socket cannot move.
    write_in_place(
        &sidekey.config_path,
        &common::sidekey::with_ephemeral_ports(&body),
    );
    common::eventually("the reload to be rejected", WAIT, || async {
        (metric(&sidekey, "sidekey_reloads_total{result=\"error\"}").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(
        call(None).await,
        401,
        "the public socket still needs the token"
    );
    assert_eq!(call(Some("inbound-secret")).await, 200);
}
