//! The pooled hyper-util client used for every upstream request.

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::UpstreamBody;

type Inner = LegacyClient<HttpsConnector<HttpConnector>, UpstreamBody>;

/// Idle keep-alive connections kept per upstream host.
const MAX_IDLE_PER_HOST: usize = 256;

/// A pooled client: cheap to clone, shares one pool per upstream host.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    inner: Arc<Inner>,
    /// What the client was built from (trust roots, timeouts), so a reload
    /// can tell whether a route's client changed.
    id: Arc<[u8]>,
}

impl Client {
    /// A client with the given TLS config and connect timeout.
    pub(crate) fn new(tls: rustls::ClientConfig, connect_timeout: Duration, id: Vec<u8>) -> Self {
        let mut http = HttpConnector::new();
        // The connector also dials https:// (the TLS layer wraps it).
        http.enforce_http(false);
        // Server-sent events are many small writes: never wait to batch them.
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let inner = LegacyClient::builder(TokioExecutor::new())
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
        Self {
            inner: Arc::new(inner),
            id: id.into(),
        }
    }

    /// What the client was built from.
    pub(crate) fn id(&self) -> &[u8] {
        &self.id
    }

    /// Whether `self` and `other` share a pool.
    pub(crate) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Sends `req`; resolves when the response head arrives.
    pub(crate) fn request(
        &self,
        req: http::Request<UpstreamBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        self.inner.request(req)
    }
}
