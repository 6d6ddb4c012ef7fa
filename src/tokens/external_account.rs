//! Google Workload Identity Federation (`"type": "external_account"`): a
//! token the pod already has (a projected Kubernetes service-account token,
//! an AKS or EKS OIDC token) exchanged for a Google access token, without
//! a downloaded service-account key.
//!
//! 1. The subject token: from `credential_source.file` (re-read at every
//!    refresh: the kubelet rotates it) or `.url` (with its `headers`), as
//!    `text` or as a `json` field (`format`).
//! 2. The exchange (RFC 8693) at `token_url`: `grant_type=...:token-exchange`,
//!    `audience`, `scope`, `requested_token_type=...:access_token`,
//!    `subject_token`, `subject_token_type`.
//! 3. With `service_account_impersonation_url`: `generateAccessToken` with
//!    the exchanged token as Bearer, `{"scope": [...], "lifetime": "3600s"}`,
//!    answered `{"accessToken", "expireTime"}`; that token goes to Vertex.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use zeroize::Zeroizing;

use super::fetch::{fetch, printable};
use super::jwt::{SCOPE, json_error_kind};
use super::{Credential, Mint, MintError, MintFuture, Minted, oauth};
use crate::secret::Secret;
use crate::upstream::{Client, UpstreamBody};

/// Google's STS, when the file names no `token_url`.
const GOOGLE_STS: &str = "https://sts.googleapis.com/v1/token";
/// How long an impersonated token is asked to live.
const IMPERSONATED_LIFETIME: &str = "3600s";

#[derive(serde::Deserialize)]
struct ExternalJson {
    audience: String,
    subject_token_type: String,
    token_url: Option<String>,
    service_account_impersonation_url: Option<String>,
    credential_source: SourceJson,
}

#[derive(serde::Deserialize)]
struct SourceJson {
    file: Option<String>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    format: Option<FormatJson>,
    environment_id: Option<String>,
    executable: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct FormatJson {
    #[serde(rename = "type")]
    ty: String,
    subject_token_field_name: Option<String>,
}

/// Where the subject token is.
enum Subject {
    File(PathBuf),
    Url {
        url: String,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

/// How the subject token is written.
enum Format {
    Text,
    /// A JSON object; the token is this field.
    Json(String),
}

/// An `external_account` credential.
pub(crate) struct ExternalAccount {
    audience: String,
    subject_token_type: String,
    token_url: String,
    impersonation_url: Option<String>,
    subject: Subject,
    format: Format,
}

impl ExternalAccount {
    /// Parses an `external_account` JSON.
    ///
    /// # Errors
    ///
    /// What is missing or unsupported, never a value.
    pub(crate) fn parse(json: &[u8]) -> Result<Self, String> {
        let e: ExternalJson = serde_json::from_slice(json).map_err(|e| {
            format!(
                "is not an external_account JSON ({}; it needs audience, subject_token_type and credential_source)",
                json_error_kind(&e)
            )
        })?;
        let src = e.credential_source;
        if src.environment_id.is_some() || src.executable.is_some() {
            return Err("external_account: only file and url credential sources are supported (not environment_id or executable)".to_owned());
        }
        let subject = match (src.file, src.url) {
            (Some(file), None) => Subject::File(PathBuf::from(file)),
            (None, Some(url)) => Subject::Url {
                url,
                headers: src
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        Some((
                            HeaderName::try_from(k.as_str()).ok()?,
                            HeaderValue::try_from(v.as_str()).ok()?,
                        ))
                    })
                    .collect::<Option<_>>()
                    .ok_or("external_account: credential_source.headers has an invalid header")?,
            },
            _ => {
                return Err(
                    "external_account: credential_source needs exactly one of file or url"
                        .to_owned(),
                );
            }
        };
        let format = match src.format {
            None => Format::Text,
            Some(f) if f.ty == "text" => Format::Text,
            Some(f) if f.ty == "json" => Format::Json(
                f.subject_token_field_name
                    .ok_or("external_account: a json format needs subject_token_field_name")?,
            ),
            Some(_) => return Err("external_account: format.type must be text or json".to_owned()),
        };
        Ok(Self {
            audience: e.audience,
            subject_token_type: e.subject_token_type,
            token_url: e.token_url.unwrap_or_else(|| GOOGLE_STS.to_owned()),
            impersonation_url: e.service_account_impersonation_url,
            subject,
            format,
        })
    }

