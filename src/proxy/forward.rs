//! Sending the prepared request upstream, with the error mapping for what can
//! go wrong before a response head arrives.
//!
//! A refused or failing connection is a fast 502 naming the route and the
//! upstream host (never the path or query, which may carry a key); no response
//! head within `limits.request_timeout` is a 504. Once a head has arrived the
//! request is the provider's answer, whatever its status. The returned guard
//! holds the request's place on its upstream connection until the response
//! body ends.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::routes::Route;
use crate::upstream::{LaneGuard, UpstreamBody};

/// Sends `req` through the route's client.
///
/// # Errors
///
/// [`ProxyError::UpstreamUnreachable`] or [`ProxyError::UpstreamTimeout`].
pub(crate) async fn send(
    route: &Route,
    host: &str,
    req: Request<UpstreamBody>,
    timeout: Duration,
) -> Result<(Response<Incoming>, LaneGuard), ProxyError> {
    match tokio::time::timeout(timeout, route.client.send(req)).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(ProxyError::UpstreamUnreachable {
            route: route.name.to_string(),
            upstream: host.to_owned(),
            reason: e.to_string(),
        }),
        Err(_) => Err(ProxyError::UpstreamTimeout {
            route: route.name.to_string(),
            upstream: host.to_owned(),
            after: timeout,
        }),
    }
}
