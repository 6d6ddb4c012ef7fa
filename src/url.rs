//! Upstream base URLs: scheme, host and an optional base path, parsed once
//! at config time and mapped onto per request.
//!
//! A leaf: config, providers and routes all name upstreams, and none of them
//! owns the others.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};

/// An upstream base URL: scheme, host and an optional base path
/// (`https://api.groq.com/openai`). Parsed once, at config time.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct UpstreamBase {
    scheme: Scheme,
    authority: Authority,
    /// `""` or a path without trailing slash, e.g. `/openai`.
    base_path: Box<str>,
}

/// `url` cut before any `?` and without user info (`user:pass@`).
fn shown_url(url: &str) -> String {
    let url = url.split('?').next().unwrap_or_default();
    // Only a real scheme counts: in `user:pw@://` what precedes `://` is
    // user info, which is never shown.
    let (scheme, rest) = match url.split_once("://") {
        Some((s, rest))
            if s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            (s, rest)
        }
        _ => ("", url),
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, None), |(a, p)| (a, Some(p)));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let mut out = String::new();
    if !scheme.is_empty() {
        out.push_str(scheme);
        out.push_str("://");
    }
    out.push_str(host);
    if let Some(p) = path {
        out.push('/');
        out.push_str(p);
    }
    out
}

impl FromStr for UpstreamBase {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        // Errors show the URL without a query or user info, which could
        // hold a key (`?key=AIza...`, `https://user:secret@host`).
        let shown = shown_url(raw);
        let s = shown.as_str();
        let uri: Uri = raw.parse().map_err(|_| {
            format!("`{s}` is not a URL; expected e.g. \"https://api.example.com/v1\"")
        })?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("`{s}` needs http:// or https://"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(format!(
                "`{s}`: only http:// and https:// upstreams are supported"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{s}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(
                "an upstream URL must not contain user info; put credentials in `key` or `headers`"
                    .to_owned(),
            );
        }
        if uri.query().is_some() {
            return Err(format!(
                "`{s}?…`: an upstream URL must not have a query (put a key in `key`, not in the URL)"
            ));
        }
        Ok(Self {
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').into(),
        })
    }
}

impl UpstreamBase {
    /// The host (and port, if given), for logs and error messages.
    pub(crate) fn host(&self) -> &str {
        self.authority.as_str()
    }

    /// The upstream URI for a client path remainder and query.
    ///
    /// # Errors
    ///
    /// If the combined path is not a valid URI path (cannot happen for a path
    /// hyper already parsed, but the request path does not unwrap).
    pub(crate) fn uri(&self, rest: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let query = query.filter(|q| !q.is_empty());
        // The exact length: `Bytes` takes a full `String` over without
        // allocating again.
        let path = (self.base_path.len() + rest.len()).max(1);
        let mut pq = String::with_capacity(path + query.map_or(0, |q| q.len() + 1));
        pq.push_str(&self.base_path);
        pq.push_str(rest);
        if pq.is_empty() {
            pq.push('/');
        }
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(PathAndQuery::from_maybe_shared(Bytes::from(pq))?);
        Ok(Uri::from_parts(parts)?)
    }
}

impl fmt::Display for UpstreamBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

impl fmt::Debug for UpstreamBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_path_and_query_onto_the_base() {
        let base: UpstreamBase = "https://api.groq.com/openai/".parse().unwrap();
        assert_eq!(
            base.uri("/v1/chat/completions", Some("a=1"))
                .unwrap()
                .to_string(),
            "https://api.groq.com/openai/v1/chat/completions?a=1"
        );
        let root: UpstreamBase = "http://127.0.0.1:9000".parse().unwrap();
        assert_eq!(
            root.uri("", None).unwrap().to_string(),
            "http://127.0.0.1:9000/"
        );
        assert_eq!(
            root.uri("/x%3Ay", Some("")).unwrap().to_string(),
            "http://127.0.0.1:9000/x%3Ay"
        );
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Any upstream text parses or is refused, without a panic; an
            /// error never shows a query or user info (where keys hide).
            #[test]
            fn parsing_never_panics_or_shows_a_key(
                url in "(https?://)?([a-z0-9.:@-]|user:sk-SECRET@){0,20}(/[a-z0-9%.]{0,8}){0,3}(\\?key=sk-SECRET)?"
            ) {
                if let Err(e) = url.parse::<UpstreamBase>() {
                    prop_assert!(!e.contains("sk-SECRET"), "{}", e);
                }
            }

            /// Mapping any path remainder and query onto a base never panics,
            /// and what it builds starts with the base path.
            #[test]
            fn mapping_never_panics(rest in any::<String>(), query in prop::option::of(any::<String>())) {
                let base: UpstreamBase = "https://api.example.com/openai/".parse().unwrap();
                if let Ok(uri) = base.uri(&rest, query.as_deref()) {
                    prop_assert!(uri.path().starts_with("/openai"));
                }
            }
        }
    }

    #[test]
    fn rejects_bad_upstreams() {
        for bad in [
            "ftp://x",
            "api.openai.com",
            "https://user:pw@host",
            "https://h/?q=1",
        ] {
            assert!(bad.parse::<UpstreamBase>().is_err(), "{bad}");
        }
    }
}
