//! Rotation you can trust: one bad file never stalls, blocks or half-applies
//! a reload. Files are written the way the kubelet, an editor, a slow writer
//! and a careless `echo >` write them, plus a FIFO, `/dev/zero` and an
//! oversized file; each test checks what reaches the provider and what the
//! metrics, `/readyz` and the log say.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

mod common;

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use common::client;
use common::echo::{self, WAIT, get, key_seen, metric, route, wait_for_key};
use common::kubelet::{SecretVolume, editor_replace, write_in_place};
use common::process::Proc;
use common::sidekey::{Running, start_in, with_ephemeral_ports};
use sidekey::{MapEnv, Secret};
use tokio::time::Instant;

fn fingerprint(key: &str) -> String {
    Secret::new(key.as_bytes().to_vec())
        .unwrap()
        .fingerprint()
        .to_string()
}

async fn readyz(admin: &str) -> (u16, String) {
    let resp = get(&format!("{admin}/readyz")).await;
    (resp.status.as_u16(), resp.text())
}

/// sidekey as the sidecar runs it: its own process, one runtime thread.
async fn sidecar(config: &Path) -> (Proc, String, String) {
    let proc =
        common::process::spawn_config(config, &["--worker-threads", "1"], &[("K", "sk-env")]).await;
    let base = proc.url("");
    let admin = format!("http://{}", proc.admin);
    (proc, base, admin)
}

#[tokio::test]
async fn one_missing_key_never_blocks_another_routes_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let mock = echo::mock().await;
    let mut vol_a = SecretVolume::create(&dir.path().join("secrets/a"), &[("key", "sk-a-1\n")]);
    let mut vol_b = SecretVolume::create(&dir.path().join("secrets/b"), &[("key", "sk-b-1\n")]);
    let config = dir.path().join("sidekey.toml");
    std::fs::write(
        &config,
        format!(
            "{}{}",
            route("a", &mock.url, &vol_a.location("key")),
            route("b", &mock.url, &vol_b.location("key"))
        ),
    )
    .unwrap();
    let (proc, base, admin) = sidecar(&config).await;
    assert_eq!(key_seen(&base, "a").await, "Bearer sk-a-1");

    // a's key leaves its Secret; b's Secret is rotated; the operator sends
    // SIGHUP for good measure.
    let _ = vol_a.update(&[]);
    let _ = vol_b.update(&[("key", "sk-b-2\n")]);
    proc.signal("-HUP").await;
    wait_for_key(&base, "b", "sk-b-2").await;
    assert_eq!(
        key_seen(&base, "a").await,
        "Bearer sk-a-1",
        "a keeps its last good key"
    );

    // The metrics say what is stale and which key each route serves.
    let a_loc = vol_a.location("key");
    let stale_a = format!(
        "sidekey_credential_stale_seconds{{route=\"a\",credential=\"key\",location=\"{a_loc}\"}}"
    );
    common::eventually("a's stale gauge to rise", WAIT, || async {
        (metric(&admin, &stale_a).await? > 0.0).then_some(())
    })
    .await;
    let info_b = format!(
        "sidekey_credential_info{{route=\"b\",credential=\"key\",location=\"{}\",fingerprint=\"{}\"}}",
        vol_b.location("key"),
        fingerprint("sk-b-2")
    );
    assert_eq!(metric(&admin, &info_b).await, Some(1.0));
    let info_a = format!(
        "sidekey_credential_info{{route=\"a\",credential=\"key\",location=\"{a_loc}\",fingerprint=\"{}\"}}",
        fingerprint("sk-a-1")
    );
    assert_eq!(metric(&admin, &info_a).await, Some(1.0));
    // Ready (a still works), and the body says what is stale and why.
    let (status, body) = readyz(&admin).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("stale"), "{body}");
    assert!(
        body.contains(&format!("routes.a.key: {a_loc}: no such file")),
        "{body}"
    );

    // Every new change that cannot apply whole is counted again.
    let errors = metric(&admin, "sidekey_reloads_total{result=\"error\"}")
        .await
        .unwrap();
    assert!(errors >= 1.0);
    let _ = vol_b.update(&[("key", "sk-b-3\n")]);
    wait_for_key(&base, "b", "sk-b-3").await;
    common::eventually("the next rejection to be counted", WAIT, || async {
        (metric(&admin, "sidekey_reloads_total{result=\"error\"}").await? > errors).then_some(())
    })
    .await;

    // a's key comes back: current again, nothing stale.
    let _ = vol_a.update(&[("key", "sk-a-2\n")]);
    wait_for_key(&base, "a", "sk-a-2").await;
    assert_eq!(metric(&admin, &stale_a).await, Some(0.0));
    let (status, body) = readyz(&admin).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    let (_, logs) = proc.terminate().await;
    // One line per credential changed, with both fingerprints.
    let changed = logs
        .lines()
        .filter(|l| l.contains("credential changed"))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["to"] == fingerprint("sk-b-2").as_str())
        .unwrap_or_else(|| panic!("no attribution line for b:\n{logs}"));
    assert_eq!(changed["route"], "b");
    assert_eq!(changed["credential"], "key");
    assert_eq!(changed["location"], vol_b.location("key").as_str());
    assert_eq!(changed["from"], fingerprint("sk-b-1").as_str());
    assert!(
        logs.contains("reload rejected a change") && logs.contains("no such file"),
        "{logs}"
    );
    assert!(!logs.contains("sk-a-") && !logs.contains("sk-b-"), "{logs}");
}

