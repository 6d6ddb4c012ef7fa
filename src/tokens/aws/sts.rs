//! Web identity (EKS IRSA): the projected service-account token exchanged
//! at STS for temporary credentials.
//!
//! `POST {sts}/` with the form `Action=AssumeRoleWithWebIdentity`,
//! `Version=2011-06-15`, `RoleArn`, `RoleSessionName`, `WebIdentityToken`
//! (unsigned: the token is the proof). STS answers XML with
//! `<Credentials><AccessKeyId/><SecretAccessKey/><SessionToken/><Expiration/>`.
//! The token file is re-read at every refresh: the kubelet rotates it.

use std::fmt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Request, Uri};

use super::super::fetch::{fetch, printable};
use super::{Mint, MintError, MintFuture, Minted, minted};
use crate::upstream::{Client, UpstreamBody};

/// `AssumeRoleWithWebIdentity` with the token in a file.
pub(crate) struct WebIdentity {
    token_file: PathBuf,
    role_arn: String,
    session_name: String,
    /// `{sts}/`.
    endpoint: Uri,
}

impl WebIdentity {
    /// The source for `role_arn`, asking STS at `sts` (a base URL).
    ///
    /// # Errors
    ///
    /// When `sts` is not an `http(s)://` URL.
    pub(crate) fn new(
        token_file: PathBuf,
        role_arn: String,
        session_name: Option<String>,
        sts: &str,
    ) -> Result<Self, String> {
        let endpoint: Uri = format!("{sts}/")
            .parse()
            .map_err(|_| "AWS_ENDPOINT_URL_STS is not a URL".to_owned())?;
        if !matches!(endpoint.scheme_str(), Some("http" | "https")) {
            return Err("AWS_ENDPOINT_URL_STS must be an http:// or https:// URL".to_owned());
        }
        // The SDKs name sessions after the time when none is given.
        let session_name = session_name.unwrap_or_else(|| {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            format!("sidekey-{ms}")
        });
        Ok(Self {
            token_file,
            role_arn,
            session_name,
            endpoint,
        })
    }

    fn request(&self, token: &str) -> Result<Request<UpstreamBody>, http::Error> {
        // Wiped once sent: the web identity token is a credential.
        let form = super::super::oauth::form_body(&[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", &self.role_arn),
            ("RoleSessionName", &self.session_name),
            ("WebIdentityToken", token),
        ]);
        Request::post(self.endpoint.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .header(http::header::ACCEPT, "text/xml")
            .body(UpstreamBody::buffered(form))
    }
}

impl fmt::Debug for WebIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Mint for WebIdentity {
    fn kind(&self) -> &'static str {
        "web-identity"
    }

    fn describe(&self) -> String {
        format!(
            "web identity (role {}, token file {}, STS {})",
            self.role_arn,
            self.token_file.display(),
            self.endpoint
        )
    }

    fn mint<'a>(&'a self, client: &'a Client, now: SystemTime) -> MintFuture<'a> {
        Box::pin(async move {
            let token = super::super::token_file::read(&self.token_file).await?;
            let req = self
                .request(&token)
                .map_err(|e| MintError::Request(format!("cannot build the STS request: {e}")))?;
            let answer = fetch(client, req).await?;
            let host = answer.host.clone();
            let body = answer.ok_or_refused(sts_error)?;
            parse(&body, now).map_err(|reason| MintError::BadAnswer { host, reason })
        })
    }
}

/// Reads the credentials out of an `AssumeRoleWithWebIdentityResponse`.
///
/// # Errors
///
/// What is missing, never a value.
pub(crate) fn parse(body: &[u8], now: SystemTime) -> Result<Minted, String> {
    let xml = std::str::from_utf8(body).map_err(|_| "the STS answer is not UTF-8".to_owned())?;
    let creds = element(xml, "Credentials").ok_or("the STS answer has no <Credentials>")?;
    let field = |name: &str| {
        element(creds, name)
            .map(unescape)
            .ok_or_else(|| format!("the STS answer has no <{name}>"))
    };
    let id = field("AccessKeyId")?;
    let secret = zeroize::Zeroizing::new(field("SecretAccessKey")?);
    let token = zeroize::Zeroizing::new(field("SessionToken")?);
    let expiration = field("Expiration")?;
    minted(
        id.trim(),
        secret.trim(),
        Some(token.trim()),
        Some(expiration.trim()),
        now,
    )
}

/// `Code: Message` of an STS error answer, escaped.
fn sts_error(body: &[u8]) -> String {
    let xml = String::from_utf8_lossy(body);
    let code = element(&xml, "Code").unwrap_or("");
    let message = element(&xml, "Message").unwrap_or("");
    printable(
        format!("{code}: {message}")
            .trim_matches([' ', ':'])
            .as_bytes(),
    )
}

/// The text inside the first `<name>...</name>` of `xml`.
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml.get(start..)?.find(&close)?;
    xml.get(start..start + len)
}

/// XML's five predefined entities, the only ones STS uses.
fn unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tokens::Credential;

    const ANSWER: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:ns:app</SubjectFromWebIdentityToken>
    <Credentials>
      <AccessKeyId>ASIAEXAMPLEWXYZ</AccessKeyId>
      <SecretAccessKey>wJalr/K7MDENG+bPxRfiCY&amp;KEY</SecretAccessKey>
      <SessionToken>IQoJb3JpZ2luX2VjEXAMPLE</SessionToken>
      <Expiration>2026-12-06T21:00:00Z</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;

    #[test]
    fn reads_the_credentials_of_an_sts_answer() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_590_800 - 3600);
        let m = parse(ANSWER.as_bytes(), now).unwrap();
        assert_eq!(m.lifetime, Duration::from_secs(3600));
        let Credential::Aws(keys) = &m.credential else {
            panic!("AWS keys")
        };
        assert_eq!(
            format!("{keys:?}"),
            "AwsKeys { access_key_id: \"…WXYZ\", session_token: true, .. }"
        );
        let err = parse(ANSWER.replace("<SessionToken>", "<X>").as_bytes(), now).unwrap_err();
        assert_eq!(err, "the STS answer has no <SessionToken>");
        let expired = parse(ANSWER.as_bytes(), now + Duration::from_secs(7200)).unwrap_err();
        assert!(expired.contains("expired"), "{expired}");
    }

    #[test]
    fn error_answers_keep_code_and_message_escaped() {
        let body = b"<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Token expired\x1b[31m</Message></Error></ErrorResponse>";
        assert_eq!(
            sts_error(body),
            "InvalidIdentityToken: Token expired\\u{1b}[31m"
        );
    }

    #[test]
    fn entities_are_unescaped() {
        assert_eq!(unescape("a&amp;b&lt;c&gt;&quot;&apos;"), "a&b<c>\"'");
    }
}
