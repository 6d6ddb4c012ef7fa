//! The connections to one upstream host (scheme + authority), and sending a
//! request over them.
//!
//! HTTP/1.1: a stack of idle connections. A request pops the most recently
//! used one (warm in every cache) and its [`LaneGuard`] pushes it back when
//! the response body ends, so while a response streams the connection is the
//! request's alone, and the next request of the same inbound connection
//! usually gets it back. No task is spawned per request: the connection is
//! ready again the moment its response has been read, which is when the
//! guard drops; only when it is not ready yet (a response abandoned midway)
//! does a short-lived task wait for it. A `101 Switching Protocols` answer
//! keeps the connection out of the stack for good: the socket belongs to
//! the upgrade.
//!
//! HTTP/2: *lanes*, one connection each. hyper (as RFC 9113 §9.1 asks) never
//! opens a second connection to a host, so once the server's streams are all
//! open further requests would wait for one to end; LLM streams last
//! minutes. A request takes the first lane with fewer than
//! `limits.upstream_streams_per_connection` requests in flight and opens a
//! new lane when all are full (past [`MAX_LANES`], the least busy lane is
//! shared). The lane list is read without a lock (one `ArcSwap` load and one
//! atomic add per request).
//!
//! A request whose connection turns out to be closed before the request was
//! written (the server closed an idle keep-alive connection) is sent again,
//! once, on a new connection: a keep-alive race never reaches the client.
//!
//! Idle connections expire: a sweeper task, alive only while the host has
//! connections, closes those idle for [`IDLE_TIMEOUT`] (give or take one
//! sweep). The sweeper stamps an HTTP/1.1 connection when it first finds it
//! on the idle stack, and an HTTP/2 lane when it first finds it without
//! streams, so the request path never reads the clock for this (an HTTP/2
//! request only clears the stamp).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::{Parts, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use tokio::time::Instant;

use super::UpstreamBody;
use super::connect::{Conn, Dialer, Target};
use super::error::Error;
use super::sending::{Sending, Sent};

/// Idle HTTP/1.1 connections kept per upstream host. Above this many
/// concurrent requests, every returned connection beyond the cap is closed
/// and a later request pays a new TLS handshake (measured with the previous
/// client: half the throughput at 64 connections with a cap of 32).
pub(crate) const MAX_IDLE_PER_HOST: usize = 256;

/// Most HTTP/2 connections per host; past that, requests share the least
/// busy one.
pub(crate) const MAX_LANES: usize = 64;

/// How long a connection may sit unused before it is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How often the sweeper looks at idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Longest a returned HTTP/1.1 connection that is not ready yet is waited
/// for before it is given up.
const READY_WAIT: Duration = Duration::from_secs(1);

/// What ALPN last chose for this host.
const PROTO_UNKNOWN: u8 = 0;
const PROTO_H1: u8 = 1;
const PROTO_H2: u8 = 2;

/// The connections to one upstream host.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) target: Target,
    per_lane: usize,
    proto: AtomicU8,
    /// Idle HTTP/1.1 connections, most recently used last. Never locked
    /// across an await.
    idle: Mutex<Vec<Idle>>,
    lanes: ArcSwap<Vec<Arc<Lane>>>,
    sweeping: AtomicBool,
    /// The zero of lanes' idle stamps.
    born: Instant,
}

#[derive(Debug)]
struct Idle {
    tx: http1::SendRequest<UpstreamBody>,
    /// When a sweep first found it idle.
    since: Option<Instant>,
}

/// One HTTP/2 connection and the requests in flight on it.
#[derive(Debug)]
pub(crate) struct Lane {
    tx: http2::SendRequest<UpstreamBody>,
    in_flight: AtomicUsize,
    /// Milliseconds after the endpoint's birth when a sweep first found the
    /// lane without streams; 0 once a request has taken it since.
    idle_since: AtomicU64,
}

/// A response head and the guard holding its connection.
pub(crate) type Answer = (Response<Incoming>, LaneGuard);

/// Holds a request's connection until the response body ends (or the
/// request fails): an HTTP/1.1 connection goes back to its host's idle
/// stack, an HTTP/2 stream frees its place in the lane.
#[derive(Debug)]
#[must_use = "dropping the guard returns the request's connection"]
pub(crate) struct LaneGuard(Hold);

