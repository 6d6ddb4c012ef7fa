//! The binary: `--version`, `check` (report, exit codes, no secrets), start
//! failures, and SIGTERM ending in exit 0.

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
use common::process::{command, spawn_config};
use common::write_key;

async fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = command(args, env).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn version_and_help() {
    let (code, out, _) = run(&["--version"], &[]).await;
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("sidekey {}", env!("CARGO_PKG_VERSION")));
    let (code, out, _) = run(&["--help"], &[]).await;
    assert_eq!(code, 0);
    for word in [
        "check",
        "--config",
        "SIDEKEY_CONFIG",
        "--log-format",
        "--listen",
    ] {
        assert!(out.contains(word), "help lacks {word}:\n{out}");
    }
}

#[tokio::test]
async fn check_reports_routes_with_fingerprints_only() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_key(dir.path(), "openai", "sk-check-secret-1");
    let fallback = write_key(dir.path(), "fallback", "sk-check-secret-2");
    let azure = write_key(dir.path(), "azure", "azure-check-secret");
    let config = dir.path().join("sidekey.toml");
    std::fs::write(
        &config,
        format!(
            "[routes.openai]\ntype = \"openai\"\nkey = {{ default = \"path::{key}\", fallback = \"path::{fallback}\" }}\n\
             models = [\"gpt-4o\"]\n\
             [routes.azure]\ntype = \"azure\"\n[routes.azure.deployments.gpt-4o]\n\
             endpoint = \"https://res.openai.azure.com\"\nkey = \"path::{azure}\"\n"
        ),
    )
    .unwrap();
    let (code, out, err) = run(&["check", "--config", config.to_str().unwrap()], &[]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    for expected in [
        "route /openai/ (type openai)",
        "upstream  https://api.openai.com",
        "auth      Authorization: Bearer",
        "key (default)",
        "key (fallback)",
        "models    gpt-4o",
        "deployment gpt-4o -> https://res.openai.azure.com",
        &sidekey::Secret::new(b"sk-check-secret-1".to_vec())
            .unwrap()
            .fingerprint()
            .to_string(),
        "ok: 2 routes",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(
        !out.contains("secret") && !err.contains("secret"),
        "a secret was printed:\n{out}\n{err}"
    );

    // A missing credential: exit 69, naming the location.
    std::fs::remove_file(&fallback).unwrap();
    let (code, out, err) = run(&["check", "--config", config.to_str().unwrap()], &[]).await;
    assert_eq!(code, 69, "{out}\n{err}");
    assert!(
        err.contains("routes.openai.key") && err.contains("fallback: no such file"),
        "{err}"
    );
    assert!(out.contains("MISSING"), "{out}");
    assert!(!out.contains("check-secret") && !err.contains("check-secret"));
}

#[tokio::test]
async fn check_rejects_bad_configs_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidekey.toml");
    std::fs::write(
        &config,
        "[routes.x]\ntype = \"openai\"\nkey = \"sk-pasted-by-mistake\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&["check", "--config", config.to_str().unwrap()], &[]).await;
    assert_eq!(code, 64);
    assert!(
        err.contains("sidekey.toml:3:7: routes.x.key: credential location"),
        "{err}"
    );
    assert!(!err.contains("sk-pasted"), "{err}");

    let (code, _, err) = run(&["check", "--config", "/nonexistent/sidekey.toml"], &[]).await;
    assert_eq!(code, 64);
    assert!(
        err.contains("/nonexistent/sidekey.toml: cannot read config"),
        "{err}"
    );

    // Starting the proxy with the same config fails the same way.
    let (code, _, err) = run(&["--config", config.to_str().unwrap()], &[]).await;
    assert_eq!(code, 64);
    assert!(err.contains("routes.x.key"), "{err}");
}

#[tokio::test]
async fn builtin_config_check_uses_the_environment() {
    let (code, out, err) = run(&["check"], &[("OPENAI_API_KEY", "sk-env-secret")]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("config: <built-in config>"));
    assert!(out.contains("route /groq/ (type groq)"));
    assert!(out.contains("upstream  https://api.groq.com/openai"));
    assert!(
        out.contains("env::GROQ_API_KEY MISSING: environment variable is not set"),
        "{out}"
    );
    let fp = sidekey::Secret::new(b"sk-env-secret".to_vec())
        .unwrap()
        .fingerprint()
        .to_string();
    assert!(out.contains(&format!("env::OPENAI_API_KEY {fp}")), "{out}");
    assert!(!out.contains("sk-env-secret"));
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |_| Reply::ok()).await;
    let config = dir.path().join("sidekey.toml");
    std::fs::write(
        &config,
        format!(
            "[routes.llm]\ntype = \"vllm\"\nupstream = \"{}\"\n",
            mock.url
        ),
    )
    .unwrap();
    // One worker thread: the single-threaded runtime a sidecar runs.
    let proc = spawn_config(&config, &["--worker-threads", "1"], &[]).await;
    assert_eq!(client::get(&proc.url("/llm/v1/models")).await.status, 200);
    let (status, stderr) = proc.terminate().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    assert!(stderr.contains("sidekey stopped"), "{stderr}");
}

