//! The provider table: everything that differs between provider types.
//!
//! design.md, "Provider types": one [`Spec`] row per type says where requests
//! go by default, how the credential is attached, which credential is used when
//! a route names none, where the model name is found for the allowlist, and
//! what answer means "this key was rejected". A new Bearer-style provider is
//! one [`ProviderType`] variant and one row in [`SPECS`]; nothing else in the
//! crate matches on provider names.
//!
//! The per-family code that applies a row lives beside it: [`api_key`] puts a
//! key into its header, [`azure`] picks the deployment.

pub(crate) mod api_key;
pub(crate) mod azure;
pub(crate) mod vertex;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// A provider type, the `type` of a route.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub(crate) enum ProviderType {
    OpenAi,
    OpenAiCompatible,
    Azure,
    Anthropic,
    Gemini,
    Vertex,
    Bedrock,
    Sagemaker,
    Deepseek,
    Fireworks,
    Groq,
    Hyperbolic,
    Mistral,
    Openrouter,
    Sglang,
    Tgi,
    Together,
    Vllm,
    Xai,
}

/// How a credential travels to the provider.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Auth {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// The key, unchanged, in the named header (`api-key`, `x-api-key`, ...).
    Header(&'static HeaderName),
    /// `Authorization: Bearer <OAuth2 access token>` minted from a service account.
    OAuthToken,
    /// An AWS SigV4 signature for the named service.
    SigV4 { service: &'static str },
}

/// The credential-carrying family, which decides what code handles the route.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Family {
    /// One upstream, one key (or pool) put in a header.
    ApiKey,
    /// A key and endpoint per deployment, chosen from the path.
    Azure,
    /// OAuth2 access tokens minted from a service account or the GKE
    /// metadata server ([`crate::tokens`]).
    Vertex,
    /// SigV4-signed requests (not yet supported: 501).
    Aws,
}

/// Where the model name of a request is found, for `models = [...]`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ModelIn {
    /// The `model` field of the JSON body.
    JsonBody,
    /// `.../models/{model}:method` in the path (Gemini and Vertex).
    PathModelsSegment,
    /// The deployment name in `/openai/deployments/{name}/...`.
    AzureDeployment,
    /// `/model/{model}/...` in the path (Bedrock).
    PathModelSegment,
}

/// Which upstream answers mean "this credential was rejected" (fallback trigger).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Rejects {
    /// A 401.
    Status401,
    /// A 401, or a 400/403 whose body says `API_KEY_INVALID` or `PERMISSION_DENIED`.
    Gemini,
    /// A 401 `UNAUTHENTICATED` (refresh the token once, then fall back).
    Vertex,
    /// A 403 `UnrecognizedClientException`, `InvalidSignatureException` or an expired token.
    Aws,
}

/// One row of the provider table.
#[derive(Debug)]
pub(crate) struct Spec {
    pub(crate) ty: ProviderType,
    /// The `type = "..."` string.
    pub(crate) name: &'static str,
    pub(crate) family: Family,
    /// Default upstream base URL; `None` when the route must name one (or, for
    /// azure, vertex and AWS, when it is derived from other settings).
    pub(crate) upstream: Option<&'static str>,
    pub(crate) auth: Auth,
    /// The credential location used when neither the route nor
    /// `[provider_types.TYPE.defaults]` names one.
    pub(crate) default_key: &'static str,
    pub(crate) rejects: Rejects,
    pub(crate) model_in: ModelIn,
    /// Headers added when the client sent none (the client's value is kept).
    pub(crate) default_headers: &'static [(HeaderName, HeaderValue)],
}

static API_KEY: HeaderName = HeaderName::from_static("api-key");
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

const NO_HEADERS: &[(HeaderName, HeaderValue)] = &[];
static ANTHROPIC_HEADERS: [(HeaderName, HeaderValue); 1] = [(
    HeaderName::from_static("anthropic-version"),
    HeaderValue::from_static("2023-06-01"),
)];

/// A Bearer-key provider with a JSON `model` and 401 rejections: most rows.
const fn bearer(
    ty: ProviderType,
    name: &'static str,
    upstream: Option<&'static str>,
    default_key: &'static str,
) -> Spec {
    Spec {
        ty,
        name,
        family: Family::ApiKey,
        upstream,
        auth: Auth::Bearer,
        default_key,
        rejects: Rejects::Status401,
        model_in: ModelIn::JsonBody,
        default_headers: NO_HEADERS,
    }
}

use ProviderType as P;

