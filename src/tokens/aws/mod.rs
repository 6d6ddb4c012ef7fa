//! AWS credentials for SigV4 signing (design.md, "AWS: Bedrock and SageMaker").
//!
//! [`AwsKeys`] is what a source mints: an access key id, its secret and an
//! optional session token, turned once into the signer's identity. The
//! sources, each a [`Mint`](super::Mint) like Vertex's:
//!
//! - [`Fixed`]: keys known when the snapshot is built (the `AWS_ACCESS_KEY_ID`
//!   variables, or `credentials = { ... }` files, re-read on reload);
//! - [`sts::WebIdentity`]: EKS IRSA, the projected token file exchanged at
//!   STS (`AssumeRoleWithWebIdentity`), the file re-read at every refresh;
//! - [`container::Container`]: EKS Pod Identity and ECS credential endpoints;
//! - [`imds::Imds`]: EC2 instance metadata, IMDSv2.
//!
//! [`chain::select`] picks one from the environment in the SDKs' order,
//! without calling anyone, so `sidekey check` can say which offline.

pub(crate) mod chain;
pub(crate) mod container;
pub(crate) mod imds;
pub(crate) mod sts;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_smithy_runtime_api::client::identity::Identity;
use zeroize::Zeroizing;

use super::{Credential, Mint, MintError, MintFuture, Minted};
use crate::secret::Fingerprint;
use crate::upstream::Client;

/// Temporary credentials are never trusted for longer than this.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Assumed when an answer gives no `Expiration` (the SDKs' identity cache
/// assumes 15 minutes).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// How long fixed keys are "valid" for the cache: they never expire.
const FIXED_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// An access key id, its secret and session token, ready for the signer.
/// `Debug` and `Display` show the last four characters of the key id only.
pub(crate) struct AwsKeys {
    identity: Identity,
    /// `…WXYZ`: at most the last four characters of the access key id.
    tail: Box<str>,
    session: bool,
}

impl AwsKeys {
    /// Keys from their parts; `expiry` is when temporary keys end.
    pub(crate) fn new(
        access_key_id: &str,
        secret: &str,
        session_token: Option<&str>,
        expiry: Option<SystemTime>,
    ) -> Self {
        let creds = aws_credential_types::Credentials::new(
            access_key_id,
            secret,
            session_token.map(str::to_owned),
            expiry,
            "sidekey",
        );
        Self {
            identity: creds.into(),
            tail: key_id_tail(access_key_id).into(),
            session: session_token.is_some(),
        }
    }

    /// The identity the signer takes.
    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    /// A fingerprint over all three parts: a rotated secret is a new value
    /// even when the key id stays.
    fn fingerprint(access_key_id: &str, secret: &str, session_token: Option<&str>) -> Fingerprint {
        let mut all = Zeroizing::new(Vec::with_capacity(256));
        for part in [access_key_id, secret, session_token.unwrap_or("")] {
            all.extend_from_slice(part.as_bytes());
            all.push(0);
        }
        Fingerprint::of(&all)
    }
}

impl fmt::Debug for AwsKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKeys")
            .field("access_key_id", &self.tail)
            .field("session_token", &self.session)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for AwsKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.tail)
    }
}

/// `…WXYZ`: the last four characters of an access key id, all a log or
/// `check` may show of it.
pub(crate) fn key_id_tail(access_key_id: &str) -> String {
    let skip = access_key_id.chars().count().saturating_sub(4);
    let tail: String = access_key_id.chars().skip(skip).collect();
    format!("…{tail}")
}

/// Credentials as an endpoint answers them (STS, container, IMDS), turned
/// into a [`Minted`] that lives until `expiration` (capped).
///
/// # Errors
///
/// What is wrong with them (never a value).
pub(crate) fn minted(
    access_key_id: &str,
    secret: &str,
    session_token: Option<&str>,
    expiration: Option<&str>,
    now: SystemTime,
) -> Result<Minted, String> {
    if access_key_id.is_empty() || secret.is_empty() {
        return Err("the answer has no access key id or secret".to_owned());
    }
    let (lifetime, expiry) = match expiration {
        None => (DEFAULT_LIFETIME, None),
        Some(text) => {
            let at = super::time::parse_rfc3339(text)
                .ok_or_else(|| "Expiration is not an RFC 3339 time".to_owned())?;
            let left = at
                .duration_since(now)
                .map_err(|_| "the credentials have already expired".to_owned())?;
            (left.min(MAX_LIFETIME), Some(at))
        }
    };
    Ok(Minted {
        fingerprint: AwsKeys::fingerprint(access_key_id, secret, session_token),
        credential: Credential::Aws(Arc::new(AwsKeys::new(
            access_key_id,
            secret,
            session_token,
            expiry,
        ))),
        lifetime,
    })
}

/// Keys known when the snapshot is built: from the environment or files.
/// Minting hands them out at once; a rotation makes a new snapshot, and so
/// a new source.
pub(crate) struct Fixed {
    keys: Arc<AwsKeys>,
    fingerprint: Fingerprint,
    /// Where the keys came from, e.g. `environment (AWS_ACCESS_KEY_ID)`.
    origin: String,
}

impl Fixed {
    /// Keys read from `origin`.
    pub(crate) fn new(
        origin: String,
        access_key_id: &str,
        secret: &str,
        session_token: Option<&str>,
    ) -> Self {
        Self {
            keys: Arc::new(AwsKeys::new(access_key_id, secret, session_token, None)),
            fingerprint: AwsKeys::fingerprint(access_key_id, secret, session_token),
            origin,
        }
    }

    /// Of the three parts together.
    pub(crate) fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

impl fmt::Debug for Fixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Mint for Fixed {
    fn kind(&self) -> &'static str {
        "static-keys"
    }

    fn describe(&self) -> String {
        format!("{}, access key id {}", self.origin, self.keys)
    }

    fn renews(&self) -> bool {
        false
    }

    fn mint<'a>(&'a self, _client: &'a Client, _now: SystemTime) -> MintFuture<'a> {
        Box::pin(async move {
            Ok::<_, MintError>(Minted {
                credential: Credential::Aws(self.keys.clone()),
                fingerprint: self.fingerprint,
                lifetime: FIXED_LIFETIME,
            })
        })
    }
}

/// JSON credentials as the container endpoints and IMDS answer them.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonKeys {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    token: Option<Zeroizing<String>>,
    expiration: Option<String>,
    /// IMDS says `Success`.
    code: Option<String>,
}

/// Parses `{"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}`.
///
/// # Errors
///
/// What is wrong with the answer, never any of its values.
fn parse_json_keys(body: &[u8], now: SystemTime) -> Result<Minted, String> {
    let k: JsonKeys = serde_json::from_slice(body).map_err(|e| {
        format!(
            "not a credentials answer ({})",
            super::jwt::json_error_kind(&e)
        )
    })?;
    if let Some(code) = k.code.as_deref().filter(|c| *c != "Success") {
        return Err(format!(
            "Code is {}",
            super::fetch::printable(code.as_bytes())
        ));
    }
    minted(
        &k.access_key_id,
        &k.secret_access_key,
        k.token.as_deref().map(String::as_str),
        k.expiration.as_deref(),
        now,
    )
}
