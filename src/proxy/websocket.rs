//! WebSocket handshakes and the byte tunnel after them.
//!
//! design.md, "WebSocket: realtime and live APIs". A request with
//! `Upgrade: websocket` takes the request path like any other (route,
//! credentials stripped and injected, fallback on a rejected key); this module
//! adds what differs:
//!
//! - on the way in, [`prepare`] drops a browser's `openai-insecure-api-key.*`
//!   subprotocol (a client credential) and puts back the `Connection` and
//!   `Upgrade` headers the hop-by-hop strip removed, and [`check_model`]
//!   applies the model allowlist to the handshake's `model` query parameter,
//!   the path or the Azure deployment (a handshake has no body);
//! - the upstream client sends it over a new HTTP/1.1 connection (HTTP/2 has
//!   no upgrade);
//! - on `101`, [`switch`] answers the client `101` with the upstream's
//!   handshake headers and spawns the tunnel: both upgraded sockets, copied
//!   byte for byte (no frame parsing) until either side closes; the close is
//!   passed on (the other side's write half is shut down), a socket silent
//!   both ways for `limits.websocket_idle` is closed, and on shutdown
//!   [`Sockets::close_all`] closes what the grace period left open. When it
//!   closes, the tunnel writes one access-log line (route, duration, bytes
//!   each way, which side closed). The tunnel holds the client connection's
//!   place in `limits.max_connections` until it closes.
//!
//! Any other answer to a handshake is passed to the client as it came.

use std::borrow::Cow;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::allowlist;
use super::attempt::Answer;
use super::conn::Place;
use super::strip;
use crate::error::ProxyError;
use crate::metrics::{Metrics, RouteMetrics};
use crate::providers::ModelIn;
use crate::routes::Route;

/// The subprotocol prefix a browser uses to carry an OpenAI key (browsers
/// cannot set headers on a WebSocket).
const INSECURE_KEY_PROTOCOL: &str = "openai-insecure-api-key.";

/// Longest wait for both sides' upgraded sockets once `101` is answered.
const UPGRADE_WAIT: Duration = Duration::from_secs(10);

/// Once one side has closed, how long the other may still send (its close
/// frame) before both sockets are closed.
const CLOSE_LINGER: Duration = Duration::from_secs(10);

/// Copy buffer per direction.
const BUF: usize = 16 << 10;

/// Readies a handshake's headers for the upstream, after
/// [`strip::request`]: the browser's key subprotocol goes (the others stay;
/// the header goes when none is left), and `Connection: Upgrade` and
/// `Upgrade: websocket` come back, for this request only.
pub(crate) fn prepare(headers: &mut HeaderMap) {
    let kept: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.starts_with(INSECURE_KEY_PROTOCOL))
        .map(str::to_owned)
        .collect();
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join(", "))
    {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// The model allowlist for a handshake: the `model` query parameter
/// (OpenAI realtime), the model in the path (Gemini, Vertex, Bedrock), or
/// the Azure deployment. A handshake on a route with a list whose model
/// cannot be told is refused: the list could be bypassed otherwise.
///
/// # Errors
///
/// [`ProxyError::ModelNotAllowed`], [`ProxyError::NoModel`].
pub(crate) fn check_model(
    route: &Route,
    rest: &str,
    deployment: Option<&str>,
    query: Option<&str>,
) -> Result<(), ProxyError> {
    if route.models.is_none() {
        return Ok(());
    }
    let model: Option<Cow<'_, str>> = match route.spec.model_in {
        ModelIn::JsonBody => {
            // Names compared decoded, as the provider reads them; every
            // `model` given must be allowed, whichever one it uses.
            let mut models = query
                .map(|q| form_urlencoded::parse(q.as_bytes()))
                .into_iter()
                .flatten()
                .filter(|(k, _)| k == "model")
                .map(|(_, v)| v);
            let first = models.next();
            if let Some(bad) = models.find(|m| !route.allows(m)) {
                return Err(ProxyError::ModelNotAllowed {
                    route: route.name.to_string(),
                    model: bad.into_owned(),
                });
            }
            first
        }
        ModelIn::AzureDeployment => deployment.map(Cow::Borrowed),
        other => allowlist::path_model(other, rest),
    };
    match model {
        Some(m) if route.allows(&m) => Ok(()),
        Some(m) => Err(ProxyError::ModelNotAllowed {
            route: route.name.to_string(),
            model: m.into_owned(),
        }),
        None => Err(ProxyError::NoModel {
            route: route.name.to_string(),
        }),
    }
}

