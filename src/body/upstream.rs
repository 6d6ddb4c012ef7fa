//! The request body on its way to the provider.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::BoxError;
use super::replay::ReplayBody;

pin_project_lite::pin_project! {
    /// What a request sends upstream.
    #[project = Proj]
    #[derive(Debug)]
    pub(crate) enum UpstreamBody {
        /// The client's body, streamed as it arrives (one attempt only).
        Stream { #[pin] body: Incoming },
        /// Bytes already read (the model allowlist needed them); cloned per attempt.
        Buffered { bytes: Option<Bytes> },
        /// The client's body, streamed and kept for a retry.
        Replay { #[pin] body: ReplayBody },
    }
}

impl UpstreamBody {
    /// The client's body, streamed.
    pub(crate) fn stream(body: Incoming) -> Self {
        Self::Stream { body }
    }

    /// Bytes already read.
    pub(crate) fn buffered(bytes: Bytes) -> Self {
        Self::Buffered { bytes: Some(bytes) }
    }

    /// The bytes of a buffered body not yet sent; `None` for a stream.
    pub(crate) fn bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Buffered { bytes } => Some(bytes.as_deref().unwrap_or(&[])),
            Self::Stream { .. } | Self::Replay { .. } => None,
        }
    }

    /// A replayable attempt.
    pub(crate) fn replay(body: ReplayBody) -> Self {
        Self::Replay { body }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            Proj::Stream { body } => body.poll_frame(cx).map_err(Into::into),
            Proj::Buffered { bytes } => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Proj::Replay { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Stream { body } => body.is_end_stream(),
            Self::Buffered { bytes } => bytes.as_ref().is_none_or(Bytes::is_empty),
            Self::Replay { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Stream { body } => body.size_hint(),
            Self::Buffered { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Self::Replay { body } => body.size_hint(),
        }
    }
}
