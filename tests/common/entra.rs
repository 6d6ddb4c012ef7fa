//! Azure-shaped mocks for the keyless tests: Microsoft Entra ID's token
//! endpoint (the workload-identity client-assertion grant and the
//! client-secret grant, plus the OpenID configuration MSAL reads first), the
//! instance metadata service's managed-identity endpoint, and an Azure OpenAI
//! endpoint that accepts only live tokens those issued and refuses any
//! `api-key` header.
//!
//! Each grant is checked field by field against what azure-identity 1.27 /
//! MSAL 1.39 send (`tests/keyless.rs` proves it by running them against these
//! mocks): a form with exactly the expected fields, the federated token equal
//! to the token file's current content, a secret among the accepted ones.
//! Every deviation is recorded as a problem (answered 400/401) so a test can
//! say what was wrong.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::aws::form;
use super::mock::{Mock, Recorded, Reply, Transport};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT_ID: &str = "8c4bc1a2-7e1f-4b3e-9d6a-5f0e2c1b9a77";
pub const SCOPE: &str = "https://cognitiveservices.azure.com/.default";
/// [`SCOPE`] as IMDS takes it (`resource`, without `/.default`).
pub const RESOURCE: &str = "https://cognitiveservices.azure.com";
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// What Azure OpenAI answers chat completions with.
pub const TEXT: [&str; 3] = ["hello", " from", " azure"];

/// The identity kinds, as sidekey's metrics name their source.
pub const WORKLOAD_IDENTITY: &str = "workload-identity";
pub const CLIENT_SECRET: &str = "client-secret";
pub const MANAGED_IDENTITY: &str = "managed-identity";

/// A token the mocks issued.
#[derive(Clone, Debug)]
pub struct Issued {
    /// [`WORKLOAD_IDENTITY`], [`CLIENT_SECRET`] or [`MANAGED_IDENTITY`].
    pub kind: &'static str,
    pub expires: Instant,
    pub expires_unix: u64,
}

/// One token request the mocks received (answered or refused).
#[derive(Clone, Debug)]
pub struct Grant {
    pub kind: &'static str,
    pub at: Instant,
    /// The decoded form (token endpoint) or query (IMDS).
    pub fields: HashMap<String, String>,
    pub request: Recorded,
}

impl Grant {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// What the Entra, IMDS and Azure OpenAI mocks share.
#[derive(Debug)]
pub struct Entra {
    pub tenant: String,
    pub client_id: String,
    /// The scope the token endpoint expects.
    pub scope: String,
    /// `AZURE_FEDERATED_TOKEN_FILE`: the assertion must be its current content.
    pub assertion_file: Mutex<Option<PathBuf>>,
    /// Client secrets the endpoint accepts.
    pub secrets: Mutex<Vec<String>>,
    /// The `client_id` IMDS must be asked for (`None`: none may be sent).
    pub imds_client_id: Mutex<Option<String>>,
    /// Lifetime of the tokens issued, seconds.
    pub expires_in: AtomicU64,
    /// Delay before answering a token request, milliseconds.
    pub delay_ms: AtomicU64,
    /// When set, token requests fail with 503.
    pub outage: AtomicBool,
    counter: AtomicUsize,
    issued: Mutex<HashMap<String, Issued>>,
    grants: Mutex<Vec<Grant>>,
    problems: Mutex<Vec<String>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Entra {
    pub fn new(expires_in: u64) -> Arc<Self> {
        Arc::new(Self {
            tenant: TENANT.to_owned(),
            client_id: CLIENT_ID.to_owned(),
            scope: SCOPE.to_owned(),
            assertion_file: Mutex::default(),
            secrets: Mutex::default(),
            imds_client_id: Mutex::default(),
            expires_in: AtomicU64::new(expires_in),
            delay_ms: AtomicU64::new(0),
            outage: AtomicBool::new(false),
            counter: AtomicUsize::new(0),
            issued: Mutex::default(),
            grants: Mutex::default(),
            problems: Mutex::default(),
        })
    }

    pub fn set_assertion_file(&self, path: PathBuf) {
        *self.assertion_file.lock().unwrap() = Some(path);
    }

    pub fn accept_secret(&self, secret: &str) {
        self.secrets.lock().unwrap().push(secret.to_owned());
    }

    /// Stops accepting every secret but `secret`.
    pub fn only_secret(&self, secret: &str) {
        *self.secrets.lock().unwrap() = vec![secret.to_owned()];
    }

    pub fn set_imds_client_id(&self, client_id: Option<&str>) {
        *self.imds_client_id.lock().unwrap() = client_id.map(str::to_owned);
    }

    /// The kind of the live token in `authorization` (`Bearer tok`), if the
    /// mocks issued it and it has not expired.
    pub fn check(&self, authorization: Option<&str>) -> Option<&'static str> {
        let token = authorization?.strip_prefix("Bearer ")?;
        let issued = self.issued.lock().unwrap().get(token).cloned()?;
        (Instant::now() < issued.expires).then_some(issued.kind)
    }