/// What the tunnel of one WebSocket needs.
#[derive(Debug)]
pub(crate) struct Tunnel {
    pub(crate) route: Arc<RouteMetrics>,
    pub(crate) metrics: Arc<Metrics>,
    /// `limits.websocket_idle`.
    pub(crate) idle: Duration,
    /// Told when shutdown's grace period is over.
    pub(crate) stop: watch::Receiver<bool>,
    /// The handshake's request span: the close line is written in it.
    pub(crate) span: tracing::Span,
    /// The client connection's place in `limits.max_connections`: an open
    /// WebSocket counts against it until it closes.
    #[allow(dead_code, reason = "held for its Drop, which frees the place")]
    pub(crate) place: Option<Place>,
}

/// Answers an upstream `101`: returns the client's `101` headers (the
/// upstream's, hop-by-hop ones aside, plus `Connection` and `Upgrade`) and
/// spawns the tunnel between the two upgraded sockets.
pub(crate) fn switch(mut answer: Answer, client: OnUpgrade, tunnel: Tunnel) -> HeaderMap {
    let upstream = hyper::upgrade::on(&mut answer.response);
    let mut headers = std::mem::take(answer.response.headers_mut());
    strip::hop_by_hop(&mut headers);
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // The connection is the upgrade's: nothing to give back.
    drop(answer);
    let span = tunnel.span.clone();
    tokio::spawn(
        async move {
            let both = async { tokio::try_join!(client, upstream) };
            match tokio::time::timeout(UPGRADE_WAIT, both).await {
                Ok(Ok((client, upstream))) => run(client, upstream, tunnel).await,
                Ok(Err(e)) => tracing::warn!(error = %e, "websocket upgrade failed"),
                Err(_) => tracing::warn!("websocket upgrade did not complete in time"),
            }
        }
        .instrument(span),
    );
    headers
}

/// Which side ended a WebSocket, for the access log.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Closer {
    Client,
    Upstream,
    /// A read or write failed (a reset connection).
    Error,
    /// No byte either way for `limits.websocket_idle`.
    Idle,
    /// Shutdown's grace period ended.
    Shutdown,
}

impl Closer {
    fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Upstream => "upstream",
            Self::Error => "error",
            Self::Idle => "idle_timeout",
            Self::Shutdown => "shutdown",
        }
    }
}

/// Counts the socket as open while it lives (also through a panic).
struct OpenGuard(Arc<Metrics>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.websocket_open(false);
    }
}