#[derive(Debug)]
enum Hold {
    H1 {
        endpoint: Arc<Endpoint>,
        tx: http1::SendRequest<UpstreamBody>,
    },
    H2(Arc<Lane>),
    /// Nothing to return (an upgraded connection).
    Nothing,
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.0, Hold::Nothing) {
            Hold::H1 { endpoint, tx } => endpoint.give_back(tx),
            Hold::H2(lane) => {
                lane.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            Hold::Nothing => {}
        }
    }
}

/// A connection taken for one request.
enum Taken {
    H1(http1::SendRequest<UpstreamBody>),
    H2(Arc<Lane>),
}

impl Endpoint {
    pub(crate) fn new(target: Target, per_lane: usize) -> Self {
        Self {
            target,
            per_lane: per_lane.max(1),
            proto: AtomicU8::new(PROTO_UNKNOWN),
            idle: Mutex::new(Vec::new()),
            lanes: ArcSwap::from_pointee(Vec::new()),
            sweeping: AtomicBool::new(false),
            born: Instant::now(),
        }
    }

    /// Sends `req` (an absolute URI to this host); resolves with the
    /// response head and the guard that holds its connection. The request
    /// is handed to a pooled connection at once; see [`Sending`].
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when no connection could be made, [`Error::Send`]
    /// when the connection failed before a response head arrived.
    pub(super) fn send<'a>(
        self: Arc<Self>,
        dialer: &'a Dialer,
        mut req: Request<UpstreamBody>,
    ) -> Sending<'a, impl Future<Output = Sent> + Send, impl Future<Output = Sent> + Send> {
        match self.take() {
            Some(Taken::H1(mut tx)) => {
                self.origin_form(&mut req);
                Sending::H1 {
                    fut: tx.try_send_request(req),
                    tx: Some(tx),
                    endpoint: self,
                    dialer,
                }
            }
            Some(Taken::H2(lane)) => Sending::H2 {
                fut: lane.tx.clone().try_send_request(req),
                guard: Some(LaneGuard(Hold::H2(lane))),
                endpoint: self,
                dialer,
            },
            None => Sending::Dialing {
                fut: Box::pin(self.send_new(dialer, req)),
            },
        }
    }

    /// Sends `req` on a new connection (boxed by the caller: rare, and its
    /// future holds the TLS and HTTP handshakes).
    pub(super) async fn send_new(
        self: Arc<Self>,
        dialer: &Dialer,
        mut req: Request<UpstreamBody>,
    ) -> Result<Answer, Error> {
        let unsent = |e: TrySendError<Request<UpstreamBody>>| Error::Send(e.into_error());
        match self.connect(dialer).await? {
            Taken::H1(mut tx) => {
                self.origin_form(&mut req);
                let resp = tx.try_send_request(req).await.map_err(unsent)?;
                Ok(self.h1_answer(tx, resp))
            }
            Taken::H2(lane) => {
                let guard = LaneGuard(Hold::H2(lane.clone()));
                let resp = lane
                    .tx
                    .clone()
                    .try_send_request(req)
                    .await
                    .map_err(unsent)?;
                Ok((resp, guard))
            }
        }
    }

    /// Sends `req`, a protocol upgrade (WebSocket handshake), on a new
    /// HTTP/1.1 connection of its own: HTTP/2 has no `Upgrade`, and a
    /// `101` answer hands the socket to the upgrade (it is never pooled).
    ///
    /// # Errors
    ///
    /// As [`Self::send_new`].
    pub(super) async fn send_upgrade(
        self: Arc<Self>,
        dialer: &Dialer,
        mut req: Request<UpstreamBody>,
    ) -> Result<Answer, Error> {
        let Conn::H1(mut tx) = dialer.dial_http1(&self.target).await? else {
            return Err(Error::Uri("the upstream chose HTTP/2 for an upgrade"));
        };
        self.origin_form(&mut req);
        let resp = tx.send_request(req).await.map_err(Error::Send)?;
        Ok(self.h1_answer(tx, resp))
    }

    /// The answer on an HTTP/1.1 connection: the guard returns `tx` to the
    /// stack, unless the connection was upgraded (it belongs to the upgrade).
    pub(super) fn h1_answer(
        self: Arc<Self>,
        tx: http1::SendRequest<UpstreamBody>,
        resp: Response<Incoming>,
    ) -> Answer {
        let hold = if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            Hold::Nothing
        } else {
            Hold::H1 { endpoint: self, tx }
        };
        (resp, LaneGuard(hold))
    }

    /// A connection from the pool, if one is free.
    fn take(&self) -> Option<Taken> {
        if self.proto.load(Ordering::Relaxed) == PROTO_H2 {
            return self.take_lane().map(Taken::H2);
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(Idle { tx, .. }) = idle.pop() {
            if !tx.is_closed() {
                return Some(Taken::H1(tx));
            }
        }
        None
    }

    /// A new connection; an HTTP/2 one becomes a lane with this request in it.
    async fn connect(self: &Arc<Self>, dialer: &Dialer) -> Result<Taken, Error> {
        match dialer.dial(&self.target).await? {
            Conn::H1(tx) => {
                self.proto.store(PROTO_H1, Ordering::Relaxed);
                Ok(Taken::H1(tx))
            }
            Conn::H2(tx) => {
                self.proto.store(PROTO_H2, Ordering::Relaxed);
                Ok(Taken::H2(self.add_lane(tx)))
            }
        }
    }

    /// The first open lane with room, counted; the least busy one when
    /// [`MAX_LANES`] are open and full; `None` when a lane should be opened.
    fn take_lane(&self) -> Option<Arc<Lane>> {
        let lanes = self.lanes.load();
        for lane in lanes.iter().filter(|l| !l.tx.is_closed()) {
            let n = &lane.in_flight;
            // A full lane is skipped with a load, not a write.
            if n.load(Ordering::Acquire) < self.per_lane {
                if n.fetch_add(1, Ordering::AcqRel) < self.per_lane {
                    lane.idle_since.store(0, Ordering::Relaxed);
                    return Some(lane.clone());
                }
                n.fetch_sub(1, Ordering::AcqRel);
            }
        }
        if lanes.len() < MAX_LANES {
            return None;
        }
        let lane = lanes
            .iter()
            .filter(|l| !l.tx.is_closed())
            .min_by_key(|l| l.in_flight.load(Ordering::Acquire))?;
        lane.in_flight.fetch_add(1, Ordering::AcqRel);
        lane.idle_since.store(0, Ordering::Relaxed);
        Some(lane.clone())
    }

    /// Adds a lane for `tx` with one request in it; drops closed lanes.
    fn add_lane(self: &Arc<Self>, tx: http2::SendRequest<UpstreamBody>) -> Arc<Lane> {
        let lane = Arc::new(Lane {
            tx,
            in_flight: AtomicUsize::new(1),
            idle_since: AtomicU64::new(0),
        });
        self.lanes.rcu(|old| {
            let mut lanes: Vec<_> = old.iter().filter(|l| !l.tx.is_closed()).cloned().collect();
            lanes.push(lane.clone());
            lanes
        });
        self.start_sweeping();
        lane
    }

    /// Takes back an HTTP/1.1 connection whose response has ended.
    fn give_back(self: Arc<Self>, mut tx: http1::SendRequest<UpstreamBody>) {
        if tx.is_closed() {
            return;
        }
        if tx.is_ready() {
            self.keep(tx);
            return;
        }
        // Its response is still being read (the body was dropped early, or
        // the connection task has not run yet): wait a little, off the
        // request path.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, tx.ready()).await {
                    self.keep(tx);
                }
            });
        }
    }

    fn keep(self: Arc<Self>, tx: http1::SendRequest<UpstreamBody>) {
        {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() >= MAX_IDLE_PER_HOST {
                return;
            }
            idle.push(Idle { tx, since: None });
        }
        self.start_sweeping();
    }

    /// Rewrites an absolute URI to origin form (`/path?query`) and sets
    /// `Host`, as HTTP/1.1 to an origin server wants.
    fn origin_form(&self, req: &mut Request<UpstreamBody>) {
        req.headers_mut()
            .entry(http::header::HOST)
            .or_insert_with(|| self.target.host_header.clone());
        // Taken apart rather than cloned: cloning the path can allocate.
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = None;
        parts.authority = None;
        // An empty path is `/` (RFC 9112 §3.2.1): never an empty target.
        if parts
            .path_and_query
            .as_ref()
            .is_none_or(|pq| pq.as_str().is_empty())
        {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
        if req.version() == Version::HTTP_2 {
            *req.version_mut() = Version::HTTP_11;
        }
    }

    /// Undoes [`Self::origin_form`]'s URI change, for a retry that may go
    /// out over HTTP/2.
    pub(super) fn absolute(&self, req: &mut Request<UpstreamBody>) {
        let mut parts = Parts::default();
        parts.scheme = Some(if self.target.https {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        });
        parts.authority = Some(self.target.authority.clone());
        parts.path_and_query = req.uri().path_and_query().cloned();
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }

    /// Starts the sweeper unless it runs.
    fn start_sweeping(self: &Arc<Self>) {
        // Read before the swap (a plain load, not a locked instruction): a
        // connection goes back to idle after every request, and the sweeper
        // almost always runs already. SeqCst with the sweeper's store: one
        // of the two sees the other's connection or flag (see `sweeper`).
        if self.sweeping.load(Ordering::SeqCst) || self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Release);
            return;
        };
        rt.spawn(sweeper(Arc::downgrade(self)));
    }

    /// Closes connections idle for too long; whether any connection is left.
    fn sweep(&self) -> bool {
        let now = Instant::now();
        let left_idle = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            idle.retain_mut(|i| {
                let since = *i.since.get_or_insert(now);
                now.duration_since(since) < IDLE_TIMEOUT && !i.tx.is_closed()
            });
            !idle.is_empty()
        };
        // Never 0, which means "in use".
        let stamp = u64::try_from(now.duration_since(self.born).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let expired = |l: &Lane| {
            if l.tx.is_closed() {
                return true;
            }
            if l.in_flight.load(Ordering::Acquire) > 0 {
                return false;
            }
            match l
                .idle_since
                .compare_exchange(0, stamp, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => false,
                Err(since) => Duration::from_millis(stamp.saturating_sub(since)) >= IDLE_TIMEOUT,
            }
        };
        let lanes = self.lanes.load();
        // A lane that gets a request after this check still works: dropping
        // our handle leaves the request's own, and hyper closes the
        // connection once its last stream ends.
        let keep: Vec<_> = lanes.iter().filter(|l| !expired(l)).cloned().collect();
        let left_lanes = !keep.is_empty();
        if keep.len() != lanes.len() {
            // Lanes added since the load above are kept.
            let gone = |l: &Arc<Lane>| {
                lanes.iter().any(|o| Arc::ptr_eq(o, l)) && !keep.iter().any(|k| Arc::ptr_eq(k, l))
            };
            self.lanes
                .rcu(|now| now.iter().filter(|l| !gone(l)).cloned().collect::<Vec<_>>());
        }
        left_idle || left_lanes
    }

    fn has_connections(&self) -> bool {
        let idle = self.idle.lock().map_or(0, |i| i.len());
        idle > 0 || !self.lanes.load().is_empty()
    }

    #[cfg(test)]
    pub(crate) fn keep_for_test(self: &Arc<Self>, tx: http1::SendRequest<UpstreamBody>) {
        self.clone().keep(tx);
    }

    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }

    #[cfg(test)]
    pub(crate) fn lane_count(&self) -> usize {
        self.lanes.load().len()
    }
}

/// Sweeps `endpoint` every [`SWEEP_EVERY`] while it has connections.
async fn sweeper(endpoint: Weak<Endpoint>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(ep) = endpoint.upgrade() else { return };
        if ep.sweep() {
            continue;
        }
        ep.sweeping.store(false, Ordering::SeqCst);
        // A connection returned between the sweep and the store above
        // would otherwise wait for the next request to start a sweeper.
        if !ep.has_connections() || ep.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
    }
}
