//! Removing what must not reach the provider.
//!
//! design.md, "Request path" step 2: every client credential (`Authorization`,
//! `Proxy-Authorization`, `x-api-key`, `api-key`, `x-goog-api-key`, AWS signing
//! headers, `x-sidekey-credential-*`, the inbound `x-sidekey-token`), the
//! hop-by-hop headers of RFC 9110 §7.6.1 plus those named in `Connection`, and
//! `Host` (the client derives it from the upstream URI); and from the query,
//! every parameter whose name is a credential ([`query`]).
//!
//! Which names are which is [`crate::headers`]' list; this module does the
//! removing. One pass over the headers actually present classifies each name
//! with a `match` (no hashing, and no allocation unless more than a few names
//! are found); only the names found are then removed. Removing a fixed list by name would hash
//! ~30 names per request, almost all absent.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName};

use crate::headers::{Kind, kind};

/// Removes client credentials, hop-by-hop headers, `Host` and `Expect` from a
/// request on its way upstream.
pub(crate) fn request(headers: &mut HeaderMap) {
    remove_where(headers, |k| k != Kind::Keep);
}

/// Removes hop-by-hop headers, including those `Connection` names.
pub(crate) fn hop_by_hop(headers: &mut HeaderMap) {
    remove_where(headers, |k| k == Kind::HopByHop);
}

/// How many names found are held without allocating: more than a request
/// or response usually carries (`Host` and a credential; `Connection`).
const INLINE: usize = 4;

fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(Kind) -> bool) {
    let mut inline: [Option<HeaderName>; INLINE] = Default::default();
    let mut slots = inline.iter_mut();
    let mut more: Vec<HeaderName> = Vec::new();
    let mut last: Option<&HeaderName> = None;
    // Value by value, so `Connection`'s are read in the same pass; a name
    // with several values comes once per value, in a row.
    for (name, value) in headers.iter() {
        if !doomed(kind(name)) {
            continue;
        }
        if name == header::CONNECTION {
            connection_named(value, &mut more);
        }
        if last == Some(name) {
            continue;
        }
        last = Some(name);
        match slots.next() {
            Some(slot) => *slot = Some(name.clone()),
            None => more.push(name.clone()),
        }
    }
    for name in inline.iter().flatten().chain(&more) {
        headers.remove(name);
    }
}

/// Adds the headers that one `Connection` value names (RFC 9110 §7.6.1:
/// "remove every field it names") to `found`.
fn connection_named(value: &http::HeaderValue, found: &mut Vec<HeaderName>) {
    // `keep-alive` and `close` are what almost every peer sends: the first
    // is removed anyway, the second names no header.
    if names_nothing(value.as_bytes().trim_ascii()) {
        return;
    }
    let Ok(value) = value.to_str() else { return };
    for token in value.split(',').map(str::trim) {
        if names_nothing(token.as_bytes()) {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes())
            && !found.contains(&name)
        {
            found.push(name);
        }
    }
}

/// An empty `Connection` token, `keep-alive` or `close`.
fn names_nothing(token: &[u8]) -> bool {
    token.is_empty()
        || token.eq_ignore_ascii_case(b"keep-alive")
        || token.eq_ignore_ascii_case(b"close")
}

/// Query parameter names that carry a credential: Google's `key` and
/// `access_token` (an OAuth2 token, which Vertex also takes in the query),
/// and the `api-key` an Azure realtime client may put there (`api_key` too,
/// which OpenAI-compatible servers read). Lowercase.
const CREDENTIAL_PARAMS: [&[u8]; 4] = [b"key", b"access_token", b"api-key", b"api_key"];

/// The query without any credential parameter. A name counts once
/// percent-decoded and in any case (`%6bey`, `KEY`): providers decode names
/// before they read them. Borrows when there is nothing to remove, so a
/// plain query costs a scan and no allocation.
pub(crate) fn query(query: &str) -> Cow<'_, str> {
    if !query.split('&').any(is_credential) {
        return Cow::Borrowed(query);
    }
    Cow::Owned(
        query
            .split('&')
            .filter(|p| !is_credential(p))
            .collect::<Vec<_>>()
            .join("&"),
    )
}

/// Whether the query parameter `param` (`name` or `name=value`) names a
/// credential.
fn is_credential(param: &str) -> bool {
    let name = param.split_once('=').map_or(param, |(name, _)| name);
    let name = name.as_bytes();
    if !name.contains(&b'%') {
        return CREDENTIAL_PARAMS
            .iter()
            .any(|c| name.eq_ignore_ascii_case(c));
    }
    CREDENTIAL_PARAMS.iter().any(|c| decodes_to(name, c))
}

/// Whether `name`, percent-decoded once, is `target` in any ASCII case. A
/// `%` not followed by two hex digits stands for itself, as in the
/// WHATWG URL parser.
fn decodes_to(name: &[u8], target: &[u8]) -> bool {
    let mut rest = name;
    let mut want = target.iter();
    loop {
        let (byte, tail) = match rest {
            [] => return want.next().is_none(),
            [b'%', h, l, tail @ ..] if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                ((hex(*h) << 4) | hex(*l), tail)
            }
            [b, tail @ ..] => (*b, tail),
        };
        if want.next() != Some(&byte.to_ascii_lowercase()) {
            return false;
        }
        rest = tail;
    }
}

