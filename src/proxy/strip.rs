//! Removing what must not reach the provider.
//!
//! design.md, "Request path" step 2: every client credential (`Authorization`,
//! `Proxy-Authorization`, `x-api-key`, `api-key`, `x-goog-api-key`, AWS signing
//! headers, `x-sidekey-credential-*`, the inbound `x-sidekey-token`), the
//! hop-by-hop headers of RFC 9110 §7.6.1 plus those named in `Connection`, and
//! `Host` (the client derives it from the upstream URI). The lists are static
//! `HeaderName`s, so nothing is parsed per request.

use http::header::{self, HeaderMap, HeaderName};

use crate::credentials::DYNAMIC_HEADER_PREFIX;

/// The header through which a client presents the inbound token.
pub(crate) static X_SIDEKEY_TOKEN: HeaderName = HeaderName::from_static("x-sidekey-token");

/// Headers that carry a client's own credential.
pub(crate) static CLIENT_CREDENTIALS: [HeaderName; 9] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    HeaderName::from_static("x-goog-api-key"),
    HeaderName::from_static("x-amz-date"),
    HeaderName::from_static("x-amz-security-token"),
    HeaderName::from_static("x-amz-content-sha256"),
    HeaderName::from_static("x-sidekey-token"),
];

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the de-facto `Keep-Alive` and
/// `Proxy-Connection`), removed from requests and responses.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// Removes client credentials, hop-by-hop headers, `Host` and `Expect` from a
/// request on its way upstream. `Expect: 100-continue` was already answered
/// by the inbound server; the upstream client does not wait for a `100`.
pub(crate) fn request(headers: &mut HeaderMap) {
    hop_by_hop(headers);
    for name in &CLIENT_CREDENTIALS {
        headers.remove(name);
    }
    headers.remove(header::HOST);
    headers.remove(header::EXPECT);
    remove_prefixed(headers, DYNAMIC_HEADER_PREFIX);
}

/// Removes hop-by-hop headers, including those `Connection` names.
pub(crate) fn hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        // Usually `keep-alive` or `close`, already in the fixed list: the
        // vector only allocates when a client names an unusual header.
        let mut named = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes())
                    && !HOP_BY_HOP.contains(&name)
                {
                    named.push(name);
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

fn remove_prefixed(headers: &mut HeaderMap, prefix: &str) {
    let mut found = Vec::new();
    for name in headers.keys() {
        if name.as_str().starts_with(prefix) {
            found.push(name.clone());
        }
    }
    for name in found {
        headers.remove(name);
    }
}

/// Whether a route may not set `name` through `headers = { ... }`: sidekey
/// manages it (framing, hop-by-hop, its own control headers).
pub(crate) fn is_reserved(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
        || *name == header::HOST
        || *name == header::CONTENT_LENGTH
        || name.as_str().starts_with("x-sidekey-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_credentials_hop_by_hop_and_named_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer client"),
            ("x-api-key", "client"),
            ("api-key", "client"),
            ("x-goog-api-key", "client"),
            ("x-amz-security-token", "t"),
            ("x-sidekey-credential-a", "d"),
            ("x-sidekey-token", "t"),
            ("host", "127.0.0.1:8787"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("content-type", "application/json"),
            ("anthropic-version", "2023-06-01"),
        ] {
            h.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        request(&mut h);
        let mut left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["anthropic-version", "content-type"]);
    }
}
