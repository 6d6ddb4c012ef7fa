//! Which key serves a request, and resting keys the provider rejected.
//!
//! design.md, "Request path" step 5 and the credential table: with
//! `{ default, fallback }` the default is used while it works; with a pool
//! `[L1, L2, ...]` requests are spread round robin. A key the provider
//! rejects (or, in a pool, rate-limits) is *rested*: for `keys.rest` (or the
//! `Retry-After` of a 429) requests go straight to the other keys. When the
//! rest is over, exactly one request probes the key again; the others keep
//! using a working key until the probe succeeds.
//!
//! Health lives in [`KeyHealth`], shared by every snapshot that holds the
//! same key value for the same route and setting ([`HealthRegistry`]): a
//! reload that keeps a key keeps its rest, and a rotated key file (a new
//! value) starts healthy. Reading and updating health is a few atomic
//! operations on the request path; the registry's lock is only taken while
//! a snapshot is built.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Milliseconds since the process's time base, at least 1 (0 means "not
/// rested" in [`KeyHealth`]).
pub(crate) fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The health of one key value on one route.
#[derive(Debug, Default)]
pub(crate) struct KeyHealth {
    /// When the rest ends, in [`now_ms`] time; 0 when the key is healthy.
    rested_until: AtomicU64,
}

/// How a key stands for one request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Standing {
    /// Not rested: use it.
    Healthy,
    /// Its rest is over and this request won the right to probe it.
    Probe,
    /// Rested until the given time; use only when nothing else is left.
    Rested(u64),
}

impl KeyHealth {
    /// Where the key stands now. An expired rest is claimed for one probe:
    /// the winner gets [`Standing::Probe`] and the key counts as rested for
    /// everyone else for another `probe_window`, or until the probe's
    /// answer arrives.
    pub(crate) fn standing(&self, now: u64, probe_window: Duration) -> Standing {
        let until = self.rested_until.load(Ordering::Acquire);
        if until == 0 {
            return Standing::Healthy;
        }
        if until > now {
            return Standing::Rested(until);
        }
        let claim = now.saturating_add(millis(probe_window));
        match self
            .rested_until
            .compare_exchange(until, claim, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Standing::Probe,
            Err(0) => Standing::Healthy,
            Err(other) => Standing::Rested(other),
        }
    }

    /// Rests the key for `period` from now. Returns whether it was healthy
    /// before (so a failover is logged once per rest, not per request).
    pub(crate) fn rest(&self, period: Duration) -> bool {
        let until = now_ms().saturating_add(millis(period));
        self.rested_until.swap(until, Ordering::AcqRel) == 0
    }

    /// The provider accepted the key: end any rest. Returns whether it was
    /// rested (a successful probe).
    pub(crate) fn accepted(&self) -> bool {
        // Load first: the common case (healthy) must not write the line.
        self.rested_until.load(Ordering::Acquire) != 0
            && self.rested_until.swap(0, Ordering::AcqRel) != 0
    }

    /// Whether the key is resting now (for the gauge).
    pub(crate) fn is_rested(&self, now: u64) -> bool {
        self.rested_until.load(Ordering::Acquire) > now
    }
}

/// Which [`KeyHealth`] a key value gets: the same for the same route,
/// setting and value across reloads.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct HealthId {
    route: String,
    /// `key`, `deployments.NAME.key`, ...
    label: String,
    /// SHA-256 of the key value (never the value itself).
    digest: [u8; 32],
}

/// Every [`KeyHealth`] and pool [`Cursor`] in use, outliving snapshots.
#[derive(Debug, Default)]
pub(crate) struct HealthRegistry {
    map: Mutex<HashMap<HealthId, Arc<KeyHealth>>>,
    cursors: Mutex<HashMap<(String, String), Arc<Cursor>>>,
}

impl HealthRegistry {
    /// The health of `digest` on `route`/`label`, created healthy if new.
    pub(crate) fn get(&self, route: &str, label: &str, digest: [u8; 32]) -> Arc<KeyHealth> {
        let id = HealthId {
            route: route.to_owned(),
            label: label.to_owned(),
            digest,
        };
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(id).or_default().clone()
    }

