//! Credentials: where they come from, reading them, and choosing one per request.
//!
//! - [`location`]: the `env::`/`path::`/... syntax (design.md, "Credential locations").
//! - [`Secret`] (in `crate::secret`, a leaf): the type that redacts and wipes.
//! - [`resolve`]: reading a location into a secret, with a reason when it fails.
//! - [`pool`]: resting rejected keys and spreading a pool's load.
//! - [`KeySpec`] is the configured shape (one key, default + fallback, a pool);
//!   [`KeySet`] is its resolved form inside a snapshot (`value.rs` reads each
//!   location: a key's header value prepared once so the request path only
//!   clones it, or a token source handed to `crate::tokens`), and
//!   [`KeySet::candidates`] (`candidates.rs`) orders the keys a request tries.

mod aws;
mod candidates;
mod entra;
pub(crate) mod location;
pub(crate) mod pool;
pub(crate) mod resolve;
mod value;

use std::fmt;
use std::sync::Arc;

use http::HeaderValue;

pub(crate) use crate::secret::{Fingerprint, Secret};
pub(crate) use location::{DYNAMIC_HEADER_PREFIX, Location};

use crate::tokens::TokenCache;
use crate::tokens::aws::AwsKeys;
pub(crate) use aws::{AWS_CHAIN, AwsSource};
pub(crate) use entra::EntraIdentity;
use pool::{Cursor, HealthRegistry, KeyHealth};
use resolve::Unavailable;
pub(crate) use value::Minting;

/// How the keys of a credential setting are used.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Policy {
    /// A single location.
    Single,
    /// `{ default, fallback }`: the first available, in order.
    Fallback,
    /// `[L1, L2, ...]`: a pool that spreads requests across its keys.
    Pool,
}

/// A configured credential setting: one or more locations and how to use them.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct KeySpec {
    pub(crate) policy: Policy,
    pub(crate) locations: Vec<Location>,
}

impl KeySpec {
    /// A single location.
    pub(crate) fn single(location: Location) -> Self {
        Self {
            policy: Policy::Single,
            locations: vec![location],
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.policy, self.locations.as_slice()) {
            (Policy::Fallback, [d, fb]) => write!(f, "{{ default = {d}, fallback = {fb} }}"),
            (Policy::Pool, locs) => {
                f.write_str("[")?;
                for (i, l) in locs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{l}")?;
                }
                f.write_str("]")
            }
            (_, [one, ..]) => write!(f, "{one}"),
            (_, []) => f.write_str("none"),
        }
    }
}

impl fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The state of one key in a snapshot. Cloning shares the prepared value
/// (a reload keeps a key's last good value this way).
#[derive(Debug, Clone)]
pub(crate) enum KeyValue {
    /// Read and ready: the header value to send, prepared once.
    Static {
        header: HeaderValue,
        fingerprint: Fingerprint,
        /// Shared across reloads while the value stays the same.
        health: Arc<KeyHealth>,
    },
    /// Taken from the request's `x-sidekey-credential-NAME` header.
    Dynamic(location::DynamicName),
    /// An OAuth2 access token minted from this source (Vertex).
    Token {
        cache: Arc<TokenCache>,
        /// Of the source (the service-account JSON, or the metadata host).
        fingerprint: Fingerprint,
        digest: [u8; 32],
        health: Arc<KeyHealth>,
    },
    /// Send no credential.
    None,
    /// Could not be read; the reason names the location, never a value.
    Missing(Unavailable),
}

impl KeyValue {
    /// The fingerprint of a value read from a location (a key, or a token
    /// source); `None` for dynamic, `none` and missing values.
    pub(crate) fn fingerprint(&self) -> Option<Fingerprint> {
        match self {
            Self::Static { fingerprint, .. } | Self::Token { fingerprint, .. } => {
                Some(*fingerprint)
            }
            Self::Dynamic(_) | Self::None | Self::Missing(_) => None,
        }
    }
}

/// One key of a [`KeySet`].
#[derive(Debug)]
pub(crate) struct Key {
    pub(crate) location: Location,
    pub(crate) value: KeyValue,
}

/// A resolved credential setting, part of an immutable snapshot.
#[derive(Debug)]
pub(crate) struct KeySet {
    pub(crate) policy: Policy,
    pub(crate) keys: Box<[Key]>,
    /// Where a pool starts its next round (shared across reloads).
    cursor: Arc<Cursor>,
}