/// The value of an ASCII hex digit.
fn hex(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        _ => (d | 0x20) - b'a' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut v: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn request_loses_credentials_hop_by_hop_and_named_headers() {
        let mut h = map(&[
            ("authorization", "Bearer client"),
            ("proxy-authorization", "Basic x"),
            ("x-api-key", "client"),
            ("api-key", "client"),
            ("x-goog-api-key", "client"),
            ("x-amz-date", "d"),
            ("x-amz-security-token", "t"),
            ("x-amz-content-sha256", "s"),
            ("x-sidekey-credential-a", "d"),
            ("x-sidekey-token", "t"),
            ("host", "127.0.0.1:8787"),
            ("expect", "100-continue"),
            ("connection", "keep-alive, x-private"),
            ("connection", "x-other"),
            ("x-private", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("content-type", "application/json"),
            ("anthropic-version", "2023-06-01"),
            ("x-sidekey-other", "kept: not a credential header"),
        ]);
        request(&mut h);
        assert_eq!(
            names(&h),
            ["anthropic-version", "content-type", "x-sidekey-other"]
        );
    }

    #[test]
    fn credential_query_parameters_go_in_any_encoding() {
        assert_eq!(query("alt=sse&key=abc"), "alt=sse");
        assert_eq!(query("key=abc"), "");
        assert_eq!(query("monkey=1&key"), "monkey=1");
        assert_eq!(
            query("%6bey=a&access_token=t&KEY=b&%6B%45%79=c&api-key=d&Api_Key=e&x=1"),
            "x=1"
        );
        assert_eq!(query("access%5ftoken=t&alt=sse"), "alt=sse");
        // Near misses stay: another name, a double encoding, a bad escape.
        for kept in [
            "keys=1",
            "%256bey=1",
            "ke%y=1",
            "k%65y%=1",
            "model=key",
            "%",
        ] {
            assert_eq!(query(kept), kept);
        }
        assert!(matches!(query("alt=sse&model=m"), Cow::Borrowed(_)));
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        /// `name` written as a client might: each byte kept, upper-cased or
        /// percent-encoded (upper or lower hex), as `how` says.
        fn spelled(name: &str, how: &[(bool, bool, bool)]) -> String {
            name.bytes()
                .zip(how.iter().cycle())
                .map(|(b, &(upper, encode, lower_hex))| {
                    let b = if upper { b.to_ascii_uppercase() } else { b };
                    match (encode, lower_hex) {
                        (false, _) => char::from(b).to_string(),
                        (true, false) => format!("%{b:02X}"),
                        (true, true) => format!("%{b:02x}"),
                    }
                })
                .collect()
        }

        /// A query parameter: a credential name in some spelling, or
        /// another name; with or without a value.
        fn param() -> impl Strategy<Value = String> {
            let credential = (
                prop::sample::select(&["key", "access_token", "api-key", "api_key"][..]),
                prop::collection::vec(any::<(bool, bool, bool)>(), 1..4),
            )
                .prop_map(|(name, how)| spelled(name, &how));
            let other = "[a-zA-Z0-9_%.~=-]{0,10}";
            let name = prop_oneof![credential, other.prop_map(String::from)];
            (name, prop::option::of("[a-zA-Z0-9%=._-]{0,8}"))
                .prop_map(|(n, v)| v.map_or_else(|| n.clone(), |v| format!("{n}={v}")))
        }

        /// The oracle: the name decoded the straightforward way.
        fn decoded_name(param: &str) -> Vec<u8> {
            let name = param.split('=').next().unwrap_or_default().as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < name.len() {
                let hex = name
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match (name[i], hex) {
                    (b'%', Some(b)) => {
                        out.push(b.to_ascii_lowercase());
                        i += 3;
                    }
                    (b, _) => {
                        out.push(b.to_ascii_lowercase());
                        i += 1;
                    }
                }
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// No credential parameter survives in any spelling, and every
            /// other parameter is kept, in order.
            #[test]
            fn no_credential_survives_and_nothing_else_goes(
                params in prop::collection::vec(param(), 0..8)
            ) {
                let input = params.join("&");
                let output = query(&input);
                let kept: Vec<&str> = params
                    .iter()
                    .map(String::as_str)
                    .filter(|p| !CREDENTIAL_PARAMS.contains(&decoded_name(p).as_slice()))
                    .collect();
                // An empty parameter (`a&&b`) is kept too: `join` restores it.
                prop_assert_eq!(output.as_ref(), kept.join("&"));
                for p in output.split('&') {
                    prop_assert!(!CREDENTIAL_PARAMS.contains(&decoded_name(p).as_slice()), "{}", p);
                }
            }

            /// Arbitrary text never panics.
            #[test]
            fn any_query_is_handled(q in any::<String>()) {
                let _ = query(&q);
            }
        }
    }

    #[test]
    fn response_keeps_everything_but_hop_by_hop() {
        let mut h = map(&[
            ("content-type", "text/event-stream"),
            ("transfer-encoding", "chunked"),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("x-request-id", "r"),
            ("www-authenticate", "Bearer"),
        ]);
        hop_by_hop(&mut h);
        assert_eq!(
            names(&h),
            ["content-type", "www-authenticate", "x-request-id"]
        );
    }
}
