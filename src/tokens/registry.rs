//! [`TokenRegistry`]: every token cache in use, outliving snapshots.
//!
//! A cache is identified by route, setting, the source's content (digest)
//! and the client it mints through: a reload that keeps all four keeps the
//! cache (and its token); any change starts a new one. The registry holds
//! weak references: a cache lives as long as a snapshot uses it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::{Mint, TokenCache};
use crate::metrics::RouteMetrics;
use crate::upstream::Client;

/// Identity of a cache: same route, setting and credential content → same cache.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct CacheId {
    route: String,
    label: String,
    digest: [u8; 32],
    /// The client's identity (trust roots, timeouts): a changed `ca_file`
    /// starts a cache that mints through the new client.
    client: Vec<u8>,
}

/// Every token cache in use, outliving snapshots.
#[derive(Debug)]
pub(crate) struct TokenRegistry {
    map: Mutex<HashMap<CacheId, Weak<TokenCache>>>,
    /// Whether caches mint (false for `sidekey check`, which calls no one).
    online: bool,
}

impl TokenRegistry {
    /// Caches that mint tokens (the proxy). Their tasks need the runtime.
    pub(crate) fn online() -> Self {
        Self {
            map: Mutex::default(),
            online: true,
        }
    }

    /// Caches that never mint (`sidekey check`: offline, no runtime).
    pub(crate) fn offline() -> Self {
        Self {
            map: Mutex::default(),
            online: false,
        }
    }

    /// The cache for the source `make` builds on `route`/`label`
    /// (identified by `digest`), started if new. Must run inside the runtime.
    pub(crate) fn get(
        &self,
        route: &str,
        label: &str,
        digest: [u8; 32],
        client: &Client,
        make: impl FnOnce() -> (Arc<dyn Mint>, Arc<RouteMetrics>),
    ) -> Arc<TokenCache> {
        let id = CacheId {
            route: route.to_owned(),
            label: label.to_owned(),
            digest,
            client: client.id().to_vec(),
        };
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cache) = map.get(&id).and_then(Weak::upgrade) {
            return cache;
        }
        let (source, metrics) = make();
        let cache = Arc::new(TokenCache::start(
            Arc::from(route),
            source,
            client.clone(),
            metrics,
            self.online,
        ));
        map.insert(id, Arc::downgrade(&cache));
        map.retain(|_, c| c.strong_count() > 0);
        cache
    }
}
