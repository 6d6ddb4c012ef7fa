//! Container credentials: EKS Pod Identity and ECS.
//!
//! `GET {uri}` with `Authorization: <token>` (raw, no scheme), the token from
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (re-read at every refresh: the
//! kubelet rotates it) or `AWS_CONTAINER_AUTHORIZATION_TOKEN`. The answer is
//! `{"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}`. As in the
//! SDKs, plain `http://` is accepted only for loopback and the ECS/EKS
//! link-local agents, so a token is never sent in clear text elsewhere.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::SystemTime;

use http::{HeaderValue, Request, Uri};

use super::super::fetch::{fetch, printable};
use super::{Mint, MintError, MintFuture, parse_json_keys};
use crate::secret::Secret;
use crate::upstream::{Client, UpstreamBody};

/// Where `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` is resolved (ECS).
pub(crate) const ECS_HOST: &str = "http://169.254.170.2";

/// The `Authorization` the endpoint wants.
pub(crate) enum Auth {
    /// Read from this file at every refresh.
    File(PathBuf),
    /// The value of `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
    Value(Secret),
    None,
}

/// A container credentials endpoint.
pub(crate) struct Container {
    uri: Uri,
    auth: Auth,
}

impl Container {
    /// The endpoint at `uri`.
    ///
    /// # Errors
    ///
    /// When `uri` is not a URL, or is plain HTTP to a host that is neither
    /// loopback nor an ECS/EKS agent address.
    pub(crate) fn new(uri: &str, auth: Auth) -> Result<Self, String> {
        let uri: Uri = uri
            .parse()
            .map_err(|_| "the container credentials URI is not a URL".to_owned())?;
        let host = uri.host().unwrap_or("").trim_matches(['[', ']']);
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if allowed_http_host(host) => {}
            Some("http") => {
                return Err(format!(
                    "the container credentials URI is plain HTTP to {host}: only loopback, \
                     169.254.170.2, 169.254.170.23 and fd00:ec2::23 may be (use https://)"
                ));
            }
            _ => return Err("the container credentials URI must be http:// or https://".to_owned()),
        }
        Ok(Self { uri, auth })
    }

    async fn authorization(&self) -> Result<Option<HeaderValue>, MintError> {
        let bad = |_| {
            MintError::Request(
                "the container authorization token is not a valid header value".to_owned(),
            )
        };
        let mut value = match &self.auth {
            Auth::None => return Ok(None),
            Auth::Value(secret) => secret.header_value("").map_err(bad)?,
            Auth::File(path) => {
                let token = super::super::token_file::read(path).await?;
                // Backed by a wiped buffer, like every prepared credential.
                let token = crate::secret::wiped_bytes(token.as_bytes().to_vec());
                HeaderValue::from_maybe_shared(token).map_err(|_| {
                    MintError::Request(format!(
                        "token file {}: not a valid header value",
                        path.display()
                    ))
                })?
            }
        };
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

/// Loopback, or the ECS (169.254.170.2) and EKS Pod Identity
/// (169.254.170.23, fd00:ec2::23) agents.
fn allowed_http_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => true,
        Ok(ip) => ["169.254.170.2", "169.254.170.23", "fd00:ec2::23"]
            .iter()
            .any(|a| a.parse::<IpAddr>().is_ok_and(|a| a == ip)),
        Err(_) => false,
    }
}

impl fmt::Debug for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Mint for Container {
    fn kind(&self) -> &'static str {
        "container"
    }

    fn describe(&self) -> String {
        let auth = match &self.auth {
            Auth::File(p) => format!(", token file {}", p.display()),
            Auth::Value(_) => ", token from AWS_CONTAINER_AUTHORIZATION_TOKEN".to_owned(),
            Auth::None => String::new(),
        };
        format!("container credentials ({}{auth})", self.uri)
    }

    fn mint<'a>(&'a self, client: &'a Client, now: SystemTime) -> MintFuture<'a> {
        Box::pin(async move {
            let mut req = Request::get(self.uri.clone());
            if let Some(auth) = self.authorization().await? {
                req = req.header(http::header::AUTHORIZATION, auth);
            }
            let req = req
                .body(UpstreamBody::buffered(bytes::Bytes::new()))
                .map_err(|e| MintError::Request(format!("cannot build the request: {e}")))?;
            let answer = fetch(client, req).await?;
            let host = answer.host.clone();
            let body = answer.ok_or_refused(printable)?;
            parse_json_keys(&body, now).map_err(|reason| MintError::BadAnswer { host, reason })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback_and_the_agents() {
        for ok in [
            "http://127.0.0.1:8080/creds",
            "http://169.254.170.23/v1/credentials",
            "http://[fd00:ec2::23]/v1/credentials",
            "http://169.254.170.2/v2/credentials/x",
            "https://creds.example.com/x",
        ] {
            assert!(Container::new(ok, Auth::None).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1/creds",
            "http://example.com/x",
            "ftp://127.0.0.1/x",
            "nonsense",
        ] {
            assert!(Container::new(bad, Auth::None).is_err(), "{bad}");
        }
    }
}