    /// What the mocks know about `token` (live or not).
    pub fn issued(&self, token: &str) -> Option<Issued> {
        self.issued.lock().unwrap().get(token).cloned()
    }

    /// Every token issued so far becomes invalid (Azure OpenAI answers 401).
    pub fn revoke_all(&self) {
        self.issued.lock().unwrap().clear();
    }

    /// Token requests received so far (answered or refused), in order.
    pub fn grants(&self) -> Vec<Grant> {
        self.grants.lock().unwrap().clone()
    }

    pub fn grant_count(&self) -> usize {
        self.grants.lock().unwrap().len()
    }

    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap().clone()
    }

    /// Panics if any request broke the protocol.
    pub fn assert_no_problems(&self) {
        let problems = self.problems();
        assert!(problems.is_empty(), "the Entra mocks saw: {problems:#?}");
    }

    fn problem(&self, p: String) -> String {
        self.problems.lock().unwrap().push(p.clone());
        p
    }

    fn record(&self, kind: &'static str, fields: HashMap<String, String>, r: &Recorded) {
        self.grants.lock().unwrap().push(Grant {
            kind,
            at: Instant::now(),
            fields,
            request: r.clone(),
        });
    }

    fn mint(&self, kind: &'static str) -> (String, u64, u64) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let expires_in = self.expires_in.load(Ordering::Relaxed);
        // A JWT-looking token, numbered so each is unique even after a revocation.
        let token = format!("eyJ0eXAiOiJKV1QifQ.entra-{kind}-{n}.c2ln");
        let expires_unix = unix_now() + expires_in;
        self.issued.lock().unwrap().insert(
            token.clone(),
            Issued {
                kind,
                expires: Instant::now() + Duration::from_secs(expires_in),
                expires_unix,
            },
        );
        (token, expires_in, expires_unix)
    }

    fn delayed(&self, reply: Reply) -> Reply {
        match self.delay_ms.load(Ordering::Relaxed) {
            0 => reply,
            ms => Reply::After(Duration::from_millis(ms), Box::new(reply)),
        }
    }

