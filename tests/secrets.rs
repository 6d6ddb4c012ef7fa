//! No credential value appears in logs (at `trace` level, all crates),
//! error bodies, or `sidekey check` output. Fingerprints do.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

mod common;

use bytes::Bytes;
use common::client::{self, request};
use common::mock::{Mock, Reply, Transport};
use common::process::{command, spawn_config};
use common::tls::TestPki;
use common::write_key;
use http::Method;
use sidekey::Secret;

const FILE_KEY: &str = "sk-file-SECRET-aaaaaaaaaaaa";
const FALLBACK_KEY: &str = "sk-fallback-SECRET-bbbbbbbb";
const DYNAMIC_KEY: &str = "sk-dynamic-SECRET-cccccccc";
const ENV_KEY: &str = "sk-env-SECRET-dddddddddddd";
const SECRETS: [&str; 4] = [FILE_KEY, FALLBACK_KEY, DYNAMIC_KEY, ENV_KEY];

fn assert_clean(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} contains a secret ({s}):\n{text}");
    }
    assert!(
        !text.contains("SECRET"),
        "{what} contains part of a secret:\n{text}"
    );
}

#[tokio::test]
async fn no_secret_in_trace_logs_error_bodies_or_check_output() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let mock = Mock::start(Transport::Tls(&pki), |r| {
        if r.uri.path().ends_with("/stream") {
            Reply::sse(
                vec!["data: 1\n\n".into(), "data: 2\n\n".into()],
                std::time::Duration::from_millis(10),
            )
        } else {
            Reply::ok()
        }
    })
    .await;
    let key = write_key(dir.path(), "key", FILE_KEY);
    let fallback = write_key(dir.path(), "fallback", FALLBACK_KEY);
    let config = dir.path().join("sidekey.toml");
    std::fs::write(
        &config,
        format!(
            "ca_file = \"{ca}\"\n\
             [routes.file]\ntype = \"openai\"\nupstream = \"{url}\"\nkey = \"path::{key}\"\nmodels = [\"ok\"]\n\
             [routes.fb]\ntype = \"anthropic\"\nupstream = \"{url}\"\n\
             key = {{ default = \"path::{missing}\", fallback = \"path::{fallback}\" }}\n\
             [routes.dyn]\ntype = \"gemini\"\nupstream = \"{url}\"\nkey = \"dynamic::t\"\n\
             [routes.env]\ntype = \"openai\"\nupstream = \"{url}\"\nkey = \"env::ENV_KEY\"\n",
            ca = pki.ca_file.display(),
            url = mock.url,
            missing = dir.path().join("missing").display(),
        ),
    )
    .unwrap();
    let env = [("SIDEKEY_LOG", "trace"), ("ENV_KEY", ENV_KEY)];
    let proc = spawn_config(&config, &[], &env).await;

    let mut bodies = String::new();
    for (path, headers, body) in [
        ("/file/v1/chat/completions", vec![], r#"{"model":"ok"}"#),
        ("/file/v1/chat/completions", vec![], r#"{"model":"denied"}"#),
        ("/file/stream", vec![], ""),
        ("/fb/v1/messages", vec![], "{}"),
        (
            "/dyn/v1beta/models/m:generateContent?key=client",
            vec![("x-sidekey-credential-t", DYNAMIC_KEY)],
            "{}",
        ),
        ("/dyn/v1beta/models/m:generateContent", vec![], "{}"),
        ("/env/v1/models", vec![], ""),
        ("/unknown/x", vec![], ""),
    ] {
        let mut h = vec![
            ("authorization", "Bearer client-dummy"),
            ("content-type", "application/json"),
        ];
        h.extend(headers);
        let resp = client::send(request(
            Method::POST,
            &proc.url(path),
            &h,
            Bytes::from(body),
        ))
        .await;
        bodies.push_str(&resp.text());
    }
    assert_clean("error and response bodies", &bodies);
    // The provider did get the keys: the test would be vacuous otherwise.
    let seen: Vec<_> = mock
        .requests()
        .iter()
        .map(|r| format!("{:?}", r.headers))
        .collect();
    for s in SECRETS {
        assert!(
            seen.iter().any(|h| h.contains(s)),
            "{s} never reached the provider"
        );
    }

    let (status, logs) = proc.terminate().await;
    assert_eq!(status.code(), Some(0));
    assert!(
        logs.lines().count() > 20,
        "expected trace output, got:\n{logs}"
    );
    assert!(logs.contains("TRACE"), "not at trace level:\n{logs}");
    assert_clean("trace logs", &logs);
    let fingerprint = Secret::new(FILE_KEY.as_bytes().to_vec())
        .unwrap()
        .fingerprint()
        .to_string();
    assert!(
        logs.contains(&fingerprint),
        "access log lacks the fingerprint {fingerprint}"
    );

    let config = config.to_str().unwrap();
    let out = command(&["check", "--config", config], &[("ENV_KEY", ENV_KEY)])
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&fingerprint), "{text}");
    assert_clean("sidekey check output", &text);
}

/// Issue 21, finding 7: the running binary cannot leave its keys in a core
/// dump. `RLIMIT_CORE` is 0, soft and hard, as `/proc/<pid>/limits` shows;
/// and the process is not dumpable, which the kernel shows by giving its
/// `/proc/<pid>` files to root. To see that, sidekey must not run as root:
/// a root test runs it as `nobody` (it needs no file: the built-in config).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_binary_turns_core_dumps_off_and_is_not_dumpable() {
    use std::os::unix::fs::MetadataExt as _;
    use tokio::io::AsyncBufReadExt as _;

    let me = std::fs::metadata("/proc/self").unwrap().uid();
    let mut cmd = command(
        &[
            "--log-format",
            "json",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    if me == 0 {
        cmd.uid(65534).gid(65534);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let serving = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("sidekey is serving") {
                return;
            }
        }
        panic!("sidekey exited before serving");
    })
    .await;
    assert!(serving.is_ok(), "sidekey did not start");

    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core: Vec<&str> = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max core file size"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(core.get(..2), Some(&["0", "0"][..]), "{limits}");

    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|u| u.split_whitespace().next())
        .unwrap();
    assert_ne!(uid, "0", "sidekey runs as root: dumpability is not visible");
    let owner = std::fs::metadata(format!("/proc/{pid}/status"))
        .unwrap()
        .uid();
    assert_eq!(
        owner, 0,
        "/proc/{pid} belongs to uid {uid}: the process is dumpable"
    );
    child.kill().await.unwrap();
}
