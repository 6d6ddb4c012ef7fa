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
//! key into its header, [`azure`] picks the deployment, [`vertex`] maps
//! paths onto Vertex hosts; [`classify`] reads an answer into a [`Verdict`].

pub(crate) mod api_key;
pub(crate) mod aws;
pub(crate) mod azure;
pub(crate) mod classify;
pub(crate) mod vertex;

pub(crate) use classify::Verdict;

use std::fmt;
use std::str::FromStr;

use http::{HeaderName, HeaderValue};

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
    /// A key (or an Entra ID identity, [`crate::tokens::entra`]) and an
    /// endpoint per deployment, chosen from the path.
    Azure,
    /// OAuth2 access tokens minted from a service account or the GKE
    /// metadata server ([`crate::tokens`]).
    Vertex,
    /// SigV4-signed requests with AWS credentials ([`aws`]), or a Bedrock
    /// API key.
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
    /// A rejected minted credential (an access token, temporary AWS keys)
    /// is refreshed and the request retried once with the same source
    /// before any fallback.
    pub(crate) refresh_on_reject: bool,
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
        refresh_on_reject: false,
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
        refresh_on_reject: true,
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
        refresh_on_reject: false,
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
        refresh_on_reject: false,
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
        refresh_on_reject: true,
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
        refresh_on_reject: true,
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
        refresh_on_reject: true,
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
    fn default_upstreams_are_https_without_trailing_slash() {
        for spec in &SPECS {
            if let Some(u) = spec.upstream {
                assert!(u.starts_with("https://") && !u.ends_with('/'), "{u}");
            }
        }
    }
}
