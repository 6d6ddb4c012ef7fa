//! Listeners and connections: accept, serve HTTP/1.1 and h2c, drain on shutdown.
//!
//! design.md, "Operations" → Shutdown. Each accepted socket gets TCP_NODELAY
//! (server-sent events must not wait for Nagle); its first bytes, peeked at,
//! tell HTTP/1.1 from prior-knowledge h2c ([`first_bytes::sniff`]), and
//! hyper's server for that protocol serves it directly on the socket. The
//! HTTP/1 header-read timeout (slowloris guard, and idle timeout of
//! keep-alive connections) needs a timer to take effect, so one is set: a
//! connection's own, which lends one `Sleep` to each head read in turn
//! ([`crate::timer`]). On
//! shutdown: `/readyz` turns 503, new connections are still accepted for
//! `shutdown.drain_delay`, then the listener closes and requests in flight
//! and open WebSockets get up to `shutdown.grace_period` to finish; the
//! WebSockets still open then are closed.
//!
//! The optional TLS listener (`tls_listen`) serves the same service with the
//! same settings and the same drain ([`drain`]): each accepted socket gets
//! TCP_NODELAY, then a TLS handshake (bounded by `limits.header_read_timeout`)
//! with the server config of the snapshot serving at that moment, so a
//! rotated certificate reaches new connections; ALPN then says the protocol
//! (`h2` is HTTP/2, anything else or nothing HTTP/1.1, RFC 9113 §3.2).
//!
//! Limits (design.md, "Operations"): both listeners share one budget of
//! `limits.max_connections` places. The accept loop takes a place *before*
//! it accepts, so beyond the limit new connections wait in the kernel's
//! accept queue; the place goes with the connection and back when it ends,
//! or with the WebSocket it became ([`crate::proxy::conn`]). A connection
//! must show its protocol within `limits.header_read_timeout`
//! ([`first_bytes`]), then HTTP/1 heads are bounded by hyper's header-read
//! timer and `limits.max_header_bytes` (431), HTTP/2 header lists by the
//! same size (431). An HTTP/2 connection that opens no stream is held while
//! its peer answers the keep-alive pings (it keeps its place), and closed
//! when it stops answering.

mod drain;
mod first_bytes;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::metrics::{Limit, Metrics};
use crate::proxy::conn::{Conn, Place};
use crate::proxy::{self, websocket::Sockets};
use crate::reload::Shared;
use crate::timer::ConnTimer;
use drain::Drain;
use first_bytes::Protocol;