/// Requests and `/healthz` keep answering for `for_how_long`.
async fn keeps_answering(base: &str, admin: &str, for_how_long: Duration) {
    let until = Instant::now() + for_how_long;
    while Instant::now() < until {
        assert_eq!(key_seen(base, "b").await, "Bearer sk-env");
        assert_eq!(get(&format!("{admin}/healthz")).await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_fifo_a_device_or_a_huge_file_is_refused_without_stalling_anything() {
    let dir = tempfile::tempdir().unwrap();
    let mock = echo::mock().await;
    let key = echo::key_file(dir.path(), "keys/a", "sk-a-1\n");
    let config = dir.path().join("sidekey.toml");
    std::fs::write(
        &config,
        format!(
            "{}{}",
            route("a", &mock.url, &format!("path::{}", key.display())),
            route("b", &mock.url, "env::K")
        ),
    )
    .unwrap();
    let (proc, base, admin) = sidecar(&config).await;
    assert_eq!(key_seen(&base, "a").await, "Bearer sk-a-1");

    // A FIFO renamed over the key: opening it for reading would wait for a
    // writer forever.
    let fifo = dir.path().join("keys/.fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::fs::rename(&fifo, &key).unwrap();
    let refused = |what: &'static str| {
        let admin = admin.clone();
        async move {
            common::eventually(&format!("/readyz to name the {what}"), WAIT, || async {
                let (_, body) = readyz(&admin).await;
                body.contains(what).then_some(())
            })
            .await;
        }
    };
    refused("is a FIFO, not a regular file: refused").await;
    keeps_answering(&base, &admin, Duration::from_millis(500)).await;
    assert_eq!(key_seen(&base, "a").await, "Bearer sk-a-1");

    // A symlink to /dev/zero: would read until memory runs out.
    let link = dir.path().join("keys/.zero");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    std::fs::rename(&link, &key).unwrap();
    refused("is a device, not a regular file: refused").await;
    keeps_answering(&base, &admin, Duration::from_millis(300)).await;

    // A file over the 1 MiB credential cap.
    editor_replace(&key, &"x".repeat(2 << 20));
    refused("is larger than 1048576 bytes").await;
    assert_eq!(key_seen(&base, "a").await, "Bearer sk-a-1");

    editor_replace(&key, "sk-a-2\n");
    wait_for_key(&base, "a", "sk-a-2").await;
    let (_, logs) = proc.terminate().await;
    assert!(logs.contains("is a FIFO"), "{logs}");
}

/// Rewrites `path` in place in two parts, holding it open and pausing
/// between them, as a slow writer does.
async fn write_in_two_parts(path: &Path, first: &str, rest: &str, pause: Duration) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(first.as_bytes()).unwrap();
    tokio::time::sleep(pause).await;
    f.write_all(rest.as_bytes()).unwrap();
}

/// Polls `route` until `writer` is done; every answer must be `old` or `new`.
async fn only_whole_keys_while(
    sidekey: &Running,
    route: &str,
    old: &str,
    new: &str,
    writer: tokio::task::JoinHandle<()>,
) {
    let base = sidekey.url("");
    while !writer.is_finished() {
        let seen = key_seen(&base, route).await;
        assert!(
            seen == format!("Bearer {old}") || seen == format!("Bearer {new}"),
            "a half-written key went live: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.await.unwrap();
    wait_for_key(&base, route, new).await;
}

#[tokio::test]
async fn a_key_written_in_two_parts_never_goes_live_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let mock = echo::mock().await;
    let key = dir.path().join("key");
    std::fs::write(&key, "sk-old\n").unwrap();
    // A short interval: periodic re-reads happen during the pause too.
    let config = format!(
        "[reload]\ninterval = \"200ms\"\n{}",
        route("a", &mock.url, &format!("path::{}", key.display()))
    );
    let sidekey = start_in(dir.path(), &config, MapEnv::default()).await;
    assert_eq!(key_seen(&sidekey.url(""), "a").await, "Bearer sk-old");

    let writer = {
        let key = key.clone();
        tokio::spawn(async move {
            write_in_two_parts(&key, "sk-ne", "w-key\n", Duration::from_millis(1200)).await;
        })
    };
    only_whole_keys_while(&sidekey, "a", "sk-old", "sk-new-key", writer).await;

    // A careless `echo > key`: truncated, written and closed at once.
    write_in_place(&key, "sk-echo\n");
    wait_for_key(&sidekey.url(""), "a", "sk-echo").await;
}

/// A config rewritten in place, slowly: its first part is valid TOML that
/// drops route b. Seen through file events and through the periodic
/// re-read alone (watches off).
async fn config_written_in_two_parts(watch: bool, pause: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let mock = echo::mock().await;
    let head = format!("[reload]\nwatch = {watch}\ninterval = \"200ms\"\n");
    let a = route("a", &mock.url, "env::K");
    let b = route("b", &mock.url, "env::K");
    let c = route("c", &mock.url, "env::K");
    let env = MapEnv::new([("K", "sk-env")]);
    let sidekey = start_in(dir.path(), &format!("{head}{a}{b}"), env).await;
    let first = with_ephemeral_ports(&format!("{head}{a}"));
    let rest = format!("{b}{c}");
    let writer = {
        let path = sidekey.config_path.clone();
        tokio::spawn(async move { write_in_two_parts(&path, &first, &rest, pause).await })
    };
    while !writer.is_finished() {
        let resp = get(&sidekey.url("/b/v1/models")).await;
        assert_eq!(
            resp.status,
            200,
            "the half-written config went live (watch = {watch}): {}",
            resp.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.await.unwrap();
    wait_for_key(&sidekey.url(""), "c", "sk-env").await;
    assert_eq!(key_seen(&sidekey.url(""), "b").await, "Bearer sk-env");
}

#[tokio::test]
async fn a_config_written_in_two_parts_never_goes_live_half_written() {
    config_written_in_two_parts(true, Duration::from_millis(1200)).await;
}

#[tokio::test]
async fn without_watches_a_config_written_in_two_parts_waits_until_settled() {
    config_written_in_two_parts(false, Duration::from_millis(1000)).await;
}

#[tokio::test]
async fn a_broken_config_is_reported_stale_while_keys_still_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let (mock, mut vol, sidekey) = echo::volume_route(dir.path(), "a", "sk-1\n").await;
    let good = route("a", &mock.url, &vol.location("key"));
    let admin = sidekey.admin_url("");
    assert_eq!(
        metric(&admin, "sidekey_config_stale_seconds").await,
        Some(0.0)
    );

    write_in_place(&sidekey.config_path, "[routes.a\n");
    common::eventually("the config to be reported stale", WAIT, || async {
        (metric(&admin, "sidekey_config_stale_seconds").await? > 0.0).then_some(())
    })
    .await;
    let (status, body) = readyz(&admin).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("config ("), "{body}");

    // The key still rotates under the last good config.
    let _ = vol.update(&[("key", "sk-2\n")]);
    wait_for_key(&sidekey.url(""), "a", "sk-2").await;

    write_in_place(&sidekey.config_path, &with_ephemeral_ports(&good));
    common::eventually("the config to be current again", WAIT, || async {
        (metric(&admin, "sidekey_config_stale_seconds").await? == 0.0).then_some(())
    })
    .await;
    assert_eq!(readyz(&admin).await.1, "ready\n");
}

#[tokio::test]
async fn deleting_or_emptying_the_inbound_token_file_revokes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mock = echo::mock().await;
    let token = dir.path().join("inbound");
    std::fs::write(&token, "tok-1\n").unwrap();
    let config = format!(
        "inbound_token = \"path::{}\"\n{}",
        token.display(),
        route("a", &mock.url, "env::K")
    );
    let sidekey = start_in(dir.path(), &config, MapEnv::new([("K", "sk-a")])).await;
    let call = |t: &'static str| {
        let url = sidekey.url("/a/v1/models");
        async move {
            let req = client::request(http::Method::GET, &url, &[("x-sidekey-token", t)], "");
            tokio::time::timeout(Duration::from_secs(3), client::send(req))
                .await
                .unwrap()
        }
    };
    assert_eq!(call("tok-1").await.status, 200);

    std::fs::remove_file(&token).unwrap();
    common::eventually("the deleted token to be revoked", WAIT, || async {
        let resp = call("tok-1").await;
        (resp.status == 401).then_some(resp)
    })
    .await
    .error_code()
    .eq("inbound_token_unavailable")
    .then_some(())
    .expect("the 401 names the unavailable token");

    std::fs::write(&token, "tok-2\n").unwrap();
    common::eventually("the new token to work", WAIT, || async {
        (call("tok-2").await.status == 200).then_some(())
    })
    .await;
    assert_eq!(call("tok-1").await.status, 401);

    // `: > inbound`: emptied in place.
    write_in_place(&token, "");
    common::eventually("the emptied token to be revoked", WAIT, || async {
        (call("tok-2").await.status == 401).then_some(())
    })
    .await;
}
