//! The live snapshot and how it is replaced.
//!
//! design.md, "Hot reload". [`Shared`] holds the current [`Snapshot`] in an
//! `ArcSwap`: requests `load_full()` it once, lock-free, and keep it to the
//! end. [`Shared::reload`] re-reads the config and every file it names into a
//! complete new snapshot and swaps it in: a bad config keeps the last good
//! config, a credential that cannot be read keeps its last good value, and
//! the rest of the change applies. [`gate`] decides whether a file's new
//! content is complete; [`diff`] says what changed; [`watch`] decides when
//! to reload (file events, SIGHUP, a periodic re-read) and runs reloads on a
//! thread of their own, so a slow file system never stalls a request.

mod build;
pub(crate) mod diff;
pub(crate) mod gate;
mod registries;
mod rejection;
pub(crate) mod snapshot;
pub(crate) mod watch;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::config::{Config, ConfigError, ConfigSource, Overrides};
use crate::env::Env;
use crate::files::{FileError, Files};
use crate::metrics::ReloadResult;
pub(crate) use build::Inputs;
use gate::{Gate, Journal};
pub(crate) use registries::Registries;
pub(crate) use rejection::{OpenSocket, Rejection};
pub(crate) use snapshot::Snapshot;

/// What started a reload (logged as `trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The first load: everything found is applied.
    Startup,
    /// A file event in a watched directory.
    FileChange,
    /// SIGHUP: the operator says the files are ready.
    Sighup,
    /// `reload.interval` passed.
    Periodic,
}

impl Trigger {
    /// How logs name it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Startup => "start-up",
            Self::FileChange => "file change",
            Self::Sighup => "SIGHUP",
            Self::Periodic => "periodic re-read",
        }
    }
}

/// The config on disk that is not the one served.
#[derive(Debug, Clone)]
pub(crate) struct ConfigStale {
    pub(crate) since: Instant,
    pub(crate) reason: String,
}

/// State shared by the proxy, the admin server and the reloader.
#[derive(Debug)]
pub(crate) struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// Metrics, clients, key health and token caches: outlive snapshots.
    pub(crate) reg: Registries,
    pub(crate) env: Arc<dyn Env>,
    pub(crate) source: ConfigSource,
    pub(crate) overrides: Overrides,
    /// What the kernel said about writes to watched files, and what each
    /// file's served content was read from (the stability rule).
    pub(crate) journal: Arc<Journal>,
    /// The proxy address bound at start (a reload never moves it).
    bound_listen: std::net::SocketAddr,
    /// Set while the config on disk cannot be applied.
    config_stale: Mutex<Option<ConfigStale>>,
    /// The rejections of the last reload, so a periodic re-read that finds
    /// the same ones again logs and counts nothing new.
    last_rejections: Mutex<Vec<String>>,
    /// Set once shutdown begins: `/readyz` answers 503 from then on.
    draining: AtomicBool,
}

/// What a reload did.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// A new snapshot serves new requests.
    pub(crate) swapped: bool,
    /// What could not be applied (the config, credentials keeping their
    /// last good value); locations only.
    pub(crate) rejected: Vec<Rejection>,
    /// Content held because it is being written: reload again within this.
    pub(crate) recheck: Option<Duration>,
}

impl Shared {
    /// State serving `snapshot`.
    pub(crate) fn new(
        snapshot: Snapshot,
        reg: Registries,
        env: Arc<dyn Env>,
        source: ConfigSource,
        overrides: Overrides,
        journal: Arc<Journal>,
    ) -> Self {
        Self {
            bound_listen: snapshot.config.listen,
            snapshot: ArcSwap::from_pointee(snapshot),
            reg,
            env,
            source,
            overrides,
            journal,
            config_stale: Mutex::new(None),
            last_rejections: Mutex::new(Vec::new()),
            draining: AtomicBool::new(false),
        }
    }

