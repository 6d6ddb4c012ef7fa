//! The live snapshot and how it is replaced.
//!
//! design.md, "Hot reload". [`Shared`] holds the current [`Snapshot`] in an
//! `ArcSwap`: requests `load_full()` it once, lock-free; a reload builds a
//! complete new snapshot and stores it, or keeps the old one when the new
//! config is bad.

pub(crate) mod snapshot;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::admin::metrics::Metrics;
use crate::config::ConfigSource;
pub(crate) use snapshot::Snapshot;

/// State shared by the proxy, the admin server and the reloader.
#[derive(Debug)]
pub(crate) struct Shared {
    snapshot: ArcSwap<Snapshot>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) source: ConfigSource,
    /// Set once shutdown begins: `/readyz` answers 503 from then on.
    draining: AtomicBool,
}

impl Shared {
    /// State serving `snapshot`.
    pub(crate) fn new(snapshot: Snapshot, metrics: Arc<Metrics>, source: ConfigSource) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            source,
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
}
