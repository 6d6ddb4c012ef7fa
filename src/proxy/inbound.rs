//! What is checked before routing: the request is one sidekey serves, and
//! the client holds the inbound token when one is configured.
//!
//! design.md, "Operations" → Security: sidekey never proxies to a host no route
//! names, so absolute-form targets (HTTP/1) and CONNECT are refused; protocol
//! upgrades are answered with 501 rather than half-working. In gateway mode
//! the inbound token is accepted where the client's SDK already puts its API
//! key, or in `x-sidekey-token`, and compared in constant time.

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Version, request};

use crate::error::ProxyError;
use crate::reload::snapshot::{InboundToken, Snapshot};

/// Where a client may present the inbound token: where its SDK puts the API
/// key (design.md, "Operations" → Security), or `x-sidekey-token`.
static TOKEN_HEADERS: [HeaderName; 5] = [
    HeaderName::from_static("x-sidekey-token"),
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    HeaderName::from_static("x-goog-api-key"),
];

/// Refuses forward-proxy requests and upgrades.
///
/// # Errors
///
/// [`ProxyError::Connect`], [`ProxyError::AbsoluteForm`], [`ProxyError::Upgrade`].
pub(crate) fn check(parts: &request::Parts) -> Result<(), ProxyError> {
    if parts.method == Method::CONNECT {
        return Err(ProxyError::Connect);
    }
    // HTTP/2 requests always carry :authority; only an HTTP/1 request line
    // with a full URL is a forward-proxy request.
    if parts.version < Version::HTTP_2 && parts.uri.authority().is_some() {
        return Err(ProxyError::AbsoluteForm);
    }
    if parts.headers.contains_key(header::UPGRADE) {
        return Err(ProxyError::Upgrade);
    }
    Ok(())
}

/// Checks the inbound token, when the config sets one.
///
/// # Errors
///
/// [`ProxyError::Unauthorized`] for a missing or wrong token;
/// [`ProxyError::InboundTokenUnavailable`] when the token file cannot be read
/// (fail closed).
pub(crate) fn authorize(snap: &Snapshot, headers: &HeaderMap) -> Result<(), ProxyError> {
    let expected = match &snap.inbound_token {
        None => return Ok(()),
        Some(InboundToken::Ready(secret)) => secret,
        Some(InboundToken::Missing(why)) => {
            return Err(ProxyError::InboundTokenUnavailable(why.to_string()));
        }
    };
    let presented = TOKEN_HEADERS
        .iter()
        .filter_map(|name| headers.get(name))
        .map(|v| {
            let v = v.as_bytes();
            v.strip_prefix(b"Bearer ").unwrap_or(v)
        });
    // Every candidate is compared, so timing does not reveal which matched.
    let mut ok = false;
    for candidate in presented {
        ok |= expected.constant_time_eq(candidate);
    }
    if ok {
        Ok(())
    } else {
        Err(ProxyError::Unauthorized)
    }
}
