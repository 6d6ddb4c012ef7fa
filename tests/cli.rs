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
use common::process::{command, spawn};
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
    let proc = spawn(
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--worker-threads",
            "1",
        ],
        &[],
    )
    .await;
    assert_eq!(client::get(&proc.url("/llm/v1/models")).await.status, 200);
    let (status, stderr) = proc.terminate().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    assert!(stderr.contains("sidekey stopped"), "{stderr}");
}