/// The provider table, in [`ProviderType`] declaration order.
pub(crate) static SPECS: [Spec; 19] = [
    bearer(
        P::OpenAi,
        "openai",
        Some("https://api.openai.com"),
        "env::OPENAI_API_KEY",
    ),
    bearer(
        P::OpenAiCompatible,
        "openai-compatible",
        None,
        "env::OPENAI_API_KEY",
    ),
    Spec {
        ty: P::Azure,
        name: "azure",
        family: Family::Azure,
        upstream: None,
        auth: Auth::Header(&API_KEY),
        default_key: "env::AZURE_OPENAI_API_KEY",
        rejects: Rejects::Status401,
        model_in: ModelIn::AzureDeployment,
        default_headers: NO_HEADERS,
    },
    Spec {
        ty: P::Anthropic,
        name: "anthropic",
        family: Family::ApiKey,
        upstream: Some("https://api.anthropic.com"),
        auth: Auth::Header(&X_API_KEY),
        default_key: "env::ANTHROPIC_API_KEY",
        rejects: Rejects::Status401,
        model_in: ModelIn::JsonBody,
        default_headers: &ANTHROPIC_HEADERS,
    },
    Spec {
        ty: P::Gemini,
        name: "gemini",
        family: Family::ApiKey,
        upstream: Some("https://generativelanguage.googleapis.com"),
        auth: Auth::Header(&X_GOOG_API_KEY),
        default_key: "env::GOOGLE_API_KEY",
        rejects: Rejects::Gemini,
        model_in: ModelIn::PathModelsSegment,
        default_headers: NO_HEADERS,
    },
    Spec {
        ty: P::Vertex,
        name: "vertex",
        family: Family::Vertex,
        upstream: None,
        auth: Auth::OAuthToken,
        default_key: "env::GCP_VERTEX_CREDENTIALS_PATH",
        rejects: Rejects::Vertex,
        model_in: ModelIn::PathModelsSegment,
        default_headers: NO_HEADERS,
    },
    Spec {
        ty: P::Bedrock,
        name: "bedrock",
        family: Family::Aws,
        upstream: None,
        auth: Auth::SigV4 { service: "bedrock" },
        default_key: "none",
        rejects: Rejects::Aws,
        model_in: ModelIn::PathModelSegment,
        default_headers: NO_HEADERS,
    },
    Spec {
        ty: P::Sagemaker,
        name: "sagemaker",
        family: Family::Aws,
        upstream: None,
        auth: Auth::SigV4 {
            service: "sagemaker",
        },
        default_key: "none",
        rejects: Rejects::Aws,
        model_in: ModelIn::JsonBody,
        default_headers: NO_HEADERS,
    },
    bearer(
        P::Deepseek,
        "deepseek",
        Some("https://api.deepseek.com"),
        "env::DEEPSEEK_API_KEY",
    ),
    bearer(
        P::Fireworks,
        "fireworks",
        Some("https://api.fireworks.ai/inference"),
        "env::FIREWORKS_API_KEY",
    ),
    bearer(
        P::Groq,
        "groq",
        Some("https://api.groq.com/openai"),
        "env::GROQ_API_KEY",
    ),
    bearer(
        P::Hyperbolic,
        "hyperbolic",
        Some("https://api.hyperbolic.xyz"),
        "env::HYPERBOLIC_API_KEY",
    ),
    bearer(
        P::Mistral,
        "mistral",
        Some("https://api.mistral.ai"),
        "env::MISTRAL_API_KEY",
    ),
    bearer(
        P::Openrouter,
        "openrouter",
        Some("https://openrouter.ai/api"),
        "env::OPENROUTER_API_KEY",
    ),
    bearer(P::Sglang, "sglang", None, "env::SGLANG_API_KEY"),
    bearer(P::Tgi, "tgi", None, "none"),
    bearer(
        P::Together,
        "together",
        Some("https://api.together.xyz"),
        "env::TOGETHER_API_KEY",
    ),
    bearer(P::Vllm, "vllm", None, "none"),
    bearer(P::Xai, "xai", Some("https://api.x.ai"), "env::XAI_API_KEY"),
];

impl PartialEq for Spec {
    fn eq(&self, other: &Self) -> bool {
        self.ty == other.ty
    }
}

impl Eq for Spec {}

impl ProviderType {
    /// This type's row in [`SPECS`].
    #[allow(
        clippy::indexing_slicing,
        reason = "every variant has a row at its discriminant; table_order_matches_declaration_order pins it"
    )]
    pub(crate) fn spec(self) -> &'static Spec {
        &SPECS[self as usize]
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

/// The list of valid type names, for error messages.
pub(crate) fn type_names() -> String {
    SPECS.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
}

impl FromStr for ProviderType {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SPECS
            .iter()
            .find(|spec| spec.name == s)
            .map(|spec| spec.ty)
            .ok_or(())
    }
}

impl fmt::Display for ProviderType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.spec().name)
    }
}

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
        let has = |needle: &str| body.windows(needle.len()).any(|w| w == needle.as_bytes());
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

impl Auth {
    /// The header the credential goes into, for key-style auth.
    pub(crate) fn header(self) -> &'static HeaderName {
        match self {
            Self::Header(name) => name,
            Self::Bearer | Self::OAuthToken | Self::SigV4 { .. } => &http::header::AUTHORIZATION,
        }
    }

    /// What goes before the key in the header value.
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            Self::Bearer | Self::OAuthToken => "Bearer ",
            Self::Header(_) | Self::SigV4 { .. } => "",
        }
    }

    /// A human description, e.g. `Authorization: Bearer` or `x-api-key`.
    pub(crate) fn describe(self) -> String {
        match self {
            Self::Bearer => "Authorization: Bearer".to_owned(),
            Self::Header(name) => name.as_str().to_owned(),
            Self::OAuthToken => "Authorization: Bearer (OAuth2 access token)".to_owned(),
            Self::SigV4 { service } => format!("AWS SigV4 ({service})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_order_matches_declaration_order() {
        for (i, spec) in SPECS.iter().enumerate() {
            assert_eq!(spec.ty as usize, i, "{} is out of order", spec.name);
            assert_eq!(spec.ty.spec().name, spec.name);
            assert_eq!(spec.name.parse::<ProviderType>(), Ok(spec.ty));
        }
    }

    #[test]
    fn default_credentials_parse() {
        for spec in &SPECS {
            spec.default_key
                .parse::<crate::credentials::Location>()
                .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
        }
    }

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

    #[test]
    fn default_upstreams_are_https_without_trailing_slash() {
        for spec in &SPECS {
            if let Some(u) = spec.upstream {
                assert!(u.starts_with("https://") && !u.ends_with('/'), "{u}");
            }
        }
    }
}
