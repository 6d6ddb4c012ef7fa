//! Errors that sidekey itself answers, and the one place that turns them into
//! responses.
//!
//! design.md, "Request path": sidekey's own errors use the OpenAI error
//! envelope, `{"error":{"message":"...","type":"sidekey_error","code":"..."}}`,
//! so every SDK shows the message. Messages name the route and the
//! credential's *location*, never a credential value. Answers from the
//! provider are never rewritten: they are not `ProxyError`s.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::credentials::NoCredential;

/// Everything that makes sidekey answer instead of the provider.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("no route: requests go to /ROUTE/..., configured routes: {routes}")]
    NoRoute { routes: String },
    #[error("unknown route `{route}`; configured routes: {routes}")]
    UnknownRoute { route: String, routes: String },
    #[error("absolute-form request targets are refused: sidekey is not a forward proxy")]
    AbsoluteForm,
    #[error("CONNECT is refused: sidekey is not a forward proxy")]
    Connect,
    #[error("protocol upgrades other than WebSocket over HTTP/1.1 are not supported")]
    Upgrade,
    /// A web page's request (design.md, "WebSocket: realtime and live APIs").
    #[error("requests from web pages are refused: origin `{origin}` is not in `allowed_origins`")]
    OriginNotAllowed { origin: String },
    /// A loopback listener reached under a name that is not its own (DNS rebinding).
    #[error(
        "host `{host}` is refused on a loopback listener: use localhost or a loopback address, or list it in `allowed_hosts`"
    )]
    HostNotAllowed { host: String },
    #[error(
        "the path has a `.` or `..` segment, a backslash or an encoded slash: refused, since the provider would resolve it to another path than the one checked"
    )]
    DotSegment,
    #[error("missing or wrong inbound token: send it as the API key or in x-sidekey-token")]
    Unauthorized,
    /// Fail closed: the token file is missing, empty or unreadable. The
    /// location is not told to a client that may be anyone; the log and
    /// `/readyz` name it.
    #[error(
        "the inbound token of this sidekey is unavailable (see its log and /readyz): requests are refused until it is restored"
    )]
    InboundTokenUnavailable,
    #[error("route {route}: model `{model}` is not allowed on this route")]
    ModelNotAllowed { route: String, model: String },
    #[error(
        "route {route}: the request body exceeds {limit} bytes (limits.max_replay_body), too large to check the model allowlist"
    )]
    BodyTooLarge { route: String, limit: u64 },
    #[error("route {route}: could not read the request body: {reason}")]
    RequestBody { route: String, reason: String },
    /// The client stopped sending a body sidekey reads itself.
    #[error("route {route}: the request body did not arrive within {}s (limits.body_read_timeout)", .after.as_secs_f64())]
    BodyTimeout { route: String, after: Duration },
    #[error(
        "route {route}: the request body is not JSON with a string `model`, which the model allowlist needs"
    )]
    NoModel { route: String },
    #[error("route {route}: credential unavailable: {source}")]
    CredentialUnavailable {
        route: String,
        #[source]
        source: NoCredential,
    },
    #[error(
        "route {route}: azure deployment `{deployment}` is not configured; configured deployments: {known}"
    )]
    UnknownDeployment {
        route: String,
        deployment: String,
        known: String,
    },
    #[error(
        "route {route}: no deployment in the path (/openai/deployments/NAME/...) and no route-level `upstream`"
    )]
    NoDeployment { route: String },
    #[error("route {route}: upstream {upstream} is unreachable: {reason}")]
    UpstreamUnreachable {
        route: String,
        upstream: String,
        reason: String,
    },
    #[error("route {route}: upstream {upstream} did not answer within {}s (limits.request_timeout)", .after.as_secs_f64())]
    UpstreamTimeout {
        route: String,
        upstream: String,
        after: Duration,
    },
    #[error("route {route}: provider type `{ty}` is not supported by this build yet ({reason})")]
    NotImplemented {
        route: String,
        ty: &'static str,
        reason: &'static str,
    },
    #[error("route {route}: {message}")]
    BadVertexPath { route: String, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// The status and envelope `code` of this error: the whole mapping, in one
    /// place (pinned by `status_and_code_table`).
    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            Self::NoRoute { .. } | Self::UnknownRoute { .. } => (S::NOT_FOUND, "unknown_route"),
            Self::UnknownDeployment { .. } | Self::NoDeployment { .. } => {
                (S::NOT_FOUND, "unknown_deployment")
            }
            Self::AbsoluteForm => (S::BAD_REQUEST, "absolute_form_refused"),
            Self::DotSegment => (S::BAD_REQUEST, "bad_path"),
            Self::Connect => (S::METHOD_NOT_ALLOWED, "connect_refused"),
            Self::Upgrade => (S::NOT_IMPLEMENTED, "upgrade_not_supported"),
            Self::OriginNotAllowed { .. } => (S::FORBIDDEN, "origin_not_allowed"),
            Self::HostNotAllowed { .. } => (S::FORBIDDEN, "host_not_allowed"),
            Self::Unauthorized => (S::UNAUTHORIZED, "unauthorized"),
            Self::ModelNotAllowed { .. } => (S::FORBIDDEN, "model_not_allowed"),
            Self::BodyTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "body_too_large"),
            Self::RequestBody { .. } => (S::BAD_REQUEST, "bad_request_body"),
            Self::BodyTimeout { .. } => (S::REQUEST_TIMEOUT, "body_timeout"),
            Self::NoModel { .. } => (S::BAD_REQUEST, "model_missing"),
            Self::BadVertexPath { .. } => (S::BAD_REQUEST, "bad_vertex_path"),
            Self::CredentialUnavailable { .. } => {
                (S::SERVICE_UNAVAILABLE, "credential_unavailable")
            }
            Self::InboundTokenUnavailable => (S::UNAUTHORIZED, "inbound_token_unavailable"),
            Self::UpstreamUnreachable { .. } => (S::BAD_GATEWAY, "upstream_unreachable"),
            Self::UpstreamTimeout { .. } => (S::GATEWAY_TIMEOUT, "upstream_timeout"),
            Self::NotImplemented { .. } => (S::NOT_IMPLEMENTED, "not_implemented"),
            Self::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    /// The envelope body.
    pub(crate) fn body(&self) -> Bytes {
        let (_, code) = self.status_and_code();
        let v = serde_json::json!({
            "error": { "message": self.to_string(), "type": "sidekey_error", "code": code }
        });
        Bytes::from(v.to_string())
    }

    /// The whole response.
    pub(crate) fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let (status, _) = self.status_and_code();
        let mut resp = Response::new(B::from(self.body()));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row per variant: a sample value, the status and the code. The
    /// macro writes an exhaustive `match` from the same rows, so a variant
    /// added without a row does not compile, and a row's sample must be of
    /// that row's variant (checked below).
    macro_rules! table {
        ($($variant:ident: $sample:expr => $status:literal, $code:literal;)*) => {
            /// The row a value's variant belongs to: (variant, status, code).
            fn row(e: &ProxyError) -> (&'static str, u16, &'static str) {
                match e {
                    $(ProxyError::$variant { .. } => (stringify!($variant), $status, $code),)*
                }
            }

            /// One sample per row, with the row's variant name.
            fn samples() -> Vec<(&'static str, ProxyError)> {
                vec![$((stringify!($variant), $sample)),*]
            }
        };
    }

    fn r() -> String {
        "r".to_owned()
    }

    table! {
        NoRoute: ProxyError::NoRoute { routes: r() } => 404, "unknown_route";
        UnknownRoute: ProxyError::UnknownRoute { route: r(), routes: r() } => 404, "unknown_route";
        AbsoluteForm: ProxyError::AbsoluteForm => 400, "absolute_form_refused";
        Connect: ProxyError::Connect => 405, "connect_refused";
        Upgrade: ProxyError::Upgrade => 501, "upgrade_not_supported";
        OriginNotAllowed: ProxyError::OriginNotAllowed { origin: r() } => 403, "origin_not_allowed";
        HostNotAllowed: ProxyError::HostNotAllowed { host: r() } => 403, "host_not_allowed";
        DotSegment: ProxyError::DotSegment => 400, "bad_path";
        Unauthorized: ProxyError::Unauthorized => 401, "unauthorized";
        InboundTokenUnavailable: ProxyError::InboundTokenUnavailable
            => 401, "inbound_token_unavailable";
        ModelNotAllowed: ProxyError::ModelNotAllowed { route: r(), model: r() }
            => 403, "model_not_allowed";
        BodyTooLarge: ProxyError::BodyTooLarge { route: r(), limit: 1 } => 413, "body_too_large";
        RequestBody: ProxyError::RequestBody { route: r(), reason: r() } => 400, "bad_request_body";
        BodyTimeout: ProxyError::BodyTimeout { route: r(), after: Duration::from_secs(1) }
            => 408, "body_timeout";
        NoModel: ProxyError::NoModel { route: r() } => 400, "model_missing";
        CredentialUnavailable: ProxyError::CredentialUnavailable {
            route: r(),
            source: NoCredential(vec![]),
        } => 503, "credential_unavailable";
        UnknownDeployment: ProxyError::UnknownDeployment { route: r(), deployment: r(), known: r() }
            => 404, "unknown_deployment";
        NoDeployment: ProxyError::NoDeployment { route: r() } => 404, "unknown_deployment";
        UpstreamUnreachable: ProxyError::UpstreamUnreachable {
            route: r(),
            upstream: r(),
            reason: r(),
        } => 502, "upstream_unreachable";
        UpstreamTimeout: ProxyError::UpstreamTimeout {
            route: r(),
            upstream: r(),
            after: Duration::from_secs(1),
        } => 504, "upstream_timeout";
        NotImplemented: ProxyError::NotImplemented { route: r(), ty: "bedrock", reason: "x" }
            => 501, "not_implemented";
        BadVertexPath: ProxyError::BadVertexPath { route: r(), message: r() }
            => 400, "bad_vertex_path";
        Internal: ProxyError::Internal(r()) => 500, "internal_error";
    }

    #[test]
    fn status_and_code_table() {
        let samples = samples();
        let mut seen: Vec<&str> = samples.iter().map(|(name, _)| *name).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), samples.len(), "a variant has two rows");
        for (name, err) in samples {
            let (variant, status, code) = row(&err);
            assert_eq!(variant, name, "the sample of row {name} is a {variant}");
            assert_eq!(
                err.status_and_code(),
                (StatusCode::from_u16(status).unwrap(), code),
                "{err}"
            );
            let body: serde_json::Value = serde_json::from_slice(&err.body()).unwrap();
            assert_eq!(body["error"]["code"], code);
            assert_eq!(body["error"]["type"], "sidekey_error");
            assert_eq!(body["error"]["message"], err.to_string());
            let resp: Response<Bytes> = err.into_response();
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        }
    }
}