/// Pause after a failed `accept` (for example, out of file descriptors), so
/// the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Longest wait, after the grace period, for WebSockets to close and log.
const WEBSOCKET_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Accepts from the TLS listener, or never when there is none.
async fn accept_tls(tls: Option<&TcpListener>) -> std::io::Result<TcpStream> {
    match tls {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// Which listener a connection came from.
enum Accepted {
    Plain(TcpStream),
    Tls(TcpStream),
}

/// Both listeners and the places (`limits.max_connections`) they share.
struct Listeners {
    plain: TcpListener,
    tls: Option<TcpListener>,
    places: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    /// The limit was reached once: said in the log, then only counted.
    warned: bool,
}

impl Listeners {
    /// Waits for a free place, then for a connection on either listener.
    /// Cancel-safe: a place taken for an accept that is cancelled goes back.
    async fn next(&mut self) -> (Place, Accepted) {
        let permit = match self.places.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.metrics.limited(Limit::MaxConnections);
                if !std::mem::replace(&mut self.warned, true) {
                    tracing::warn!(
                        "limits.max_connections reached: new connections wait in the accept queue (logged once; see sidekey_limited_total)"
                    );
                }
                match self.places.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    // The semaphore is never closed.
                    Err(_) => std::future::pending().await,
                }
            }
        };
        loop {
            let accepted = tokio::select! {
                a = self.plain.accept() => a.map(|(s, _)| Accepted::Plain(s)),
                a = accept_tls(self.tls.as_ref()) => a.map(Accepted::Tls),
            };
            match accepted {
                Ok(conn) => return (Place::new(permit, self.metrics.clone()), conn),
                Err(e) => {
                    // For example, out of file descriptors: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
}

/// How accepted connections are served: hyper's HTTP/1.1 and HTTP/2
/// servers with sidekey's settings, and the drain that watches them. One,
/// shared by every connection task.
struct Serving {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    drain: Arc<Drain>,
}

impl Serving {
    /// Serves one connection whose protocol is known, watched by the drain.
    async fn serve<I, S>(&self, io: I, protocol: Protocol, svc: S)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        S: hyper::service::HttpService<hyper::body::Incoming> + Clone,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        S::ResBody: Send + 'static,
        <S::ResBody as hyper::body::Body>::Data: Send,
        <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let served = match protocol {
            Protocol::Http1 => {
                // The connection's own timer: it lends one `Sleep` to each
                // head read in turn (`crate::timer`).
                let mut h1 = self.h1.clone();
                h1.timer(ConnTimer::default());
                let conn = h1.serve_connection(io, svc).with_upgrades();
                self.drain
                    .watch(conn, http1::UpgradeableConnection::graceful_shutdown)
                    .await
            }
            Protocol::Http2 => {
                let conn = self.h2.serve_connection(io, svc);
                self.drain
                    .watch(conn, http2::Connection::graceful_shutdown)
                    .await
            }
        };
        if let Err(e) = served {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// `step`'s value if it succeeds within `limit`; otherwise `None`, with
/// the reason at debug (`what` names the step).
async fn within<T>(
    limit: Duration,
    step: impl Future<Output = std::io::Result<T>>,
    what: &str,
) -> Option<T> {
    match tokio::time::timeout(limit, step).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "{what} failed");
            None
        }
        Err(_) => {
            tracing::debug!("{what} timed out (limits.header_read_timeout)");
            None
        }
    }
}

/// Sets TCP_NODELAY: server-sent events must not wait for Nagle.
fn nodelay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
}

/// Whether a listener is bound to a loopback address (the host check).
fn is_loopback(l: &TcpListener) -> bool {
    l.local_addr().is_ok_and(|a| a.ip().is_loopback())
}

/// Serves the proxy port (and the TLS listener, when there is one) until
/// `shutdown` resolves, then drains.
pub(crate) async fn serve_proxy(
    listener: TcpListener,
    tls: Option<TcpListener>,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) {
    // Read once: changing them needs a restart (the reloader says so).
    let limits = shared.snapshot().config.limits.clone();
    let header_read_timeout = limits.header_read_timeout;
    // Validated: at least hyper's minimum of 8 KiB, at most 4 GiB.
    let max_header_bytes = usize::try_from(limits.max_header_bytes)
        .unwrap_or(usize::MAX)
        .max(8192);

    // The timer is set per connection (`Serving::serve`).
    let mut h1 = http1::Builder::new();
    h1.header_read_timeout(header_read_timeout)
        // The whole head must fit: 431 beyond it.
        .max_buf_size(max_header_bytes)
        // A response head and its body (or an event) go out in one write():
        // hyper copies the body after the head rather than queueing both for
        // writev. Bodies are small or streamed in small chunks, so the copy
        // costs less than the queue (measured with callgrind).
        .writev(false);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));

    let drain = Arc::new(Drain::default());
    let serving = Arc::new(Serving {
        h1,
        h2,
        drain: drain.clone(),
    });
    // Upgraded connections leave hyper (and the drain): WebSockets are
    // tracked here, for the grace period.
    let sockets = Arc::new(Sockets::default());
    // One service per connection: its requests share the connection's place.
    let service = |loopback: bool, place: Place| {
        let shared = shared.clone();
        let conn = Conn::new(sockets.clone(), loopback, place);
        service_fn(move |req| proxy::handle(shared.clone(), conn.clone(), req))
    };
    let loopback = is_loopback(&listener);
    let tls_loopback = tls.as_ref().is_some_and(is_loopback);

    let accept_one = |stream: TcpStream, place: Place| {
        nodelay(&stream);
        let serving = serving.clone();
        let svc = service(loopback, place);
        tokio::spawn(async move {
            let sniffed = within(
                header_read_timeout,
                first_bytes::sniff(&stream),
                "reading the first bytes",
            );
            // `None` inside: the client closed before its first bytes told.
            let Some(Some(protocol)) = sniffed.await else {
                return;
            };
            serving.serve(TokioIo::new(stream), protocol, svc).await;
        });
    };
    // A TLS connection: the handshake runs in its own task, with the server
    // config of the snapshot serving now; ALPN says the protocol.
    let accept_tls_one = |stream: TcpStream, place: Place| {
        nodelay(&stream);
        let Some(config) = shared.snapshot().tls.as_ref().map(|t| t.config()) else {
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let serving = serving.clone();
        let svc = service(tls_loopback, place);
        tokio::spawn(async move {
            let handshake = acceptor.accept(stream);
            let Some(stream) = within(header_read_timeout, handshake, "TLS handshake").await else {
                return;
            };
            let protocol = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                Protocol::Http2
            } else {
                Protocol::Http1
            };
            serving.serve(TokioIo::new(stream), protocol, svc).await;
        });
    };

    let serve = |(place, accepted): (Place, Accepted)| match accepted {
        Accepted::Plain(stream) => accept_one(stream, place),
        Accepted::Tls(stream) => accept_tls_one(stream, place),
    };
    let mut listeners = Listeners {
        plain: listener,
        tls,
        places: Arc::new(Semaphore::new(
            limits.max_connections.min(Semaphore::MAX_PERMITS),
        )),
        metrics: shared.reg.metrics.clone(),
        warned: false,
    };

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            next = listeners.next() => serve(next),
            () = &mut shutdown => break,
        }
    }

    shared.start_draining();
    // The settings in force now, after any reload.
    let settings = shared.snapshot().config.shutdown.clone();
    tracing::info!(
        drain_delay_ms = millis(settings.drain_delay),
        grace_period_ms = millis(settings.grace_period),
        "shutdown requested: readiness is now failing"
    );
    if !settings.drain_delay.is_zero() {
        // Classic (non-native) sidecars: the app may still be sending.
        let delay = tokio::time::sleep(settings.drain_delay);
        tokio::pin!(delay);
        loop {
            tokio::select! {
                next = listeners.next() => serve(next),
                () = &mut delay => break,
            }
        }
    }
    drop(listeners);

    let open = drain.count();
    let websockets = sockets.open();
    let drained = async {
        drain.shutdown().await;
        sockets.closed().await;
    };
    tokio::select! {
        () = drained => tracing::info!(connections = open, websockets, "drained: every request in flight finished"),
        () = tokio::time::sleep(settings.grace_period) => {
            tracing::warn!(websockets = sockets.open(), "grace period over: closing connections that are still busy");
        }
    }
    // WebSockets still open are closed now; their close lines are written
    // before sidekey exits.
    sockets.close_all();
    let _ = tokio::time::timeout(WEBSOCKET_CLOSE_WAIT, sockets.closed()).await;
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
