//! Prometheus metrics, lock-free on the request path.
//!
//! A leaf: it imports nothing of sidekey, and everything that counts
//! imports it.
//!
//! design.md, "Operations": every name is prefixed `sidekey_`. Per-route
//! counters are plain atomics in a [`RouteMetrics`] that the snapshot hands
//! to each route, so recording a request is a few relaxed atomic adds: no
//! map lookup, no lock, no allocation. The registry's mutex is taken only
//! when a snapshot is built and when `/metrics` is scraped. Route metrics
//! outlive reloads (counters never go backwards while the process lives).
//!
//! Names (also in the README):
//! - `sidekey_requests_total{route,status}` counter
//! - `sidekey_request_duration_seconds{route}` histogram, request start to end of response body
//! - `sidekey_credential_failovers_total{route,reason}` counter,
//!   `sidekey_credential_keys_rested{route}` gauge,
//!   `sidekey_requests_all_keys_rejected_total{route}` counter
//! - `sidekey_token_refreshes_total{route,result}` counter,
//!   `sidekey_token_expiry_timestamp_seconds{route,credential}` gauge,
//!   `sidekey_token_source_info{route,credential,source}`
//! - `sidekey_reloads_total{result}` counter, `sidekey_reload_duration_seconds` histogram,
//!   `sidekey_last_reload_success_timestamp_seconds` gauge
//! - `sidekey_credential_info{route,credential,location,fingerprint}` gauge (1),
//!   `sidekey_credential_stale_seconds{route,credential,location}` gauge,
//!   `sidekey_config_stale_seconds` gauge
//! - `sidekey_websockets_open` gauge, `sidekey_websockets_total{route,status}`
//!   counter (handshakes by the status answered: 101 opened one),
//!   `sidekey_websocket_bytes_total{route,direction}` counter (`upstream`:
//!   client to provider; `downstream`: provider to client)
//! - `sidekey_connections_open` gauge (client connections and the
//!   WebSockets they became, each holding a place in `limits.max_connections`),
//!   `sidekey_limited_total{limit}` counter (`max_connections`: the accept
//!   loop found no free place; `body_read_timeout`: a body read cut, 408;
//!   `replay_budget`: a request not kept for a fallback because
//!   `limits.max_replay_total` was spent)
//! - `sidekey_build_info{version}` gauge

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http::StatusCode;

/// Upper bounds (seconds) of the latency buckets: LLM calls run from
/// milliseconds (errors, cached answers) to many minutes (long generations).
const DURATION_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Upper bounds (seconds) of the reload duration buckets.
const RELOAD_BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// A histogram of fixed buckets, lock-free.
#[derive(Debug)]
pub(crate) struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    /// Non-cumulative counts; the last slot is `+Inf`.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: &'static [f64; N]) -> Self {
        Self {
            bounds,
            counts: (0..=N).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.iter().position(|b| secs <= *b).unwrap_or(N);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Relaxed);
        }
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Counters of one route. Shared by every snapshot that has the route.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    route: Arc<str>,
    /// Requests by status code, indexed by `status - 100`.
    statuses: StatusCounts,
    duration: Histogram<16>,
    failovers_rejected: AtomicU64,
    failovers_rate_limited: AtomicU64,
    /// Requests whose every key was rejected (no key rested for them).
    all_keys_rejected: AtomicU64,
    tokens_ok: AtomicU64,
    tokens_error: AtomicU64,
    /// WebSocket handshakes by status answered.
    ws_statuses: StatusCounts,
    ws_bytes_up: AtomicU64,
    ws_bytes_down: AtomicU64,
    /// Whether the route has logged that a body was too large to retry
    /// (logged once per route, not per request).
    pub(crate) over_limit_logged: AtomicBool,
}

impl RouteMetrics {
    fn new(route: Arc<str>) -> Self {
        Self {
            route,
            statuses: StatusCounts::new(),
            duration: Histogram::new(&DURATION_BUCKETS),
            failovers_rejected: AtomicU64::new(0),
            failovers_rate_limited: AtomicU64::new(0),
            all_keys_rejected: AtomicU64::new(0),
            tokens_ok: AtomicU64::new(0),
            tokens_error: AtomicU64::new(0),
            ws_statuses: StatusCounts::new(),
            ws_bytes_up: AtomicU64::new(0),
            ws_bytes_down: AtomicU64::new(0),
            over_limit_logged: AtomicBool::new(false),
        }
    }