    /// The current snapshot. Call once per request and keep it.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Why and since when the config on disk is not the one served.
    pub(crate) fn config_stale(&self) -> Option<ConfigStale> {
        self.config_stale
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
    fn keeps_the_socket_safe(&self, config: Config) -> Result<Config, OpenSocket> {
        let bound = self.bound_listen;
        if !crate::config::open_to_anyone(
            bound,
            config.inbound_token.is_some(),
            config.allow_unauthenticated,
        ) {
            return Ok(config);
        }
        Err(OpenSocket {
            file: self.source.display_name(),
            bound,
        })
    }

    /// The config on disk, or why it cannot be applied (`Err(None)`: it is
    /// being written and is looked at again shortly).
    fn next_config(&self, files: &dyn Files) -> Result<Config, Option<Rejection>> {
        match Config::load(&self.source, self.env.as_ref(), files, &self.overrides) {
            Ok(config) => self
                .keeps_the_socket_safe(config)
                .map_err(|e| Some(Rejection::OpenSocket(e))),
            Err(ConfigError::Read {
                source: FileError::Held,
                ..
            }) => Err(None),
            Err(e) => Err(Some(Rejection::Config(Box::new(e)))),
        }
    }

    /// Re-reads the config and every file it names, off the runtime
    /// threads (see [`watch`]), and swaps in the result when it differs.
    ///
    /// Nothing bad goes live and nothing good is lost: a config that does
    /// not load keeps the last good config whole (credentials are still
    /// re-read under it); a credential that cannot be read keeps its last
    /// good value while the rest of the change applies; content still
    /// being written is held ([`gate`]). Each rejection is logged
    /// (locations, never values) and counted, except when a periodic
    /// re-read finds exactly the rejections of the reload before.
    pub(crate) fn reload(&self, trigger: Trigger) -> Outcome {
        let started = Instant::now();
        let current = self.snapshot();
        let gate = Gate::new(&self.journal, trigger, current.config.reload.settle);
        let mut rejected = Vec::new();
        // A config being written is neither current nor stale yet.
        let mut config_held = false;
        let config = match self.next_config(&gate) {
            Ok(config) => config,
            Err(rejection) => {
                config_held = rejection.is_none();
                rejected.extend(rejection);
                current.config.clone()
            }
        };
        let inputs = Inputs {
            env: self.env.as_ref(),
            files: &gate,
            reg: &self.reg,
            prev: Some(&current),
        };
        let built = Snapshot::build(config, &inputs);
        let (reads, recheck) = gate.finish();
        let next = match built {
            Ok(next) => next,
            Err(source) => {
                rejected.push(Rejection::Build {
                    file: self.source.display_name(),
                    source,
                });
                self.note_config_stale(&rejected, config_held);
                self.report(trigger, started, &rejected, false);
                return Outcome {
                    swapped: false,
                    rejected,
                    recheck,
                };
            }
        };
        self.note_config_stale(&rejected, config_held);
        rejected.extend(next.tls_stale.clone().map(Rejection::TlsListener));
        rejected.extend(
            next.stale
                .iter()
                .map(|s| Rejection::Credential(Box::new(s.clone()))),
        );
        self.journal.commit(reads);
        let swapped = next.digest != current.digest;
        // Logged and counted before the swap: whoever sees the new key can
        // already read why in the log and the metrics.
        if swapped {
            self.log_changes(trigger, &current, &next);
        }
        self.report(trigger, started, &rejected, swapped);
        if swapped {
            self.swap(next);
        }
        Outcome {
            swapped,
            rejected,
            recheck,
        }
    }

    /// The config on disk is stale while a rejection keeps it from applying
    /// (it does not load, or its TLS settings do not); otherwise current,
    /// unless it is being written (`held`): then it stays as it was.
    fn note_config_stale(&self, rejected: &[Rejection], held: bool) {
        let reason = rejected.iter().find_map(|r| match r {
            Rejection::Config(e) => Some(e.to_string()),
            Rejection::OpenSocket(e) => Some(e.to_string()),
            Rejection::Build { source, .. } => Some(source.to_string()),
            Rejection::Credential(_) | Rejection::TlsListener(_) => None,
        });
        if held && reason.is_none() {
            return;
        }
        let mut stale = self
            .config_stale
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *stale = reason.map(|reason| ConfigStale {
            since: stale.as_ref().map_or_else(Instant::now, |s| s.since),
            reason,
        });
    }

    /// Logs what `next` changes: one line per credential, then a summary.
    fn log_changes(&self, trigger: Trigger, current: &Snapshot, next: &Snapshot) {
        let credentials = diff::credential_changes(current, next);
        for c in &credentials {
            tracing::info!(
                route = %c.route,
                credential = %c.credential,
                location = %c.location,
                from = %c.from,
                to = %c.to,
                "credential changed"
            );
        }
        let changes = diff::describe_changes(current, next, credentials.len());
        for setting in diff::restart_required(&current.config, &next.config) {
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
        tracing::info!(trigger = trigger.as_str(), changes = %changes.join("; "), "reloaded");
    }

    /// Puts `next` live and lets go of what only the old snapshot used.
    fn swap(&self, next: Snapshot) {
        let in_use = next.clients();
        self.journal
            .retain(&next.files(&self.source, self.env.as_ref()));
        self.snapshot.store(Arc::new(next));
        self.reg.clients.retain(&in_use);
        self.reg.health.prune();
    }

    /// Logs and counts the reload. A periodic re-read that finds what the
    /// reload before found is not a new change: nothing is logged or counted.
    fn report(&self, trigger: Trigger, started: Instant, rejected: &[Rejection], swapped: bool) {
        let rejected: Vec<String> = rejected.iter().map(ToString::to_string).collect();
        let mut last = self
            .last_rejections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let repeated = trigger == Trigger::Periodic && *last == rejected;
        if !rejected.is_empty() && !repeated {
            for r in &rejected {
                tracing::warn!(trigger = trigger.as_str(), rejected = %r, "reload rejected a change");
            }
            self.reg
                .metrics
                .reload(ReloadResult::Error, started.elapsed());
        } else if swapped {
            self.reg.metrics.reload(ReloadResult::Ok, started.elapsed());
        }
        *last = rejected;
    }
}

#[cfg(test)]
mod tests;
