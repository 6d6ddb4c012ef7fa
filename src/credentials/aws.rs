//! AWS credential settings of a signing route, read into a one-key
//! [`KeySet`] whose value is a token source (`crate::tokens::aws`).
//!
//! Either the AWS SDKs' chain, chosen from the environment, or
//! `credentials = { access_key_id, secret_access_key, session_token }`
//! read from their locations now (and on every reload, like any key). The
//! key's location is `aws-chain` or the access key id's location; a part
//! that cannot be read is reported with its own location.

use std::sync::Arc;

use super::resolve::{Reader, Unavailable};
use super::value::{Found, cached};
use super::{HealthScope, KeySet, KeySpec, KeyValue, Location, Minting};
use crate::secret::{Fingerprint, Secret};
use crate::tokens::aws::{Fixed, chain};

/// How the AWS chain shows as a location.
pub(crate) const AWS_CHAIN: &str = "aws-chain";

/// Where a signing route's AWS keys come from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AwsSource<'a> {
    /// The chain, for a route in `region` (STS's regional endpoint).
    Chain { region: &'a str },
    /// Keys stored at these locations.
    Keys {
        access_key_id: &'a Location,
        secret_access_key: &'a Location,
        session_token: Option<&'a Location>,
    },
}

impl KeySet {
    /// The one-key set of an AWS route that signs.
    pub(crate) fn resolve_aws(
        source: AwsSource<'_>,
        reader: Reader<'_>,
        scope: &HealthScope<'_>,
        minting: Minting<'_>,
    ) -> Self {
        let location = match source {
            AwsSource::Chain { .. } => Location::Ambient(AWS_CHAIN),
            AwsSource::Keys { access_key_id, .. } => access_key_id.clone(),
        };
        Self::build(&KeySpec::single(location), scope, |location| {
            let found = match source {
                AwsSource::Chain { region } => chain::select(reader.env, region)
                    .map(|s| Found {
                        source: s.source,
                        fingerprint: s.fingerprint,
                        digest: s.digest,
                    })
                    .map_err(|why| Unavailable::reason(location, why)),
                AwsSource::Keys {
                    access_key_id,
                    secret_access_key,
                    session_token,
                } => stored_keys(reader, access_key_id, secret_access_key, session_token),
            };
            match found {
                Ok(found) => cached(found, scope, minting),
                Err(why) => KeyValue::Missing(why),
            }
        })
    }
}

/// Keys read from their locations, as a source that hands them out.
fn stored_keys(
    reader: Reader<'_>,
    access_key_id: &Location,
    secret_access_key: &Location,
    session_token: Option<&Location>,
) -> Result<Found, Unavailable> {
    let text = |location: &Location| -> Result<Secret, Unavailable> {
        let secret = reader.read(location)?;
        std::str::from_utf8(secret.expose())
            .map_err(|_| Unavailable::reason(location, "is not UTF-8"))?;
        Ok(secret)
    };
    let id = text(access_key_id)?;
    let secret = text(secret_access_key)?;
    let token = session_token.map(text).transpose()?;
    let as_str = |s: &Secret| {
        std::str::from_utf8(s.expose())
            .unwrap_or_default()
            .to_owned()
    };
    let (id_s, secret_s) = (
        zeroize::Zeroizing::new(as_str(&id)),
        zeroize::Zeroizing::new(as_str(&secret)),
    );
    let token_s = token.as_ref().map(|t| zeroize::Zeroizing::new(as_str(t)));
    let fixed = Fixed::new(
        format!("{access_key_id} and {secret_access_key}"),
        &id_s,
        &secret_s,
        token_s.as_deref().map(String::as_str),
    );
    let mut all = zeroize::Zeroizing::new(Vec::new());
    for part in [
        id.digest(),
        secret.digest(),
        token.as_ref().map_or([0; 32], Secret::digest),
    ] {
        all.extend_from_slice(&part);
    }
    Ok(Found {
        fingerprint: fixed.fingerprint(),
        digest: Fingerprint::digest_of(&all),
        source: Arc::new(fixed),
    })
}
