//! Opening one upstream connection: resolve, TCP, TLS with ALPN, then the
//! HTTP/1.1 or HTTP/2 handshake that ALPN chose.
//!
//! Every socket gets TCP_NODELAY (server-sent events are many small writes)
//! and TCP keep-alive. `limits.connect_timeout` bounds the whole of it (DNS,
//! TCP, TLS, HTTP handshake); when a name resolves to several addresses each
//! gets an equal share, in order. `https://` offers ALPN `h2` and `http/1.1`;
//! `http://` speaks HTTP/1.1 (no h2c). The connection's own task is spawned
//! here: HTTP/1 connections with upgrades enabled, so a `101 Switching
//! Protocols` answer hands the socket over through `hyper::upgrade::on`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use http::uri::Authority;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::UpstreamBody;
use super::error::ConnectError;

/// TCP keep-alive probe delay, as the previous client had.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// HTTP/2 PING interval and the wait for its answer (a dead peer is noticed
/// even while a long stream is silent).
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a connection goes, worked out once per upstream host.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) https: bool,
    pub(crate) authority: Authority,
    /// The host without IPv6 brackets, for DNS.
    host: Box<str>,
    port: u16,
    /// The `Host` header HTTP/1.1 requests carry: the host, and the port
    /// unless it is the scheme's default.
    pub(crate) host_header: HeaderValue,
    server_name: ServerName<'static>,
}

impl Target {
    /// The target for `authority` over `https` or plain `http`.
    ///
    /// # Errors
    ///
    /// [`ConnectError::ServerName`] when the host is neither a DNS name nor
    /// an IP address.
    pub(crate) fn new(https: bool, authority: &Authority) -> Result<Self, ConnectError> {
        let shown = authority.host();
        let host = shown.trim_start_matches('[').trim_end_matches(']');
        let bad = || ConnectError::ServerName(host.into());
        let default_port = if https { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default_port);
        let host_header = if port == default_port {
            HeaderValue::from_str(shown)
        } else {
            HeaderValue::from_str(&format!("{shown}:{port}"))
        }
        .map_err(|_| bad())?;
        let server_name = ServerName::try_from(host.to_owned()).map_err(|_| bad())?;
        Ok(Self {
            https,
            authority: authority.clone(),
            host: host.into(),
            port,
            host_header,
            server_name,
        })
    }

    /// Whether this is the target for `authority` over `https`.
    pub(crate) fn is(&self, https: bool, authority: &Authority) -> bool {
        self.https == https && self.authority.as_str() == authority.as_str()
    }
}

/// A new connection, ready for its first request.
#[derive(Debug)]
pub(crate) enum Conn {
    H1(http1::SendRequest<UpstreamBody>),
    H2(http2::SendRequest<UpstreamBody>),
}

/// Opens connections with one TLS config and connect timeout.
pub(crate) struct Dialer {
    tls: TlsConnector,
    /// The same trust, offering ALPN `http/1.1` only: for protocol
    /// upgrades (WebSocket), which HTTP/2 cannot carry.
    tls_h1: TlsConnector,
    connect_timeout: Duration,
    h2: http2::Builder<TokioExecutor>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// A dialer trusting what `tls` trusts, offering ALPN h2 and http/1.1.
    pub(crate) fn new(mut tls: rustls::ClientConfig, connect_timeout: Duration) -> Self {
        let mut tls_h1 = tls.clone();
        tls_h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT);
        Self {
            tls: TlsConnector::from(Arc::new(tls)),
            tls_h1: TlsConnector::from(Arc::new(tls_h1)),
            connect_timeout,
            h2,
        }
    }

    /// A new connection to `target`, its task spawned.
    ///
    /// # Errors
    ///
    /// [`ConnectError`] naming the step that failed.
    pub(crate) async fn dial(&self, target: &Target) -> Result<Conn, ConnectError> {
        self.dial_with(target, &self.tls).await
    }

    /// A new HTTP/1.1 connection to `target` (ALPN offers nothing else).
    ///
    /// # Errors
    ///
    /// As [`Self::dial`].
    pub(crate) async fn dial_http1(&self, target: &Target) -> Result<Conn, ConnectError> {
        self.dial_with(target, &self.tls_h1).await
    }

    async fn dial_with(&self, target: &Target, tls: &TlsConnector) -> Result<Conn, ConnectError> {
        let limit = self.connect_timeout;
        tokio::time::timeout(limit, self.dial_inner(target, tls))
            .await
            .map_err(|_| ConnectError::Timeout(limit))?
    }

    async fn dial_inner(&self, target: &Target, tls: &TlsConnector) -> Result<Conn, ConnectError> {
        let tcp = tcp(target, self.connect_timeout).await?;
        if !target.https {
            return handshake_h1(Io::Plain(tcp)).await;
        }
        let tls = tls
            .connect(target.server_name.clone(), tcp)
            .await
            .map_err(ConnectError::Tls)?;
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            let io = TokioIo::new(Io::Tls(Box::new(tls)));
            let (tx, conn) = self
                .h2
                .handshake(io)
                .await
                .map_err(ConnectError::Handshake)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                }
            });
            return Ok(Conn::H2(tx));
        }
        handshake_h1(Io::Tls(Box::new(tls))).await
    }
}

async fn handshake_h1(io: Io) -> Result<Conn, ConnectError> {
    // Over TLS a request's head and body go out as one write: rustls copies
    // both into one record either way, and a vectored write would first
    // collect the slices in a vector of its own (an allocation per request).
    let writev = matches!(io, Io::Plain(_));
    let (tx, conn) = http1::Builder::new()
        .writev(writev)
        .handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream HTTP/1 connection ended with an error");
        }
    });
    Ok(Conn::H1(tx))
}

/// A TCP connection to the first address of `target` that answers.
async fn tcp(target: &Target, limit: Duration) -> Result<TcpStream, ConnectError> {
    let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => tokio::net::lookup_host((&*target.host, target.port))
            .await
            .map_err(|e| ConnectError::Resolve {
                host: target.host.clone(),
                reason: e.to_string(),
            })?
            .collect(),
    };
    let share = limit / u32::try_from(addrs.len()).unwrap_or(u32::MAX).max(1);
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                configure(&stream);
                return Ok(stream);
            }
            Ok(Err(e)) => last = Some(ConnectError::Tcp(e)),
            Err(_) => last = Some(ConnectError::Timeout(share)),
        }
    }
    Err(last.unwrap_or_else(|| ConnectError::Resolve {
        host: target.host.clone(),
        reason: "no address".to_owned(),
    }))
}

/// TCP_NODELAY and keep-alive; a failure only costs latency, so it is logged.
fn configure(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY upstream");
    }
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "could not set TCP keep-alive upstream");
    }
}

/// A plain or TLS socket, so both share one HTTP code path.
#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
