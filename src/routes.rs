//! Routing: the first path segment picks a [`Route`]; the rest of the path and
//! the query are mapped onto the route's upstream base.
//!
//! design.md, "Request path", step 1: `/groq/v1/chat/completions` goes to
//! `https://api.groq.com/openai/v1/chat/completions`. Client paths are passed
//! through byte for byte (never decoded and re-encoded); `proxy::strip`
//! takes credential parameters out of the query first. No I/O happens here.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use http::HeaderName;

use crate::credentials::KeySet;
use crate::metrics::RouteMetrics;
use crate::providers::Spec;
use crate::upstream::Client;
pub(crate) use crate::url::UpstreamBase;

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
    /// Bedrock and SageMaker: SigV4 with AWS credentials, or a Bedrock API key.
    Aws(crate::providers::aws::AwsTarget),
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
            Targets::Aws(a) if a.signer.is_some() => out.push(("credentials".to_owned(), &a.keys)),
            Targets::Aws(a) => out.push(("key".to_owned(), &a.keys)),
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
    routes: HashMap<Box<str>, Route, BuildHasherDefault<Fnv1a>>,
}

/// FNV-1a, for the route table: a route name is a few bytes, and SipHash
/// cost ~150 instructions a request. A keyed hash guards a table that
/// attacker-chosen keys are inserted into; this one is built from the
/// config, and a lookup walks only the probe sequences its names made.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
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
    // `memchr` rather than `find`: a SIMD scan, where `find` goes byte by
    // byte over a path this short.
    match memchr::memchr(b'/', path.as_bytes()) {
        Some(i) => path.split_at(i),
        None => (path, ""),
    }
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// The route name is one whole segment, and name and rest give back
        /// the path: nothing is lost or added on the way to the upstream.
        #[test]
        fn split_keeps_the_path_whole(path in "/[a-z0-9/.%\\\\-]{0,30}") {
            let (name, rest) = split_path(&path);
            proptest::prop_assert!(!name.contains('/'));
            proptest::prop_assert!(rest.is_empty() || rest.starts_with('/'));
            proptest::prop_assert_eq!(format!("/{name}{rest}"), path);
        }
    }
}
