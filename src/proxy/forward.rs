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
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::routes::Route;
use crate::timer::{Lent, Reused};
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
        head: route.client.send(req),
        deadline: Reused::lend_for(head_wait, timeout),
        route,
        host,
        after: timeout,
    }
}

pin_project_lite::pin_project! {
    /// The response head, or the error naming route and host.
    struct Forward<'a, F> {
        #[pin]
        head: F,
        deadline: Lent<&'a Reused>,
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
        // The head first: an answer that is there is taken even at the deadline.
        match this.head.poll(cx) {
            Poll::Ready(Ok(answer)) => return Poll::Ready(Ok(answer)),
            Poll::Ready(Err(e)) => {
                return Poll::Ready(Err(ProxyError::UpstreamUnreachable {
                    route: this.route.name.to_string(),
                    upstream: (*this.host).to_owned(),
                    reason: e.to_string(),
                }));
            }
            Poll::Pending => {}
        }
        match Pin::new(this.deadline).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(ProxyError::UpstreamTimeout {
                route: this.route.name.to_string(),
                upstream: (*this.host).to_owned(),
                after: *this.after,
            })),
            Poll::Pending => Poll::Pending,
        }
    }
}