/// The credential for one attempt of a request.
#[derive(Debug, Clone)]
pub(crate) enum Chosen<'a> {
    /// A prepared value from the snapshot.
    Static {
        header: &'a HeaderValue,
        fingerprint: Fingerprint,
    },
    /// A value the client supplied through `x-sidekey-credential-NAME`.
    Dynamic(HeaderValue),
    /// A token to take from this cache (Vertex); the fingerprint is the source's.
    Token {
        cache: &'a TokenCache,
        fingerprint: Fingerprint,
    },
    /// A complete header value (a minted token, `Bearer ...`).
    Minted(HeaderValue),
    /// AWS keys a token source minted: the request is signed with them.
    Signed {
        keys: Arc<AwsKeys>,
        fingerprint: Fingerprint,
    },
    /// Send no credential.
    Nothing,
}

impl Chosen<'_> {
    /// Whether a fresh credential can differ from this one (a token source
    /// that mints anew).
    pub(crate) fn renews(&self) -> bool {
        matches!(self, Self::Token { cache, .. } if cache.source().renews())
    }

    /// What to log about the credential: a fingerprint, never the value.
    pub(crate) fn fingerprint(&self) -> Option<Fingerprint> {
        match self {
            Self::Static { fingerprint, .. }
            | Self::Token { fingerprint, .. }
            | Self::Signed { fingerprint, .. } => Some(*fingerprint),
            Self::Dynamic(v) | Self::Minted(v) => Some(Fingerprint::of(v.as_bytes())),
            Self::Nothing => None,
        }
    }
}

/// One credential to try, in the order a request tries them.
#[derive(Debug)]
pub(crate) struct Candidate<'a> {
    pub(crate) chosen: Chosen<'a>,
    /// The key's health: `None` for dynamic values and `none`, which are
    /// never rested.
    pub(crate) health: Option<&'a KeyHealth>,
    /// The key's location, for logs.
    pub(crate) location: &'a Location,
    /// The key was resting (or is probed) when this request chose it: only
    /// then may its answer end the rest. A request sent while the key was
    /// healthy says nothing about a rest that began while it was in flight.
    pub(crate) was_rested: bool,
}

/// No key of a set can serve this request. Names locations and reasons only.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", describe_missing(.0))]
pub(crate) struct NoCredential(pub(crate) Vec<String>);

fn describe_missing(reasons: &[String]) -> String {
    reasons.join("; ")
}

/// Where the health of a set's keys is kept: the registry and the key set's
/// identity in it.
#[derive(Debug)]
pub(crate) struct HealthScope<'a> {
    pub(crate) registry: &'a HealthRegistry,
    pub(crate) route: &'a str,
    /// `key`, `deployments.NAME.key`, `headers.NAME`.
    pub(crate) label: &'a str,
}

impl KeySet {
    /// The set of `spec`'s locations, each resolved by `value`.
    pub(super) fn build(
        spec: &KeySpec,
        scope: &HealthScope<'_>,
        mut value: impl FnMut(&Location) -> KeyValue,
    ) -> Self {
        let keys = spec
            .locations
            .iter()
            .map(|location| Key {
                location: location.clone(),
                value: value(location),
            })
            .collect();
        Self {
            policy: spec.policy,
            keys,
            cursor: scope.registry.cursor(scope.route, scope.label),
        }
    }

    /// Reasons for every key that could not be read (for `check` and `/readyz`).
    pub(crate) fn missing(&self) -> impl Iterator<Item = &Unavailable> {
        self.keys.iter().filter_map(|k| match &k.value {
            KeyValue::Missing(why) => Some(why),
            _ => None,
        })
    }

    /// True when no key of the set is usable without the request's help.
    pub(crate) fn all_missing(&self) -> bool {
        self.keys
            .iter()
            .all(|k| matches!(k.value, KeyValue::Missing(_)))
    }

    /// How many keys are resting now.
    pub(crate) fn rested(&self, now: u64) -> usize {
        self.keys
            .iter()
            .filter(|k| k.health().is_some_and(|h| h.is_rested(now)))
            .count()
    }
}

