//! What can go wrong between taking a request and receiving its response head.
//!
//! Two kinds, because the proxy answers them differently in wording only
//! (both are a 502): no connection could be made ([`ConnectError`]), or the
//! connection failed while the request was written or its head awaited. Each
//! message carries the whole cause chain on one line, since hyper's own
//! errors keep the useful part (`Connection refused`, a certificate problem)
//! in their sources.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// A request that got no response head.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The URI cannot be sent anywhere (no host, or a scheme other than
    /// `http`/`https`).
    #[error("invalid upstream URI: {0}")]
    Uri(&'static str),
    /// No connection could be made.
    #[error("connect failed: {0}")]
    Connect(#[from] ConnectError),
    /// The connection failed while the request was sent or its head awaited.
    #[error("request failed: {}", Chain(.0))]
    Send(hyper::Error),
    /// A request future was polled after it completed (a bug).
    #[error("request future polled after completion")]
    Done,
}

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// DNS gave an error or no address.
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: Box<str>, reason: String },
    /// TCP connect, TLS and the HTTP handshake together took longer than
    /// `limits.connect_timeout`.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The TCP connection was refused or failed.
    #[error("{0}")]
    Tcp(std::io::Error),
    /// The host is not a name a certificate can be checked against.
    #[error("{0} is not a valid TLS server name")]
    ServerName(Box<str>),
    /// The TLS handshake failed (for example, an untrusted certificate).
    #[error("TLS handshake failed: {}", Chain(.0))]
    Tls(std::io::Error),
    /// The HTTP/1.1 or HTTP/2 handshake failed.
    #[error("HTTP handshake failed: {}", Chain(.0))]
    Handshake(hyper::Error),
}

/// An error and its sources on one line, each cause once.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            let text = s.to_string();
            if !last.contains(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_names_every_cause_once() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(Chain(&e).to_string(), "outer: inner");
        let refused =
            ConnectError::Tcp(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(
            Error::from(refused).to_string(),
            "connect failed: connection refused"
        );
    }
}
