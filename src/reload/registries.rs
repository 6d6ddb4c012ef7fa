//! [`Registries`]: the long-lived state that outlives snapshots.
//!
//! Metrics, upstream clients, key health and token caches are kept across
//! reloads (a reload that keeps a route's trust settings keeps its warm
//! connections; a key that stays the same keeps its rest; a token source
//! that stays the same keeps its token). Snapshots hold `Arc`s into them.

use std::sync::Arc;

use crate::body::replay::Budget;
use crate::credentials::pool::HealthRegistry;
use crate::metrics::Metrics;
use crate::tokens::TokenRegistry;
use crate::upstream::Clients;

/// Long-lived state that outlives snapshots, so a reload keeps warm
/// connections, counters, the rest of rejected keys, and token caches.
#[derive(Debug)]
pub(crate) struct Registries {
    pub(crate) metrics: Arc<Metrics>,
    /// Upstream clients, kept while their trust settings stay the same.
    pub(crate) clients: Clients,
    /// Health of keys, kept while a key's value stays the same.
    pub(crate) health: HealthRegistry,
    /// Vertex token caches, kept while their source stays the same.
    pub(crate) tokens: TokenRegistry,
    /// The bytes replay buffers hold at once (`limits.max_replay_total`).
    pub(crate) replay: Arc<Budget>,
}

impl Registries {
    /// For the proxy: token caches mint (their tasks need the runtime).
    pub(crate) fn online() -> Self {
        Self::with_tokens(TokenRegistry::online())
    }

    /// For `sidekey check`: nothing is minted and nothing is spawned.
    pub(crate) fn offline() -> Self {
        Self::with_tokens(TokenRegistry::offline())
    }

    fn with_tokens(tokens: TokenRegistry) -> Self {
        let metrics = Arc::new(Metrics::default());
        Self {
            replay: Arc::new(Budget::new(metrics.replay_budget_counter())),
            metrics,
            clients: Clients::default(),
            health: HealthRegistry::default(),
            tokens,
        }
    }
}
