//! Tokens from the GKE metadata server (Workload Identity).
//!
//! `GET http://{host}/computeMetadata/v1/instance/service-accounts/default/token`
//! with `Metadata-Flavor: Google` answers `{"access_token", "expires_in",
//! "token_type"}`. The host is `metadata.google.internal` unless
//! `GCE_METADATA_HOST` names another (as Google's own libraries allow).

use std::time::SystemTime;

use http::Request;

use super::{Mint, MintError, MintFuture, oauth};
use crate::upstream::{Client, UpstreamBody};

/// The environment variable that overrides the metadata server's address.
pub(crate) const ENV_HOST: &str = "GCE_METADATA_HOST";
/// The metadata server's default address.
pub(crate) const DEFAULT_HOST: &str = "metadata.google.internal";

const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// The metadata server at `host`, as a token source.
#[derive(Debug)]
pub(crate) struct MetadataServer {
    pub(crate) host: String,
}

impl MetadataServer {
    /// The token request.
    ///
    /// # Errors
    ///
    /// When `host` does not make a valid URI.
    fn request(&self) -> Result<Request<UpstreamBody>, http::Error> {
        Request::get(format!(
            "http://{}{TOKEN_PATH}?scopes={}",
            self.host,
            super::jwt::SCOPE
        ))
        .header("metadata-flavor", "Google")
        .body(UpstreamBody::buffered(bytes::Bytes::new()))
    }
}

impl Mint for MetadataServer {
    fn kind(&self) -> &'static str {
        "gke-metadata"
    }

    fn describe(&self) -> String {
        format!("metadata server {}", self.host)
    }

    fn mint<'a>(&'a self, client: &'a Client, _now: SystemTime) -> MintFuture<'a> {
        Box::pin(async move {
            let req = self
                .request()
                .map_err(|e| MintError::Request(format!("bad metadata host: {e}")))?;
            oauth::exchange(client, req).await
        })
    }
}