    /// The subject token, read now.
    async fn subject_token(&self, client: &Client) -> Result<Zeroizing<String>, MintError> {
        let raw = match &self.subject {
            Subject::File(path) => super::token_file::read(path).await?,
            Subject::Url { url, headers } => {
                let mut req = Request::get(url.as_str());
                for (name, value) in headers {
                    req = req.header(name, value);
                }
                let req = req
                    .body(UpstreamBody::buffered(Bytes::new()))
                    .map_err(|e| MintError::Request(format!("bad credential_source.url: {e}")))?;
                let body = fetch(client, req).await?.ok_or_refused(printable)?;
                let text = std::str::from_utf8(&body)
                    .map_err(|_| MintError::Request("the subject token is not UTF-8".to_owned()))?;
                Zeroizing::new(text.trim().to_owned())
            }
        };
        match &self.format {
            Format::Text => Ok(raw),
            Format::Json(field) => {
                let v: serde_json::Value = serde_json::from_str(&raw).map_err(|e| {
                    MintError::Request(format!(
                        "the subject token is not JSON ({})",
                        json_error_kind(&e)
                    ))
                })?;
                v.get(field)
                    .and_then(serde_json::Value::as_str)
                    .map(|t| Zeroizing::new(t.to_owned()))
                    .ok_or_else(|| {
                        MintError::Request(format!(
                            "the subject token JSON has no string field {field}"
                        ))
                    })
            }
        }
    }

    /// `generateAccessToken` with the exchanged token.
    async fn impersonate(
        &self,
        client: &Client,
        url: &str,
        sts: &Minted,
        now: SystemTime,
    ) -> Result<Minted, MintError> {
        let Credential::Header(bearer) = &sts.credential else {
            return Err(MintError::Request(
                "the exchange gave no bearer token".to_owned(),
            ));
        };
        let body =
            serde_json::json!({ "scope": [SCOPE], "lifetime": IMPERSONATED_LIFETIME }).to_string();
        let req = Request::post(url)
            .header(http::header::AUTHORIZATION, bearer.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(UpstreamBody::buffered(Bytes::from(body)))
            .map_err(|e| {
                MintError::Request(format!("bad service_account_impersonation_url: {e}"))
            })?;
        let answer = fetch(client, req).await?;
        let host = answer.host.clone();
        let body = answer.ok_or_refused(google_error)?;
        parse_impersonated(&body, now).map_err(|reason| MintError::BadAnswer { host, reason })
    }
}

/// `{"accessToken", "expireTime"}`.
fn parse_impersonated(body: &[u8], now: SystemTime) -> Result<Minted, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Impersonated {
        access_token: Zeroizing<String>,
        expire_time: String,
    }
    let t: Impersonated = serde_json::from_slice(body)
        .map_err(|e| format!("not a generateAccessToken answer ({})", json_error_kind(&e)))?;
    let secret =
        Secret::new(t.access_token.as_bytes().to_vec()).map_err(|e| format!("accessToken {e}"))?;
    let header = secret
        .header_value("Bearer ")
        .map_err(|e| format!("accessToken {e}"))?;
    let expires =
        super::time::parse_rfc3339(&t.expire_time).ok_or("expireTime is not an RFC 3339 time")?;
    let lifetime = expires
        .duration_since(now)
        .map_err(|_| "the impersonated token has already expired".to_owned())?;
    Ok(Minted {
        credential: Credential::Header(header),
        fingerprint: secret.fingerprint(),
        lifetime: lifetime.min(std::time::Duration::from_secs(oauth::MAX_LIFETIME_S)),
    })
}

/// Google's error envelope, `{"error": {"status", "message"}}`, escaped.
fn google_error(body: &[u8]) -> String {
    let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let e = v.as_ref().and_then(|v| v.get("error"));
    let part = |k: &str| {
        e.and_then(|e| e.get(k))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
    };
    printable(
        format!("{} {}", part("status"), part("message"))
            .trim()
            .as_bytes(),
    )
}

impl fmt::Debug for ExternalAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Mint for ExternalAccount {
    fn kind(&self) -> &'static str {
        "external-account"
    }