    /// The route's name (`""` for requests that matched no route).
    pub(crate) fn route(&self) -> &str {
        &self.route
    }

    /// Counts a token request and whether it succeeded.
    pub(crate) fn token_refresh(&self, ok: bool) {
        let counter = if ok {
            &self.tokens_ok
        } else {
            &self.tokens_error
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Counts a switch to another key after the upstream rejected the key
    /// (`rate_limited` false) or rate-limited it (true).
    pub(crate) fn failover(&self, rate_limited: bool) {
        if rate_limited {
            self.failovers_rate_limited.fetch_add(1, Relaxed);
        } else {
            self.failovers_rejected.fetch_add(1, Relaxed);
        }
    }

    /// Counts a request that every key it tried was rejected for.
    pub(crate) fn all_keys_rejected(&self) {
        self.all_keys_rejected.fetch_add(1, Relaxed);
    }

    /// Counts a WebSocket handshake and the status it was answered with.
    pub(crate) fn websocket(&self, status: StatusCode) {
        self.ws_statuses.add(status);
    }

    /// Counts bytes a WebSocket carried: `up` from the client to the
    /// provider, `down` back.
    pub(crate) fn websocket_bytes(&self, up: u64, down: u64) {
        self.ws_bytes_up.fetch_add(up, Relaxed);
        self.ws_bytes_down.fetch_add(down, Relaxed);
    }

    /// Records one finished request.
    pub(crate) fn observe(&self, status: StatusCode, elapsed: Duration) {
        self.statuses.add(status);
        self.duration.observe(elapsed);
    }
}

/// Every metric of the process.
#[derive(Debug)]
pub(crate) struct Metrics {
    routes: Mutex<BTreeMap<Arc<str>, Arc<RouteMetrics>>>,
    /// Requests that matched no route.
    unrouted: Arc<RouteMetrics>,
    reloads_ok: AtomicU64,
    reloads_error: AtomicU64,
    reload_duration: Histogram<8>,
    last_reload_success: AtomicU64,
    /// WebSockets open now.
    websockets_open: AtomicU64,
    /// Client connections holding a place in `limits.max_connections`.
    connections_open: AtomicU64,
    /// Times the accept loop found every place taken ([`Limit::MaxConnections`]).
    limited_connections: AtomicU64,
    /// Body reads cut by [`Limit::BodyReadTimeout`].
    limited_body_reads: AtomicU64,
    /// Requests streamed without replay: the budget's own counter, shared
    /// with it (the replay budget is a leaf and cannot see `Metrics`).
    replay_budget_refused: Arc<AtomicU64>,
}

/// A limit that refused or degraded something (`sidekey_limited_total{limit}`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Limit {
    /// Every place of `limits.max_connections` was taken when the accept
    /// loop wanted to accept: the next connection waits in the backlog.
    MaxConnections,
    /// A body sidekey reads itself did not arrive in `limits.body_read_timeout`.
    BodyReadTimeout,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            routes: Mutex::default(),
            unrouted: Arc::new(RouteMetrics::new(Arc::from(""))),
            reloads_ok: AtomicU64::new(0),
            reloads_error: AtomicU64::new(0),
            reload_duration: Histogram::new(&RELOAD_BUCKETS),
            last_reload_success: AtomicU64::new(0),
            websockets_open: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            limited_connections: AtomicU64::new(0),
            limited_body_reads: AtomicU64::new(0),
            replay_budget_refused: Arc::default(),
        }
    }
}

/// A token source as `/metrics` shows it.
#[derive(Debug)]
pub(crate) struct TokenLive {
    pub(crate) route: String,
    /// The credential's location.
    pub(crate) credential: String,
    /// What kind of source mints it (`web-identity`, `service-account`, ...).
    pub(crate) source: &'static str,
    /// Unix time the current credential expires; 0 without one.
    pub(crate) expiry: u64,
}

