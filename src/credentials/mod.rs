//! Credentials: where they come from, reading them, and choosing one per request.
//!
//! - [`location`]: the `env::`/`path::`/... syntax (design.md, "Credential locations").
//! - [`secret`]: the [`Secret`] type that redacts and wipes.
//! - [`resolve`]: reading a location into a secret, with a reason when it fails.
//! - [`pool`]: resting rejected keys and spreading a pool's load.
//! - [`KeySpec`] is the configured shape (one key, default + fallback, a pool);
//!   [`KeySet`] is its resolved form inside a snapshot, with each key's header
//!   value prepared once so the request path only clones it, and
//!   [`KeySet::candidates`] orders the keys a request tries.

pub(crate) mod location;
pub(crate) mod pool;
pub(crate) mod resolve;
pub(crate) mod secret;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

pub(crate) use location::{DYNAMIC_HEADER_PREFIX, Location};
pub use secret::{Fingerprint, Secret};

use crate::admin::metrics::RouteMetrics;
use crate::tokens::jwt::ServiceAccount;
use crate::tokens::{Source, TokenCache, TokenRegistry};
use crate::upstream::Client;
use pool::{Cursor, HealthRegistry, KeyHealth, Standing, now_ms};
use resolve::{Reader, Unavailable};

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
    /// Send no credential.
    Nothing,
}

