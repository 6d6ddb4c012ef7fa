//! Reading one location into the [`KeyValue`] a snapshot holds.
//!
//! A stored key is read and its header value prepared once ([`stored`]);
//! a token source (Vertex `credentials`) is read, parsed and handed to the
//! token machinery, which mints in the background ([`KeySet::resolve_tokens`]).
//! Failures become [`KeyValue::Missing`] naming the location, never a value.

use std::path::Path;
use std::sync::Arc;

use super::resolve::{Reader, Unavailable};
use super::{Fingerprint, HealthScope, KeySet, KeySpec, KeyValue, Location};
use crate::metrics::RouteMetrics;
use crate::tokens::authorized_user::AuthorizedUser;
use crate::tokens::external_account::ExternalAccount;
use crate::tokens::jwt::ServiceAccount;
use crate::tokens::metadata::{self, MetadataServer};
use crate::tokens::{Mint, TokenRegistry};
use crate::upstream::Client;

/// What token sources are minted with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Minting<'a> {
    pub(crate) registry: &'a TokenRegistry,
    /// The route's client (its trust settings reach the token endpoint too).
    pub(crate) client: &'a Client,
    pub(crate) metrics: &'a Arc<RouteMetrics>,
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
            stored(location, prefix, reader, scope)
        })
    }

    /// Like [`KeySet::resolve`] for token sources (Vertex `credentials`):
    /// each location is a service-account JSON (`env::NAME` names its *path*,
    /// as TensorZero's `GCP_VERTEX_CREDENTIALS_PATH` does) or `metadata`.
    /// The JSON is parsed and its key loaded now; tokens are minted by the
    /// cache's own task (none in offline mode, for `check`).
    pub(crate) fn resolve_tokens(
        spec: &KeySpec,
        reader: Reader<'_>,
        scope: &HealthScope<'_>,
        minting: Minting<'_>,
    ) -> Self {
        Self::build(spec, scope, |location| {
            token_source(location, reader, scope, minting)
        })
    }
}

/// A stored key: read, checked, its header value prepared.
fn stored(
    location: &Location,
    prefix: &str,
    reader: Reader<'_>,
    scope: &HealthScope<'_>,
) -> KeyValue {
    match location {
        Location::None => return KeyValue::None,
        Location::Dynamic(name) => return KeyValue::Dynamic(name.clone()),
        _ => {}
    }
    let prepared = reader.read(location).and_then(|secret| {
        secret
            .header_value(prefix)
            .map(|header| (header, secret.fingerprint(), secret.digest()))
            .map_err(|e| Unavailable::invalid(location, e))
    });
    match prepared {
        Ok((header, fingerprint, digest)) => KeyValue::Static {
            header,
            fingerprint,
            health: scope.registry.get(scope.route, scope.label, digest),
        },
        Err(why) => KeyValue::Missing(why),
    }
}

/// A token source, identified by its content (digest) and fingerprinted.
pub(super) struct Found {
    pub(super) source: Arc<dyn Mint>,
    pub(super) fingerprint: Fingerprint,
    pub(super) digest: [u8; 32],
}

fn token_source(
    location: &Location,
    reader: Reader<'_>,
    scope: &HealthScope<'_>,
    minting: Minting<'_>,
) -> KeyValue {
    let found = match location {
        Location::None => return KeyValue::None,
        Location::Dynamic(name) => return KeyValue::Dynamic(name.clone()),
        Location::Metadata => Ok(metadata_server(reader)),
        // Config validation keeps the AWS chain to AWS routes.
        Location::Ambient(_) => Err(Unavailable::reason(location, "not a Vertex credential")),
        Location::Env(var) | Location::PathFromEnv(var) => match reader.env.var(var) {
            Some(path) => service_account(reader, location, Path::new(&path)),
            None => Err(Unavailable::reason(
                location,
                "environment variable is not set",
            )),
        },
        Location::Path(path) => service_account(reader, location, path),
    };
    match found {
        Ok(found) => cached(found, scope, minting),
        Err(why) => KeyValue::Missing(why),
    }
}

/// The token cache for `found` (kept from an earlier snapshot when the
/// source is the same), as a key's value.
pub(super) fn cached(found: Found, scope: &HealthScope<'_>, minting: Minting<'_>) -> KeyValue {
    let Found {
        source,
        fingerprint,
        digest,
    } = found;
    let cache = minting
        .registry
        .get(scope.route, scope.label, digest, minting.client, || {
            (source, minting.metrics.clone())
        });
    KeyValue::Token {
        cache,
        fingerprint,
        digest,
        health: scope.registry.get(scope.route, scope.label, digest),
    }
}

/// The GKE metadata server, at `GCE_METADATA_HOST` or its usual name.
fn metadata_server(reader: Reader<'_>) -> Found {
    let host = reader
        .env
        .var(metadata::ENV_HOST)
        .unwrap_or_else(|| metadata::DEFAULT_HOST.to_owned());
    Found {
        fingerprint: Fingerprint::of(host.as_bytes()),
        digest: Fingerprint::digest_of(host.as_bytes()),
        source: Arc::new(MetadataServer { host }),
    }
}

/// Reads a Google credentials JSON and parses it by its `type`, as Google's
/// libraries do: `service_account` (a key), `external_account` (Workload
/// Identity Federation) or `authorized_user` (a refresh token).
fn service_account(
    reader: Reader<'_>,
    location: &Location,
    path: &Path,
) -> Result<Found, Unavailable> {
    // A JSON file, not a header value: newlines and any UTF-8 are fine.
    let json = reader.read_raw(location, path)?;
    #[derive(serde::Deserialize)]
    struct TypeOnly {
        #[serde(rename = "type")]
        ty: Option<String>,
    }
    let ty = serde_json::from_slice::<TypeOnly>(&json)
        .ok()
        .and_then(|t| t.ty);
    let source: Arc<dyn Mint> = match ty.as_deref() {
        Some("external_account") => {
            Arc::new(ExternalAccount::parse(&json).map_err(|e| Unavailable::reason(location, e))?)
        }
        Some("authorized_user") => {
            Arc::new(AuthorizedUser::parse(&json).map_err(|e| Unavailable::reason(location, e))?)
        }
        _ => Arc::new(ServiceAccount::parse(&json).map_err(|e| Unavailable::reason(location, e))?),
    };
    Ok(Found {
        fingerprint: Fingerprint::of(&json),
        digest: Fingerprint::digest_of(&json),
        source,
    })
}
