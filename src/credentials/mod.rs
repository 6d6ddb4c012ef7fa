//! Credentials: where they come from, reading them, and choosing one per request.
//!
//! - [`location`]: the `env::`/`path::`/... syntax (design.md, "Credential locations").
//! - [`secret`]: the [`Secret`] type that redacts and wipes.
//! - [`resolve`]: reading a location into a secret, with a reason when it fails.
//! - [`KeySpec`] is the configured shape (one key, default + fallback, a pool);
//!   [`KeySet`] is its resolved form inside a snapshot, with each key's header
//!   value prepared once so the request path only clones it.

pub(crate) mod location;
pub(crate) mod resolve;
pub(crate) mod secret;

use std::fmt;

use http::{HeaderMap, HeaderValue};

pub(crate) use location::{DYNAMIC_HEADER_PREFIX, Location};
pub use secret::{Fingerprint, Secret};

use crate::env::Env;
use resolve::Unavailable;

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

/// The state of one key in a snapshot.
#[derive(Debug)]
pub(crate) enum KeyValue {
    /// Read and ready: the header value to send, prepared once.
    Static {
        header: HeaderValue,
        fingerprint: Fingerprint,
    },
    /// Taken from the request's `x-sidekey-credential-NAME` header.
    Dynamic(location::DynamicName),
    /// Send nothing.
    None,
    /// Could not be read; the reason names the location, never a value.
    Missing(Unavailable),
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
}

/// The credential chosen for one request.
#[derive(Debug)]
pub(crate) enum Chosen<'a> {
    /// A prepared value from the snapshot.
    Static {
        header: &'a HeaderValue,
        fingerprint: Fingerprint,
    },
    /// A value the client supplied through `x-sidekey-credential-NAME`.
    Dynamic(HeaderValue),
    /// Send no credential.
    Nothing,
}

impl Chosen<'_> {
    /// What to log about the credential: a fingerprint, never the value.
    pub(crate) fn fingerprint(&self) -> Option<Fingerprint> {
        match self {
            Self::Static { fingerprint, .. } => Some(*fingerprint),
            Self::Dynamic(v) => Some(Fingerprint::of(v.as_bytes())),
            Self::Nothing => None,
        }
    }
}

/// No key of a set can serve this request. Names locations and reasons only.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", describe_missing(.0))]
pub(crate) struct NoCredential(pub(crate) Vec<String>);

fn describe_missing(reasons: &[String]) -> String {
    reasons.join("; ")
}

impl KeySet {
    /// Reads every location of `spec` and prepares its header value as
    /// `prefix` + secret (`"Bearer "` or nothing). Missing keys are kept as
    /// [`KeyValue::Missing`]: a route with a missing key still serves (503
    /// naming the location) and recovers on reload.
    pub(crate) fn resolve(spec: &KeySpec, prefix: &str, env: &dyn Env) -> Self {
        let keys = spec
            .locations
            .iter()
            .map(|location| Key {
                location: location.clone(),
                value: resolve_one(location, prefix, env),
            })
            .collect();
        Self {
            policy: spec.policy,
            keys,
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

    /// Picks the credential for one request: the first key that is available,
    /// in order. A `dynamic::` key is available when the request carries its
    /// header; the header is taken out of `headers` so it is never forwarded.
    ///
    /// # Errors
    ///
    /// [`NoCredential`] naming every location tried and why it failed.
    pub(crate) fn choose(&self, headers: &mut HeaderMap) -> Result<Chosen<'_>, NoCredential> {
        for key in &self.keys {
            match &key.value {
                KeyValue::Static {
                    header,
                    fingerprint,
                } => {
                    return Ok(Chosen::Static {
                        header,
                        fingerprint: *fingerprint,
                    });
                }
                KeyValue::Dynamic(name) => {
                    if let Some(mut v) = headers.remove(name.header()) {
                        v.set_sensitive(true);
                        return Ok(Chosen::Dynamic(v));
                    }
                }
                KeyValue::None => return Ok(Chosen::Nothing),
                KeyValue::Missing(_) => {}
            }
        }
        Err(NoCredential(
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
        ))
    }
}

fn resolve_one(location: &Location, prefix: &str, env: &dyn Env) -> KeyValue {
    match location {
        Location::None => KeyValue::None,
        Location::Dynamic(name) => KeyValue::Dynamic(name.clone()),
        _ => match resolve::read(location, env).and_then(|secret| {
            secret
                .header_value(prefix)
                .map(|header| (header, secret.fingerprint()))
                .map_err(|e| Unavailable::invalid(location, e))
        }) {
            Ok((header, fingerprint)) => KeyValue::Static {
                header,
                fingerprint,
            },
            Err(why) => KeyValue::Missing(why),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::MapEnv;

    fn spec(policy: Policy, locs: &[&str]) -> KeySpec {
        KeySpec {
            policy,
            locations: locs.iter().map(|l| l.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn fallback_is_used_when_default_is_missing() {
        let env = MapEnv::new([("B", "key-b")]);
        let set = KeySet::resolve(
            &spec(Policy::Fallback, &["env::A", "env::B"]),
            "Bearer ",
            &env,
        );
        let mut headers = HeaderMap::new();
        let Chosen::Static { header, .. } = set.choose(&mut headers).unwrap() else {
            panic!("expected a static key");
        };
        assert_eq!(header.as_bytes(), b"Bearer key-b");
    }

    #[test]
    fn dynamic_key_is_taken_from_the_request_and_removed() {
        let set = KeySet::resolve(
            &spec(Policy::Fallback, &["dynamic::tenant", "env::B"]),
            "Bearer ",
            &MapEnv::default(),
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-sidekey-credential-tenant",
            HeaderValue::from_static("dyn"),
        );
        let Chosen::Dynamic(v) = set.choose(&mut headers).unwrap() else {
            panic!("expected the dynamic key");
        };
        assert_eq!(v, "dyn");
        assert!(headers.is_empty());
    }

    #[test]
    fn nothing_available_names_locations_not_values() {
        let set = KeySet::resolve(
            &spec(Policy::Single, &["env::NOPE"]),
            "Bearer ",
            &MapEnv::default(),
        );
        let err = set.choose(&mut HeaderMap::new()).unwrap_err();
        assert!(err.to_string().contains("env::NOPE"), "{err}");
    }
}