impl Key {
    /// The key's health, for keys that can be rested.
    pub(crate) fn health(&self) -> Option<&KeyHealth> {
        match &self.value {
            KeyValue::Static { health, .. } | KeyValue::Token { health, .. } => Some(health),
            KeyValue::Dynamic(_) | KeyValue::None | KeyValue::Missing(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderMap;

    use super::pool::now_ms;
    use super::resolve::Reader;
    use super::*;
    use crate::env::{Env, MapEnv};
    use crate::files::Direct;

    fn spec(policy: Policy, locs: &[&str]) -> KeySpec {
        KeySpec {
            policy,
            locations: locs.iter().map(|l| l.parse().unwrap()).collect(),
        }
    }

    fn resolve(spec: &KeySpec, env: &dyn Env, registry: &HealthRegistry) -> KeySet {
        let scope = HealthScope {
            registry,
            route: "r",
            label: "key",
        };
        let reader = Reader {
            env,
            files: &Direct,
        };
        KeySet::resolve(spec, "Bearer ", reader, &scope)
    }

    fn header_of(c: &Candidate<'_>) -> String {
        match &c.chosen {
            Chosen::Static { header, .. } => header.to_str().unwrap().to_owned(),
            Chosen::Dynamic(v) | Chosen::Minted(v) => v.to_str().unwrap().to_owned(),
            Chosen::Token { .. } => "token".to_owned(),
            Chosen::Signed { .. } => "signed".to_owned(),
            Chosen::Nothing => "-".to_owned(),
        }
    }

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn fallback_is_used_when_default_is_missing() {
        let env = MapEnv::new([("B", "key-b")]);
        let reg = HealthRegistry::default();
        let set = resolve(&spec(Policy::Fallback, &["env::A", "env::B"]), &env, &reg);
        let c = set.candidates(&mut HeaderMap::new(), WINDOW).unwrap();
        assert_eq!(
            c.iter().map(header_of).collect::<Vec<_>>(),
            ["Bearer key-b"]
        );
    }

    #[test]
    fn a_rested_default_goes_last_and_is_probed_once_its_rest_ends() {
        let env = MapEnv::new([("A", "key-a"), ("B", "key-b")]);
        let reg = HealthRegistry::default();
        let set = resolve(&spec(Policy::Fallback, &["env::A", "env::B"]), &env, &reg);
        let order = |set: &KeySet| {
            set.candidates(&mut HeaderMap::new(), WINDOW)
                .unwrap()
                .iter()
                .map(header_of)
                .collect::<Vec<_>>()
        };
        assert_eq!(order(&set), ["Bearer key-a", "Bearer key-b"]);
        let first = set.candidates(&mut HeaderMap::new(), WINDOW).unwrap();
        first[0].health.unwrap().rest(Duration::from_secs(3600));
        assert_eq!(order(&set), ["Bearer key-b", "Bearer key-a"]);
        // A rest of zero ends at once (its end is "now", not later).
        first[0].health.unwrap().rest(Duration::ZERO);
        assert_eq!(
            order(&set),
            ["Bearer key-a", "Bearer key-b"],
            "the probe goes first"
        );
        assert_eq!(
            order(&set),
            ["Bearer key-b", "Bearer key-a"],
            "only one request probes"
        );
    }

    #[test]
    fn a_pool_rotates_and_skips_rested_keys() {
        let env = MapEnv::new([("A", "a"), ("B", "b"), ("C", "c")]);
        let reg = HealthRegistry::default();
        let set = resolve(
            &spec(Policy::Pool, &["env::A", "env::B", "env::C"]),
            &env,
            &reg,
        );
        let firsts: Vec<_> = (0..3)
            .map(|_| header_of(&set.candidates(&mut HeaderMap::new(), WINDOW).unwrap()[0]))
            .collect();
        assert_eq!(firsts, ["Bearer a", "Bearer b", "Bearer c"]);
        set.candidates(&mut HeaderMap::new(), WINDOW).unwrap()[1]
            .health
            .unwrap()
            .rest(Duration::from_secs(3600));
        for _ in 0..6 {
            let c = set.candidates(&mut HeaderMap::new(), WINDOW).unwrap();
            assert_ne!(header_of(&c[0]), "Bearer b");
            assert_eq!(
                header_of(&c[2]),
                "Bearer b",
                "the rested key is the last resort"
            );
        }
        assert_eq!(set.rested(now_ms()), 1);
    }

    #[test]
    fn dynamic_key_is_taken_from_the_request_and_removed() {
        let reg = HealthRegistry::default();
        let set = resolve(
            &spec(Policy::Fallback, &["dynamic::tenant", "env::B"]),
            &MapEnv::new([("B", "b")]),
            &reg,
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-sidekey-credential-tenant",
            HeaderValue::from_static("dyn"),
        );
        let c = set.candidates(&mut headers, WINDOW).unwrap();
        assert_eq!(
            c.iter().map(header_of).collect::<Vec<_>>(),
            ["dyn", "Bearer b"]
        );
        assert!(headers.is_empty());
        let c = set.candidates(&mut HeaderMap::new(), WINDOW).unwrap();
        assert_eq!(c.iter().map(header_of).collect::<Vec<_>>(), ["Bearer b"]);
    }

    #[test]
    fn nothing_available_names_locations_not_values() {
        let reg = HealthRegistry::default();
        let set = resolve(
            &spec(Policy::Single, &["env::NOPE"]),
            &MapEnv::default(),
            &reg,
        );
        let err = set.candidates(&mut HeaderMap::new(), WINDOW).unwrap_err();
        assert!(err.to_string().contains("env::NOPE"), "{err}");
    }
}
