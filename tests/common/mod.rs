//! Shared helpers for the integration tests: real sockets on 127.0.0.1, real
//! TLS with certificates generated per test, sidekey started in-process.
//!
//! - [`tls`]: a throwaway CA and a server certificate for 127.0.0.1/localhost.
//! - [`mock`]: a mock provider that records every request and plays scripted answers.
//! - [`sidekey`]: start sidekey in-process from TOML text.
//! - [`client`]: a plain HTTP client for talking to sidekey.
//! - [`echo`]: a provider that echoes the key it got, and reload probes.
//! - [`kubelet`]: files written as the kubelet, editors and people write them.
//! - [`process`]: the sidekey binary as a child process.
//! - [`aws`]: Bedrock/SageMaker, STS, container-credential and IMDS mocks, and
//!   botocore (`tests/aws/verify_sigv4.py`) verifying what sidekey signed.
//! - [`entra`]: Microsoft Entra ID's token endpoint, Azure IMDS and an Azure
//!   OpenAI that accepts only live tokens they issued (keyless Azure).
//! - [`ws`]: a mock WebSocket provider and a WebSocket client.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers fail loudly"
)]
#![allow(unreachable_pub, missing_docs, reason = "test helpers")]

pub mod aws;
pub mod client;
pub mod echo;
pub mod entra;
pub mod google;
pub mod kubelet;
pub mod mock;
pub mod process;
pub mod sidekey;
pub mod tls;
pub mod ws;

use std::future::Future;
use std::time::Duration;

/// The Python that has the official SDKs (tests/sdk/requirements.txt):
/// `SIDEKEY_PYTHON`, else the `.venv` that `scripts/test` fills.
pub fn python() -> std::path::PathBuf {
    let venv = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    #[allow(
        clippy::disallowed_methods,
        reason = "the test harness is told where the SDKs are"
    )]
    let python = std::env::var_os("SIDEKEY_PYTHON").map_or(venv, std::path::PathBuf::from);
    assert!(
        python.exists(),
        "{} not found: run scripts/test (it installs tests/sdk/requirements.txt into .venv) \
         or set SIDEKEY_PYTHON",
        python.display()
    );
    python
}

/// Runs a test script (an SDK client, an oracle), feeding it `stdin` when
/// given, bounded at 120 s; panics unless it exits 0; returns its stdout.
/// `what` names it in failures.
pub async fn run_script(
    mut cmd: tokio::process::Command,
    stdin: Option<&[u8]>,
    what: &str,
) -> String {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt as _;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(bytes).await.unwrap();
    }
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 120 s"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// [`run_script`] for a script that prints one JSON value per line.
pub async fn run_json(cmd: tokio::process::Command, what: &str) -> Vec<serde_json::Value> {
    run_script(cmd, None, what)
        .await
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {l}")))
        .collect()
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `limit`
/// with `what`. Every wait in the tests is bounded by one of these.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `value` plus a newline (as Secret files have) to `dir/name`;
/// returns the path as a string for a `path::` location.
pub fn write_key(dir: &std::path::Path, name: &str, value: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path.display().to_string()
}

/// The path of the sidekey binary built for these tests.
pub fn sidekey_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sidekey")
}
