//! sidekey in-process: write a config file, start the server on ephemeral
//! ports, stop it with a future (the same path SIGTERM takes).
//!
//! A panic in the server task fails the test: [`Running::stop`] and the
//! handle of [`Running::begin_shutdown`] return it, and dropping a
//! [`Running`] whose server task ended in a panic re-raises it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use sidekey::{ConfigSource, MapEnv, Options, Server};
use tokio::sync::oneshot;

pub struct Running {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The TLS listener, when `tls_listen` is set.
    pub tls: Option<SocketAddr>,
    pub config_path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// `http://127.0.0.1:PORT{path}` on the proxy port.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://127.0.0.1:PORT{path}` on the admin port.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Triggers shutdown and returns the task that finishes when draining is done.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("already stopped")
    }

    /// Shuts down and waits for the drain to finish.
    pub async fn stop(mut self) {
        self.begin_shutdown().await.unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(task) = &mut self.task else { return };
        if !task.is_finished() {
            task.abort();
            return;
        }
        // Finished before it was told to stop: collect how (the result is
        // ready, so one poll gets it). Not while the test already panics,
        // which would abort the process and hide the first failure.
        let ended = Pin::new(task).poll(&mut Context::from_waker(Waker::noop()));
        if let Poll::Ready(Err(e)) = ended
            && e.is_panic()
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// Adds `listen` and `admin_listen` on ephemeral loopback ports to `toml`
/// unless it sets them.
pub fn with_ephemeral_ports(toml: &str) -> String {
    let mut head = String::new();
    if !toml.contains("listen =") && !toml.starts_with("listen") {
        head.push_str("listen = \"127.0.0.1:0\"\n");
    }
    if !toml.contains("admin_listen") {
        head.push_str("admin_listen = \"127.0.0.1:0\"\n");
    }
    head + toml
}

/// Starts sidekey with `toml` (written to `dir/sidekey.toml`) and `env`.
pub async fn start_in(dir: &Path, toml: &str, env: MapEnv) -> Running {
    let config_path = dir.join("sidekey.toml");
    std::fs::write(&config_path, with_ephemeral_ports(toml)).unwrap();
    start_file(&config_path, env).await
}

/// Starts sidekey from an existing config file.
pub async fn start_file(config_path: &Path, env: MapEnv) -> Running {
    let server = Server::start(Options {
        config: ConfigSource::File(config_path.to_path_buf()),
        env: Arc::new(env),
        overrides: sidekey::Overrides::default(),
    })
    .await
    .unwrap_or_else(|e| panic!("sidekey did not start: {e}"));
    let addr = server.proxy_addr().unwrap();
    let admin = server.admin_addr().unwrap();
    let tls = server.tls_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        tls,
        admin,
        config_path: config_path.to_path_buf(),
        stop: Some(stop),
        task: Some(task),
    }
}