/// Copies both ways until the sockets close, then logs the socket.
async fn run(client: Upgraded, upstream: Upgraded, mut t: Tunnel) {
    t.metrics.websocket_open(true);
    let _open = OpenGuard(t.metrics.clone());
    let start = Instant::now();
    let counts = Counts::default();
    let closer = {
        let (cr, cw) = tokio::io::split(TokioIo::new(client));
        let (ur, uw) = tokio::io::split(TokioIo::new(upstream));
        let up = pump(cr, uw, Dir::Up, &counts, &t.route, start);
        let down = pump(ur, cw, Dir::Down, &counts, &t.route, start);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        let mut closer = None;
        let mut linger = None;
        loop {
            let quiet_since = start + Duration::from_millis(counts.last.load(Relaxed));
            let linger_at = linger.unwrap_or(quiet_since + t.idle);
            tokio::select! {
                r = &mut up, if !up_done => {
                    up_done = true;
                    let who = if r.is_ok() { Closer::Client } else { Closer::Error };
                    closer.get_or_insert(who);
                    if r.is_err() { break; }
                    linger = Some(Instant::now() + CLOSE_LINGER);
                }
                r = &mut down, if !down_done => {
                    down_done = true;
                    let who = if r.is_ok() { Closer::Upstream } else { Closer::Error };
                    closer.get_or_insert(who);
                    if r.is_err() { break; }
                    linger = Some(Instant::now() + CLOSE_LINGER);
                }
                () = tokio::time::sleep_until(quiet_since + t.idle) => {
                    let last = start + Duration::from_millis(counts.last.load(Relaxed));
                    if Instant::now() >= last + t.idle {
                        closer.get_or_insert(Closer::Idle);
                        break;
                    }
                }
                () = tokio::time::sleep_until(linger_at), if linger.is_some() => break,
                () = stopped(&mut t.stop) => {
                    closer.get_or_insert(Closer::Shutdown);
                    break;
                }
            }
            if up_done && down_done {
                break;
            }
        }
        // Leaving this block drops both sockets: whatever is still open closes.
        closer.unwrap_or(Closer::Error)
    };
    let elapsed = start.elapsed();
    tracing::info!(
        target: "sidekey::access",
        route = t.route.route(),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        bytes_up = counts.up.load(Relaxed),
        bytes_down = counts.down.load(Relaxed),
        closed_by = closer.as_str(),
        "websocket closed"
    );
}

/// Resolves once shutdown says to close (or sidekey's server is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        let now = *stop.borrow_and_update();
        if now {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// A direction: `Up` from the client to the provider.
#[derive(Clone, Copy, Debug)]
enum Dir {
    Up,
    Down,
}

/// Bytes each way, and the last time one moved (ms after the start).
#[derive(Default, Debug)]
struct Counts {
    up: AtomicU64,
    down: AtomicU64,
    last: AtomicU64,
}

/// Copies `from` to `to` until `from` ends, then shuts `to`'s write half so
/// the close reaches the other side.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    dir: Dir,
    counts: &Counts,
    route: &RouteMetrics,
    start: Instant,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = from.read(&mut buf).await?;
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            return to.shutdown().await;
        };
        to.write_all(chunk).await?;
        // TLS buffers what is written until flushed.
        to.flush().await?;
        let n = n as u64;
        match dir {
            Dir::Up => {
                counts.up.fetch_add(n, Relaxed);
                route.websocket_bytes(n, 0);
            }
            Dir::Down => {
                counts.down.fetch_add(n, Relaxed);
                route.websocket_bytes(0, n);
            }
        }
        let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        counts.last.store(ms, Relaxed);
    }
}

/// The open WebSockets, so shutdown can wait for them (the grace period)
/// and then close them. Each tunnel holds a receiver of the stop signal.
#[derive(Debug)]
pub(crate) struct Sockets {
    stop: watch::Sender<bool>,
}

impl Default for Sockets {
    fn default() -> Self {
        Self {
            stop: watch::Sender::new(false),
        }
    }
}

impl Sockets {
    /// A tunnel's stop signal.
    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// How many WebSockets are open (or upgrading).
    pub(crate) fn open(&self) -> usize {
        self.stop.receiver_count()
    }

    /// Resolves when none is open.
    pub(crate) async fn closed(&self) {
        self.stop.closed().await;
    }

    /// Tells every WebSocket, and any opened from now on, to close.
    pub(crate) fn close_all(&self) {
        self.stop.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_key_subprotocol_goes_and_the_others_stay() {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "realtime, openai-insecure-api-key.sk-dummy, openai-beta.realtime-v1"
                .parse()
                .unwrap(),
        );
        prepare(&mut h);
        assert_eq!(
            h[header::SEC_WEBSOCKET_PROTOCOL],
            "realtime, openai-beta.realtime-v1"
        );
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "Upgrade");

        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "openai-insecure-api-key.sk-dummy".parse().unwrap(),
        );
        prepare(&mut h);
        assert!(!h.contains_key(header::SEC_WEBSOCKET_PROTOCOL));
    }
}
