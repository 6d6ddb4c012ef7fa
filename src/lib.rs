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
//! upstream → response. Modules import only the layers below them (no
//! cycles; a test-free `crate::` scan keeps it so):
//!
//! ```text
//!  server  admin  check  cli        the binary's pieces, the admin port
//!     proxy                         the request path: one attempt loop
//!     reload                        snapshots, watcher, reload thread, stability rule
//!     config                        sidekey.toml -> validated Config
//!     routes                        route table, targets
//!     providers                     provider table, injection, classification
//!     error  headers                ProxyError envelope; special header names
//!     credentials                   locations, key sets, choosing keys
//!     tokens                        minted credentials: cache, refresh, sources
//!     upstream                      our HTTP client (rustls/ring)
//!     timer                         the timers a connection lends
//!  body  url  files  secret  env  metrics  tls_listener  lend
//!                                   leaves: import nothing of sidekey
//! ```
//!
//! - `server`: listeners (the proxy port and the optional TLS listener,
//!   serving the same service), HTTP/1.1 + h2c, graceful drain, the
//!   connection limit and the deadline on a connection's first bytes.
//! - `proxy`: the request path as named steps (inbound checks, strip,
//!   allowlist, the attempt loop, response body with access log), in one
//!   `request` span per request; `proxy::origin` refuses web pages
//!   (`Origin`) and rebound host names, `proxy::websocket` takes a
//!   WebSocket handshake upstream and copies the bytes both ways after `101`.
//! - `reload`: the immutable snapshot behind an `ArcSwap`; the watcher and
//!   the reload thread; the stability rule for files being written; last
//!   good values for credentials that cannot be read.
//! - `config`: `sidekey.toml` → validated config, with file:line errors.
//! - `routes`: first path segment → route; path and query → upstream URI.
//! - `providers`: the provider table (one row per type), per-family
//!   injection and SigV4 signing, and what an answer says about the key.
//! - `error`: sidekey's own errors and the one envelope builder.
//! - `headers`: names of the headers sidekey treats specially (credentials,
//!   hop-by-hop, managed), shared by `proxy` and `config`.
//! - `credentials`: locations (`env::`, `path::`, ...), reading them, key
//!   health, and the order a request tries keys in.
//! - `tokens`: credentials minted from an identity (a `Mint` source: the
//!   Google service-account grant, the GKE metadata server, federation and
//!   user credentials; Entra ID; the AWS chain), cached and refreshed in
//!   the background, provider-agnostic.
//! - `upstream`: the rustls client (ring, webpki roots + `ca_file`).
//! - `timer`: the timers a connection lends each request (hyper's
//!   header-read timer, the wait for a response head, the read of a body
//!   kept whole), each in a `lend` slot.
//! - Leaves: `tls_listener` (the TLS listener's rustls server config from a
//!   PEM chain and key, built with each snapshot), `body` (request bodies
//!   shared by `proxy` and `upstream`), `url`
//!   (upstream base URLs), `files` (bounded reads: regular files only, size
//!   caps, never blocking on a FIFO), [`Secret`] (redacts and wipes), `env`
//!   (environment lookup passed in; tests use a map, not `set_var`),
//!   `metrics` (lock-free counters and the Prometheus text), `lend` (a
//!   value a connection lends each of its requests in turn: a timer, room
//!   for the headers a retry needs).
//! - [`check`], [`cli`], [`shutdown`], [`telemetry`], [`hardening`] (core
//!   dumps off at start): the binary's pieces.
//!
//! The request path loads one snapshot per request, takes no shared lock,
//! formats no static credential (header values are prepared when a snapshot
//! is built) and buffers no response. It keeps a copy of the request's
//! headers only when a retry is possible (a fallback, a pool or Vertex), in
//! room the connection lends, and a kept body sits behind an uncontended
//! per-request mutex; a connection's timers and that room behind uncontended
//! per-connection ones.

mod admin;
mod body;
pub mod check;
pub mod cli;
mod config;
mod credentials;
pub mod env;
mod error;
mod files;
pub mod hardening;
mod headers;
mod lend;
mod metrics;
mod providers;
mod proxy;
mod reload;
mod routes;
mod secret;
mod server;
pub mod shutdown;
pub mod telemetry;
mod timer;
mod tls_listener;
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
    #[error("{config}: {source}")]
    Tls {
        /// The config it comes from.
        config: String,
        /// What is wrong with it.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
            Self::Config(_) | Self::Tls { .. } => check::EXIT_CONFIG,
            Self::Bind { .. } => 1,
        }
    }
}

/// A loaded, bound sidekey, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    proxy: TcpListener,
    admin: TcpListener,
    /// The optional TLS listener (`tls_listen`).
    tls: Option<TcpListener>,
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
        let snap = Snapshot::build(config, &inputs).map_err(|e| StartError::Tls {
            config: options.config.display_name(),
            source: Box::new(e),
        })?;
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
        let tls = match snap.config.tls.as_ref().map(|t| t.addr) {
            Some(addr) => Some(bind(addr, "tls_listen").await?),
            None => None,
        };
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
            tls,
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

    /// The bound TLS listener address, when `tls_listen` is set.
    ///
    /// # Errors
    ///
    /// When the OS cannot report the address.
    pub fn tls_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.tls.as_ref().map(TcpListener::local_addr).transpose()
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
            tls,
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
                tls_listen = %tls.as_ref().map_or_else(|| "-".to_owned(), bound),
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
        server::serve_proxy(proxy, tls, shared, shutdown).await;
        let _ = stop_reload.send(());
        let _ = stop_admin.send(());
        let _ = tokio::join!(reload_task, admin_task);
        tracing::info!("sidekey stopped");
    }
}
