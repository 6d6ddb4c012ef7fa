//! What a provider's answer says about the credential that was sent.
//!
//! design.md, "How each provider says this key is bad": each row of the
//! provider table names a [`Rejects`] rule; [`Rejects::classify`] turns an
//! answer's status, headers and (for providers that say it in the body) the
//! start of its body into a [`Verdict`] that decides the fallback. No I/O.

use std::borrow::Cow;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

use super::Rejects;

/// What a provider's answer says about the credential that was sent.
#[must_use]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Verdict {
    /// Not a statement about the key (a success, or any other error).
    Accepted,
    /// The key was rejected: try the next one and rest this one.
    Rejected(&'static str),
    /// 429: in a pool, rest this key for the given time and try another.
    RateLimited(Option<Duration>),
}

impl Verdict {
    /// The reason label for metrics and logs.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected(_) => "rejected",
            Self::RateLimited(_) => "rate_limited",
        }
    }
}

/// Reads Google's error envelope (`{"error": {...}}`, or a one-element array
/// of it from `streamGenerateContent`) and says whether it is about a bad
/// API key. The machine-read `details[].reason` decides (`API_KEY_INVALID`,
/// `API_KEY_EXPIRED`, a key blocked for this API or caller, a suspended
/// consumer). Google sends one answer without a reason, a leaked key (403
/// `PERMISSION_DENIED`, "Your API key was reported as leaked..."): it counts
/// only when its `message` *starts* with Google's own wording, which a client
/// cannot put there; text anywhere else (a quoted prompt or resource name)
/// never counts.
fn gemini_key_error(status: StatusCode, body: &[u8]) -> Option<&'static str> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = match &value {
        serde_json::Value::Array(items) => items.first()?.get("error")?,
        other => other.get("error")?,
    };
    let details = error.get("details").and_then(serde_json::Value::as_array);
    let reasons = details
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("reason").and_then(serde_json::Value::as_str));
    for reason in reasons {
        match reason {
            "API_KEY_INVALID" => return Some("API_KEY_INVALID"),
            "API_KEY_EXPIRED" => return Some("API_KEY_EXPIRED"),
            "CONSUMER_SUSPENDED" => return Some("CONSUMER_SUSPENDED"),
            r if r.starts_with("API_KEY_") && r.ends_with("_BLOCKED") => {
                return Some("API_KEY_BLOCKED");
            }
            _ => {}
        }
    }
    let text = |k: &str| error.get(k).and_then(serde_json::Value::as_str);
    let leaked = status == StatusCode::FORBIDDEN
        && details.is_none()
        && text("status") == Some("PERMISSION_DENIED")
        && text("message").is_some_and(|m| m.starts_with("Your API key was reported as leaked"));
    leaked.then_some("PERMISSION_DENIED")
}

/// The error code of an AWS JSON-protocol answer: `x-amzn-ErrorType`
/// (`Code:namespace`), else the body's `__type` (`namespace#Code`) or
/// `code`. Never the message text.
fn aws_error_code<'a>(headers: &'a HeaderMap, body: Option<&[u8]>) -> Option<Cow<'a, str>> {
    if let Some(kind) = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
    {
        return Some(Cow::Borrowed(kind.split(':').next().unwrap_or(kind)));
    }
    let value: serde_json::Value = serde_json::from_slice(body?).ok()?;
    let kind = ["__type", "code", "Code"]
        .iter()
        .find_map(|k| value.get(k).and_then(serde_json::Value::as_str))?;
    Some(Cow::Owned(
        kind.rsplit('#').next().unwrap_or(kind).to_owned(),
    ))
}

/// Longest `Retry-After` honoured; longer ones are capped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

impl Rejects {
    /// Whether the body of an answer with `status` must be read to classify
    /// it (the provider says "bad key" in the body, not in the status).
    pub(crate) fn needs_body(self, status: StatusCode) -> bool {
        match self {
            Self::Gemini => status == StatusCode::BAD_REQUEST || status == StatusCode::FORBIDDEN,
            Self::Aws => status == StatusCode::FORBIDDEN || status == StatusCode::BAD_REQUEST,
            Self::Status401 | Self::Vertex => false,
        }
    }

