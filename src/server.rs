//! Listeners and connections: accept, serve HTTP/1.1 and h2c, drain on shutdown.
//!
//! design.md, "Operations" → Shutdown. Each accepted socket gets TCP_NODELAY
//! (server-sent events must not wait for Nagle) and is served by hyper-util's
//! auto builder, which speaks HTTP/1.1 and prior-knowledge h2c on the same
//! port. The HTTP/1 header-read timeout (slowloris guard, and idle timeout of
//! keep-alive connections) needs a timer to take effect, so one is set. On
//! shutdown: `/readyz` turns 503, new connections are still accepted for
//! `shutdown.drain_delay`, then the listener closes and requests in flight
//! and open WebSockets get up to `shutdown.grace_period` to finish; the
//! WebSockets still open then are closed.
//!
//! The optional TLS listener (`tls_listen`) serves the same service through
//! the same builder and the same drain: each accepted socket gets TCP_NODELAY,
//! then a TLS handshake (bounded by `limits.header_read_timeout`) with the
//! server config of the snapshot serving at that moment, so a rotated
//! certificate reaches new connections.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::proxy::{self, websocket::Sockets};
use crate::reload::Shared;

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
    // Read once: changing it needs a restart (the reloader says so).
    let header_read_timeout = shared.snapshot().config.limits.header_read_timeout;

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        // A response head and its body (or an event) go out in one write():
        // hyper copies the body after the head rather than queueing both for
        // writev. Bodies are small or streamed in small chunks, so the copy
        // costs less than the queue (measured with callgrind).
        .writev(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));

    let graceful = GracefulShutdown::new();
    // Upgraded connections leave hyper (and `graceful`): WebSockets are
    // tracked here, for the grace period.
    let sockets = Arc::new(Sockets::default());
    let service = |loopback: bool| {
        let shared = shared.clone();
        let sockets = sockets.clone();
        service_fn(move |req| proxy::handle(shared.clone(), sockets.clone(), loopback, req))
    };
    let svc = service(is_loopback(&listener));
    let tls_svc = service(tls.as_ref().is_some_and(is_loopback));

    let accept_one = |stream: TcpStream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc.clone())
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    };
    // A TLS connection: the handshake runs in its own task, with the server
    // config of the snapshot serving now; the connection is watched by the
    // drain from accept on.
    let accept_tls_one = |stream: TcpStream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let Some(config) = shared.snapshot().tls.as_ref().map(|t| t.config()) else {
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let builder = builder.clone();
        let svc = tls_svc.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                };
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    };

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => accept_one(stream),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            accepted = accept_tls(tls.as_ref()) => match accepted {
                Ok(stream) => accept_tls_one(stream),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on the TLS listener");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
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
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => accept_one(stream),
                    // Out of file descriptors: pause rather than spin.
                    Err(_) => tokio::time::sleep(ACCEPT_ERROR_PAUSE).await,
                },
                accepted = accept_tls(tls.as_ref()) => match accepted {
                    Ok(stream) => accept_tls_one(stream),
                    Err(_) => tokio::time::sleep(ACCEPT_ERROR_PAUSE).await,
                },
                () = &mut delay => break,
            }
        }
    }
    drop(listener);
    drop(tls);

    let open = graceful.count();
    let websockets = sockets.open();
    let drained = async {
        graceful.shutdown().await;
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