    /// `POST {authority}{tenant}/oauth2/v2.0/token`.
    fn token(&self, r: &Recorded) -> Reply {
        let fields = form(&r.body);
        let kind = if fields.contains_key("client_assertion") {
            WORKLOAD_IDENTITY
        } else {
            CLIENT_SECRET
        };
        self.record(kind, fields.clone(), r);
        let refuse = |this: &Self, error: &str, p: String| {
            let p = this.problem(format!("{kind} grant: {p}"));
            Reply::json(
                if error == "invalid_client" { 401 } else { 400 },
                serde_json::json!({"error": error, "error_description": p, "error_codes": [700_016]})
                    .to_string(),
            )
        };
        if r.method != http::Method::POST {
            return refuse(self, "invalid_request", format!("method {}", r.method));
        }
        if !r
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
        {
            return refuse(
                self,
                "invalid_request",
                format!("content-type {:?}", r.header("content-type")),
            );
        }
        if r.uri.query().is_some() {
            return refuse(
                self,
                "invalid_request",
                format!("a query string: {}", r.path_and_query()),
            );
        }
        // Exactly these fields; MSAL's client-secret grant adds `client_info=1`.
        let (required, optional): (&[&str], &[&str]) = if kind == WORKLOAD_IDENTITY {
            (
                &[
                    "client_id",
                    "scope",
                    "grant_type",
                    "client_assertion_type",
                    "client_assertion",
                ],
                &[],
            )
        } else {
            (
                &["client_id", "client_secret", "scope", "grant_type"],
                &["client_info"],
            )
        };
        let mut names: Vec<&String> = fields.keys().collect();
        names.sort();
        for name in &names {
            if !required.contains(&name.as_str()) && !optional.contains(&name.as_str()) {
                return refuse(
                    self,
                    "invalid_request",
                    format!("unexpected field {name} (fields {names:?})"),
                );
            }
        }
        for name in required {
            if !fields.contains_key(*name) {
                return refuse(
                    self,
                    "invalid_request",
                    format!("no {name} (fields {names:?})"),
                );
            }
        }
        if let Some(info) = fields.get("client_info")
            && info != "1"
        {
            return refuse(self, "invalid_request", format!("client_info {info:?}"));
        }
        let want = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
        ];
        for (name, value) in want {
            if fields[name] != value {
                return refuse(
                    self,
                    "invalid_request",
                    format!("{name} = {:?}, expected {value:?}", fields[name]),
                );
            }
        }
        if kind == WORKLOAD_IDENTITY {
            if fields["client_assertion_type"] != ASSERTION_TYPE {
                return refuse(
                    self,
                    "invalid_request",
                    format!(
                        "client_assertion_type {:?}",
                        fields["client_assertion_type"]
                    ),
                );
            }
            let Some(path) = self.assertion_file.lock().unwrap().clone() else {
                return refuse(
                    self,
                    "invalid_client",
                    "no federated token file configured in the mock".into(),
                );
            };
            let current = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("mock: cannot read {}: {e}", path.display()))
                .trim()
                .to_owned();
            if fields["client_assertion"] != current {
                return refuse(
                    self,
                    "invalid_client",
                    format!(
                        "client_assertion {:?} is not the token file's current content {current:?}",
                        fields["client_assertion"]
                    ),
                );
            }
        } else if !self
            .secrets
            .lock()
            .unwrap()
            .contains(&fields["client_secret"])
        {
            return refuse(
                self,
                "invalid_client",
                format!(
                    "client_secret {:?} is not accepted",
                    fields["client_secret"]
                ),
            );
        }
        if self.outage.load(Ordering::Relaxed) {
            return self.delayed(Reply::json(
                503,
                r#"{"error":"temporarily_unavailable","error_description":"AADSTS90033: outage"}"#,
            ));
        }
        let (token, expires_in, _) = self.mint(kind);
        self.delayed(Reply::json(
            200,
            serde_json::json!({
                "token_type": "Bearer",
                "expires_in": expires_in,
                "ext_expires_in": expires_in,
                "access_token": token,
            })
            .to_string(),
        ))
    }

    /// `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=..[&client_id=..]`
    /// with `Metadata: true`; answers with string `expires_in`/`expires_on`, as IMDS does.
    fn imds(&self, r: &Recorded) -> Reply {
        let query = form(r.uri.query().unwrap_or("").as_bytes());
        self.record(MANAGED_IDENTITY, query.clone(), r);
        let refuse = |this: &Self, status: u16, p: String| {
            let p = this.problem(format!("IMDS: {p}"));
            Reply::json(
                status,
                serde_json::json!({"error": "invalid_request", "error_description": p}).to_string(),
            )
        };
        if r.method != http::Method::GET {
            return refuse(self, 405, format!("method {}", r.method));
        }
        if r.uri.path() != "/metadata/identity/oauth2/token" {
            return refuse(self, 404, format!("path {}", r.uri.path()));
        }
        if r.header("metadata") != Some("true") {
            return refuse(
                self,
                400,
                format!(
                    "Metadata header {:?}, expected \"true\"",
                    r.header("metadata")
                ),
            );
        }
        let client_id = self.imds_client_id.lock().unwrap().clone();
        let mut allowed = vec!["api-version", "resource"];
        if client_id.is_some() {
            allowed.push("client_id");
        }
        let mut names: Vec<&String> = query.keys().collect();
        names.sort();
        if names.len() != allowed.len() || !names.iter().all(|n| allowed.contains(&n.as_str())) {
            return refuse(
                self,
                400,
                format!("query parameters {names:?}, expected {allowed:?}"),
            );
        }
        if query["api-version"] != "2018-02-01" {
            return refuse(self, 400, format!("api-version {:?}", query["api-version"]));
        }
        if query["resource"] != RESOURCE {
            return refuse(
                self,
                400,
                format!("resource {:?}, expected {RESOURCE:?}", query["resource"]),
            );
        }
        if let Some(want) = client_id
            && query["client_id"] != want
        {
            return refuse(
                self,
                400,
                format!("client_id {:?}, expected {want:?}", query["client_id"]),
            );
        }
        if self.outage.load(Ordering::Relaxed) {
            return self.delayed(Reply::json(503, r#"{"error":"service_unavailable"}"#));
        }
        let (token, expires_in, expires_on) = self.mint(MANAGED_IDENTITY);
        let now = unix_now();
        self.delayed(Reply::json(
            200,
            serde_json::json!({
                "access_token": token,
                "client_id": self.imds_client_id.lock().unwrap().clone().unwrap_or_else(|| self.client_id.clone()),
                "expires_in": expires_in.to_string(),
                "expires_on": expires_on.to_string(),
                "ext_expires_in": expires_in.to_string(),
                "not_before": now.to_string(),
                "resource": RESOURCE,
                "token_type": "Bearer",
            })
            .to_string(),
        ))
    }
}

/// The Entra token endpoint for `entra`; its authority (`AZURE_AUTHORITY_HOST`)
/// is `{mock.url}/`. azure-identity insists on `https`: use a TLS transport
/// for it.
pub async fn entra_endpoint(transport: Transport<'_>, entra: Arc<Entra>) -> Mock {
    let base = Arc::new(Mutex::new(String::new()));
    let b = base.clone();
    let mock = Mock::start(transport, move |r| {
        let tenant = entra.tenant.clone();
        let path = r.uri.path();
        if path == format!("/{tenant}/v2.0/.well-known/openid-configuration") {
            // MSAL reads it before a client-secret grant.
            let base = b.lock().unwrap().clone();
            return Reply::json(
                200,
                serde_json::json!({
                    "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
                    "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
                    "device_authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/devicecode"),
                    "issuer": format!("{base}/{tenant}/v2.0"),
                    "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
                    "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                })
                .to_string(),
            );
        }
        if path == format!("/{tenant}/oauth2/v2.0/token") {
            return entra.token(r);
        }
        let p = entra.problem(format!("Entra: unexpected {} {}", r.method, r.path_and_query()));
        Reply::json(404, serde_json::json!({"error": "not_found", "error_description": p}).to_string())
    })
    .await;
    *base.lock().unwrap() = mock.url.clone();
    mock
}

/// `AZURE_AUTHORITY_HOST` for `mock` (with the trailing slash the webhook sets).
pub fn authority(mock: &Mock) -> String {
    format!("{}/", mock.url)
}

/// The instance metadata service (plain HTTP, as IMDS is); point
/// `AZURE_POD_IDENTITY_AUTHORITY_HOST` at its `url`.
pub async fn imds_endpoint(entra: Arc<Entra>) -> Mock {
    Mock::start(Transport::Plain, move |r| entra.imds(r)).await
}

fn chat_chunk(delta: serde_json::Value, finish: Option<&str>) -> String {
    let c = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "gpt-4o", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
    });
    format!("data: {c}\n\n")
}

