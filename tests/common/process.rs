//! sidekey as a real process: the binary, its flags, its signals, its stderr.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Proc {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

/// A command for the sidekey binary with a clean environment (only `PATH`
/// and what the test passes), so the machine's variables cannot leak in.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(super::sidekey_bin());
    cmd.args(args).env_clear();
    #[allow(
        clippy::disallowed_methods,
        reason = "the child needs the machine's PATH (for nothing else)"
    )]
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Starts sidekey on `config` with both ports on an ephemeral loopback
/// port, plus `extra` flags (see [`spawn`]).
pub async fn spawn_config(config: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let config = config.to_str().unwrap();
    let mut args = vec![
        "--config",
        config,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    spawn(&args, env).await
}

/// Starts sidekey with `--log-format json` plus `args`, waits (bounded) for
/// its "serving" line and reads the bound addresses from it.
pub async fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut all = vec!["--log-format", "json"];
    all.extend_from_slice(args);
    let mut child = command(&all, env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = stderr.clone();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("sidekey is serving")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(line.clone());
            }
            sink.lock().unwrap().push(line);
        }
    });
    let Ok(Ok(serving)) = tokio::time::timeout(Duration::from_secs(20), rx).await else {
        panic!(
            "sidekey did not start; stderr:\n{}",
            stderr.lock().unwrap().join("\n")
        );
    };
    let v: serde_json::Value = serde_json::from_str(&serving).unwrap();
    let addr = |k: &str| v[k].as_str().unwrap().parse().unwrap();
    Proc {
        listen: addr("listen"),
        admin: addr("admin"),
        child,
        stderr,
    }
}

impl Proc {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Sends `signal` (`-HUP`, `-TERM`, ...) with kill(1).
    pub async fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits (bounded) for the process to exit by itself (after a signal the
    /// test sent); returns the status and everything it wrote to stderr.
    pub async fn exited(mut self, within: Duration) -> (ExitStatus, String) {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("sidekey did not exit within {within:?}"))
            .unwrap();
        // Let the reader task drain the pipe.
        tokio::time::sleep(Duration::from_millis(100)).await;
        (status, self.stderr())
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns the status and
    /// everything the process wrote to stderr.
    pub async fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().unwrap().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("sidekey did not exit within 30 s of SIGTERM")
            .unwrap();
        // Let the reader task drain the pipe.
        tokio::time::sleep(Duration::from_millis(100)).await;
        (status, self.stderr())
    }
}
