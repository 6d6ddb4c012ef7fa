//! Routing: the first path segment picks a [`Route`]; the rest of the path and
//! the query are mapped onto the route's upstream base.
//!
//! design.md, "Request path", step 1: `/groq/v1/chat/completions` goes to
//! `https://api.groq.com/openai/v1/chat/completions`. Client paths are passed
//! through byte for byte (never decoded and re-encoded), minus the `key`
//! query parameter, which is a client credential. No I/O happens here.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderName;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};

use crate::admin::metrics::RouteMetrics;
use crate::credentials::KeySet;
use crate::providers::Spec;
use crate::upstream::Client;

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
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
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
        let mut pq = String::with_capacity(
            self.base_path.len() + rest.len() + query.map_or(1, |q| q.len() + 2),
        );
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

/// Where a request goes and with which keys.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) upstream: UpstreamBase,
    pub(crate) keys: KeySet,
}

/// The targets of a route.
#[derive(Debug)]
pub(crate) enum Targets {
    /// Every request goes to one upstream.
    One(Target),
    /// Azure: the deployment in the path picks endpoint and key; `default`
    /// (a route-level `upstream`) serves deployments not listed.
    Azure {
        deployments: HashMap<Box<str>, Target>,
        default: Option<Target>,
    },
    /// Vertex AI: OAuth2 tokens, host and path from location and project.
    Vertex(crate::providers::vertex::VertexTarget),
    /// A provider type this build cannot serve yet (501 with the reason).
    Unsupported(&'static str),
}

/// A route in a snapshot: config, resolved credentials, client and metrics.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) name: Arc<str>,
    pub(crate) spec: &'static Spec,
    pub(crate) targets: Targets,
    /// Extra credential headers (`headers = { ... }`).
    pub(crate) headers: Box<[(HeaderName, KeySet)]>,
    /// The model allowlist, when set.
    pub(crate) models: Option<Box<[Box<str>]>>,
    pub(crate) client: Client,
    pub(crate) metrics: Arc<RouteMetrics>,
}

impl Route {
    /// Whether `model` may be used on this route.
    pub(crate) fn allows(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.iter().any(|m| **m == *model))
    }

    /// The credential setting named `label`, as [`Route::key_sets`] names it.
    pub(crate) fn key_set(&self, label: &str) -> Option<&KeySet> {
        self.key_sets()
            .into_iter()
            .find_map(|(l, k)| (l == label).then_some(k))
    }

    /// Every key set of the route, with a label (for `check` and `/readyz`).
    pub(crate) fn key_sets(&self) -> Vec<(String, &KeySet)> {
        let mut out = Vec::new();
        match &self.targets {
            Targets::One(t) => out.push(("key".to_owned(), &t.keys)),
            Targets::Azure {
                deployments,
                default,
            } => {
                if let Some(t) = default {
                    out.push(("key".to_owned(), &t.keys));
                }
                let mut names: Vec<_> = deployments.iter().collect();
                names.sort_by(|a, b| a.0.cmp(b.0));
                for (name, t) in names {
                    out.push((format!("deployments.{name}.key"), &t.keys));
                }
            }
            Targets::Vertex(v) => out.push(("credentials".to_owned(), &v.keys)),
            Targets::Unsupported(_) => {}
        }
        for (name, keys) in self.headers.iter() {
            out.push((format!("headers.{name}"), keys));
        }
        out
    }
}

/// First path segment → route.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    routes: HashMap<Box<str>, Route>,
}

impl RouteTable {
    /// A table of `routes`, keyed by name.
    pub(crate) fn new(routes: impl IntoIterator<Item = Route>) -> Self {
        Self {
            routes: routes
                .into_iter()
                .map(|r| (Box::from(&*r.name), r))
                .collect(),
        }
    }

    /// The route named by `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Route> {
        self.routes.get(name)
    }

    /// Routes sorted by name.
    pub(crate) fn iter_sorted(&self) -> Vec<&Route> {
        let mut v: Vec<_> = self.routes.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Route names, sorted, for "unknown route" messages.
    pub(crate) fn names(&self) -> String {
        self.iter_sorted()
            .iter()
            .map(|r| &*r.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Splits `/name/rest...` into `("name", "/rest...")`; `/name` gives `("name", "")`.
pub(crate) fn split_path(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    match path.find('/') {
        Some(i) => path.split_at(i),
        None => (path, ""),
    }
}

/// The query without any `key` parameter (Gemini's API-key parameter, a
/// client credential). Borrows when there is nothing to remove.
pub(crate) fn strip_key_param(query: &str) -> Cow<'_, str> {
    let is_key = |p: &str| p == "key" || p.starts_with("key=");
    if !query.split('&').any(is_key) {
        return Cow::Borrowed(query);
    }
    Cow::Owned(
        query
            .split('&')
            .filter(|p| !is_key(p))
            .collect::<Vec<_>>()
            .join("&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_first_segment() {
        assert_eq!(split_path("/groq/v1/chat"), ("groq", "/v1/chat"));
        assert_eq!(split_path("/groq"), ("groq", ""));
        assert_eq!(split_path("/groq/"), ("groq", "/"));
        assert_eq!(split_path("/"), ("", ""));
    }

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

    #[test]
    fn key_param_is_removed() {
        assert_eq!(strip_key_param("alt=sse&key=abc"), "alt=sse");
        assert_eq!(strip_key_param("key=abc"), "");
        assert_eq!(strip_key_param("monkey=1&key"), "monkey=1");
        assert!(matches!(strip_key_param("alt=sse"), Cow::Borrowed(_)));
    }
}
