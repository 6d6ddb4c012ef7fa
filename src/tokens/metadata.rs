//! Tokens from the GKE metadata server (Workload Identity).
//!
//! `GET http://{host}/computeMetadata/v1/instance/service-accounts/default/token`
//! with `Metadata-Flavor: Google` answers `{"access_token", "expires_in",
//! "token_type"}`. The host is `metadata.google.internal` unless
//! `GCE_METADATA_HOST` names another (as Google's own libraries allow).

use http::Request;

use crate::upstream::UpstreamBody;

/// The environment variable that overrides the metadata server's address.
pub(crate) const ENV_HOST: &str = "GCE_METADATA_HOST";
/// The metadata server's default address.
pub(crate) const DEFAULT_HOST: &str = "metadata.google.internal";

const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// The token request for the metadata server at `host`.
///
/// # Errors
///
/// When `host` does not make a valid URI.
pub(crate) fn request(host: &str) -> Result<Request<UpstreamBody>, http::Error> {
    Request::get(format!(
        "http://{host}{TOKEN_PATH}?scopes={}",
        super::jwt::SCOPE
    ))
    .header("metadata-flavor", "Google")
    .body(UpstreamBody::buffered(bytes::Bytes::new()))
}