impl Chosen<'_> {
    /// What to log about the credential: a fingerprint, never the value.
    pub(crate) fn fingerprint(&self) -> Option<Fingerprint> {
        match self {
            Self::Static { fingerprint, .. } | Self::Token { fingerprint, .. } => {
                Some(*fingerprint)
            }
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
    /// Reads every location of `spec` and prepares its header value as
    /// `prefix` + secret (`"Bearer "` or nothing). Missing keys are kept as
    /// [`KeyValue::Missing`]: a route with a missing key still serves (503
    /// naming the location) and recovers on reload.
    pub(crate) fn resolve(
        spec: &KeySpec,
        prefix: &str,
        reader: Reader<'_>,
        scope: &HealthScope<'_>,
    ) -> Self {
        Self::build(spec, scope, |location| {
            resolve_one(location, prefix, reader, scope)
        })
    }

    /// The set of `spec`'s locations, each resolved by `value`.
    fn build(
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

    /// The credentials to try for one request, best first: keys that are
    /// not resting (in order for `{ default, fallback }`, from the next
    /// round-robin position for a pool), a key whose rest just ended and
    /// that this request probes (first), then resting keys as a last resort
    /// (soonest rest end first) rather than no answer. A `dynamic::` key
    /// counts when the request carries its header; the header is taken out
    /// of `headers` so it is never forwarded.
    ///
    /// # Errors
    ///
    /// [`NoCredential`] naming every location and why it cannot serve.
    pub(crate) fn candidates(
        &self,
        headers: &mut HeaderMap,
        probe_window: Duration,
    ) -> Result<Vec<Candidate<'_>>, NoCredential> {
        let n = self.keys.len();
        let start = if self.policy == Policy::Pool {
            self.cursor.next(n)
        } else {
            0
        };
        let now = now_ms();
        let mut usable = Vec::with_capacity(n);
        let mut resting = Vec::new();
        let mut probes = 0;
        for key in self.keys.iter().cycle().skip(start).take(n) {
            let location = &key.location;
            let (chosen, health) = match &key.value {
                KeyValue::Static {
                    header,
                    fingerprint,
                    health,
                } => (
                    Chosen::Static {
                        header,
                        fingerprint: *fingerprint,
                    },
                    health,
                ),
                KeyValue::Token {
                    cache,
                    fingerprint,
                    health,
                    ..
                } => (
                    Chosen::Token {
                        cache,
                        fingerprint: *fingerprint,
                    },
                    health,
                ),
                KeyValue::Dynamic(name) => {
                    if let Some(mut v) = headers.remove(name.header()) {
                        v.set_sensitive(true);
                        usable.push(Candidate {
                            chosen: Chosen::Dynamic(v),
                            health: None,
                            location,
                            was_rested: false,
                        });
                    }
                    continue;
                }
                KeyValue::None => {
                    usable.push(Candidate {
                        chosen: Chosen::Nothing,
                        health: None,
                        location,
                        was_rested: false,
                    });
                    continue;
                }
                KeyValue::Missing(_) => continue,
            };
            // A single key is never rested out of use: there is no other.
            let standing = if n == 1 {
                Standing::Healthy
            } else {
                health.standing(now, probe_window)
            };
            let candidate = Candidate {
                chosen,
                health: Some(health),
                location,
                was_rested: standing != Standing::Healthy,
            };
            match standing {
                Standing::Healthy => usable.push(candidate),
                Standing::Probe => {
                    usable.insert(probes, candidate);
                    probes += 1;
                }
                Standing::Rested(until) => resting.push((until, candidate)),
            }
        }
        resting.sort_by_key(|(until, _)| *until);
        usable.extend(resting.into_iter().map(|(_, c)| c));
        if usable.is_empty() {
            return Err(NoCredential(
                self.keys
                    .iter()
                    .map(|k| match &k.value {
                        KeyValue::Missing(why) => why.to_string(),
                        KeyValue::Dynamic(name) => {
                            format!("{}: request has no {} header", k.location, name.header())
                        }
                        _ => k.location.to_string(),
                    })
                    .collect(),
            ));
        }
        Ok(usable)
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

impl KeySet {
    /// Like [`KeySet::resolve`] for token sources (Vertex `credentials`):
    /// each location is a service-account JSON (`env::NAME` names its *path*,
    /// as TensorZero's `GCP_VERTEX_CREDENTIALS_PATH` does) or `metadata`.
    /// The JSON is parsed and its key loaded now; tokens are minted by the
    /// cache's own task (none in offline mode, for `check`).
    pub(crate) fn resolve_tokens(
        spec: &KeySpec,
        reader: Reader<'_>,
        scope: &HealthScope<'_>,
        tokens: &TokenRegistry,
        client: &Client,
        metrics: &Arc<RouteMetrics>,
    ) -> Self {
        Self::build(spec, scope, |location| {
            resolve_token(location, reader, scope, tokens, client, metrics)
        })
    }
}

fn resolve_token(
    location: &Location,
    reader: Reader<'_>,
    scope: &HealthScope<'_>,
    tokens: &TokenRegistry,
    client: &Client,
    metrics: &Arc<RouteMetrics>,
) -> KeyValue {
    let (source, digest) = match location {
        Location::None => return KeyValue::None,
        Location::Dynamic(name) => return KeyValue::Dynamic(name.clone()),
        Location::Metadata => {
            let host = reader
                .env
                .var(crate::tokens::metadata::ENV_HOST)
                .unwrap_or_else(|| crate::tokens::metadata::DEFAULT_HOST.to_owned());
            let digest = Fingerprint::digest_of(host.as_bytes());
            (Source::Metadata { host }, digest)
        }
        Location::Env(var) | Location::PathFromEnv(var) => {
            let Some(path) = reader.env.var(var) else {
                return KeyValue::Missing(Unavailable::reason(
                    location,
                    "environment variable is not set",
                ));
            };
            match read_account(reader, location, std::path::Path::new(&path)) {
                Ok(found) => found,
                Err(why) => return KeyValue::Missing(why),
            }
        }
        Location::Path(path) => match read_account(reader, location, path) {
            Ok(found) => found,
            Err(why) => return KeyValue::Missing(why),
        },
    };
    let fingerprint = match &source {
        Source::Account(sa) => sa.fingerprint,
        Source::Metadata { host } => Fingerprint::of(host.as_bytes()),
    };
    let cache = tokens.get(scope.route, scope.label, digest, client, || {
        (source, metrics.clone())
    });
    KeyValue::Token {
        cache,
        fingerprint,
        digest,
        health: scope.registry.get(scope.route, scope.label, digest),
    }
}

/// Reads and parses a service-account JSON.
fn read_account(
    reader: Reader<'_>,
    location: &Location,
    path: &std::path::Path,
) -> Result<(Source, [u8; 32]), Unavailable> {
    // A JSON file, not a header value: newlines and any UTF-8 are fine.
    let json = reader.read_raw(location, path)?;
    let account = ServiceAccount::parse(&json).map_err(|e| Unavailable::reason(location, e))?;
    Ok((
        Source::Account(Box::new(account)),
        Fingerprint::digest_of(&json),
    ))
}

fn resolve_one(
    location: &Location,
    prefix: &str,
    reader: Reader<'_>,
    scope: &HealthScope<'_>,
) -> KeyValue {
    match location {
        Location::None => KeyValue::None,
        Location::Dynamic(name) => KeyValue::Dynamic(name.clone()),
        _ => match reader.read(location).and_then(|secret| {
            secret
                .header_value(prefix)
                .map(|header| (header, secret.fingerprint(), secret.digest()))
                .map_err(|e| Unavailable::invalid(location, e))
        }) {
            Ok((header, fingerprint, digest)) => KeyValue::Static {
                header,
                fingerprint,
                health: scope.registry.get(scope.route, scope.label, digest),
            },
            Err(why) => KeyValue::Missing(why),
        },
    }
}

#[cfg(test)]
mod tests {
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
