//! A connection's first bytes: which protocol it speaks, by a deadline.
//!
//! A client that sends nothing, or half the HTTP/2 prior-knowledge preface,
//! must not hold its socket (and its place in `limits.max_connections`)
//! forever: the protocol has to be known within
//! `limits.header_read_timeout`. It is known once the bytes leave the
//! 24-byte preface (HTTP/1) or complete it (HTTP/2); from there HTTP/1 has
//! hyper's own header-read timer and HTTP/2 its keep-alive pings.
//!
//! [`sniff`] *peeks* at the socket (`MSG_PEEK`): the bytes stay for hyper,
//! which then serves the connection with its HTTP/1 or HTTP/2 server
//! directly, with no layer between it and the socket on every read (the
//! auto builder of hyper-util reads them itself, then replays them through
//! a wrapper on every read, and has no deadline). A TLS connection says its
//! protocol by ALPN instead.

use std::io;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// What an HTTP/2 prior-knowledge connection sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Http1,
    /// Prior-knowledge h2c.
    Http2,
}

/// The protocol `seen` (the first bytes, as many as have come) shows, if
/// it shows one yet: HTTP/1 once they leave the preface, HTTP/2 once they
/// complete it.
fn protocol(seen: &[u8]) -> Option<Protocol> {
    let n = seen.len().min(PREFACE.len());
    if seen.get(..n) != PREFACE.get(..n) {
        Some(Protocol::Http1)
    } else if n == PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

/// Which protocol a plain connection speaks, from its first bytes, peeked
/// at so they stay in the socket; `None` when the client closes (or stops
/// sending) before they tell. The caller bounds the wait
/// (`limits.header_read_timeout`). While the bytes that came are a part of
/// the preface, it waits for more without spinning: a peek that tells
/// nothing clears the socket's readiness, as a read that finds nothing
/// would; and a client that has shut its side after part of the preface
/// (a readiness that stays set) can never finish it.
///
/// # Errors
///
/// The socket's error.
pub(super) async fn sniff(stream: &TcpStream) -> io::Result<Option<Protocol>> {
    let mut buf = [0u8; PREFACE.len()];
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        let peeked = stream.try_io(Interest::READABLE, || {
            let (n, _) = rustix::net::recv(stream, &mut buf[..], rustix::net::RecvFlags::PEEK)?;
            let seen = buf.get(..n).unwrap_or_default();
            match protocol(seen) {
                Some(p) => Ok(Some(p)),
                None if n == 0 => Ok(None),
                // Part of the preface: wait for the rest.
                None => Err(io::ErrorKind::WouldBlock.into()),
            }
        });
        match peeked {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && ready.is_read_closed() => {
                return Ok(None);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_is_told_from_the_first_bytes() {
        assert_eq!(protocol(b""), None);
        assert_eq!(protocol(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(protocol(b"P"), None);
        assert_eq!(protocol(b"POST"), Some(Protocol::Http1));
        assert_eq!(protocol(b"GET "), Some(Protocol::Http1));
        assert_eq!(protocol(PREFACE), Some(Protocol::Http2));
        // Known as soon as the bytes leave the preface, or complete it.
        assert_eq!(protocol(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(
            protocol(b"PO"),
            Some(Protocol::Http1),
            "POST leaves it at its second byte"
        );
        assert_eq!(protocol(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r"), None);
        let mut extra = PREFACE.to_vec();
        extra.extend_from_slice(b"\0\0\x12\x04");
        assert_eq!(
            protocol(&extra),
            Some(Protocol::Http2),
            "a preface and its first frame"
        );
    }

    #[tokio::test]
    async fn sniffing_peeks_and_waits_for_the_rest_of_a_split_preface() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        {
            let sniffing = sniff(&server);
            tokio::pin!(sniffing);
            // Half the preface tells nothing: still waiting, not spinning.
            let waited =
                tokio::time::timeout(std::time::Duration::from_millis(50), sniffing.as_mut()).await;
            assert!(waited.is_err(), "{waited:?}");
            client.write_all(b"\r\nSM\r\n\r\n").await.unwrap();
            assert_eq!(sniffing.await.unwrap(), Some(Protocol::Http2));
        }
        // The bytes are still there for hyper.
        let mut buf = [0u8; 24];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, PREFACE);

        drop(client);
        let (server2, _) = {
            let c = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let accepted = listener.accept().await.unwrap();
            drop(c);
            accepted
        };
        assert_eq!(sniff(&server2).await.unwrap(), None, "closed before a byte");

        // Part of the preface, then the client's side shut: never finished,
        // and no spinning on a readiness that stays set.
        let mut c = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server3, _) = listener.accept().await.unwrap();
        c.write_all(b"PRI").await.unwrap();
        c.shutdown().await.unwrap();
        let sniffed =
            tokio::time::timeout(std::time::Duration::from_secs(5), sniff(&server3)).await;
        assert_eq!(sniffed.unwrap().unwrap(), None);
    }
}
