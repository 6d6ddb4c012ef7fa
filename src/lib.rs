//! sidekey: a credential-injecting reverse proxy for LLM provider APIs,
//! built to run as a sidecar beside an application in a Kubernetes pod.
//!
//! An app sends plain HTTP to `127.0.0.1:8787/<route>/...` with a dummy key;
//! sidekey removes whatever credential it sent, adds the real one, forwards
//! over TLS and streams the answer back. The contract is `shared/design.md`;
//! the README documents it for users.
//!
//! # Layout
//!
//! A request flows listener → routes → credentials → provider auth →
//! upstream → response:
//!
//! - [`server`](crate::server): listeners, HTTP/1.1 + h2c, graceful drain.
//! - `proxy`: the request path as named steps (inbound checks, strip,
//!   allowlist, forward, response body with access log).
//! - `routes`: first path segment → route; path and query → upstream URI.
//! - `credentials`: locations (`env::`, `path::`, ...), the [`Secret`] type,
//!   reading, and choosing a key per request.
//! - `providers`: the provider table and per-family injection (one row per type).
//! - `upstream`: the pooled rustls client (ring, webpki roots + `ca_file`).
//! - `config`: `sidekey.toml` → validated config, with file:line errors.
//! - `reload`: the immutable snapshot behind an `ArcSwap`; the watcher and
//!   the reload thread; the stability rule for files being written; last
//!   good values for credentials that cannot be read.
//! - `tokens`: Vertex OAuth2 access tokens (JWT grant, metadata server),
//!   cached and refreshed in the background.
//! - `env`: environment lookup passed in (tests use a map, not `set_var`).
//! - `files`: bounded reads of configured files (regular files only,
//!   size caps, never blocking on a FIFO).
//! - `headers`: names of the headers sidekey treats specially (credentials,
//!   hop-by-hop, managed), shared by `proxy` and `config`.
//! - `admin`: `/healthz`, `/readyz`, `/metrics`.
//! - `error`: sidekey's own errors and the one envelope builder.
//! - [`check`], [`cli`], [`shutdown`], [`telemetry`]: the binary's pieces.
//!
//! The request path loads one snapshot per request, takes no shared lock,
//! formats no static credential (header values are prepared when a snapshot
//! is built) and buffers no response. It copies the header map only when a
//! retry is possible (a fallback, a pool or Vertex), and a kept body sits
//! behind an uncontended per-request mutex.

mod admin;
mod body;
pub mod check;
pub mod cli;
mod config;
mod credentials;
pub mod env;
mod error;
mod files;
mod headers;
mod metrics;
mod providers;
mod proxy;
mod reload;
mod routes;
mod secret;
mod server;
pub mod shutdown;
pub mod telemetry;
mod tokens;
mod upstream;
mod url;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use config::{ConfigError, ConfigSource, Overrides};
pub use env::{Env, MapEnv, ProcessEnv};
pub use files::FileError;
pub use secret::{Fingerprint, Secret};

use config::Config;
use metrics::ReloadResult;
use reload::{Registries, Shared, Snapshot};

/// How to start sidekey.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the config comes from.
    pub config: ConfigSource,
    /// The environment credential locations read from.
    pub env: Arc<dyn Env>,
    /// Command-line settings that win over the config file.
    pub overrides: Overrides,
}

/// Why sidekey could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A TLS setting of a route cannot be loaded.
    #[error("{0}")]
    Tls(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `listen` or `admin_listen`.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

impl StartError {
    /// The exit status `main` uses for this error.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::Tls(_) => check::EXIT_CONFIG,
            Self::Bind { .. } => 1,
        }
    }
}

/// A loaded, bound sidekey, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    proxy: TcpListener,
    admin: TcpListener,
    shared: Arc<Shared>,
    /// Already watching: a change made once `start` has returned is seen.
    reloader: reload::watch::Reloader,
}

impl Server {
    /// Loads the config, reads the credentials and binds both listeners.
    /// Missing credentials are logged, not fatal: their routes answer 503
    /// and `/readyz` reports them until a reload finds them.
    ///
    /// # Errors
    ///
    /// [`StartError`] for an invalid config or an address that cannot be bound.
    pub async fn start(options: Options) -> Result<Self, StartError> {
        let started = tokio::time::Instant::now();
        let journal = Arc::new(reload::gate::Journal::default());
        let gate = reload::gate::Gate::new(&journal, reload::Trigger::Startup, Duration::ZERO);
        let config = Config::load(
            &options.config,
            options.env.as_ref(),
            &gate,
            &options.overrides,
        )?;
        let reg = Registries::online();
        let inputs = reload::Inputs {
            env: options.env.as_ref(),
            files: &gate,
            reg: &reg,
            prev: None,
        };
        let snap = Snapshot::build(config, &inputs)
            .map_err(|e| StartError::Tls(format!("{}: {e}", options.config.display_name())))?;
        journal.commit(gate.finish().0);
        reg.metrics.reload(ReloadResult::Ok, started.elapsed());
        for p in &snap.problems {
            tracing::warn!(problem = %p, "credential unavailable");
        }
        let bind = |addr: SocketAddr, what| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, what, source })
        };
        let proxy = bind(snap.config.listen, "listen").await?;
        let admin = bind(snap.config.admin_listen, "admin_listen").await?;
        let shared = Arc::new(Shared::new(
            snap,
            reg,
            options.env,
            options.config,
            options.overrides,
            journal,
        ));
        let reloader = reload::watch::Reloader::new(shared.clone());
        Ok(Self {
            proxy,
            admin,
            shared,
            reloader,
        })
    }

    /// The bound proxy address (useful with port 0).
    ///
    /// # Errors
    ///
    /// When the OS cannot report the address.
    pub fn proxy_addr(&self) -> std::io::Result<SocketAddr> {
        self.proxy.local_addr()
    }

    /// The bound admin address.
    ///
    /// # Errors
    ///
    /// When the OS cannot report the address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains requests in flight (up
    /// to `shutdown.grace_period`) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            proxy,
            admin,
            shared,
            reloader,
        } = self;
        {
            let snap = shared.snapshot();
            let bound = |l: &TcpListener| {
                l.local_addr()
                    .map_or_else(|e| e.to_string(), |a| a.to_string())
            };
            tracing::info!(
                listen = %bound(&proxy),
                admin = %bound(&admin),
                routes = %snap.routes.names(),
                config = %shared.source.display_name(),
                version = env!("CARGO_PKG_VERSION"),
                "sidekey is serving"
            );
        }
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_task = tokio::spawn(admin::serve(admin, shared.clone(), async move {
            let _ = admin_stopped.await;
        }));
        let (stop_reload, reload_stopped) = tokio::sync::oneshot::channel::<()>();
        let reload_task = tokio::spawn(reloader.run(async move {
            let _ = reload_stopped.await;
        }));
        server::serve_proxy(proxy, shared, shutdown).await;
        let _ = stop_reload.send(());
        let _ = stop_admin.send(());
        let _ = tokio::join!(reload_task, admin_task);
        tracing::info!("sidekey stopped");
    }
}
