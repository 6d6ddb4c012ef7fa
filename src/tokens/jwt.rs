//! Service-account JSON and the signed assertion of the JWT bearer grant.
//!
//! design.md, "Vertex AI tokens": the access token is minted by POSTing a
//! JWT signed with the service account's private key (RS256) to the JSON's
//! `token_uri` (RFC 7523). The key is parsed and checked once, when the
//! snapshot is built (`sidekey check` fails on a key that does not load);
//! signing uses `ring`, the crypto provider rustls already uses, so no second
//! crypto stack enters the build.
//!
//! Key material is decoded into wiped buffers (`pem.rs`; ring's own copy
//! inside [`RsaKeyPair`] is the exception), and the signed assertion, a
//! bearer credential for an hour, is built once in a buffer that is wiped
//! when the token request that carries it has been sent and dropped.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::Request;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::value::RawValue;
use zeroize::Zeroizing;

use super::pem::{self, KeyFormat};
use super::{Mint, MintError, MintFuture, oauth};
use crate::secret::{Fingerprint, wiped_bytes};
use crate::upstream::{Client, UpstreamBody};

/// The OAuth2 scope Vertex AI needs.
pub(crate) const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// How long an assertion is valid; Google caps it at one hour.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// Why a service-account JSON cannot be used. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AccountError {
    #[error("is not a service-account JSON: {0}")]
    Json(String),
    #[error("has type {0:?}; expected \"service_account\"")]
    WrongType(String),
    #[error("has no {0}")]
    Missing(&'static str),
    #[error("private_key is not a PEM RSA key, PKCS#8 or PKCS#1 (value not shown)")]
    Key,
    #[error("could not sign the token request")]
    Sign,
}

/// The fields sidekey uses from a service-account JSON. The key stays raw
/// JSON text, borrowed from the file's (wiped) bytes: decoding it here
/// would leave a copy in serde_json's scratch buffer.
#[derive(serde::Deserialize)]
struct AccountJson<'a> {
    #[serde(rename = "type")]
    ty: Option<String>,
    client_email: Option<String>,
    #[serde(borrow)]
    private_key: Option<&'a RawValue>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
    project_id: Option<String>,
}

/// What kind of JSON error `e` is, without its message (which can quote a
/// value from the file).
pub(crate) fn json_error_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "a field has the wrong type",
        serde_json::error::Category::Eof => "unexpected end of the file",
    }
}

/// A parsed service account with its key loaded.
pub(crate) struct ServiceAccount {
    pub(crate) client_email: String,
    pub(crate) project_id: Option<String>,
    pub(crate) token_uri: String,
    key_id: Option<String>,
    key: RsaKeyPair,
    /// Of the whole JSON, for logs.
    pub(crate) fingerprint: Fingerprint,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("project_id", &self.project_id)
            .field("token_uri", &self.token_uri)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Parses a service-account JSON and loads its private key.
    ///
    /// # Errors
    ///
    /// [`AccountError`] naming what is wrong, never showing the key.
    pub(crate) fn parse(json: &[u8]) -> Result<Self, AccountError> {
        // serde_json's messages can quote a value ("invalid type: string
        // ..."): say only what kind of error it is and where.
        let raw: AccountJson<'_> = serde_json::from_slice(json).map_err(|e| {
            AccountError::Json(format!(
                "{} at line {} column {}",
                json_error_kind(&e),
                e.line(),
                e.column()
            ))
        })?;
        // The type first: an `authorized_user` or `external_account` file
        // lacks the fields below, and its type is the useful message.
        if let Some(ty) = raw.ty.as_deref()
            && ty != "service_account"
        {
            return Err(AccountError::WrongType(ty.to_owned()));
        }
        let client_email = raw
            .client_email
            .ok_or(AccountError::Missing("client_email"))?;
        let pem = raw
            .private_key
            .ok_or(AccountError::Missing("private_key"))?;
        let pem = pem::json_string(pem.get()).ok_or(AccountError::Key)?;
        let (format, der) = pem::der(&pem).ok_or(AccountError::Key)?;
        let key = match format {
            KeyFormat::Pkcs8 => RsaKeyPair::from_pkcs8(&der),
            KeyFormat::Pkcs1 => RsaKeyPair::from_der(&der),
        }
        .map_err(|_| AccountError::Key)?;
        Ok(Self {
            client_email,
            project_id: raw.project_id,
            token_uri: raw
                .token_uri
                .unwrap_or_else(|| "https://oauth2.googleapis.com/token".to_owned()),
            key_id: raw.private_key_id,
            key,
            fingerprint: Fingerprint::of(json),
        })
    }

    /// The signed JWT asserting this account, issued now, in a buffer
    /// allocated at its final size and wiped on drop.
    ///
    /// # Errors
    ///
    /// [`AccountError::Sign`] if signing fails (it does not for a key that loaded).
    pub(crate) fn assertion(&self, now: SystemTime) -> Result<Zeroizing<String>, AccountError> {
        let iat = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        #[derive(serde::Serialize)]
        struct Header<'a> {
            alg: &'static str,
            typ: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            kid: Option<&'a str>,
        }
        let header = serde_json::to_string(&Header {
            alg: "RS256",
            typ: "JWT",
            kid: self.key_id.as_deref(),
        })
        .map_err(|_| AccountError::Sign)?;
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME.as_secs(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = Zeroizing::new(vec![0; self.key.public().modulus_len()]);
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| AccountError::Sign)?;
        let signature_len =
            base64::encoded_len(signature.len(), false).ok_or(AccountError::Sign)?;
        let mut jwt = Zeroizing::new(String::with_capacity(
            signing_input.len() + 1 + signature_len,
        ));
        jwt.push_str(&signing_input);
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_slice(), &mut jwt);
        Ok(jwt)
    }

    /// The form body of the token request (RFC 7523 §2.1), backed by a
    /// buffer wiped when the last reference to it (the request in flight)
    /// drops.
    ///
    /// # Errors
    ///
    /// As [`Self::assertion`].
    pub(crate) fn token_request_body(&self, now: SystemTime) -> Result<Bytes, AccountError> {
        const GRANT: &str =
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=";
        let assertion = self.assertion(now)?;
        // The assertion is base64url and dots: nothing to form-encode.
        let mut body = Vec::with_capacity(GRANT.len() + assertion.len());
        body.extend_from_slice(GRANT.as_bytes());
        body.extend_from_slice(assertion.as_bytes());
        Ok(wiped_bytes(body))
    }
}