    /// Classifies an answer (design.md: "How each provider says this key is
    /// bad"). `body` is the whole body when [`Self::needs_body`] and it was
    /// read whole (`None` when it was cut off: such a body is not read, so
    /// text deep in a long answer cannot rest a key). Only structured fields
    /// count: Google's `details[].reason`, AWS's error code.
    pub(crate) fn classify(
        self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> Verdict {
        if status == StatusCode::UNAUTHORIZED {
            return Verdict::Rejected("401");
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Verdict::RateLimited(retry_after(headers));
        }
        if !self.needs_body(status) {
            return Verdict::Accepted;
        }
        match self {
            Self::Gemini => body
                .and_then(|b| gemini_key_error(status, b))
                .map_or(Verdict::Accepted, Verdict::Rejected),
            Self::Aws => match aws_error_code(headers, body).as_deref() {
                Some("UnrecognizedClientException") => {
                    Verdict::Rejected("UnrecognizedClientException")
                }
                Some("InvalidSignatureException") => Verdict::Rejected("InvalidSignatureException"),
                Some("ExpiredTokenException" | "ExpiredToken") => Verdict::Rejected("ExpiredToken"),
                _ => Verdict::Accepted,
            },
            Self::Status401 | Self::Vertex => Verdict::Accepted,
        }
    }

    /// What answer counts as "this credential was rejected".
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Status401 => "401",
            Self::Gemini => "401, or 400/403 saying API_KEY_INVALID or PERMISSION_DENIED",
            Self::Vertex => "401 UNAUTHENTICATED (token refreshed once first)",
            Self::Aws => {
                "403 UnrecognizedClientException, InvalidSignatureException or expired token"
            }
        }
    }
}

