//! The future of one upstream request, written out by hand to stay small.
//!
//! Each caller up the request path (forward, fallback, the handler, hyper's
//! own dispatcher) moves the future it awaits into its own state, so a
//! request's future is copied several times over and its size is paid on
//! every request. An `async fn` keeps its arguments next to the futures it
//! awaits (the request twice over, about a kilobyte with hyper's future);
//! [`Sending`] gives the request to the connection when it is made and then
//! holds only hyper's response future, the connection, and what a retry on
//! a new connection needs. Dialing is boxed: it is rare, and its future (DNS,
//! TLS, HTTP handshakes) is kilobytes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1};

use super::UpstreamBody;
use super::connect::Dialer;
use super::endpoint::{Answer, Endpoint, LaneGuard};
use super::error::Error;

pub(super) type Sent = Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>>;

/// A future answer on a new connection.
type Dialing<'a> = Pin<Box<dyn Future<Output = Result<Answer, Error>> + Send + 'a>>;

pin_project_lite::pin_project! {
    /// A request on its way; see the module documentation.
    #[project = Proj]
    pub(super) enum Sending<'a, H1, H2> {
        /// On a pooled HTTP/1.1 connection.
        H1 {
            #[pin]
            fut: H1,
            tx: Option<http1::SendRequest<UpstreamBody>>,
            endpoint: Arc<Endpoint>,
            dialer: &'a Dialer,
        },
        /// On an HTTP/2 lane; the guard frees the stream's place if the
        /// request is dropped or fails.
        H2 {
            #[pin]
            fut: H2,
            guard: Option<LaneGuard>,
            endpoint: Arc<Endpoint>,
            dialer: &'a Dialer,
        },
        /// On a new connection.
        Dialing { fut: Dialing<'a> },
        /// Nowhere: the URI could not be sent anywhere.
        Failed { error: Option<Error> },
    }
}

impl<H1, H2> Future for Sending<'_, H1, H2>
where
    H1: Future<Output = Sent>,
    H2: Future<Output = Sent>,
{
    type Output = Result<Answer, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (error, endpoint, dialer) = match self.as_mut().project() {
            Proj::H1 {
                fut,
                tx,
                endpoint,
                dialer,
            } => match (ready!(fut.poll(cx)), tx.take()) {
                (Ok(resp), Some(tx)) => {
                    return Poll::Ready(Ok(endpoint.clone().h1_answer(tx, resp)));
                }
                (Ok(_), None) => return Poll::Ready(Err(Error::Done)),
                (Err(e), _) => (e, endpoint.clone(), *dialer),
            },
            Proj::H2 {
                fut,
                guard,
                endpoint,
                dialer,
            } => {
                let sent = ready!(fut.poll(cx));
                let guard = guard.take();
                match (sent, guard) {
                    (Ok(resp), Some(guard)) => return Poll::Ready(Ok((resp, guard))),
                    (Ok(_), None) => return Poll::Ready(Err(Error::Done)),
                    (Err(e), _) => (e, endpoint.clone(), *dialer),
                }
            }
            Proj::Dialing { fut } => return fut.as_mut().poll(cx),
            Proj::Failed { error } => return Poll::Ready(Err(error.take().unwrap_or(Error::Done))),
        };
        // A pooled connection that closed before the request was written:
        // send it again, once, on a new connection.
        let mut error = error;
        let Some(mut req) = error.take_message() else {
            return Poll::Ready(Err(Error::Send(error.into_error())));
        };
        tracing::debug!(error = %error.into_error(), "pooled upstream connection was closed; sending again on a new one");
        endpoint.absolute(&mut req);
        self.set(Sending::Dialing {
            fut: Box::pin(endpoint.send_new(dialer, req)),
        });
        self.poll(cx)
    }
}
