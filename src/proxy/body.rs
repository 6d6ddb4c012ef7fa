//! The response body sent back to the client, and the end-of-request record.
//!
//! [`ResponseBody`] forwards the upstream's frames as they arrive (design.md,
//! step 4: no buffering; hyper flushes each frame), cuts a stream that stays
//! silent for `limits.request_timeout`, and, when the body ends or is dropped,
//! lets [`Done`] record the metrics and write the one access-log line, so
//! durations and outcomes cover the whole stream, not just its head.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::body::BoxError;
use crate::credentials::Fingerprint;
use crate::metrics::RouteMetrics;
use crate::upstream::LaneGuard;

/// How a response ended, for the access log.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Outcome {
    /// Every byte reached the client (as far as the socket took it).
    Complete,
    /// The client went away before the end.
    ClientClosed,
    /// The upstream connection failed mid-body.
    UpstreamError,
    /// The upstream sent nothing for `limits.request_timeout`.
    IdleTimeout,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::ClientClosed => "client_closed",
            Self::UpstreamError => "upstream_error",
            Self::IdleTimeout => "idle_timeout",
        }
    }
}

/// What is known about a request when its response ends. Dropping it records
/// the request: one metrics update and one access-log line. `Debug` shows
/// the path, never the query.
pub(crate) struct Done {
    pub(crate) metrics: Arc<RouteMetrics>,
    pub(crate) start: Instant,
    pub(crate) method: Method,
    /// The request's path and query (reference-counted, not copied); only
    /// the path is logged, never the query, which may carry a key.
    pub(crate) target: Option<PathAndQuery>,
    pub(crate) status: StatusCode,
    pub(crate) fingerprint: Option<Fingerprint>,
    /// How many upstream attempts were made.
    pub(crate) attempts: u8,
    /// sidekey's own error message, when sidekey answered.
    pub(crate) error: Option<String>,
    pub(crate) outcome: Outcome,
    /// The response's place on its upstream connection: freed with the record.
    #[allow(dead_code, reason = "held for its Drop, which frees the place")]
    pub(crate) lane: Option<LaneGuard>,
    /// The request's span: the access-log line is written inside it.
    pub(crate) span: tracing::Span,
}

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Done")
            .field("route", &self.metrics.route())
            .field("method", &self.method)
            .field("path", &self.path())
            .field("status", &self.status)
            .field("fingerprint", &self.fingerprint)
            .field("attempts", &self.attempts)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl Done {
    fn path(&self) -> &str {
        self.target.as_ref().map_or("", PathAndQuery::path)
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        let _span = self.span.enter();
        let elapsed = self.start.elapsed();
        self.metrics.observe(self.status, elapsed);
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        let fingerprint = self.fingerprint.map(tracing::field::display);
        let route = self.metrics.route();
        let status = self.status.as_u16();
        if let Some(error) = self
            .error
            .as_ref()
            .filter(|_| self.status.is_server_error())
        {
            tracing::warn!(
                target: "sidekey::access",
                route, method = %self.method, path = self.path(), status, elapsed_ms,
                error = %error,
                "request"
            );
        } else if let Some(error) = &self.error {
            tracing::info!(
                target: "sidekey::access",
                route, method = %self.method, path = self.path(), status, elapsed_ms,
                error = %error,
                "request"
            );
        } else if self.outcome == Outcome::Complete {
            tracing::info!(
                target: "sidekey::access",
                route, method = %self.method, path = self.path(), status, elapsed_ms,
                fingerprint, attempts = self.attempts,
                "request"
            );
        } else {
            tracing::warn!(
                target: "sidekey::access",
                route, method = %self.method, path = self.path(), status, elapsed_ms,
                fingerprint, attempts = self.attempts, outcome = self.outcome.as_str(),
                "request"
            );
        }
    }
}

/// The upstream went silent for longer than `limits.request_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing for {0:?}; stream cut")]
pub(crate) struct IdleTimeout(Duration);

