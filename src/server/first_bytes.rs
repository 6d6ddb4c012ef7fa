//! A deadline on a connection's first bytes.
//!
//! hyper-util's auto builder reads the first bytes of a connection to tell
//! HTTP/1 from HTTP/2 (the 24-byte prior-knowledge preface) and has no timer
//! for it: a client that sends nothing, or half the preface, would hold its
//! socket (and its place in `limits.max_connections`) forever. [`FirstBytes`]
//! fails the connection's reads once `limits.header_read_timeout` has passed
//! and the protocol is still not known. Once it is (a byte that leaves the
//! preface, or the whole preface), the timer is dropped and reads pass
//! straight through: HTTP/1 has hyper's own header-read timer from there, and
//! HTTP/2 its keep-alive pings.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// What an HTTP/2 prior-knowledge connection sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pin_project_lite::pin_project! {
    /// An IO whose reads fail once the deadline passes before the protocol
    /// is known.
    #[derive(Debug)]
    pub(super) struct FirstBytes<S> {
        #[pin]
        io: S,
        // `None` once the protocol is known. Boxed: an upgraded connection
        // (a WebSocket) must be `Unpin`.
        deadline: Option<Pin<Box<Sleep>>>,
        // Bytes read so far, while the deadline is armed.
        seen: usize,
    }
}

impl<S> FirstBytes<S> {
    /// `io`, whose protocol must be known within `timeout`.
    pub(super) fn new(io: S, timeout: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            seen: 0,
        }
    }
}

/// Whether `seen` bytes matching the preface, followed by `new`, are enough
/// to tell the protocol: they leave the preface, or complete it.
fn known(seen: usize, new: &[u8]) -> bool {
    let rest = PREFACE.get(seen..).unwrap_or_default();
    let n = new.len().min(rest.len());
    new.get(..n) != rest.get(..n) || seen + new.len() >= PREFACE.len()
}

/// The deadline passed before the protocol was known.
fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no request within limits.header_read_timeout",
    )
}

impl<S: AsyncRead> AsyncRead for FirstBytes<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let Some(sleep) = this.deadline.as_mut() else {
            return this.io.poll_read(cx, buf);
        };
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(timed_out()));
        }
        let before = buf.filled().len();
        ready!(this.io.poll_read(cx, buf))?;
        let new = buf.filled().get(before..).unwrap_or_default();
        if !new.is_empty() && known(*this.seen, new) {
            *this.deadline = None;
        }
        *this.seen += new.len();
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite> AsyncWrite for FirstBytes<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_is_known_once_the_bytes_leave_or_complete_the_preface() {
        assert!(known(0, b"GET / HTTP/1.1\r\n"));
        assert!(!known(0, b"P"));
        assert!(!known(0, b"PRI * HTTP/2.0\r\n"));
        assert!(
            known(1, b"OST /x"),
            "POST leaves the preface at its second byte"
        );
        assert!(known(16, b"\r\nSM\r\n\r\n"), "the whole preface");
        assert!(known(0, PREFACE));
        assert!(known(20, b"\r\n\r\nextra"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_or_half_preface_connection_fails_at_the_deadline() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = Box::pin(FirstBytes::new(server, Duration::from_secs(10)));
        client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 16);
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        // Once the protocol is known, silence is someone else's business.
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = Box::pin(FirstBytes::new(server, Duration::from_secs(10)));
        client.write_all(b"GET").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            client.write_all(b" /").await.unwrap();
            client
        });
        assert_eq!(io.read(&mut buf).await.unwrap(), 2);
        drop(late.await.unwrap());
    }
}
