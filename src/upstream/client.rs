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
//! front ends allow) and a new lane is opened when all are full. A
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

/// One pool and the requests in flight on it.
#[derive(Debug)]
struct Lane {
    client: Inner,
    in_flight: AtomicUsize,
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
pub(crate) struct LaneGuard(Arc<Lane>);

impl Drop for LaneGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Release);
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
        let lane = self.lanes.take_place();
        (lane.client.request(req), LaneGuard(lane))
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
    /// The first lane with room, opening lanes as needed; the request is
    /// counted in it.
    fn take_place(&self) -> Arc<Lane> {
        let per_lane = self.settings.per_lane;
        for slot in self.lanes.iter() {
            let lane = slot.get_or_init(|| Arc::new(self.open()));
            if lane.in_flight.fetch_add(1, Ordering::AcqRel) < per_lane {
                return lane.clone();
            }
            lane.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        // Every lane is full: share the least busy one.
        let lane = self
            .lanes
            .iter()
            .filter_map(OnceLock::get)
            .min_by_key(|l| l.in_flight.load(Ordering::Acquire))
            .cloned()
            .unwrap_or_else(|| Arc::new(self.open()));
        lane.in_flight.fetch_add(1, Ordering::AcqRel);
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
            in_flight: AtomicUsize::new(0),
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

    #[test]
    fn lanes_fill_in_order_and_free_on_drop() {
        let c = client(2);
        let a = c.lanes.take_place();
        let b = c.lanes.take_place();
        let third = c.lanes.take_place();
        assert!(Arc::ptr_eq(&a, &b), "the first lane takes two");
        assert!(
            !Arc::ptr_eq(&a, &third),
            "the third request opens a second lane"
        );
        let guards = [LaneGuard(a), LaneGuard(b), LaneGuard(third)];
        drop(guards);
        let again = c.lanes.take_place();
        assert_eq!(again.in_flight.load(Ordering::Acquire), 1);
        assert!(
            Arc::ptr_eq(&again, c.lanes.lanes[0].get().unwrap()),
            "the first lane is free again"
        );
        drop(LaneGuard(again));
    }
}