pin_project_lite::pin_project! {
    /// A response body for the client: the upstream's stream, or a body of
    /// sidekey's own (an error envelope).
    pub(crate) struct ResponseBody {
        #[pin]
        inner: Inner,
        // Frames already read from the upstream body (to classify an error
        // answer), sent first. Empty, and never allocated, otherwise.
        prefix: VecDeque<Frame<Bytes>>,
        done: Option<Done>,
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    enum Inner {
        Upstream {
            #[pin]
            body: Incoming,
            // Armed when the body first has to wait: an answer that arrives
            // whole never touches the timer. Boxed: a response is moved
            // several times on its way to hyper, and most never wait.
            idle: Option<Pin<Box<Sleep>>>,
            // When the current silence began: the first wait after a frame
            // (or after the head). `None` until then, so a frame read at
            // once costs no clock read.
            since: Option<Instant>,
            timeout: Duration,
        },
        Local {
            body: Full<Bytes>,
        },
    }
}

impl ResponseBody {
    /// Streams `prefix` then `body`, cutting it after `timeout` of silence.
    pub(crate) fn upstream(
        prefix: VecDeque<Frame<Bytes>>,
        body: Incoming,
        timeout: Duration,
        mut done: Done,
    ) -> Self {
        if prefix.is_empty() && body.is_end_stream() {
            // hyper will not poll an empty body: the response is complete now.
            done.outcome = Outcome::Complete;
        }
        Self {
            inner: Inner::Upstream {
                body,
                idle: None,
                since: None,
                timeout,
            },
            prefix,
            done: Some(done),
        }
    }

    /// A body sidekey wrote itself.
    pub(crate) fn local(bytes: Bytes, mut done: Done) -> Self {
        done.outcome = Outcome::Complete;
        Self {
            inner: Inner::Local {
                body: Full::new(bytes),
            },
            prefix: VecDeque::new(),
            done: Some(done),
        }
    }
}

impl Inner {
    fn is_end_stream(&self) -> bool {
        match self {
            Inner::Upstream { body, .. } => body.is_end_stream(),
            Inner::Local { body } => body.is_end_stream(),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(frame) = this.prefix.pop_front() {
            if this.prefix.is_empty() && this.inner.as_ref().get_ref().is_end_stream() {
                // hyper will not poll again: this was the last frame.
                if let Some(mut done) = this.done.take() {
                    done.outcome = Outcome::Complete;
                }
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        let (frame, outcome) = match this.inner.project() {
            InnerProj::Upstream {
                mut body,
                idle,
                since,
                timeout,
            } => match body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // With a Content-Length, hyper stops polling once it has
                    // written that many bytes: the last frame is the end.
                    if body.is_end_stream() {
                        if let Some(mut done) = this.done.take() {
                            done.outcome = Outcome::Complete;
                        }
                    } else {
                        *since = None;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => (Some(Err(BoxError::from(e))), Outcome::UpstreamError),
                Poll::Ready(None) => (None, Outcome::Complete),
                Poll::Pending => {
                    // A timeout too long to represent never fires.
                    let began = *since.get_or_insert_with(Instant::now);
                    let Some(deadline) = began.checked_add(*timeout) else {
                        return Poll::Pending;
                    };
                    let sleep = match idle {
                        Some(sleep) => {
                            if sleep.deadline() != deadline {
                                sleep.as_mut().reset(deadline);
                            }
                            sleep
                        }
                        None => idle.insert(Box::pin(tokio::time::sleep_until(deadline))),
                    };
                    ready!(sleep.as_mut().poll(cx));
                    (
                        Some(Err(BoxError::from(IdleTimeout(*timeout)))),
                        Outcome::IdleTimeout,
                    )
                }
            },
            InnerProj::Local { body } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => return Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => (None, Outcome::Complete),
                Poll::Pending => return Poll::Pending,
            },
        };
        if let Some(mut done) = this.done.take() {
            done.outcome = outcome;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = match &self.inner {
            Inner::Upstream { body, .. } => body.size_hint(),
            Inner::Local { body } => body.size_hint(),
        };
        let kept: u64 = self
            .prefix
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        if kept > 0 {
            // Upper first: set_lower panics above the current upper bound.
            let (lower, upper) = (hint.lower() + kept, hint.upper().map(|u| u + kept));
            hint = SizeHint::new();
            if let Some(upper) = upper {
                hint.set_upper(upper);
            }
            hint.set_lower(lower);
        }
        hint
    }
}

/// Reads the start of an upstream body (at most about `limit` bytes) into
/// `frames` so an error answer can be classified; the frames are sent to the
/// client first if the answer is passed on. What was read stays in `frames`
/// when reading fails or the future is dropped (a timeout).
///
/// # Errors
///
/// When the upstream body fails while being read.
pub(crate) async fn peek(
    body: &mut Incoming,
    limit: usize,
    frames: &mut VecDeque<Frame<Bytes>>,
) -> Result<(), hyper::Error> {
    use http_body_util::BodyExt as _;
    let mut len = 0;
    while len < limit {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame?;
        len += frame.data_ref().map_or(0, Bytes::len);
        frames.push_back(frame);
    }
    Ok(())
}

/// The data of `frames`, joined and, when `content_encoding` is gzip or
/// deflate, decompressed (at most `limit` bytes; a cut-off stream yields what
/// it decodes to), for classification. The frames themselves are forwarded
/// as they came.
pub(crate) fn joined(
    frames: &VecDeque<Frame<Bytes>>,
    content_encoding: Option<&http::HeaderValue>,
    limit: usize,
) -> Vec<u8> {
    use std::io::Read as _;
    let raw: Vec<u8> = frames
        .iter()
        .filter_map(|f| f.data_ref())
        .flat_map(|d| d.iter().copied())
        .collect();
    let encoding = content_encoding.map(|v| v.as_bytes().trim_ascii());
    let mut decoder: Box<dyn std::io::Read + '_> = match encoding {
        Some(e) if e.eq_ignore_ascii_case(b"gzip") || e.eq_ignore_ascii_case(b"x-gzip") => {
            Box::new(flate2::read::GzDecoder::new(raw.as_slice()))
        }
        Some(e) if e.eq_ignore_ascii_case(b"deflate") => {
            Box::new(flate2::read::ZlibDecoder::new(raw.as_slice()))
        }
        _ => return raw,
    };
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while out.len() < limit {
        match decoder.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(buf.get(..n).unwrap_or_default()),
        }
    }
    out
}