impl Mint for ServiceAccount {
    fn kind(&self) -> &'static str {
        "service-account"
    }

    fn describe(&self) -> String {
        format!(
            "service account {} ({})",
            self.client_email, self.fingerprint
        )
    }

    fn mint<'a>(&'a self, client: &'a Client, now: SystemTime) -> MintFuture<'a> {
        Box::pin(async move {
            let body = self
                .token_request_body(now)
                .map_err(|e| MintError::Request(e.to_string()))?;
            let req = Request::post(self.token_uri.as_str())
                .header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(UpstreamBody::buffered(body))
                .map_err(|e| MintError::Request(format!("bad token_uri: {e}")))?;
            oauth::exchange(client, req).await
        })
    }

    fn project_id(&self) -> Option<&str> {
        self.project_id.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2048-bit test key, generated in-process for this test only.
    fn test_key_pem() -> String {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
    }

    #[test]
    fn parses_signs_and_verifies() {
        let pem = test_key_pem();
        let json = serde_json::json!({
            "type": "service_account",
            "project_id": "proj",
            "private_key_id": "kid-1",
            "private_key": pem,
            "client_email": "sa@proj.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.example/token",
        })
        .to_string();
        let sa = ServiceAccount::parse(json.as_bytes()).unwrap();
        assert_eq!(sa.project_id.as_deref(), Some("proj"));
        let jwt = sa.assertion(SystemTime::now()).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://oauth2.example/token");
        assert_eq!(claims["scope"], SCOPE);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["kid"], "kid-1");
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            sa.key.public().as_ref().to_vec(),
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        public
            .verify(
                signed.as_bytes(),
                &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            )
            .unwrap();
        assert!(
            !format!("{sa:?}").contains("PRIVATE"),
            "Debug shows key material"
        );
    }

    /// What safe Rust can check of the wipe: the assertion is a
    /// `Zeroizing` string, and the request body's `Bytes` are backed by
    /// `secret::wiped_bytes` (the owner is private; its wipe is tested there).
    #[test]
    fn the_assertion_and_the_request_body_are_wiped_types() {
        let json = serde_json::json!({
            "type": "service_account",
            "private_key": test_key_pem(),
            "client_email": "sa@proj.iam.gserviceaccount.com",
        })
        .to_string();
        let sa = ServiceAccount::parse(json.as_bytes()).unwrap();
        let assertion: Zeroizing<String> = sa.assertion(SystemTime::now()).unwrap();
        assert_eq!(assertion.capacity(), assertion.len(), "never grown");
        let body = sa.token_request_body(SystemTime::now()).unwrap();
        assert!(body.starts_with(
            b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=ey"
        ));
    }

    #[test]
    fn errors_never_show_the_key() {
        let json = r#"{"type":"service_account","client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nnotakey\n-----END PRIVATE KEY-----\n"}"#;
        let err = ServiceAccount::parse(json.as_bytes()).unwrap_err();
        assert_eq!(err, AccountError::Key);
        assert!(!err.to_string().contains("notakey"));
        assert_eq!(
            ServiceAccount::parse(b"{}").unwrap_err(),
            AccountError::Missing("client_email")
        );
        // A value of the wrong type is not echoed.
        let err = ServiceAccount::parse(br#"{"client_email":["AIzaSECRET"]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("wrong type") && !err.contains("AIzaSECRET"),
            "{err}"
        );
        let err = ServiceAccount::parse(br#"{"client_email":"a","private_key":["AIzaSECRET"]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("private_key is not a PEM") && !err.contains("AIzaSECRET"),
            "{err}"
        );
        let err = ServiceAccount::parse(br#""AIzaSECRET""#)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("AIzaSECRET"), "{err}");
        let user = r#"{"type":"authorized_user","client_id":"a","refresh_token":"x"}"#;
        assert_eq!(
            ServiceAccount::parse(user.as_bytes()).unwrap_err(),
            AccountError::WrongType("authorized_user".into())
        );
    }
}
