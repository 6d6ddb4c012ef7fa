//! Names of the headers sidekey treats specially, and what it does with each.
//!
//! design.md, "Request path" step 2: client credentials (`Authorization`,
//! `Proxy-Authorization`, `x-api-key`, `api-key`, `x-goog-api-key`, AWS signing
//! headers, `x-sidekey-credential-*`, the inbound `x-sidekey-token`), the
//! hop-by-hop headers of RFC 9110 §7.6.1, and the headers the proxy manages
//! itself (`Host`, `Expect`). This is the one list: the request path strips by
//! it (`proxy::strip`, which owns the removing) and config validation refuses
//! a route's `headers = { ... }` that would set a reserved name (`config`).
//! It classifies names and nothing else, so both can import it.

use http::header::{self, HeaderName};

use crate::credentials::DYNAMIC_HEADER_PREFIX;

/// What sidekey does with a header of this name.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// A client's own credential: removed from requests.
    Credential,
    /// Hop-by-hop (RFC 9110 §7.6.1, plus the de-facto `Keep-Alive` and
    /// `Proxy-Connection`): removed from requests and responses.
    HopByHop,
    /// Set by the upstream client from the target (`Host`), or already
    /// answered by the inbound server (`Expect: 100-continue`).
    Managed,
    /// Forwarded as is.
    Keep,
}

/// The single list of names sidekey treats specially. Names are lowercase
/// (`HeaderName` always is). A `match`: no hashing, no allocation, so the
/// request path can classify every header present.
pub(crate) fn kind(name: &HeaderName) -> Kind {
    match name.as_str() {
        "authorization"
        | "proxy-authorization"
        | "x-api-key"
        | "api-key"
        | "x-goog-api-key"
        | "x-amz-date"
        | "x-amz-security-token"
        | "x-amz-content-sha256"
        | "x-sidekey-token" => Kind::Credential,
        "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer"
        | "transfer-encoding" | "upgrade" | "proxy-authenticate" => Kind::HopByHop,
        "host" | "expect" => Kind::Managed,
        n if n.starts_with(DYNAMIC_HEADER_PREFIX) => Kind::Credential,
        _ => Kind::Keep,
    }
}

/// Whether a route may not set `name` through `headers = { ... }`: sidekey
/// manages it (framing, hop-by-hop, its own control headers).
pub(crate) fn is_reserved(name: &HeaderName) -> bool {
    matches!(kind(name), Kind::HopByHop | Kind::Managed)
        || *name == header::CONTENT_LENGTH
        || name.as_str().starts_with("x-sidekey-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names() {
        for n in [
            "host",
            "connection",
            "transfer-encoding",
            "content-length",
            "x-sidekey-anything",
        ] {
            assert!(is_reserved(&HeaderName::from_static(n)), "{n}");
        }
        assert!(!is_reserved(&HeaderName::from_static("x-auth-token")));
    }

    #[test]
    fn kinds() {
        let k = |n: &'static str| kind(&HeaderName::from_static(n));
        assert_eq!(k("x-api-key"), Kind::Credential);
        assert_eq!(k("x-sidekey-credential-foo"), Kind::Credential);
        assert_eq!(k("transfer-encoding"), Kind::HopByHop);
        assert_eq!(k("host"), Kind::Managed);
        assert_eq!(k("content-type"), Kind::Keep);
    }
}
