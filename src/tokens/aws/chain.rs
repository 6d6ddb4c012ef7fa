//! The AWS SDKs' credential chain, chosen from the environment.
//!
//! In the SDKs' order: the `AWS_ACCESS_KEY_ID` variables; web identity
//! (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, EKS IRSA); container
//! credentials (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, or `..._FULL_URI`
//! with `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` / `..._TOKEN`: ECS and EKS
//! Pod Identity); IMDSv2 last, unless `AWS_EC2_METADATA_DISABLED=true`. The
//! first source whose variables are set is the one used: choosing calls no
//! one, so `sidekey check` shows the choice offline.

use std::path::PathBuf;
use std::sync::Arc;

use super::container::{self, Container};
use super::imds::{self, Imds};
use super::sts::WebIdentity;
use super::{Fixed, Mint};
use crate::env::Env;
use crate::secret::{Fingerprint, Secret};

/// The source the chain chose, identified by its settings.
#[derive(Debug)]
pub(crate) struct Selected {
    pub(crate) source: Arc<dyn Mint>,
    /// Of the source's settings (or of the keys, for fixed keys).
    pub(crate) fingerprint: Fingerprint,
    /// What identifies the source across reloads (its token cache).
    pub(crate) digest: [u8; 32],
}

impl Selected {
    fn settings(source: Arc<dyn Mint>) -> Self {
        let described = source.describe();
        Self {
            fingerprint: Fingerprint::of(described.as_bytes()),
            digest: Fingerprint::digest_of(described.as_bytes()),
            source,
        }
    }
}

/// The chain's choice for a route in `region`.
///
/// # Errors
///
/// Which variables are missing or wrong (names only, never values).
pub(crate) fn select(env: &dyn Env, region: &str) -> Result<Selected, String> {
    let var = |name: &str| env.var(name).filter(|v| !v.trim().is_empty());
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => {
            let token = var("AWS_SESSION_TOKEN");
            let fixed = Fixed::new(
                "environment (AWS_ACCESS_KEY_ID)".to_owned(),
                id.trim(),
                secret.trim(),
                token.as_deref().map(str::trim),
            );
            let mut all = zeroize::Zeroizing::new(Vec::new());
            for part in [id.as_str(), secret.as_str(), token.as_deref().unwrap_or("")] {
                all.extend_from_slice(part.as_bytes());
                all.push(0);
            }
            return Ok(Selected {
                fingerprint: fixed.fingerprint(),
                digest: Fingerprint::digest_of(&all),
                source: Arc::new(fixed),
            });
        }
        (Some(_), None) => {
            return Err("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".to_owned());
        }
        (None, Some(_)) => {
            return Err("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".to_owned());
        }
        (None, None) => {}
    }
    if let Some(token_file) = var("AWS_WEB_IDENTITY_TOKEN_FILE") {
        let role_arn = var("AWS_ROLE_ARN")
            .ok_or("AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not")?;
        let sts = var("AWS_ENDPOINT_URL_STS").map_or_else(
            || format!("https://sts.{region}.amazonaws.com"),
            |u| u.trim_end_matches('/').to_owned(),
        );
        let source = WebIdentity::new(
            PathBuf::from(token_file),
            role_arn,
            var("AWS_ROLE_SESSION_NAME"),
            &sts,
        )?;
        return Ok(Selected::settings(Arc::new(source)));
    }
    let uri = match (
        var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
        var("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
    ) {
        (Some(relative), _) => Some(format!("{}{relative}", container::ECS_HOST)),
        (None, Some(full)) => Some(full),
        (None, None) => None,
    };
    if let Some(uri) = uri {
        let auth = match (
            var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
            var("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        ) {
            (Some(file), _) => container::Auth::File(PathBuf::from(file)),
            (None, Some(token)) => container::Auth::Value(
                Secret::new(token.into_bytes())
                    .map_err(|e| format!("AWS_CONTAINER_AUTHORIZATION_TOKEN {e}"))?,
            ),
            (None, None) => container::Auth::None,
        };
        return Ok(Selected::settings(Arc::new(Container::new(&uri, auth)?)));
    }
    if var("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Err(
            "no AWS credentials: none of AWS_ACCESS_KEY_ID, AWS_WEB_IDENTITY_TOKEN_FILE, \
                    AWS_CONTAINER_CREDENTIALS_FULL_URI or _RELATIVE_URI is set, and \
                    AWS_EC2_METADATA_DISABLED=true turns instance metadata off"
                .to_owned(),
        );
    }
    let endpoint = var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .unwrap_or_else(|| imds::DEFAULT_ENDPOINT.to_owned());
    Ok(Selected::settings(Arc::new(Imds::new(&endpoint)?)))
}