    /// The round-robin cursor of the key set `route`/`label`.
    pub(crate) fn cursor(&self, route: &str, label: &str) -> Arc<Cursor> {
        let mut cursors = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
        cursors
            .entry((route.to_owned(), label.to_owned()))
            .or_default()
            .clone()
    }

    /// Forgets key values and key sets no snapshot holds any more.
    pub(crate) fn prune(&self) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, h| Arc::strong_count(h) > 1);
        drop(map);
        let mut cursors = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
        cursors.retain(|_, c| Arc::strong_count(c) > 1);
    }
}

/// The round-robin cursor of a pool. Shared by snapshots like health, so a
/// reload does not send the next burst to the first key.
#[derive(Debug, Default)]
pub(crate) struct Cursor(AtomicUsize);

impl Cursor {
    /// The next starting position among `n` keys.
    pub(crate) fn next(&self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        self.0.fetch_add(1, Ordering::Relaxed) % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_probe_and_recovery() {
        let h = KeyHealth::default();
        let window = Duration::from_secs(60);
        assert_eq!(h.standing(now_ms(), window), Standing::Healthy);
        assert!(h.rest(Duration::ZERO), "first rejection of a healthy key");
        assert!(!h.rest(Duration::ZERO), "a second rejection while resting");
        let now = now_ms() + 1;
        // The rest is over: one request probes, the next ones see it rested.
        assert_eq!(h.standing(now, window), Standing::Probe);
        assert!(matches!(h.standing(now, window), Standing::Rested(_)));
        assert!(h.accepted(), "the probe succeeded");
        assert_eq!(h.standing(now, window), Standing::Healthy);
        assert!(!h.accepted(), "nothing to end");
    }

    #[test]
    fn a_rested_key_stays_rested_until_its_time() {
        let h = KeyHealth::default();
        h.rest(Duration::from_secs(3600));
        assert!(matches!(
            h.standing(now_ms(), Duration::ZERO),
            Standing::Rested(_)
        ));
        assert!(h.is_rested(now_ms()));
    }

    #[test]
    fn registry_keeps_health_for_the_same_value_only() {
        let r = HealthRegistry::default();
        let a = r.get("openai", "key", [1; 32]);
        a.rest(Duration::from_secs(60));
        assert!(r.get("openai", "key", [1; 32]).is_rested(now_ms()));
        assert!(
            !r.get("openai", "key", [2; 32]).is_rested(now_ms()),
            "a rotated key starts healthy"
        );
        drop(a);
        r.prune();
        assert_eq!(r.map.lock().unwrap().len(), 0);
    }

    /// A rest lasts its period on the clock, then exactly one request probes;
    /// a probe that is not answered within the window frees the key for
    /// another probe.
    #[tokio::test(start_paused = true)]
    async fn a_rest_runs_its_period_then_one_probe_per_window() {
        let h = KeyHealth::default();
        let window = Duration::from_secs(10);
        h.rest(Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(h.standing(now_ms(), window), Standing::Rested(_)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(h.standing(now_ms(), window), Standing::Probe);
        assert!(
            matches!(h.standing(now_ms(), window), Standing::Rested(_)),
            "one probe at a time"
        );
        // The probe never answered: after the window another request probes.
        tokio::time::advance(window + Duration::from_millis(1)).await;
        assert_eq!(h.standing(now_ms(), window), Standing::Probe);
        // A rejected probe rests the key again, for a full period.
        assert!(!h.rest(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(h.is_rested(now_ms()));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!h.is_rested(now_ms()));
        assert_eq!(h.standing(now_ms(), window), Standing::Probe);
        assert!(h.accepted());
        assert_eq!(h.standing(now_ms(), window), Standing::Healthy);
    }

    #[test]
    fn cursor_cycles() {
        let c = Cursor::default();
        let seen: Vec<_> = (0..6).map(|_| c.next(3)).collect();
        assert_eq!(seen, [0, 1, 2, 0, 1, 2]);
    }
}
