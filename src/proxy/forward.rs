//! Sending the prepared request upstream, with the error mapping for what can
//! go wrong before a response head arrives.
//!
//! A refused or failing connection is a fast 502 naming the route and the
//! upstream host (never the path or query, which may carry a key); no response
//! head within `limits.request_timeout` is a 504. Once a head has arrived the
//! request is the provider's answer, whatever its status. The returned guard
//! holds the request's place on its upstream connection until the response
//! body ends.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::routes::Route;
use crate::timer::{self, Reused, Within};
use crate::upstream::{Error, LaneGuard, UpstreamBody};

/// Sends `req` through the route's client. The request is handed to a
/// connection at once; the returned future (small: it is moved into each
/// caller's state) waits for the response head, with the connection's
/// timer (`head_wait`, [`crate::timer`]) set to `timeout`.
///
/// # Errors
///
/// [`ProxyError::UpstreamUnreachable`] or [`ProxyError::UpstreamTimeout`].
pub(crate) fn send<'a>(
    route: &'a Route,
    host: &'a str,
    req: Request<UpstreamBody>,
    timeout: Duration,
    head_wait: &'a Reused,
) -> impl Future<Output = Result<(Response<Incoming>, LaneGuard), ProxyError>> + Send + 'a {
    Forward {
        head: timer::within(head_wait, timeout, route.client.send(req)),
        route,
        host,
        after: timeout,
    }
}

pin_project_lite::pin_project! {
    /// The response head, or the error naming route and host.
    struct Forward<'a, F> {
        #[pin]
        head: Within<&'a Reused, F>,
        route: &'a Route,
        host: &'a str,
        after: Duration,
    }
}

impl<F> Future for Forward<'_, F>
where
    F: Future<Output = Result<(Response<Incoming>, LaneGuard), Error>>,
{
    type Output = Result<(Response<Incoming>, LaneGuard), ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(match ready!(this.head.poll(cx)) {
            Some(Ok(answer)) => Ok(answer),
            Some(Err(e)) => Err(ProxyError::UpstreamUnreachable {
                route: this.route.name.to_string(),
                upstream: (*this.host).to_owned(),
                reason: e.to_string(),
            }),
            None => Err(ProxyError::UpstreamTimeout {
                route: this.route.name.to_string(),
                upstream: (*this.host).to_owned(),
                after: *this.after,
            }),
        })
    }
}
