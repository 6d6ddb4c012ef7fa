//! Azure identities (`credentials` of an azure route or deployment), read
//! into a one-key [`KeySet`] whose value is a token source
//! (`crate::tokens::entra`).
//!
//! `workload-identity` and `managed-identity` come from the environment the
//! pod is given; a client secret is read from its location now and on every
//! reload, like any key (the key's location is the secret's, so the file is
//! watched).

use std::sync::Arc;

use super::resolve::{Reader, Unavailable};
use super::value::{Found, cached};
use super::{HealthScope, KeySet, KeySpec, KeyValue, Location, Minting};
use crate::secret::Fingerprint;
use crate::tokens::Mint;
use crate::tokens::entra::{Entra, ManagedIdentity};

/// How an azure route or deployment gets Entra ID tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntraIdentity {
    /// AKS workload identity: a federated token file.
    Workload,
    /// The instance metadata service.
    Managed,
    /// An app registration's client secret.
    ClientSecret {
        tenant_id: String,
        client_id: String,
        client_secret: Location,
    },
}

impl EntraIdentity {
    /// The location the key shows (and, for a secret, is watched at).
    pub(crate) fn location(&self) -> Location {
        match self {
            Self::Workload => Location::Ambient("workload-identity"),
            Self::Managed => Location::Ambient("managed-identity"),
            Self::ClientSecret { client_secret, .. } => client_secret.clone(),
        }
    }
}

impl KeySet {
    /// The one-key set of an identity asking for tokens of `scope`.
    pub(crate) fn resolve_entra(
        identity: &EntraIdentity,
        token_scope: &str,
        reader: Reader<'_>,
        scope: &HealthScope<'_>,
        minting: Minting<'_>,
    ) -> Self {
        Self::build(&KeySpec::single(identity.location()), scope, |location| {
            let env = reader.env;
            let (source, secret_digest): (Result<Arc<dyn Mint>, String>, [u8; 32]) = match identity
            {
                EntraIdentity::Workload => (
                    Entra::workload_identity(env, token_scope)
                        .map(|e| Arc::new(e) as Arc<dyn Mint>),
                    [0; 32],
                ),
                EntraIdentity::Managed => (
                    ManagedIdentity::new(env, token_scope).map(|m| Arc::new(m) as Arc<dyn Mint>),
                    [0; 32],
                ),
                EntraIdentity::ClientSecret {
                    tenant_id,
                    client_id,
                    client_secret,
                } => {
                    let secret = match reader.read(client_secret) {
                        Ok(s) => s,
                        Err(why) => return KeyValue::Missing(why),
                    };
                    let digest = secret.digest();
                    (
                        Entra::client_secret(env, tenant_id, client_id, secret, token_scope)
                            .map(|e| Arc::new(e) as Arc<dyn Mint>),
                        digest,
                    )
                }
            };
            let source = match source {
                Ok(s) => s,
                Err(why) => return KeyValue::Missing(Unavailable::reason(location, why)),
            };
            let mut id = source.describe().into_bytes();
            id.extend_from_slice(&secret_digest);
            let found = Found {
                fingerprint: Fingerprint::of(&id),
                digest: Fingerprint::digest_of(&id),
                source,
            };
            cached(found, scope, minting)
        })
    }
}
