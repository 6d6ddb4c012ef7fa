//! The live snapshot and how it is replaced.
//!
//! design.md, "Hot reload". [`Shared`] holds the current [`Snapshot`] in an
//! `ArcSwap`: requests `load_full()` it once, lock-free, and keep it to the
//! end. [`Shared::reload`] re-reads the config and every file it names into a
//! complete new snapshot and swaps it in, or keeps the current one when the
//! new config is bad. [`watch`] decides when to reload: file events in the
//! directories that hold those files, SIGHUP, and a periodic re-read.

pub(crate) mod snapshot;
pub(crate) mod watch;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::admin::metrics::ReloadResult;
use crate::config::{Config, ConfigSource, Overrides};
use crate::env::Env;
pub(crate) use snapshot::{Registries, Snapshot};

/// State shared by the proxy, the admin server and the reloader.
#[derive(Debug)]
pub(crate) struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// Metrics, clients, key health and token caches: outlive snapshots.
    pub(crate) reg: Registries,
    pub(crate) env: Arc<dyn Env>,
    pub(crate) source: ConfigSource,
    pub(crate) overrides: Overrides,
    /// The proxy address bound at start (a reload never moves it).
    bound_listen: std::net::SocketAddr,
    /// The last reload failure, so a broken config that the periodic re-read
    /// keeps finding is logged and counted once, not every minute.
    last_error: Mutex<Option<String>>,
    /// Set once shutdown begins: `/readyz` answers 503 from then on.
    draining: AtomicBool,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Nothing changed; nothing was swapped or logged.
    Unchanged,
    /// A new snapshot serves new requests.
    Swapped,
    /// The new config or a file it names is bad; the current snapshot stays.
    Rejected(String),
}

impl Shared {
    /// State serving `snapshot`.
    pub(crate) fn new(
        snapshot: Snapshot,
        reg: Registries,
        env: Arc<dyn Env>,
        source: ConfigSource,
        overrides: Overrides,
    ) -> Self {
        Self {
            bound_listen: snapshot.config.listen,
            snapshot: ArcSwap::from_pointee(snapshot),
            reg,
            env,
            source,
            overrides,
            last_error: Mutex::new(None),
            draining: AtomicBool::new(false),
        }
    }

    /// The current snapshot. Call once per request and keep it.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Marks the process as shutting down.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The rule "a non-loopback `listen` needs `inbound_token`" checked
    /// against the socket actually bound: a reload cannot move it, so a new
    /// config that says loopback and drops the token would otherwise open
    /// the still-public socket to anyone.
    fn keeps_the_socket_safe(&self, config: Config) -> Result<Config, String> {
        let bound = self.bound_listen;
        if !crate::config::open_to_anyone(
            bound,
            config.inbound_token.is_some(),
            config.allow_unauthenticated,
        ) {
            return Ok(config);
        }
        Err(format!(
            "{}: sidekey listens on {bound} (changing `listen` needs a restart), which is not a \
             loopback address: the config must keep `inbound_token` (or say `allow_unauthenticated = true`)",
            self.source.display_name()
        ))
    }

    /// Re-reads the config and every file it names; swaps in the result if it
    /// differs from the current snapshot and is at least as good.
    ///
    /// A new snapshot is rejected when the config does not load, a route's
    /// TLS settings do not load, or a credential that reads fine now cannot be
    /// read (a half-written or deleted Secret file must not replace a working
    /// key). Each distinct failure is logged once and counted once.
    pub(crate) fn reload(&self, trigger: &str) -> Outcome {
        let started = Instant::now();
        let current = self.snapshot();
        let next = Config::load(&self.source, self.env.as_ref(), &self.overrides)
            .map_err(|e| e.to_string())
            .and_then(|config| self.keeps_the_socket_safe(config))
            .and_then(|config| {
                Snapshot::build(config, self.env.as_ref(), &self.reg)
                    .map_err(|e| format!("{}: {e}", self.source.display_name()))
            })
            .and_then(|next| match next.new_problems(&current) {
                Some(problems) => Err(problems),
                None => Ok(next),
            });
        let next = match next {
            Ok(next) => next,
            Err(reason) => {
                let mut last = self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if last.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(trigger, error = %reason, "reload rejected: still serving the previous config and keys");
                    self.reg
                        .metrics
                        .reload(ReloadResult::Error, started.elapsed());
                    *last = Some(reason.clone());
                }
                return Outcome::Rejected(reason);
            }
        };
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        if next.digest == current.digest {
            return Outcome::Unchanged;
        }

        let changes = snapshot::describe_changes(&current, &next);
        for setting in snapshot::restart_required(&current.config, &next.config) {
            tracing::warn!(
                setting,
                "changing this setting needs a restart: it keeps its previous value until sidekey restarts"
            );
        }
        for p in next
            .problems
            .iter()
            .filter(|p| !current.problems.contains(p))
        {
            tracing::warn!(problem = %p, "credential unavailable");
        }
        let in_use = next.clients();
        self.snapshot.store(Arc::new(next));
        self.reg.clients.retain(&in_use);
        self.reg.health.prune();
        self.reg.metrics.reload(ReloadResult::Ok, started.elapsed());
        tracing::info!(trigger, changes = %changes.join("; "), "reloaded");
        Outcome::Swapped
    }
}
