//! Key-style credentials: put the chosen key into the provider's header.
//!
//! Used by every `Family::ApiKey` provider and by azure (its key goes into
//! `api-key` the same way; only the choice of target differs, see
//! [`super::azure`]).

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};

use super::{Auth, Spec};
use crate::credentials::Chosen;

/// Puts `chosen` into the header `auth` names, replacing anything there, and
/// adds the provider's default headers the client did not send.
///
/// A static key is a prepared header value: inserting it is a reference-count
/// increment. A dynamic key (from the request) is the only credential ever
/// formatted per request.
pub(crate) fn inject(spec: &Spec, headers: &mut HeaderMap, chosen: Chosen<'_>) {
    let auth = spec.auth;
    match chosen {
        Chosen::Static { header, .. } => {
            headers.insert(auth.header(), header.clone());
        }
        Chosen::Dynamic(value) => {
            if let Some(v) = with_prefix(auth, value) {
                headers.insert(auth.header(), v);
            }
        }
        // A minted token is always a Bearer token, also on azure (whose
        // keys go in `api-key`): Entra ID tokens replace the key.
        Chosen::Minted(value) => {
            headers.insert(http::header::AUTHORIZATION, value);
        }
        // The fallback loop turns a token source into `Minted` first; an
        // unresolved one sends nothing rather than guessing. AWS keys sign
        // the finished request instead (`super::aws`).
        Chosen::Token { .. } | Chosen::Signed { .. } | Chosen::Nothing => {}
    }
    for (name, value) in spec.default_headers {
        if !headers.contains_key(name) {
            headers.insert(name, value.clone());
        }
    }
}

fn with_prefix(auth: Auth, value: HeaderValue) -> Option<HeaderValue> {
    let prefix = auth.prefix();
    if prefix.is_empty() {
        return Some(value);
    }
    let mut buf = BytesMut::with_capacity(prefix.len() + value.len());
    buf.put_slice(prefix.as_bytes());
    buf.put_slice(value.as_bytes());
    let mut v = HeaderValue::from_maybe_shared(Bytes::from(buf)).ok()?;
    v.set_sensitive(true);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ProviderType;

    #[test]
    fn dynamic_bearer_gets_its_prefix() {
        let mut h = HeaderMap::new();
        inject(
            ProviderType::OpenAi.spec(),
            &mut h,
            Chosen::Dynamic(HeaderValue::from_static("abc")),
        );
        assert_eq!(h["authorization"], "Bearer abc");
        assert!(h["authorization"].is_sensitive());
    }

    #[test]
    fn anthropic_version_is_added_only_when_absent() {
        let spec = ProviderType::Anthropic.spec();
        let mut h = HeaderMap::new();
        inject(spec, &mut h, Chosen::Nothing);
        assert_eq!(h["anthropic-version"], "2023-06-01");
        let mut h = HeaderMap::new();
        h.insert("anthropic-version", HeaderValue::from_static("2024-01-01"));
        inject(spec, &mut h, Chosen::Nothing);
        assert_eq!(h["anthropic-version"], "2024-01-01");
    }
}
