//! What a provider's answer says about the credential that was sent.
//!
//! design.md, "How each provider says this key is bad": each row of the
//! provider table names a [`Rejects`] rule; [`Rejects::classify`] turns an
//! answer's status, headers and (for providers that say it in the body) the
//! start of its body into a [`Verdict`] that decides the fallback. No I/O.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};

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
/// of it from `streamGenerateContent`): `None` when `body` is not one;
/// otherwise whether it says the API key is bad, and how. The machine-read
/// `details[].reason` decides (`API_KEY_INVALID`, `API_KEY_EXPIRED`, a key
/// blocked for this API or caller, a suspended consumer); without one, a 403
/// `PERMISSION_DENIED` whose message is about the API key. Text elsewhere in
/// the body (a quoted prompt) never counts.
fn gemini_key_error(status: StatusCode, body: &[u8]) -> Option<Option<&'static str>> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = match &value {
        serde_json::Value::Array(items) => items.first()?.get("error")?,
        other => other.get("error")?,
    };
    let reasons = error
        .get("details")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("reason").and_then(serde_json::Value::as_str));
    for reason in reasons {
        match reason {
            "API_KEY_INVALID" => return Some(Some("API_KEY_INVALID")),
            "API_KEY_EXPIRED" => return Some(Some("API_KEY_EXPIRED")),
            "CONSUMER_SUSPENDED" => return Some(Some("CONSUMER_SUSPENDED")),
            r if r.starts_with("API_KEY_") && r.ends_with("_BLOCKED") => {
                return Some(Some("API_KEY_BLOCKED"));
            }
            _ => {}
        }
    }
    let text = |k: &str| {
        error
            .get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
    };
    let about_the_key = {
        let m = text("message").to_ascii_lowercase();
        m.contains("api key")
    };
    if status == StatusCode::FORBIDDEN && text("status") == "PERMISSION_DENIED" && about_the_key {
        return Some(Some("PERMISSION_DENIED"));
    }
    if status == StatusCode::BAD_REQUEST && text("message").starts_with("API key not valid") {
        return Some(Some("API_KEY_INVALID"));
    }
    Some(None)
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
    /// bad"). `body` is the start of the body when [`Self::needs_body`].
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
        let body = match body {
            Some(b) if self.needs_body(status) => b,
            _ => return Verdict::Accepted,
        };
        // AWS names the error in `x-amzn-ErrorType` (the JSON body has only
        // a message); look in both.
        let error_type = headers
            .get("x-amzn-errortype")
            .map_or(&[][..], HeaderValue::as_bytes);
        let has = |needle: &str| {
            let found = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle.as_bytes());
            found(body) || found(error_type)
        };
        match self {
            Self::Gemini => match gemini_key_error(status, body) {
                Some(Some(reason)) => Verdict::Rejected(reason),
                Some(None) => Verdict::Accepted,
                // Not a Google error envelope (or cut at the peek limit).
                None if has("API_KEY_INVALID") => Verdict::Rejected("API_KEY_INVALID"),
                None => Verdict::Accepted,
            },
            Self::Aws if has("UnrecognizedClientException") => {
                Verdict::Rejected("UnrecognizedClientException")
            }
            Self::Aws if has("InvalidSignatureException") => {
                Verdict::Rejected("InvalidSignatureException")
            }
            Self::Aws
                if has("ExpiredToken")
                    || has("security token included in the request is expired") =>
            {
                Verdict::Rejected("ExpiredToken")
            }
            _ => Verdict::Accepted,
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

    #[test]
    fn classification_follows_the_design_table() {
        use StatusCode as S;
        let h = HeaderMap::new();
        let bad_gemini_key = br#"{"error":{"code":400,"status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}"#;
        let gemini_denied = br#"{"error":{"code":403,"message":"Method doesn't allow unregistered callers. Please use API key.","status":"PERMISSION_DENIED"}}"#;
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
        for (rejects, status, body, want) in cases {
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
