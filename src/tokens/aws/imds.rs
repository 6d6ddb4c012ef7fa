//! EC2 instance metadata, IMDSv2: the last source of the chain.
//!
//! `PUT /latest/api/token` (`X-aws-ec2-metadata-token-ttl-seconds`) gives a
//! session token; with it (`X-aws-ec2-metadata-token`), `GET
//! /latest/meta-data/iam/security-credentials/` names the role and
//! `GET .../{role}` answers `{"Code", "AccessKeyId", "SecretAccessKey",
//! "Token", "Expiration"}`. `AWS_EC2_METADATA_SERVICE_ENDPOINT` moves it, as
//! the SDKs allow.

use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri};

use super::super::fetch::{fetch, printable};
use super::{Mint, MintError, MintFuture, parse_json_keys};
use crate::upstream::{Client, UpstreamBody};

/// The instance metadata service's usual address.
pub(crate) const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
const TOKEN_PATH: &str = "/latest/api/token";
const CREDENTIALS_PATH: &str = "/latest/meta-data/iam/security-credentials/";
/// How long the IMDS session token lives (the SDKs ask for six hours).
const TOKEN_TTL: &str = "21600";

/// The instance metadata service at one endpoint.
pub(crate) struct Imds {
    /// Without a trailing slash.
    endpoint: String,
}

impl Imds {
    /// IMDS at `endpoint` (a base URL).
    ///
    /// # Errors
    ///
    /// When `endpoint` is not an `http(s)://` URL.
    pub(crate) fn new(endpoint: &str) -> Result<Self, String> {
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        let uri: Uri = endpoint
            .parse()
            .map_err(|_| "AWS_EC2_METADATA_SERVICE_ENDPOINT is not a URL".to_owned())?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err("AWS_EC2_METADATA_SERVICE_ENDPOINT must be http:// or https://".to_owned());
        }
        Ok(Self { endpoint })
    }

    /// One request to IMDS; the body of its 200 answer.
    async fn call(
        &self,
        client: &Client,
        method: Method,
        path: &str,
        header: (&'static str, &HeaderValue),
    ) -> Result<Bytes, MintError> {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.endpoint))
            .header(header.0, header.1)
            .body(UpstreamBody::buffered(Bytes::new()))
            .map_err(|e| MintError::Request(format!("cannot build the IMDS request: {e}")))?;
        fetch(client, req).await?.ok_or_refused(printable)
    }
}

impl fmt::Debug for Imds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Mint for Imds {
    fn kind(&self) -> &'static str {
        "imds"
    }

    fn describe(&self) -> String {
        format!("instance metadata (IMDSv2 at {})", self.endpoint)
    }

    fn mint<'a>(&'a self, client: &'a Client, now: SystemTime) -> MintFuture<'a> {
        Box::pin(async move {
            let ttl = HeaderValue::from_static(TOKEN_TTL);
            let token = self
                .call(
                    client,
                    Method::PUT,
                    TOKEN_PATH,
                    ("x-aws-ec2-metadata-token-ttl-seconds", &ttl),
                )
                .await?;
            let mut token = HeaderValue::from_maybe_shared(token)
                .map_err(|_| self.bad("the session token is not a header value"))?;
            token.set_sensitive(true);
            let header = ("x-aws-ec2-metadata-token", &token);
            let roles = self
                .call(client, Method::GET, CREDENTIALS_PATH, header)
                .await?;
            let role = std::str::from_utf8(&roles)
                .ok()
                .and_then(|r| r.lines().map(str::trim).find(|l| !l.is_empty()))
                .filter(|r| {
                    r.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
                })
                .ok_or_else(|| self.bad("no instance role (is an instance profile attached?)"))?;
            let path = format!("{CREDENTIALS_PATH}{role}");
            let body = self.call(client, Method::GET, &path, header).await?;
            parse_json_keys(&body, now).map_err(|reason| self.bad(reason))
        })
    }
}

impl Imds {
    fn bad(&self, reason: impl Into<String>) -> MintError {
        MintError::BadAnswer {
            host: self.endpoint.clone(),
            reason: reason.into(),
        }
    }
}