/// Values read from the current snapshot when `/metrics` is scraped.
#[derive(Debug, Default)]
pub(crate) struct Live {
    /// Keys resting now, per route.
    pub(crate) rested: Vec<(String, usize)>,
    /// Each token source.
    pub(crate) tokens: Vec<TokenLive>,
    /// Every credential read from a location.
    pub(crate) credentials: Vec<CredentialLive>,
    /// How long the config on disk has not been the one served (0: it is).
    pub(crate) config_stale_seconds: f64,
}

/// One credential as the current snapshot serves it.
#[derive(Debug, Clone)]
pub(crate) struct CredentialLive {
    pub(crate) route: String,
    /// `key`, `deployments.NAME.key`, `headers.NAME`, `credentials`.
    pub(crate) credential: String,
    pub(crate) location: String,
    /// Of the value served; `None` when nothing is (missing).
    pub(crate) fingerprint: Option<String>,
    /// How long the value served has been older than its location (0: it is
    /// current).
    pub(crate) stale_seconds: f64,
}

/// `value` escaped for a Prometheus label (`\`, `"` and newlines).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The result of a reload attempt, as counted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ReloadResult {
    /// A new snapshot went live (or the initial load succeeded).
    Ok,
    /// The new config or a file it names was bad; the last good one stays.
    Error,
}

impl Metrics {
    /// The metrics of `route`, created on first use.
    pub(crate) fn route(&self, route: &str) -> Arc<RouteMetrics> {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = routes.get(route) {
            return m.clone();
        }
        let name: Arc<str> = Arc::from(route);
        let m = Arc::new(RouteMetrics::new(name.clone()));
        routes.insert(name, m.clone());
        m
    }

    /// The metrics for requests that matched no route.
    pub(crate) fn unrouted(&self) -> &Arc<RouteMetrics> {
        &self.unrouted
    }

    /// A WebSocket opened (`true`) or closed.
    pub(crate) fn websocket_open(&self, open: bool) {
        if open {
            self.websockets_open.fetch_add(1, Relaxed);
        } else {
            self.websockets_open.fetch_sub(1, Relaxed);
        }
    }

    /// A client connection took (`true`) or gave back its place.
    pub(crate) fn connection_open(&self, open: bool) {
        if open {
            self.connections_open.fetch_add(1, Relaxed);
        } else {
            self.connections_open.fetch_sub(1, Relaxed);
        }
    }