/// A key pasted where a setting belongs: what a person does by mistake.
const PASTED: &str = "sk-proj-PASTEDKEY0123456789abcdefghijklmnopqrstuv";

/// Issue 21, finding 9: a config error names the file, line and key of a
/// setting that holds a pasted key, and says how long the value is, never
/// what it is: in `sidekey check` and in the log of a rejected reload.
#[tokio::test]
async fn config_errors_show_where_a_pasted_key_is_but_not_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidekey.toml");
    let route = "[routes.x]\ntype = \"openai\"\nkey = \"env::K\"\n";
    let cases = [
        (
            format!("listen = \"{PASTED}\"\n{route}"),
            "sidekey.toml:1:10: listen: ",
        ),
        (
            format!("admin_listen = \"{PASTED}\"\n{route}"),
            "sidekey.toml:1:16: admin_listen: ",
        ),
        (
            format!("[limits]\nconnect_timeout = \"{PASTED}\"\n{route}"),
            "sidekey.toml:2:19: limits.connect_timeout: ",
        ),
        (
            format!("[limits]\nrequest_timeout = \"5{PASTED}\"\n{route}"),
            "sidekey.toml:2:19: limits.request_timeout: ",
        ),
        (
            format!("[limits]\nmax_replay_body = \"1{PASTED}\"\n{route}"),
            "sidekey.toml:2:19: limits.max_replay_body: ",
        ),
        (
            format!("[routes.x]\ntype = \"{PASTED}\"\n"),
            "sidekey.toml:2:8: routes.x.type: unknown provider type: ",
        ),
        (
            format!("[routes.x]\ntype = \"openai\"\nupstream = \"{PASTED}\"\n"),
            "sidekey.toml:3:12: routes.x.upstream: ",
        ),
        (
            format!("allowed_origins = [\"http://ok.example\", \"{PASTED}\"]\n{route}"),
            "sidekey.toml:1:19: allowed_origins: entry 2, ",
        ),
        (
            format!("allowed_hosts = [\"{PASTED}/x\"]\n{route}"),
            "sidekey.toml:1:17: allowed_hosts: entry 1, ",
        ),
        (
            format!("[routes.x]\ntype = \"openai\"\nkey = \"env::K\"\nmodels = \"{PASTED}\"\n"),
            "sidekey.toml:4:10: ",
        ),
    ];
    for (toml, expected) in &cases {
        std::fs::write(&config, toml).unwrap();
        let (code, out, err) = run(&["check", "--config", config.to_str().unwrap()], &[]).await;
        assert_eq!(code, 64, "{toml}\n{out}\n{err}");
        assert!(
            err.contains(expected),
            "expected {expected:?} for\n{toml}in:\n{err}"
        );
        assert!(
            !out.contains("PASTEDKEY") && !err.contains("PASTEDKEY"),
            "the pasted key was printed for\n{toml}:\n{out}\n{err}"
        );
    }
    // The length is what it may say.
    std::fs::write(&config, &cases[0].0).unwrap();
    let (_, _, err) = run(&["check", "--config", config.to_str().unwrap()], &[]).await;
    assert!(
        err.contains("listen: a 49-character value (not shown) is not an address"),
        "{err}"
    );

    // The running proxy rejects the same mistake on reload, and its log
    // names the key and line without the value.
    let mock = Mock::start(Transport::Plain, |_| Reply::ok()).await;
    let good = format!(
        "[routes.x]\ntype = \"openai\"\nupstream = \"{}\"\nkey = \"env::K\"\n",
        mock.url
    );
    std::fs::write(&config, &good).unwrap();
    let proc = spawn_config(&config, &[], &[("K", "sk-running")]).await;
    std::fs::write(
        &config,
        format!("[limits]\nconnect_timeout = \"{PASTED}\"\n{good}"),
    )
    .unwrap();
    proc.signal("-HUP").await;
    common::eventually(
        "the reload to be rejected",
        std::time::Duration::from_secs(10),
        || async {
            proc.stderr()
                .contains("limits.connect_timeout")
                .then_some(())
        },
    )
    .await;
    let (status, logs) = proc.terminate().await;
    assert_eq!(status.code(), Some(0));
    assert!(logs.contains("reload rejected a change"), "{logs}");
    assert!(logs.contains("sidekey.toml:2:19"), "{logs}");
    assert!(
        !logs.contains("PASTEDKEY"),
        "the pasted key was logged:\n{logs}"
    );
}
