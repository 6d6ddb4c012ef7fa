//! The pooled upstream client, in lanes.
//!
//! hyper-util's pooled client keeps one HTTP/2 connection per host and, as
//! RFC 9113 §9.1 asks, never opens a second one: once the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` streams are open, further requests wait
//! for one to finish. LLM streams last minutes, so a busy sidekey would
//! queue requests behind them. A [`Client`] therefore holds *lanes*, each a
//! pool of its own (its own HTTP/2 connection): a request takes the first
//! lane with fewer than `limits.upstream_streams_per_connection` requests in
//! flight (100 by default, the RFC's recommended floor and what Google's
//! front ends allow) and a new lane is opened when all are full. One client
//! serves many hosts (every route with the same trust settings), so a lane
//! counts requests per upstream host (a hash of the authority into a few
//! slots; a collision only opens a lane early): streams to one provider do
//! not push another provider's requests onto new connections. A
//! [`LaneGuard`] holds the request's place until its response body ends.
//! Lanes are found without a lock: a fixed array of `OnceLock`s and one
//! atomic add per request. With HTTP/1.1 upstreams a lane's pool opens a
//! connection per concurrent request anyway; lanes then only spread them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::UpstreamBody;

type Inner = LegacyClient<HttpsConnector<HttpConnector>, UpstreamBody>;

/// Idle keep-alive connections kept per upstream host, per lane.
const MAX_IDLE_PER_HOST: usize = 256;

/// Most lanes a client opens; past that, requests share the least busy lane.
const MAX_LANES: usize = 64;

/// Per-host counters in a lane (hosts hash into these).
const SLOTS: usize = 16;

/// One pool and the requests in flight on it, per host slot.
#[derive(Debug)]
struct Lane {
    client: Inner,
    in_flight: [AtomicUsize; SLOTS],
}

/// The host slot of `uri`: FNV-1a of its authority (a few dozen bytes).
fn slot_of(uri: &http::Uri) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    for &b in uri.authority().map_or(&b""[..], |a| a.as_str().as_bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h as usize % SLOTS
}

/// What every lane is built from.
#[derive(Debug)]
struct Settings {
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    per_lane: usize,
}

#[derive(Debug)]
struct Lanes {
    settings: Settings,
    lanes: Box<[OnceLock<Arc<Lane>>]>,
}

/// A pooled client: cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    lanes: Arc<Lanes>,
    /// What the client was built from (trust roots, timeouts), so a reload
    /// can tell whether a route's client changed.
    id: Arc<[u8]>,
}

/// Holds a request's place in its lane until dropped (at the end of the
/// response body, or when the request fails).
#[derive(Debug)]
#[must_use = "dropping the guard frees the request's place in its lane"]
pub(crate) struct LaneGuard {
    lane: Arc<Lane>,
    slot: usize,
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        if let Some(n) = self.lane.in_flight.get(self.slot) {
            n.fetch_sub(1, Ordering::Release);
        }
    }
}

impl Client {
    /// A client with the given TLS config, connect timeout, and requests per
    /// connection before another lane opens.
    pub(crate) fn new(
        tls: rustls::ClientConfig,
        connect_timeout: Duration,
        per_lane: usize,
        id: Vec<u8>,
    ) -> Self {
        Self {
            lanes: Arc::new(Lanes {
                settings: Settings {
                    tls,
                    connect_timeout,
                    per_lane: per_lane.max(1),
                },
                lanes: (0..MAX_LANES).map(|_| OnceLock::new()).collect(),
            }),
            id: id.into(),
        }
    }

    /// Sends `req`; resolves when the response head arrives. The guard must
    /// live as long as the response body.
    pub(crate) fn request(
        &self,
        req: http::Request<UpstreamBody>,
    ) -> (hyper_util::client::legacy::ResponseFuture, LaneGuard) {
        let slot = slot_of(req.uri());
        let lane = self.lanes.take_place(slot);
        (lane.client.request(req), LaneGuard { lane, slot })
    }

    /// What the client was built from.
    pub(crate) fn id(&self) -> &[u8] {
        &self.id
    }

    /// Whether `self` and `other` share their pools.
    pub(crate) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.lanes, &other.lanes)
    }
}