/// Azure OpenAI: 401 unless `Authorization` carries a live token the mocks
/// issued; any `api-key` header is a problem (sidekey must strip the
/// client's and send none). Answers chat completions, streamed when asked,
/// with the token's kind in the completion's `system_fingerprint`.
pub async fn azure_openai(transport: Transport<'_>, entra: Arc<Entra>) -> Mock {
    Mock::start(transport, move |r| {
        if let Some(key) = r.header("api-key") {
            let p = entra.problem(format!("Azure OpenAI got an api-key header {key:?}"));
            return Reply::json(
                401,
                serde_json::json!({"error": {"code": "401", "message": p}}).to_string(),
            );
        }
        let Some(kind) = entra.check(r.header("authorization")) else {
            return Reply::json(
                401,
                r#"{"error":{"code":"401","message":"Unauthorized. Access token is missing, invalid, audience is incorrect (https://cognitiveservices.azure.com), or have expired."}}"#,
            );
        };
        if !r.uri.path().ends_with("/chat/completions") {
            return Reply::json(404, r#"{"error":{"code":"404","message":"Resource not found"}}"#);
        }
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        if body["stream"] == true {
            let mut events = vec![chat_chunk(
                serde_json::json!({"role": "assistant", "content": ""}),
                None,
            )];
            events.extend(
                TEXT.iter()
                    .map(|t| chat_chunk(serde_json::json!({"content": t}), None)),
            );
            events.push(chat_chunk(serde_json::json!({}), Some("stop")));
            events.push("data: [DONE]\n\n".to_owned());
            return Reply::sse(events, Duration::from_millis(20));
        }
        Reply::json(
            200,
            serde_json::json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o",
                "system_fingerprint": kind,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT.concat()}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
            })
            .to_string(),
        )
    })
    .await
}
