//! What is checked before routing: the request is one sidekey serves, and
//! the client holds the inbound token when one is configured.
//!
//! design.md, "Operations" → Security: sidekey never proxies to a host no route
//! names, so absolute-form targets (HTTP/1) and CONNECT are refused; protocol
//! upgrades other than WebSocket are answered with 501 rather than
//! half-working. In gateway mode
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

/// What a request's `Upgrade` header asks for, read once per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Upgrade {
    /// Nothing, or only `h2c` (Java's HttpClient sends it on every new
    /// plain-HTTP connection). It may be ignored (RFC 9110 §7.8): the answer
    /// comes in HTTP/1.1 and the header is stripped as hop-by-hop.
    None,
    /// A WebSocket handshake (`proxy::websocket`); `true` once the client's
    /// connection is known to be able to switch (HTTP/1.1 only).
    WebSocket(bool),
    /// Another protocol, which cannot be proxied: refused.
    Other,
}

impl Upgrade {
    /// The tokens of `headers`' `Upgrade`.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut found = Self::None;
        let tokens = headers
            .get_all(header::UPGRADE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii);
        for token in tokens {
            if token.eq_ignore_ascii_case(b"websocket") {
                found = Self::WebSocket(false);
            } else if !token.eq_ignore_ascii_case(b"h2c") {
                return Self::Other;
            }
        }
        found
    }
}

/// Refuses forward-proxy requests and upgrades other than WebSocket
/// (`upgrade`: what [`Upgrade::of`] read from the request).
///
/// # Errors
///
/// [`ProxyError::Connect`], [`ProxyError::AbsoluteForm`], [`ProxyError::Upgrade`].
pub(crate) fn check(parts: &request::Parts, upgrade: Upgrade) -> Result<(), ProxyError> {
    if parts.method == Method::CONNECT {
        return Err(ProxyError::Connect);
    }
    // HTTP/2 requests always carry :authority; only an HTTP/1 request line
    // with a full URL is a forward-proxy request.
    if parts.version < Version::HTTP_2 && parts.uri.authority().is_some() {
        return Err(ProxyError::AbsoluteForm);
    }
    // WebSocket is proxied (`proxy::websocket`); other upgrades cannot be.
    if upgrade == Upgrade::Other {
        return Err(ProxyError::Upgrade);
    }
    // The route, the model allowlist and the Azure deployment are read from
    // the path as sent, and the path goes upstream byte for byte: a `..`
    // that the provider resolves would reach another model or deployment
    // than the one checked.
    // A raw `\` is refused outright, like an encoded one: servers that read
    // it as `/` (IIS, some front ends and path normalisers) see `..\` as a
    // dot segment, and no provider path has one. Dot segments and encoded
    // slashes need a `.` or a `%`: a path with neither is split no further.
    let path = parts.uri.path();
    // `memchr` scans 16 or 32 bytes at a time; the usual path has none of
    // the three bytes and is done after one scan.
    if memchr::memchr3(b'\\', b'.', b'%', path.as_bytes()).is_none() {
        return Ok(());
    }
    if memchr::memchr(b'\\', path.as_bytes()).is_some() {
        return Err(ProxyError::DotSegment);
    }
    // One exception: a Bedrock model id (the segment after `model`) is an
    // ARN with an encoded `/` when it names an inference profile, and
    // Bedrock reads it as one id; the allowlist decodes it whole.
    let mut after_model = false;
    for segment in path.split('/') {
        let refused = if after_model {
            has_dot_part(segment) || has_encoded_backslash(segment)
        } else {
            is_dot_or_slash(segment)
        };
        if refused {
            return Err(ProxyError::DotSegment);
        }
        after_model = segment == "model";
    }
    Ok(())
}

/// `.` or `..`, also percent-encoded.
fn is_dot(segment: &str) -> bool {
    let s = segment.to_ascii_lowercase().replace("%2e", ".");
    s == "." || s == ".."
}

/// A segment with a `.` or `..` part between its encoded slashes
/// (`a%2F..%2Fb`): a model id keeps its `%2F`, but never as a way up.
fn has_dot_part(segment: &str) -> bool {
    segment.to_ascii_lowercase().split("%2f").any(is_dot)
}