    /// Counts one refusal by `limit`.
    pub(crate) fn limited(&self, limit: Limit) {
        let counter = match limit {
            Limit::MaxConnections => &self.limited_connections,
            Limit::BodyReadTimeout => &self.limited_body_reads,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// The counter the replay budget adds to when it keeps a request out.
    pub(crate) fn replay_budget_counter(&self) -> Arc<AtomicU64> {
        self.replay_budget_refused.clone()
    }

    /// Connections open and refusals by limit.
    fn render_limits(&self, out: &mut String) {
        out.push_str("# HELP sidekey_connections_open Client connections (and WebSockets) holding a place in limits.max_connections.\n");
        out.push_str("# TYPE sidekey_connections_open gauge\n");
        let _ = writeln!(
            out,
            "sidekey_connections_open {}",
            self.connections_open.load(Relaxed)
        );
        out.push_str(
            "# HELP sidekey_limited_total Times a limit refused or degraded something, by limit.\n",
        );
        out.push_str("# TYPE sidekey_limited_total counter\n");
        for (name, n) in [
            ("max_connections", &self.limited_connections),
            ("body_read_timeout", &self.limited_body_reads),
            ("replay_budget", &*self.replay_budget_refused),
        ] {
            let n = n.load(Relaxed);
            let _ = writeln!(out, "sidekey_limited_total{{limit=\"{name}\"}} {n}");
        }
    }

    /// Counts a reload attempt (the initial load included) and how long it took.
    pub(crate) fn reload(&self, result: ReloadResult, took: Duration) {
        self.reload_duration.observe(took);
        match result {
            ReloadResult::Ok => {
                self.reloads_ok.fetch_add(1, Relaxed);
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.last_reload_success.store(now, Relaxed);
            }
            ReloadResult::Error => {
                self.reloads_error.fetch_add(1, Relaxed);
            }
        }
    }

    /// The Prometheus text exposition of everything; `live` holds what is
    /// read from the current snapshot rather than counted.
    pub(crate) fn render(&self, live: &Live) -> String {
        let mut out = String::with_capacity(4096);
        let routes: Vec<Arc<RouteMetrics>> = {
            let map = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
            map.values()
                .cloned()
                .chain(std::iter::once(self.unrouted.clone()))
                .collect()
        };
        render_requests(&mut out, &routes);
        render_failovers(&mut out, &routes, &live.rested);
        render_tokens(&mut out, &routes, &live.tokens);
        render_credentials(&mut out, live);
        self.render_reloads(&mut out);
        self.render_websockets(&mut out, &routes);
        self.render_limits(&mut out);
        out.push_str("# HELP sidekey_build_info The running version.\n");
        out.push_str("# TYPE sidekey_build_info gauge\n");
        let _ = writeln!(
            out,
            "sidekey_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out
    }

    /// WebSockets open, handshakes and bytes.
    fn render_websockets(&self, out: &mut String, routes: &[Arc<RouteMetrics>]) {
        out.push_str("# HELP sidekey_websockets_open WebSockets open now.\n");
        out.push_str("# TYPE sidekey_websockets_open gauge\n");
        let _ = writeln!(
            out,
            "sidekey_websockets_open {}",
            self.websockets_open.load(Relaxed)
        );
        out.push_str("# HELP sidekey_websockets_total WebSocket handshakes, by route and the status answered (101: opened).\n");
        out.push_str("# TYPE sidekey_websockets_total counter\n");
        for m in routes {
            m.ws_statuses
                .render(out, "sidekey_websockets_total", &m.route);
        }
        out.push_str("# HELP sidekey_websocket_bytes_total Bytes WebSockets carried, by route and direction (upstream: client to provider).\n");
        out.push_str("# TYPE sidekey_websocket_bytes_total counter\n");
        counters(
            out,
            "sidekey_websocket_bytes_total",
            "direction",
            routes,
            |m| {
                [
                    ("upstream", &m.ws_bytes_up),
                    ("downstream", &m.ws_bytes_down),
                ]
            },
        );
    }

    /// Reload counters, duration and last success.
    fn render_reloads(&self, out: &mut String) {
        out.push_str("# HELP sidekey_reloads_total Reload attempts, by result (error: the last good config stayed).\n");
        out.push_str("# TYPE sidekey_reloads_total counter\n");
        let _ = writeln!(
            out,
            "sidekey_reloads_total{{result=\"ok\"}} {}",
            self.reloads_ok.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "sidekey_reloads_total{{result=\"error\"}} {}",
            self.reloads_error.load(Relaxed)
        );
        out.push_str(
            "# HELP sidekey_reload_duration_seconds Time to re-read config and credentials.\n",
        );
        out.push_str("# TYPE sidekey_reload_duration_seconds histogram\n");
        self.reload_duration
            .render(out, "sidekey_reload_duration_seconds", "");
        out.push_str("# HELP sidekey_last_reload_success_timestamp_seconds Unix time of the last successful load.\n");
        out.push_str("# TYPE sidekey_last_reload_success_timestamp_seconds gauge\n");
        let _ = writeln!(
            out,
            "sidekey_last_reload_success_timestamp_seconds {}",
            self.last_reload_success.load(Relaxed)
        );
    }
}

/// A counter per HTTP status (100-599), lock-free.
#[derive(Debug)]
struct StatusCounts(Box<[AtomicU64]>);

impl StatusCounts {
    fn new() -> Self {
        Self((100..600).map(|_| AtomicU64::new(0)).collect())
    }

    fn add(&self, status: StatusCode) {
        if let Some(c) = self.0.get(usize::from(status.as_u16()).wrapping_sub(100)) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// `name{route="...",status="..."} n` for every status seen.
    fn render(&self, out: &mut String, name: &str, route: &str) {
        for (i, c) in self.0.iter().enumerate() {
            let n = c.load(Relaxed);
            if n > 0 {
                let status = i + 100;
                let _ = writeln!(out, "{name}{{route=\"{route}\",status=\"{status}\"}} {n}");
            }
        }
    }
}

/// Requests by route and status, and their durations.
fn render_requests(out: &mut String, routes: &[Arc<RouteMetrics>]) {
    out.push_str("# HELP sidekey_requests_total Requests answered, by route and HTTP status.\n");
    out.push_str("# TYPE sidekey_requests_total counter\n");
    for m in routes {
        m.statuses.render(out, "sidekey_requests_total", &m.route);
    }
    out.push_str("# HELP sidekey_request_duration_seconds Time from request start to the end of the response body, by route.\n");
    out.push_str("# TYPE sidekey_request_duration_seconds histogram\n");
    for m in routes {
        m.duration.render(
            out,
            "sidekey_request_duration_seconds",
            &format!("route=\"{}\"", m.route),
        );
    }
}

/// The non-zero counters `pick` gives for each route, labelled by route
/// and `label`.
fn counters<'m>(
    out: &mut String,
    name: &str,
    label: &str,
    routes: &'m [Arc<RouteMetrics>],
    pick: impl Fn(&'m RouteMetrics) -> [(&'static str, &'m AtomicU64); 2],
) {
    for m in routes {
        for (value, counter) in pick(m) {
            let n = counter.load(Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "{name}{{route=\"{}\",{label}=\"{value}\"}} {n}",
                    m.route
                );
            }
        }
    }
}

/// Failovers by reason, and keys resting now.
fn render_failovers(out: &mut String, routes: &[Arc<RouteMetrics>], rested: &[(String, usize)]) {
    out.push_str("# HELP sidekey_credential_failovers_total Requests sent again with another key, by route and reason (rejected, rate_limited).\n");
    out.push_str("# TYPE sidekey_credential_failovers_total counter\n");
    counters(
        out,
        "sidekey_credential_failovers_total",
        "reason",
        routes,
        |m| {
            [
                ("rejected", &m.failovers_rejected),
                ("rate_limited", &m.failovers_rate_limited),
            ]
        },
    );
    out.push_str("# HELP sidekey_requests_all_keys_rejected_total Requests that every key tried was rejected for: taken as a problem with the request, no key rested.\n");
    out.push_str("# TYPE sidekey_requests_all_keys_rejected_total counter\n");
    for m in routes {
        let n = m.all_keys_rejected.load(Relaxed);
        if n > 0 {
            let _ = writeln!(
                out,
                "sidekey_requests_all_keys_rejected_total{{route=\"{}\"}} {n}",
                m.route
            );
        }
    }
    out.push_str("# HELP sidekey_credential_keys_rested Keys currently rested after a rejection or a 429, by route.\n");
    out.push_str("# TYPE sidekey_credential_keys_rested gauge\n");
    for (route, n) in rested {
        let _ = writeln!(
            out,
            "sidekey_credential_keys_rested{{route=\"{route}\"}} {n}"
        );
    }
}

/// Token requests by result, and each token's source and expiry.
fn render_tokens(out: &mut String, routes: &[Arc<RouteMetrics>], tokens: &[TokenLive]) {
    out.push_str("# HELP sidekey_token_refreshes_total Minted credential requests (Vertex access tokens, AWS temporary credentials), by route and result.\n");
    out.push_str("# TYPE sidekey_token_refreshes_total counter\n");
    counters(
        out,
        "sidekey_token_refreshes_total",
        "result",
        routes,
        |m| [("ok", &m.tokens_ok), ("error", &m.tokens_error)],
    );
    out.push_str("# HELP sidekey_token_expiry_timestamp_seconds Unix time the current minted credential expires (0: none valid), by route and credential.\n");
    out.push_str("# TYPE sidekey_token_expiry_timestamp_seconds gauge\n");
    for t in tokens {
        let _ = writeln!(
            out,
            "sidekey_token_expiry_timestamp_seconds{{route=\"{}\",credential=\"{}\"}} {}",
            t.route,
            label(&t.credential),
            t.expiry
        );
    }
    out.push_str("# HELP sidekey_token_source_info The kind of source each minted credential comes from (1 per credential).\n");
    out.push_str("# TYPE sidekey_token_source_info gauge\n");
    for t in tokens {
        let _ = writeln!(
            out,
            "sidekey_token_source_info{{route=\"{}\",credential=\"{}\",source=\"{}\"}} 1",
            t.route,
            label(&t.credential),
            t.source
        );
    }
}

/// Which value each credential serves, and how stale it is.
fn render_credentials(out: &mut String, live: &Live) {
    out.push_str("# HELP sidekey_credential_info The fingerprint of the value each credential serves now (1 per credential).\n");
    out.push_str("# TYPE sidekey_credential_info gauge\n");
    for c in &live.credentials {
        if let Some(fp) = &c.fingerprint {
            let _ = writeln!(
                out,
                "sidekey_credential_info{{route=\"{}\",credential=\"{}\",location=\"{}\",fingerprint=\"{fp}\"}} 1",
                c.route,
                label(&c.credential),
                label(&c.location)
            );
        }
    }
    out.push_str("# HELP sidekey_credential_stale_seconds How long a credential has served its last good value because its location cannot be applied (0: current).\n");
    out.push_str("# TYPE sidekey_credential_stale_seconds gauge\n");
    for c in &live.credentials {
        let _ = writeln!(
            out,
            "sidekey_credential_stale_seconds{{route=\"{}\",credential=\"{}\",location=\"{}\"}} {:.3}",
            c.route,
            label(&c.credential),
            label(&c.location),
            c.stale_seconds
        );
    }
    out.push_str("# HELP sidekey_config_stale_seconds How long the config on disk has not been applied (0: it is).\n");
    out.push_str("# TYPE sidekey_config_stale_seconds gauge\n");
    let _ = writeln!(
        out,
        "sidekey_config_stale_seconds {:.3}",
        live.config_stale_seconds
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        let r = m.route("openai");
        r.observe(StatusCode::OK, Duration::from_millis(3));
        r.observe(StatusCode::OK, Duration::from_secs(2));
        r.observe(StatusCode::BAD_GATEWAY, Duration::from_millis(1));
        let live = Live {
            rested: vec![("openai".to_owned(), 1)],
            tokens: vec![TokenLive {
                route: "vertex".to_owned(),
                credential: "path::/sa.json".to_owned(),
                source: "service-account",
                expiry: 42,
            }],
            credentials: vec![CredentialLive {
                route: "openai".to_owned(),
                credential: "key".to_owned(),
                location: "path::/k\"ey".to_owned(),
                fingerprint: Some("sha256:1f2e3d4c".to_owned()),
                stale_seconds: 1.5,
            }],
            config_stale_seconds: 0.0,
        };
        let text = m.render(&live);
        assert!(
            text.contains("sidekey_requests_total{route=\"openai\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("sidekey_requests_total{route=\"openai\",status=\"502\"} 1"));
        assert!(
            text.contains(
                "sidekey_request_duration_seconds_bucket{route=\"openai\",le=\"0.005\"} 2"
            )
        );
        assert!(
            text.contains(
                "sidekey_request_duration_seconds_bucket{route=\"openai\",le=\"+Inf\"} 3"
            )
        );
        assert!(text.contains("sidekey_request_duration_seconds_count{route=\"openai\"} 3"));
        assert!(text.contains("sidekey_credential_keys_rested{route=\"openai\"} 1"));
        assert!(text.contains("sidekey_token_expiry_timestamp_seconds{route=\"vertex\",credential=\"path::/sa.json\"} 42"));
        assert!(text.contains("sidekey_token_source_info{route=\"vertex\",credential=\"path::/sa.json\",source=\"service-account\"} 1"));
        assert!(text.contains("sidekey_credential_info{route=\"openai\",credential=\"key\",location=\"path::/k\\\"ey\",fingerprint=\"sha256:1f2e3d4c\"} 1"), "{text}");
        assert!(text.contains("sidekey_credential_stale_seconds{route=\"openai\",credential=\"key\",location=\"path::/k\\\"ey\"} 1.500"));
        assert!(text.contains("sidekey_config_stale_seconds 0.000"));
        assert!(
            Arc::ptr_eq(&r, &m.route("openai")),
            "metrics survive reloads"
        );
    }
}
