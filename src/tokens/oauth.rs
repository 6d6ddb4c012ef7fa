//! Asking an OAuth2 token endpoint for an access token.
//!
//! Every token source ends the same way: one HTTP request to an endpoint
//! that answers `{"access_token", "expires_in", "token_type"}` (RFC 6749
//! §5.1): Google's token endpoint and metadata server today, Entra ID and
//! STS-style exchanges next. [`exchange`] sends the request through the
//! route's upstream client, bounded in time and size, and [`parse`] turns
//! the answer into a header value prepared once. An error answer is reduced
//! to its `error` and `error_description` (they name the problem, never a
//! secret of ours); a token is never part of an error.

use std::time::Duration;

use bytes::Bytes;
use http::Request;

use super::fetch::fetch;
use super::{Credential, MintError, Minted, jwt};
use crate::secret::wiped_bytes;
use crate::upstream::{Client, UpstreamBody};

/// A token is never trusted for longer than this (seconds), whatever
/// `expires_in` says.
pub(crate) const MAX_LIFETIME_S: u64 = 24 * 3600;
/// Assumed when an answer gives no `expires_in` (Google's tokens last an hour).
const DEFAULT_LIFETIME_S: u64 = 3600;

/// Sends `req` and parses the token in the answer.
///
/// # Errors
///
/// [`MintError`] naming the endpoint's host and what went wrong.
pub(crate) async fn exchange(
    client: &Client,
    req: Request<UpstreamBody>,
) -> Result<Minted, MintError> {
    let answer = fetch(client, req).await?;
    let host = answer.host.clone();
    let body = answer.ok_or_refused(oauth_error)?;
    parse(&body).map_err(|reason| MintError::BadAnswer { host, reason })
}

/// A `POST` of `fields` as an `application/x-www-form-urlencoded` body,
/// the shape of every OAuth2 grant.
///
/// # Errors
///
/// [`MintError::Request`] when `uri` is not a URI.
pub(crate) fn form_post(
    uri: &str,
    fields: &[(&str, &str)],
) -> Result<Request<UpstreamBody>, MintError> {
    Request::post(uri)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(UpstreamBody::buffered(form_body(fields)))
        .map_err(|e| MintError::Request(format!("bad token endpoint: {e}")))
}

/// `fields` form-encoded, in one buffer allocated at its final size (no
/// growth leaves a copy of a secret field behind) and wiped when the last
/// reference to it drops, once the request has been sent: these bodies
/// carry client secrets, refresh tokens, assertions and subject tokens.
pub(crate) fn form_body(fields: &[(&str, &str)]) -> Bytes {
    let encoded = |s: &str| {
        form_urlencoded::byte_serialize(s.as_bytes())
            .map(str::len)
            .sum::<usize>()
    };
    let len = fields
        .iter()
        .map(|(name, value)| encoded(name) + 1 + encoded(value))
        .sum::<usize>()
        + fields.len().saturating_sub(1);
    let mut form = form_urlencoded::Serializer::new(String::with_capacity(len));
    for (name, value) in fields {
        form.append_pair(name, value);
    }
    wiped_bytes(form.finish().into_bytes())
}

/// `error error_description` of an OAuth error body, or nothing.
fn oauth_error(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?.as_str()?.to_owned();
            let d = v
                .get("error_description")
                .and_then(|d| d.as_str())
                .unwrap_or("");
            // Text from the endpoint: escaped before it reaches a log.
            let text = format!("{e} {d}");
            Some(super::fetch::printable(text.trim().as_bytes()))
        })
        .unwrap_or_default()
}

/// Parses `{"access_token": ..., "expires_in": ..., "token_type": "Bearer"}`.
/// `expires_in` may be a number or a string (Azure's managed identity sends
/// a string); it is capped at [`MAX_LIFETIME_S`].
///
/// # Errors
///
/// What is wrong with the answer, never any of its values.
pub(crate) fn parse(body: &[u8]) -> Result<Minted, String> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Seconds {
        Number(u64),
        Text(String),
    }
    #[derive(serde::Deserialize)]
    struct TokenJson {
        access_token: zeroize::Zeroizing<String>,
        expires_in: Option<Seconds>,
    }
    let t: TokenJson = serde_json::from_slice(body)
        .map_err(|e| format!("not a token answer ({})", jwt::json_error_kind(&e)))?;
    let secret = crate::secret::Secret::new(t.access_token.as_bytes().to_vec())
        .map_err(|e| format!("access_token {e}"))?;
    let header = secret
        .header_value("Bearer ")
        .map_err(|e| format!("access_token {e}"))?;
    let seconds = match t.expires_in {
        None => DEFAULT_LIFETIME_S,
        Some(Seconds::Number(n)) => n,
        Some(Seconds::Text(s)) => s
            .trim()
            .parse()
            .map_err(|_| "expires_in is not a number".to_owned())?,
    };
    Ok(Minted {
        credential: Credential::Header(header),
        fingerprint: secret.fingerprint(),
        lifetime: Duration::from_secs(seconds.clamp(1, MAX_LIFETIME_S)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_token_answers() {
        let m = parse(br#"{"access_token":"ya29.abc","expires_in":3599,"token_type":"Bearer"}"#)
            .unwrap();
        let Credential::Header(header) = &m.credential else {
            panic!("a header")
        };
        assert_eq!(header, "Bearer ya29.abc");
        assert!(header.is_sensitive());
        assert_eq!(m.lifetime, Duration::from_secs(3599));
        let m = parse(br#"{"access_token":"a","expires_in":" 86399 "}"#).unwrap();
        assert_eq!(
            m.lifetime,
            Duration::from_secs(86399),
            "a string expires_in"
        );
        assert!(parse(b"{}").is_err());
        let err = parse(br#"{"access_token":"bad\nvalue"}"#).unwrap_err();
        assert!(!err.contains("bad"), "{err}");
        let err = parse(br#"{"access_token":["ya29.secret"]}"#).unwrap_err();
        assert!(!err.contains("ya29"), "{err}");
        let m = parse(br#"{"access_token":"a","expires_in":18446744073709551615}"#).unwrap();
        assert_eq!(
            m.lifetime,
            Duration::from_secs(MAX_LIFETIME_S),
            "a huge expires_in is capped"
        );
    }

    #[test]
    fn form_bodies_are_encoded_at_their_final_size() {
        let fields = [
            ("grant_type", "refresh_token"),
            ("refresh_token", "1//a b&c=é"),
        ];
        let body = form_body(&fields);
        assert_eq!(
            body.as_ref(),
            b"grant_type=refresh_token&refresh_token=1%2F%2Fa+b%26c%3D%C3%A9"
        );
        assert!(form_body(&[]).is_empty());
    }

    #[test]
    fn error_answers_keep_only_the_oauth_error() {
        assert_eq!(
            oauth_error(
                br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#
            ),
            "invalid_grant Invalid JWT Signature."
        );
        assert_eq!(oauth_error(b"<html>500</html>"), "");
    }
}