impl Lanes {
    /// The first lane with room for host `slot`, opening lanes as needed;
    /// the request is counted in it.
    fn take_place(&self, slot: usize) -> Arc<Lane> {
        let per_lane = self.settings.per_lane;
        for cell in self.lanes.iter() {
            let lane = cell.get_or_init(|| Arc::new(self.open()));
            let Some(n) = lane.in_flight.get(slot) else {
                continue;
            };
            // A full lane is skipped with a load, not a write.
            if n.load(Ordering::Acquire) < per_lane {
                if n.fetch_add(1, Ordering::AcqRel) < per_lane {
                    return lane.clone();
                }
                n.fetch_sub(1, Ordering::AcqRel);
            }
        }
        // Every lane is full for this host: share the least busy one.
        let load = |l: &Arc<Lane>| {
            l.in_flight
                .get(slot)
                .map_or(0, |n| n.load(Ordering::Acquire))
        };
        let lane = self
            .lanes
            .iter()
            .filter_map(OnceLock::get)
            .min_by_key(|l| load(l))
            .cloned()
            .unwrap_or_else(|| Arc::new(self.open()));
        if let Some(n) = lane.in_flight.get(slot) {
            n.fetch_add(1, Ordering::AcqRel);
        }
        lane
    }

    fn open(&self) -> Lane {
        let s = &self.settings;
        let mut http = HttpConnector::new();
        // The connector also dials https:// (the TLS layer wraps it).
        http.enforce_http(false);
        // Server-sent events are many small writes: never wait to batch them.
        http.set_nodelay(true);
        http.set_connect_timeout(Some(s.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(s.tls.clone())
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let client = LegacyClient::builder(TokioExecutor::new())
            // The idle timeout only works with a pool timer.
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            // Above this many concurrent requests per upstream host, every
            // returned connection beyond the cap is closed and the next request
            // pays a DNS lookup and a TLS handshake (measured: half the
            // throughput at 64 connections with a cap of 32). Idle connections
            // still close after 90 s, so a burst does not hold memory for long.
            .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
            .timer(TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(10))
            .build(https);
        Lane {
            client,
            in_flight: std::array::from_fn(|_| AtomicUsize::new(0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(per_lane: usize) -> Client {
        let tls = super::super::tls::client_config(&[]).unwrap();
        Client::new(tls, Duration::from_secs(1), per_lane, Vec::new())
    }

    fn guard(lane: Arc<Lane>, slot: usize) -> LaneGuard {
        LaneGuard { lane, slot }
    }

    #[test]
    fn lanes_fill_in_order_per_host_and_free_on_drop() {
        let c = client(2);
        let a = c.lanes.take_place(1);
        let b = c.lanes.take_place(1);
        let third = c.lanes.take_place(1);
        assert!(Arc::ptr_eq(&a, &b), "the first lane takes two");
        assert!(
            !Arc::ptr_eq(&a, &third),
            "the third request opens a second lane"
        );
        // Another host still has room in the first lane.
        let other = c.lanes.take_place(2);
        assert!(Arc::ptr_eq(&a, &other), "hosts are counted apart");
        let guards = [guard(a, 1), guard(b, 1), guard(third, 1), guard(other, 2)];
        drop(guards);
        let again = c.lanes.take_place(1);
        assert_eq!(again.in_flight[1].load(Ordering::Acquire), 1);
        assert!(
            Arc::ptr_eq(&again, c.lanes.lanes[0].get().unwrap()),
            "the first lane is free again"
        );
        drop(guard(again, 1));
    }

    #[test]
    fn hosts_spread_over_slots() {
        let slot = |u: &str| slot_of(&u.parse().unwrap());
        assert_eq!(
            slot("https://api.openai.com/v1"),
            slot("https://api.openai.com/v2")
        );
        let hosts = [
            "https://api.openai.com",
            "https://api.anthropic.com",
            "https://generativelanguage.googleapis.com",
            "https://api.groq.com",
        ];
        let mut slots: Vec<_> = hosts.iter().map(|h| slot(h)).collect();
        slots.sort_unstable();
        slots.dedup();
        assert!(slots.len() > 1);
    }
}