/// `Retry-After` in seconds (the form providers send); an HTTP date or a
/// missing header gives `None` (the configured default applies).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    /// Text a client can steer (a message quoting the request, a resource
    /// name) never says "bad key"; only Google's `reason` and AWS's code do.
    fn structured_fields_only() -> Vec<(Rejects, StatusCode, &'static [u8], Verdict)> {
        use StatusCode as S;
        vec![
            (
                Rejects::Gemini,
                S::FORBIDDEN,
                br#"{"error":{"code":403,"message":"Permission denied on resource 'api key' (or it may not exist).","status":"PERMISSION_DENIED"}}"#,
                Verdict::Accepted,
            ),
            (
                Rejects::Gemini,
                S::FORBIDDEN,
                br#"{"error":{"code":403,"message":"Model x: Your API key was reported as leaked","status":"PERMISSION_DENIED"}}"#,
                Verdict::Accepted,
            ),
            (
                Rejects::Gemini,
                S::BAD_REQUEST,
                br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}"#,
                Verdict::Accepted,
            ),
            (
                Rejects::Gemini,
                S::BAD_REQUEST,
                b"<html>API_KEY_INVALID</html>",
                Verdict::Accepted,
            ),
            (
                Rejects::Aws,
                S::BAD_REQUEST,
                br#"{"message":"Malformed input: UnrecognizedClientException ExpiredToken"}"#,
                Verdict::Accepted,
            ),
            (
                Rejects::Aws,
                S::FORBIDDEN,
                br#"{"message":"The security token included in the request is expired"}"#,
                Verdict::Accepted,
            ),
            (
                Rejects::Aws,
                S::FORBIDDEN,
                br#"{"__type":"com.amazon.coral.service#ExpiredTokenException","message":"x"}"#,
                Verdict::Rejected("ExpiredToken"),
            ),
        ]
    }

    /// A body cut off at the peek limit is not classified: a long error
    /// quoting `API_KEY_INVALID` (issue 21, finding 4) rests no key. AWS's
    /// code travels in a header, which is read whole.
    #[test]
    fn a_cut_off_body_is_not_classified() {
        let h = HeaderMap::new();
        assert_eq!(
            Rejects::Gemini.classify(StatusCode::BAD_REQUEST, &h, None),
            Verdict::Accepted
        );
        let mut aws = HeaderMap::new();
        aws.insert(
            "x-amzn-errortype",
            HeaderValue::from_static("InvalidSignatureException:http://internal.amazon.com/"),
        );
        assert_eq!(
            Rejects::Aws.classify(StatusCode::FORBIDDEN, &aws, None),
            Verdict::Rejected("InvalidSignatureException")
        );
    }

    #[test]
    fn classification_follows_the_design_table() {
        use StatusCode as S;
        let h = HeaderMap::new();
        let bad_gemini_key = br#"{"error":{"code":400,"status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}"#;
        let gemini_denied = br#"{"error":{"code":403,"message":"Your API key was reported as leaked. Please use another API key.","status":"PERMISSION_DENIED"}}"#;
        let other_denied = br#"{"error":{"code":403,"message":"The model is not available in your region","status":"PERMISSION_DENIED"}}"#;
        let quoted = br#"{"error":{"code":400,"message":"Invalid JSON payload: unknown name \"API_KEY_INVALID\"","status":"INVALID_ARGUMENT"}}"#;
        let blocked = br#"[{"error":{"code":403,"message":"Requests to this API generativelanguage.googleapis.com method ... are blocked.","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_SERVICE_BLOCKED"}]}}]"#;
        let suspended = br#"{"error":{"code":403,"message":"Permission denied: Consumer 'api_key:x' has been suspended.","status":"PERMISSION_DENIED","details":[{"reason":"CONSUMER_SUSPENDED"}]}}"#;
        let cases: [(Rejects, S, &[u8], Verdict); 12] = [
            (Rejects::Gemini, S::BAD_REQUEST, quoted, Verdict::Accepted),
            (
                Rejects::Gemini,
                S::FORBIDDEN,
                blocked,
                Verdict::Rejected("API_KEY_BLOCKED"),
            ),
            (
                Rejects::Gemini,
                S::FORBIDDEN,
                suspended,
                Verdict::Rejected("CONSUMER_SUSPENDED"),
            ),
            (
                Rejects::Status401,
                S::UNAUTHORIZED,
                b"",
                Verdict::Rejected("401"),
            ),
            (Rejects::Status401, S::FORBIDDEN, b"", Verdict::Accepted),
            (
                Rejects::Status401,
                S::INTERNAL_SERVER_ERROR,
                b"",
                Verdict::Accepted,
            ),
            (
                Rejects::Gemini,
                S::BAD_REQUEST,
                bad_gemini_key,
                Verdict::Rejected("API_KEY_INVALID"),
            ),
            (
                Rejects::Gemini,
                S::FORBIDDEN,
                gemini_denied,
                Verdict::Rejected("PERMISSION_DENIED"),
            ),
            (
                Rejects::Gemini,
                S::FORBIDDEN,
                other_denied,
                Verdict::Accepted,
            ),
            (
                Rejects::Gemini,
                S::BAD_REQUEST,
                br#"{"error":{"message":"bad json"}}"#,
                Verdict::Accepted,
            ),
            (
                Rejects::Aws,
                S::FORBIDDEN,
                br#"{"__type":"UnrecognizedClientException"}"#,
                Verdict::Rejected("UnrecognizedClientException"),
            ),
            (
                Rejects::Aws,
                S::FORBIDDEN,
                br#"{"message":"AccessDenied"}"#,
                Verdict::Accepted,
            ),
        ];
        for (rejects, status, body, want) in cases.into_iter().chain(structured_fields_only()) {
            assert_eq!(
                rejects.classify(status, &h, Some(body)),
                want,
                "{rejects:?} {status}"
            );
        }
        // Bedrock's own shape: the code in `x-amzn-ErrorType`, a bare message.
        let mut aws = HeaderMap::new();
        aws.insert(
            "x-amzn-errortype",
            HeaderValue::from_static(
                "UnrecognizedClientException:http://internal.amazon.com/coral/com.amazon.coral.service/",
            ),
        );
        assert_eq!(
            Rejects::Aws.classify(
                S::FORBIDDEN,
                &aws,
                Some(br#"{"message":"The security token included in the request is invalid."}"#)
            ),
            Verdict::Rejected("UnrecognizedClientException")
        );
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(
            Rejects::Status401.classify(S::TOO_MANY_REQUESTS, &h, None),
            Verdict::RateLimited(Some(Duration::from_secs(7)))
        );
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(
            Rejects::Status401.classify(S::TOO_MANY_REQUESTS, &h, None),
            Verdict::RateLimited(None)
        );
    }
}