    fn describe(&self) -> String {
        let source = match &self.subject {
            Subject::File(p) => format!("token file {}", p.display()),
            Subject::Url { url, .. } => format!("token from {url}"),
        };
        let via = self
            .impersonation_url
            .as_deref()
            .map(|u| format!(", impersonating via {u}"))
            .unwrap_or_default();
        format!(
            "external account ({source}, audience {}, STS {}{via})",
            self.audience, self.token_url
        )
    }

    fn mint<'a>(&'a self, client: &'a Client, now: SystemTime) -> MintFuture<'a> {
        Box::pin(async move {
            let subject = self.subject_token(client).await?;
            let req = oauth::form_post(
                &self.token_url,
                &[
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ),
                    ("audience", &self.audience),
                    ("scope", SCOPE),
                    (
                        "requested_token_type",
                        "urn:ietf:params:oauth:token-type:access_token",
                    ),
                    ("subject_token", &subject),
                    ("subject_token_type", &self.subject_token_type),
                ],
            )?;
            let exchanged = oauth::exchange(client, req).await?;
            match &self.impersonation_url {
                Some(url) => self.impersonate(client, url, &exchanged, now).await,
                None => Ok(exchanged),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    const FILE: &str = r#"{"type":"external_account","audience":"//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k","subject_token_type":"urn:ietf:params:oauth:token-type:jwt","token_url":"https://sts.googleapis.com/v1/token","credential_source":{"file":"/var/run/secrets/tokens/gcp"}}"#;

    #[test]
    fn parses_file_and_url_sources() {
        let e = ExternalAccount::parse(FILE.as_bytes()).unwrap();
        assert!(matches!(e.subject, Subject::File(_)) && matches!(e.format, Format::Text));
        assert!(
            e.describe()
                .starts_with("external account (token file /var/run/secrets/tokens/gcp"),
            "{}",
            e.describe()
        );
        let url = FILE.replace(
            r#"{"file":"/var/run/secrets/tokens/gcp"}"#,
            r#"{"url":"http://169.254.169.254/token","headers":{"Metadata":"True"},"format":{"type":"json","subject_token_field_name":"access_token"}}"#,
        );
        let e = ExternalAccount::parse(url.as_bytes()).unwrap();
        assert!(matches!(&e.format, Format::Json(f) if f == "access_token"));
        let aws = FILE.replace(
            r#"{"file":"/var/run/secrets/tokens/gcp"}"#,
            r#"{"environment_id":"aws1"}"#,
        );
        assert!(
            ExternalAccount::parse(aws.as_bytes())
                .unwrap_err()
                .contains("environment_id")
        );
    }

    #[test]
    fn reads_generate_access_token_answers() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_590_800 - 1800);
        let m = parse_impersonated(
            br#"{"accessToken":"ya29.imp","expireTime":"2026-12-06T21:00:00Z"}"#,
            now,
        )
        .unwrap();
        assert_eq!(m.lifetime, Duration::from_secs(1800));
        let err = parse_impersonated(br#"{"accessToken":["ya29.imp"]}"#, now).unwrap_err();
        assert!(!err.contains("ya29"), "{err}");
        assert_eq!(
            google_error(br#"{"error":{"code":403,"status":"PERMISSION_DENIED","message":"no"}}"#),
            "PERMISSION_DENIED no"
        );
    }
}
