//! AWS Bedrock and SageMaker: where requests go, and SigV4 signing.
//!
//! design.md, "AWS: Bedrock and SageMaker". A route's host follows its
//! region (`bedrock-runtime.{region}.amazonaws.com`,
//! `runtime.sagemaker.{region}.amazonaws.com`) unless it names an
//! `upstream`. The client's path goes upstream byte for byte: boto3 sends
//! `/model/anthropic.claude-v2%3A1/converse`, and the signature covers
//! exactly those bytes (aws-sigv4 encodes them again, as SigV4 wants for
//! every service but S3).
//!
//! [`SigV4::sign`] runs last, on the final method, URI, headers and body
//! bytes of an attempt, with the keys the route's credential source
//! minted. A Bedrock API key is not signed: it goes out as
//! `Authorization: Bearer` like any key.

use std::time::SystemTime;

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use http::Request;

use crate::body::UpstreamBody;
use crate::credentials::KeySet;
use crate::tokens::aws::AwsKeys;
use crate::url::UpstreamBase;

/// A Bedrock or SageMaker route's target.
#[derive(Debug)]
pub(crate) struct AwsTarget {
    pub(crate) upstream: UpstreamBase,
    pub(crate) keys: KeySet,
    /// `None` for a Bedrock API key, which is sent as a Bearer key.
    pub(crate) signer: Option<SigV4>,
}

/// The regional host of `service` (`bedrock` or `sagemaker`).
pub(crate) fn default_upstream(service: &str, region: &str) -> String {
    match service {
        "sagemaker" => format!("https://runtime.sagemaker.{region}.amazonaws.com"),
        _ => format!("https://bedrock-runtime.{region}.amazonaws.com"),
    }
}

/// What requests are signed for.
#[derive(Debug)]
pub(crate) struct SigV4 {
    pub(crate) region: Box<str>,
    /// The signing name: `bedrock` or `sagemaker`.
    pub(crate) service: &'static str,
}

/// Why a request could not be signed (a header value the signer cannot
/// read, say). Names no credential.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign the request: {0}")]
pub(crate) struct SigningError(String);

impl SigV4 {
    /// Signs `req` with `keys` at `now`: adds `authorization`, `x-amz-date`
    /// and, for temporary keys, `x-amz-security-token`. The payload hash is
    /// over the buffered body (a signing route always buffers it).
    ///
    /// # Errors
    ///
    /// [`SigningError`] when the request cannot be signed.
    pub(crate) fn sign(
        &self,
        req: &mut Request<UpstreamBody>,
        keys: &AwsKeys,
        now: SystemTime,
    ) -> Result<(), SigningError> {
        let fail = |e: &dyn std::fmt::Display| SigningError(e.to_string());
        let params = v4::SigningParams::builder()
            .identity(keys.identity())
            .region(&self.region)
            .name(self.service)
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| fail(&e))?
            .into();
        let body = req.body().bytes().unwrap_or(&[]);
        let uri = req.uri().to_string();
        let headers = req
            .headers()
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        let signable = SignableRequest::new(
            req.method().as_str(),
            uri,
            headers,
            SignableBody::Bytes(body),
        )
        .map_err(|e| fail(&e))?;
        let (instructions, _signature) =
            sign(signable, &params).map_err(|e| fail(&e))?.into_parts();
        instructions.apply_to_request_http1x(req);
        for name in ["authorization", "x-amz-security-token"] {
            if let Some(v) = req.headers_mut().get_mut(name) {
                v.set_sensitive(true);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_with_the_route_region_and_service() {
        let signer = SigV4 {
            region: "us-east-1".into(),
            service: "bedrock",
        };
        let keys = AwsKeys::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("session"),
            None,
        );
        let mut req =
            Request::post("https://bedrock-runtime.us-east-1.amazonaws.com/model/m%3A0/converse")
                .header("content-type", "application/json")
                .body(UpstreamBody::buffered(bytes::Bytes::from_static(b"{}")))
                .unwrap();
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_590_800);
        signer.sign(&mut req, &keys, at).unwrap();
        let auth = req.headers()["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261206/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="),
            "{auth}"
        );
        assert_eq!(req.headers()["x-amz-date"], "20261206T210000Z");
        assert_eq!(req.headers()["x-amz-security-token"], "session");
        assert!(req.headers()["authorization"].is_sensitive());
        assert_eq!(
            req.uri().path(),
            "/model/m%3A0/converse",
            "the path is not touched"
        );
    }
}
