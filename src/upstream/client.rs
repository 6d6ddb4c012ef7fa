//! The upstream client: one per trust configuration, holding the
//! connections to every host its routes and token endpoints reach.
//!
//! Built on `hyper::client::conn` rather than a general-purpose pool: a
//! sidecar talks to a handful of hosts, all known from the config, so a
//! client keeps one [`Endpoint`] per host in a small fixed table, found by
//! comparing the request's scheme and authority with the few entries there
//! (no pool key built or hashed per request, no lock). The endpoint holds the
//! connections themselves ([`super::endpoint`]); dialing is
//! [`super::connect`].

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

use super::UpstreamBody;
use super::connect::{Dialer, Target};
use super::endpoint::{Endpoint, LaneGuard};
use super::error::Error;
use super::sending::Sending;

/// Most upstream hosts one client pools connections for; a request to a
/// further host still works, over connections of its own.
const MAX_HOSTS: usize = 64;

#[derive(Debug)]
struct Inner {
    dialer: Dialer,
    per_lane: usize,
    hosts: Box<[OnceLock<Arc<Endpoint>>]>,
}

/// An upstream client: cheap to clone (clones share connections).
#[derive(Clone, Debug)]
pub(crate) struct Client {
    inner: Arc<Inner>,
    /// What the client was built from (trust roots, timeouts), so a reload
    /// can tell whether a route's client changed.
    id: Arc<[u8]>,
}

impl Client {
    /// A client with the given TLS config, connect timeout, and HTTP/2
    /// requests per connection before another connection opens.
    pub(crate) fn new(
        tls: rustls::ClientConfig,
        connect_timeout: Duration,
        per_lane: usize,
        id: Vec<u8>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                dialer: Dialer::new(tls, connect_timeout),
                per_lane,
                hosts: (0..MAX_HOSTS).map(|_| OnceLock::new()).collect(),
            }),
            id: id.into(),
        }
    }

    /// Sends `req` (absolute URI); resolves when the response head arrives.
    /// The guard holds the connection and must live as long as the response
    /// body.
    ///
    /// # Errors
    ///
    /// [`Error`]: a bad URI, no connection, or a connection that failed
    /// before the response head.
    pub(crate) fn send(
        &self,
        req: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<(Response<Incoming>, LaneGuard), Error>> + Send + '_ {
        match self.endpoint(req.uri()) {
            // Only a WebSocket handshake keeps `Upgrade` (the request path
            // strips it as hop-by-hop otherwise): it needs HTTP/1.1.
            Ok(endpoint) if req.headers().contains_key(http::header::UPGRADE) => Sending::Dialing {
                fut: Box::pin(endpoint.send_upgrade(&self.inner.dialer, req)),
            },
            Ok(endpoint) => endpoint.send(&self.inner.dialer, req),
            Err(error) => Sending::Failed { error: Some(error) },
        }
    }

    /// What the client was built from.
    pub(crate) fn id(&self) -> &[u8] {
        &self.id
    }

    /// Whether `self` and `other` share their connections.
    pub(crate) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The endpoint for `uri`'s host, made on first use.
    fn endpoint(&self, uri: &http::Uri) -> Result<Arc<Endpoint>, Error> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(Error::Uri("the scheme must be http or https")),
        };
        let authority = uri.authority().ok_or(Error::Uri("no host"))?;
        let per_lane = self.inner.per_lane;
        for cell in self.inner.hosts.iter() {
            let endpoint = match cell.get() {
                Some(e) => e,
                None => {
                    let fresh = Endpoint::new(Target::new(https, authority)?, per_lane);
                    // Another request may fill the cell first: then it is
                    // checked like any other.
                    let _ = cell.set(Arc::new(fresh));
                    match cell.get() {
                        Some(e) => e,
                        None => continue,
                    }
                }
            };
            if endpoint.target.is(https, authority) {
                return Ok(endpoint.clone());
            }
        }
        let target = Target::new(https, authority)?;
        Ok(Arc::new(Endpoint::new(target, per_lane)))
    }

    #[cfg(test)]
    pub(crate) fn endpoint_for(&self, uri: &str) -> Arc<Endpoint> {
        #[allow(clippy::unwrap_used, reason = "test helper")]
        self.endpoint(&uri.parse().unwrap()).unwrap()
    }
}