/// A segment holding `%5c` (an encoded `\`).
fn has_encoded_backslash(segment: &str) -> bool {
    segment.to_ascii_lowercase().contains("%5c")
}

/// `.`, `..` (also percent-encoded: `%2e`, `.%2E`, ...) or a segment holding
/// an encoded `/` or `\` (`%2f`, `%5c`).
fn is_dot_or_slash(segment: &str) -> bool {
    let b = segment.as_bytes();
    let mut dots = 0;
    let mut i = 0;
    let mut only_dots = true;
    while i < b.len() {
        match b.get(i..i + 3) {
            Some([b'%', b'2', e]) if e | 0x20 == b'e' => {
                dots += 1;
                i += 3;
            }
            Some([b'%', h, l])
                if (*h == b'2' && l | 0x20 == b'f') || (*h == b'5' && l | 0x20 == b'c') =>
            {
                return true;
            }
            _ => {
                if b.get(i) == Some(&b'.') {
                    dots += 1;
                } else {
                    only_dots = false;
                }
                i += 1;
            }
        }
    }
    only_dots && (dots == 1 || dots == 2)
}

/// Checks the inbound token, when the config sets one.
///
/// # Errors
///
/// [`ProxyError::Unauthorized`] for a missing or wrong token;
/// [`ProxyError::InboundTokenUnavailable`] (401) when the token file is
/// missing, empty or unreadable: fail closed.
pub(crate) fn authorize(snap: &Snapshot, headers: &HeaderMap) -> Result<(), ProxyError> {
    let expected = match &snap.inbound_token {
        None => return Ok(()),
        Some(InboundToken::Ready(secret)) => secret,
        Some(InboundToken::Missing(_)) => return Err(ProxyError::InboundTokenUnavailable),
    };
    let presented = TOKEN_HEADERS
        .iter()
        .filter_map(|name| headers.get(name))
        .map(|v| {
            let v = v.as_bytes();
            // The scheme is case-insensitive (RFC 9110 §11.1).
            match v.get(..7) {
                Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => v.get(7..).unwrap_or(v),
                _ => v,
            }
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

#[cfg(test)]
mod tests {
    use super::{Upgrade, has_encoded_backslash, is_dot, is_dot_or_slash};

    #[test]
    fn upgrade_tokens_are_read_in_one_pass() {
        let of = |values: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append(http::header::UPGRADE, v.parse().unwrap());
            }
            Upgrade::of(&h)
        };
        assert_eq!(of(&[]), Upgrade::None);
        assert_eq!(of(&["h2c"]), Upgrade::None);
        assert_eq!(of(&["WebSocket"]), Upgrade::WebSocket(false));
        assert_eq!(of(&["h2c, websocket"]), Upgrade::WebSocket(false));
        assert_eq!(of(&["h2c", " websocket "]), Upgrade::WebSocket(false));
        // Anything else is refused, even beside `websocket`.
        assert_eq!(of(&["websocket, h3"]), Upgrade::Other);
        assert_eq!(of(&["h2c", "TLS/1.2"]), Upgrade::Other);
    }

    #[test]
    fn a_bedrock_model_id_may_hold_an_encoded_slash_but_no_dots() {
        let check = |path: &str| {
            let (parts, ()) = http::Request::post(path).body(()).unwrap().into_parts();
            super::check(&parts, super::Upgrade::None).is_ok()
        };
        assert!(check(
            "/bedrock/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x/converse"
        ));
        assert!(!check("/bedrock/model/%2e%2e/converse"));
        assert!(!check("/bedrock/model/a%2F..%2Fb/converse"));
        assert!(!check("/bedrock/model/a%2f%2E/converse"));
        assert!(!check("/bedrock/model/a%5cb/converse"));
        assert!(!check("/bedrock/other/a%2Fb/converse"), "only the model id");
        assert!(is_dot("%2E.") && !is_dot("a.b") && has_encoded_backslash("x%5Cy"));
    }

    /// Issue 21, finding 3: a raw `\` is refused wherever it is, since an
    /// upstream that reads it as `/` would resolve `..\`.
    #[test]
    fn a_backslash_is_refused_anywhere_in_the_path() {
        let check = |path: &str| {
            let (parts, ()) = http::Request::post(path).body(()).unwrap().into_parts();
            super::check(&parts, super::Upgrade::None).is_ok()
        };
        for bad in [
            r"/gem/v1beta/models/ok/..\..\..\v1beta\models\forbidden:generateContent",
            r"/az/openai/deployments/d2/..\d1/chat",
            r"/az/openai/deployments/d1\x/chat",
            r"/bedrock/model/a\b/converse",
            "/az/openai/deployments/d2/..%5Cd1/chat",
            "/az/openai/deployments/d2/..%5cd1/chat",
        ] {
            assert!(!check(bad), "{bad}");
        }
        assert!(check("/gem/v1beta/models/ok:generateContent"));
        assert!(
            check("/openai/v1/chat/completions?q=a\\b"),
            "the query is not the path"
        );
    }

    mod props {
        use proptest::prelude::*;

        use crate::routes::{UpstreamBase, split_path};

        /// Path segments built from the pieces of path tricks.
        fn segment() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(
                &[
                    ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "\\", "%25", "2e", "a",
                    ":",
                ][..],
            );
            prop_oneof![
                1 => prop::sample::select(&["model", "models", "v1", "ok"][..]).prop_map(String::from),
                3 => prop::collection::vec(piece, 1..5).prop_map(|p| p.concat()),
            ]
        }

        /// The path as a server that decodes `%2e`, `%2f` and `%5c` and reads
        /// `\` as `/` (the most lenient upstream) would split it.
        fn lenient_segments(path: &str) -> Vec<String> {
            let mut s = path.to_owned();
            for (from, to) in [
                ("%2e", "."),
                ("%2E", "."),
                ("%2f", "/"),
                ("%2F", "/"),
                ("%5c", "/"),
                ("%5C", "/"),
                ("\\", "/"),
            ] {
                s = s.replace(from, to);
            }
            s.split('/').map(str::to_owned).collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

            /// A path the inbound check accepts, mapped onto a route's base,
            /// has no dot segment and no backslash, raw or encoded, even as
            /// the most lenient upstream reads it: it cannot leave the base.
            #[test]
            fn no_accepted_path_escapes_the_base(
                route in prop::sample::select(&["gem", "bedrock", "az"][..]),
                segments in prop::collection::vec(segment(), 0..6),
            ) {
                let path = format!("/{route}/{}", segments.join("/"));
                let Ok(req) = http::Request::post(path.as_str()).body(()) else {
                    return Ok(());
                };
                let (parts, ()) = req.into_parts();
                if super::super::check(&parts, super::super::Upgrade::None).is_err() {
                    return Ok(());
                }
                let (name, rest) = split_path(parts.uri.path());
                prop_assert_eq!(name, route);
                let base: UpstreamBase = "https://upstream.example/base".parse().unwrap();
                let uri = base.uri(rest, None).unwrap();
                let out = uri.path();
                prop_assert!(out.starts_with("/base"), "{}", out);
                prop_assert!(!out.contains('\\'), "{}", out);
                prop_assert!(!out.to_ascii_lowercase().contains("%5c"), "{}", out);
                for seg in lenient_segments(out) {
                    prop_assert!(seg != "." && seg != "..", "{} from {}", out, path);
                }
            }
        }
    }

    #[test]
    fn dot_segments_and_encoded_slashes_are_found() {
        for bad in [".", "..", "%2e", "%2E%2e", ".%2E", "a%2Fb", "a%5cb", "%2f"] {
            assert!(is_dot_or_slash(bad), "{bad}");
        }
        for good in [
            "",
            "v1",
            "gpt-4o",
            "gemini-2.0-flash:generateContent",
            "...",
            "a.b",
            "%2e%2e%2e",
            "%20",
        ] {
            assert!(!is_dot_or_slash(good), "{good}");
        }
    }
}
