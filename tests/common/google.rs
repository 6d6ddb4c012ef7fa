//! Google-shaped mocks for the Vertex AI tests: a service account whose RSA
//! key is generated in the test, a token endpoint that verifies the JWT bearer
//! assertion with the account's public key, a Vertex endpoint that accepts
//! only tokens that endpoint issued (and only until they expire), and a GKE
//! metadata server.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::rand_core::OsRng;
use rustls::pki_types::pem::PemObject;
use tokio::time::Instant;

use super::mock::{Mock, Recorded, Reply, Transport};
use super::tls::TestPki;

pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// A service account with a fresh RSA key.
#[derive(Clone)]
pub struct Account {
    pub email: String,
    pub project: String,
    pub pem: String,
    /// DER RSAPublicKey, to verify assertions.
    pub public_key: Vec<u8>,
}

impl Account {
    /// Generates a 2048-bit key in-process (ring cannot generate RSA keys,
    /// RustCrypto's `rsa` can), as PKCS#8 PEM like Google's key files. Each
    /// account gets its own key, so a test that rotates accounts also
    /// rotates keys.
    pub fn generate(email: &str, project: &str) -> Self {
        let key = rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
        let pem: String = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        // The key must be one ring, which signs in sidekey, accepts.
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
        Self {
            email: email.to_owned(),
            project: project.to_owned(),
            pem,
            public_key: key.public().as_ref().to_vec(),
        }
    }

    /// The service-account JSON, with `token_uri` pointing at `token_uri`,
    /// pretty-printed with a trailing newline as Google's key files are.
    pub fn json(&self, token_uri: &str) -> String {
        let json = serde_json::json!({
            "type": "service_account",
            "project_id": self.project,
            "private_key_id": "test-key-id",
            "private_key": self.pem,
            "client_email": self.email,
            "client_id": "1",
            "token_uri": token_uri,
        });
        let mut text = serde_json::to_string_pretty(&json).unwrap();
        text.push('\n');
        text
    }
}

/// What the token endpoint knows about a token it issued.
#[derive(Clone, Debug)]
pub struct Issued {
    pub iss: String,
    pub expires: Instant,
}

/// The token endpoint's state, shared with the Vertex mock.
#[derive(Default)]
pub struct Tokens {
    /// Accounts the endpoint knows: email → public key.
    pub accounts: Mutex<HashMap<String, Vec<u8>>>,
    pub issued: Mutex<HashMap<String, Issued>>,
    /// Token requests received (valid or not).
    pub requests: AtomicUsize,
    /// Lifetime of the tokens it issues, seconds.
    pub expires_in: AtomicU64,
    /// Delay before answering, milliseconds.
    pub delay_ms: AtomicU64,
    /// When set, every token request fails with 503.
    pub outage: AtomicBool,
    /// Assertion problems seen (should stay empty).
    pub problems: Mutex<Vec<String>>,
}

impl Tokens {
    pub fn new(expires_in: u64) -> Arc<Self> {
        let t = Self::default();
        t.expires_in.store(expires_in, Ordering::Relaxed);
        Arc::new(t)
    }

    pub fn trust(&self, account: &Account) {
        self.accounts
            .lock()
            .unwrap()
            .insert(account.email.clone(), account.public_key.clone());
    }

    /// Whether `bearer` (`Bearer tok`) is a token this endpoint issued that
    /// has not expired; returns who it was issued to.
    pub fn check(&self, bearer: Option<&str>) -> Option<String> {
        let token = bearer?.strip_prefix("Bearer ")?;
        let issued = self.issued.lock().unwrap().get(token).cloned()?;
        (Instant::now() < issued.expires).then_some(issued.iss)
    }

    /// Revokes every token issued so far (they get 401 from Vertex).
    pub fn revoke_all(&self) {
        self.issued.lock().unwrap().clear();
    }

    fn answer(&self, r: &Recorded, token_uri: &str) -> Reply {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let delay = Duration::from_millis(self.delay_ms.load(Ordering::Relaxed));
        let reply = self.mint(r, token_uri);
        if delay.is_zero() {
            reply
        } else {
            Reply::After(delay, Box::new(reply))
        }
    }

    fn mint(&self, r: &Recorded, token_uri: &str) -> Reply {
        if self.outage.load(Ordering::Relaxed) {
            return Reply::json(503, r#"{"error":"temporarily_unavailable"}"#);
        }
        match self.verify(r, token_uri) {
            Ok(iss) => {
                // Numbered by request: unique even after `revoke_all`.
                let n = self.requests.load(Ordering::Relaxed);
                let token = format!("ya29.test-{n}-{}", iss.replace('@', "-"));
                let expires_in = self.expires_in.load(Ordering::Relaxed);
                self.issued.lock().unwrap().insert(
                    token.clone(),
                    Issued {
                        iss,
                        expires: Instant::now() + Duration::from_secs(expires_in),
                    },
                );
                Reply::json(
                    200,
                    serde_json::json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}).to_string(),
                )
            }
            Err(problem) => {
                self.problems.lock().unwrap().push(problem.clone());
                Reply::json(
                    400,
                    serde_json::json!({"error": "invalid_grant", "error_description": problem})
                        .to_string(),
                )
            }
        }
    }

    /// Checks a JWT bearer grant: form fields, RS256 signature with the
    /// account's public key, and the iss, aud, scope, iat, exp claims.
    fn verify(&self, r: &Recorded, token_uri: &str) -> Result<String, String> {
        if r.header("content-type") != Some("application/x-www-form-urlencoded") {
            return Err("not a form".into());
        }
        let form = String::from_utf8(r.body.to_vec()).map_err(|_| "body not UTF-8")?;
        let field = |name: &str| {
            form.split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .map(str::to_owned)
        };
        if field("grant_type").as_deref()
            != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
        {
            return Err(format!("grant_type {:?}", field("grant_type")));
        }
        let jwt = field("assertion").ok_or("no assertion")?;
        let parts: Vec<&str> = jwt.split('.').collect();
        let [header, claims, signature] = parts.as_slice() else {
            return Err("not a JWT".into());
        };
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        if header["alg"] != "RS256" {
            return Err(format!("alg {}", header["alg"]));
        }
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        let iss = claims["iss"].as_str().ok_or("no iss")?.to_owned();
        let key = self
            .accounts
            .lock()
            .unwrap()
            .get(&iss)
            .cloned()
            .ok_or(format!("unknown account {iss}"))?;
        let signed = format!("{}.{}", parts[0], parts[1]);
        let sig = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|e| e.to_string())?;
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key)
            .verify(signed.as_bytes(), &sig)
            .map_err(|_| "bad signature")?;
        if claims["aud"] != token_uri {
            return Err(format!("aud {}", claims["aud"]));
        }
        if claims["scope"] != SCOPE {
            return Err(format!("scope {}", claims["scope"]));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let iat = claims["iat"].as_i64().ok_or("no iat")?;
        let exp = claims["exp"].as_i64().ok_or("no exp")?;
        if (iat - now).abs() > 60 {
            return Err(format!("iat {iat} is not now ({now})"));
        }
        if exp <= iat || exp - iat > 3600 {
            return Err(format!("exp {exp} for iat {iat}"));
        }
        Ok(iss)
    }
}

/// Starts the token endpoint; returns it and its token URI.
pub async fn token_endpoint(transport: Transport<'_>, tokens: Arc<Tokens>) -> (Mock, String) {
    // The token URI is only known once the port is: the handler reads it.
    let uri = Arc::new(Mutex::new(String::new()));
    let (t, u) = (tokens.clone(), uri.clone());
    let mock = Mock::start(transport, move |r| t.answer(r, &u.lock().unwrap())).await;
    let token_uri = format!("{}/token", mock.url);
    *uri.lock().unwrap() = token_uri.clone();
    (mock, token_uri)
}

/// A Vertex endpoint: 401 `UNAUTHENTICATED` unless the token is one the
/// token endpoint issued and has not expired; otherwise a generateContent
/// answer naming the account the token belongs to.
pub async fn vertex_endpoint(transport: Transport<'_>, tokens: Arc<Tokens>) -> Mock {
    Mock::start(transport, move |r| match tokens.check(r.header("authorization")) {
        None => Reply::json(
            401,
            r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}"#,
        ),
                Some(iss) => {
            let candidate = |text: &str| {
                serde_json::json!({
                    "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP"}],
                    "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 3, "totalTokenCount": 4},
                    "account": iss,
                })
            };
            if r.uri.path().ends_with(":streamGenerateContent") {
                let events = ["hello", " from", " vertex"].iter().map(|t| format!("data: {}\n\n", candidate(t))).collect();
                Reply::sse(events, Duration::from_millis(20))
            } else {
                Reply::json(200, candidate("hello from vertex").to_string())
            }
        }
    })
    .await
}

/// A token endpoint and a Vertex endpoint over TLS, both answering through
/// `tokens`; `account`'s JSON (pointing at that token endpoint) written to
/// `dir/sa.json`; and a config with one `vertex` route using it.
pub struct VertexOverTls {
    pub token_mock: Mock,
    pub vertex: Mock,
    pub config: String,
}

pub async fn vertex_over_tls(
    dir: &Path,
    pki: &TestPki,
    tokens: &Arc<Tokens>,
    account: &Account,
) -> VertexOverTls {
    let (token_mock, token_uri) = token_endpoint(Transport::Tls(pki), tokens.clone()).await;
    let vertex = vertex_endpoint(Transport::Tls(pki), tokens.clone()).await;
    let sa = dir.join("sa.json");
    std::fs::write(&sa, account.json(&token_uri)).unwrap();
    let config = format!(
        "ca_file = \"{}\"\n[routes.vertex]\ntype = \"vertex\"\nupstream = \"{}\"\ncredentials = \"path::{}\"\n",
        pki.ca_file.display(),
        vertex.url,
        sa.display()
    );
    VertexOverTls {
        token_mock,
        vertex,
        config,
    }
}

/// A GKE metadata server issuing tokens through `tokens` for `account`.
pub async fn metadata_server(tokens: Arc<Tokens>, account: &str) -> Mock {
    let account = account.to_owned();
    Mock::start(Transport::Plain, move |r| {
        if r.header("metadata-flavor") != Some("Google")
            || r.uri.path() != "/computeMetadata/v1/instance/service-accounts/default/token"
        {
            return Reply::json(403, r#"{"error":"missing Metadata-Flavor: Google"}"#);
        }
                let n = tokens.requests.fetch_add(1, Ordering::Relaxed);
        let token = format!("ya29.metadata-{n}");
        let expires_in = tokens.expires_in.load(Ordering::Relaxed);
        tokens.issued.lock().unwrap().insert(
            token.clone(),
            Issued {
                iss: account.clone(),
                expires: Instant::now() + Duration::from_secs(expires_in),
            },
        );
        Reply::json(200, serde_json::json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}).to_string())
    })
    .await
}

// --- Keyless: Workload Identity Federation and authorized_user -------------

pub const WIF_AUDIENCE: &str = "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/eks-pool/providers/eks";
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// What google-auth asks STS for when it will impersonate.
pub const IAM_SCOPE: &str = "https://www.googleapis.com/auth/iam";
/// Who a federated token (not impersonated) belongs to.
pub const FEDERATED_PRINCIPAL: &str = "principal://iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/eks-pool/subject/system:serviceaccount:default:app";
/// The service account federation impersonates.
pub const IMPERSONATED: &str = "vertex-caller@proj.iam.gserviceaccount.com";
/// The path of the url credential source on the federation mock.
pub const SUBJECT_PATH: &str = "/subject-token";
/// The header the url credential source must send.
pub const SUBJECT_HEADER: (&str, &str) = ("metadata-flavor", "sidekey-test");
/// The JSON field the url credential source answers the subject token in.
pub const SUBJECT_FIELD: &str = "id_token";

/// Where an `external_account` file takes its subject token from.
#[derive(Clone, Debug)]
pub enum Subject {
    /// `credential_source.file`, text format: the file's current content.
    File(std::path::PathBuf),
    /// `credential_source.url` on the federation mock, json format
    /// (`subject_token_field_name` = [`SUBJECT_FIELD`]) with the
    /// [`SUBJECT_HEADER`] header: the current value.
    Url(Arc<Mutex<String>>),
}

impl Subject {
    /// The subject token STS must receive now.
    pub fn current(&self) -> String {
        match self {
            Self::File(path) => std::fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("mock: cannot read {}: {e}", path.display()))
                .trim()
                .to_owned(),
            Self::Url(value) => value.lock().unwrap().clone(),
        }
    }
}

/// One STS exchange or generateAccessToken call the federation mock received.
#[derive(Clone, Debug)]
pub struct FedCall {
    pub at: Instant,
    /// The decoded STS form, or the generateAccessToken JSON body.
    pub fields: HashMap<String, String>,
    pub body: serde_json::Value,
    pub request: Recorded,
}

impl FedCall {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Workload Identity Federation: STS (`/v1/token`), IAM Credentials
/// (`generateAccessToken`) and a url subject-token source, on one mock.
/// Tokens Vertex must accept go into `tokens` (the [`vertex_endpoint`]'s
/// state); with impersonation, STS tokens do not (they only open
/// generateAccessToken), so Vertex accepts only the impersonated ones.
pub struct Federation {
    pub tokens: Arc<Tokens>,
    pub subject: Subject,
    /// `Some(email)`: the file names `service_account_impersonation_url`.
    pub impersonate: Option<String>,
    sts_tokens: Mutex<HashMap<String, Instant>>,
    sts: Mutex<Vec<FedCall>>,
    iam: Mutex<Vec<FedCall>>,
    subject_fetches: Mutex<Vec<Recorded>>,
    counter: AtomicUsize,
}

impl Federation {
    /// `tokens.expires_in` is the lifetime of every token it issues;
    /// `tokens.outage` fails STS with 503, `tokens.delay_ms` delays it.
    pub fn new(tokens: Arc<Tokens>, subject: Subject, impersonate: Option<&str>) -> Arc<Self> {
        Arc::new(Self {
            tokens,
            subject,
            impersonate: impersonate.map(str::to_owned),
            sts_tokens: Mutex::default(),
            sts: Mutex::default(),
            iam: Mutex::default(),
            subject_fetches: Mutex::default(),
            counter: AtomicUsize::new(0),
        })
    }

    pub fn sts_calls(&self) -> Vec<FedCall> {
        self.sts.lock().unwrap().clone()
    }

    pub fn iam_calls(&self) -> Vec<FedCall> {
        self.iam.lock().unwrap().clone()
    }

    /// The STS tokens issued while impersonating (Vertex refuses them).
    pub fn sts_tokens(&self) -> Vec<String> {
        let mut tokens: Vec<String> = self.sts_tokens.lock().unwrap().keys().cloned().collect();
        tokens.sort();
        tokens
    }

    pub fn subject_fetches(&self) -> Vec<Recorded> {
        self.subject_fetches.lock().unwrap().clone()
    }

    pub fn problems(&self) -> Vec<String> {
        self.tokens.problems.lock().unwrap().clone()
    }

    pub fn assert_no_problems(&self) {
        let p = self.problems();
        assert!(p.is_empty(), "the federation mock saw: {p:#?}");
    }

    fn problem(&self, p: String) -> String {
        self.tokens.problems.lock().unwrap().push(p.clone());
        p
    }

    /// The `external_account` JSON for a federation mock at `base`.
    pub fn json(&self, base: &str) -> String {
        let credential_source = match &self.subject {
            Subject::File(path) => serde_json::json!({
                "file": path.display().to_string(),
                "format": {"type": "text"},
            }),
            Subject::Url(_) => serde_json::json!({
                "url": format!("{base}{SUBJECT_PATH}"),
                "headers": {"Metadata-Flavor": SUBJECT_HEADER.1},
                "format": {"type": "json", "subject_token_field_name": SUBJECT_FIELD},
            }),
        };
        let mut v = serde_json::json!({
            "universe_domain": "googleapis.com",
            "type": "external_account",
            "audience": WIF_AUDIENCE,
            "subject_token_type": JWT_TOKEN_TYPE,
            "token_url": format!("{base}/v1/token"),
            "credential_source": credential_source,
        });
        if let Some(email) = &self.impersonate {
            v["service_account_impersonation_url"] =
                format!("{base}/v1/projects/-/serviceAccounts/{email}:generateAccessToken").into();
        }
        let mut text = serde_json::to_string_pretty(&v).unwrap();
        text.push('\n');
        text
    }

    fn next(&self) -> usize {
        self.counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn answer(&self, r: &Recorded) -> Reply {
        let path = r.uri.path();
        if path == SUBJECT_PATH {
            return self.subject_source(r);
        }
        if path == "/v1/token" {
            let reply = self.exchange(r);
            let delay = self.tokens.delay_ms.load(Ordering::Relaxed);
            return if delay == 0 {
                reply
            } else {
                Reply::After(Duration::from_millis(delay), Box::new(reply))
            };
        }
        if path.starts_with("/v1/projects/-/serviceAccounts/")
            && path.ends_with(":generateAccessToken")
        {
            return self.generate(r);
        }
        let p = self.problem(format!(
            "federation: unexpected {} {}",
            r.method,
            r.path_and_query()
        ));
        Reply::json(
            404,
            serde_json::json!({"error": {"code": 404, "message": p}}).to_string(),
        )
    }

    fn subject_source(&self, r: &Recorded) -> Reply {
        self.subject_fetches.lock().unwrap().push(r.clone());
        let Subject::Url(value) = &self.subject else {
            let p = self.problem("the url source was asked, but the file names a file".into());
            return Reply::json(404, serde_json::json!({"error": p}).to_string());
        };
        if r.method != http::Method::GET || r.header(SUBJECT_HEADER.0) != Some(SUBJECT_HEADER.1) {
            let p = self.problem(format!(
                "subject token source: {} with {}: {:?}",
                r.method,
                SUBJECT_HEADER.0,
                r.header(SUBJECT_HEADER.0)
            ));
            return Reply::json(403, serde_json::json!({"error": p}).to_string());
        }
        let token = value.lock().unwrap().clone();
        Reply::json(
            200,
            serde_json::json!({SUBJECT_FIELD: token, "token_type": "Bearer", "expires_in": 3600})
                .to_string(),
        )
    }

    /// STS token exchange (RFC 8693 as Google's STS takes it).
    fn exchange(&self, r: &Recorded) -> Reply {
        self.tokens.requests.fetch_add(1, Ordering::Relaxed);
        let f = super::aws::form(&r.body);
        self.sts.lock().unwrap().push(FedCall {
            at: Instant::now(),
            fields: f.clone(),
            body: serde_json::Value::Null,
            request: r.clone(),
        });
        let refuse = |this: &Self, p: String| {
            let p = this.problem(format!("STS: {p}"));
            Reply::json(
                400,
                serde_json::json!({"error": "invalid_request", "error_description": p}).to_string(),
            )
        };
        if r.method != http::Method::POST {
            return refuse(self, format!("method {}", r.method));
        }
        if !r
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
        {
            return refuse(self, format!("content-type {:?}", r.header("content-type")));
        }
        if r.header("authorization").is_some() {
            return refuse(
                self,
                "an Authorization header (no client authentication is configured)".into(),
            );
        }
        let required = [
            "grant_type",
            "audience",
            "scope",
            "requested_token_type",
            "subject_token",
            "subject_token_type",
        ];
        let mut names: Vec<&String> = f.keys().collect();
        names.sort();
        if names.len() != required.len() || !names.iter().all(|n| required.contains(&n.as_str())) {
            return refuse(
                self,
                format!("fields {names:?}, expected exactly {required:?}"),
            );
        }
        for (name, want) in [
            ("grant_type", TOKEN_EXCHANGE),
            ("audience", WIF_AUDIENCE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("subject_token_type", JWT_TOKEN_TYPE),
        ] {
            if f[name] != want {
                return refuse(self, format!("{name} = {:?}, expected {want:?}", f[name]));
            }
        }
        // google-auth asks for the iam scope when it will impersonate, the
        // target scope otherwise; Google's STS accepts either.
        if f["scope"] != SCOPE && f["scope"] != IAM_SCOPE {
            return refuse(self, format!("scope {:?}", f["scope"]));
        }
        let current = self.subject.current();
        if f["subject_token"] != current {
            return refuse(
                self,
                format!(
                    "subject_token {:?} is not the current subject token {current:?}",
                    f["subject_token"]
                ),
            );
        }
        if self.tokens.outage.load(Ordering::Relaxed) {
            return Reply::json(503, r#"{"error":"temporarily_unavailable"}"#);
        }
        let n = self.next();
        let token = format!("ya29.sts-federated-{n}");
        let expires_in = self.tokens.expires_in.load(Ordering::Relaxed);
        let expires = Instant::now() + Duration::from_secs(expires_in);
        if self.impersonate.is_some() {
            self.sts_tokens
                .lock()
                .unwrap()
                .insert(token.clone(), expires);
        } else {
            self.tokens.issued.lock().unwrap().insert(
                token.clone(),
                Issued {
                    iss: FEDERATED_PRINCIPAL.to_owned(),
                    expires,
                },
            );
        }
        Reply::json(
            200,
            serde_json::json!({
                "access_token": token,
                "issued_token_type": ACCESS_TOKEN_TYPE,
                "token_type": "Bearer",
                "expires_in": expires_in,
            })
            .to_string(),
        )
    }

    /// IAM Credentials `generateAccessToken`, authorized by a live STS token.
    fn generate(&self, r: &Recorded) -> Reply {
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        self.iam.lock().unwrap().push(FedCall {
            at: Instant::now(),
            fields: HashMap::new(),
            body: body.clone(),
            request: r.clone(),
        });
        let refuse = |this: &Self, status: u16, p: String| {
            let p = this.problem(format!("generateAccessToken: {p}"));
            Reply::json(
                status,
                serde_json::json!({"error": {"code": status, "message": p, "status": "PERMISSION_DENIED"}})
                    .to_string(),
            )
        };
        let Some(email) = &self.impersonate else {
            return refuse(self, 404, "called without impersonation configured".into());
        };
        let path = r.uri.path();
        if path != format!("/v1/projects/-/serviceAccounts/{email}:generateAccessToken") {
            return refuse(self, 404, format!("path {path}"));
        }
        if r.method != http::Method::POST {
            return refuse(self, 405, format!("method {}", r.method));
        }
        if !r
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
        {
            return refuse(
                self,
                400,
                format!("content-type {:?}", r.header("content-type")),
            );
        }
        let sts_token = r
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or_default();
        let live = self
            .sts_tokens
            .lock()
            .unwrap()
            .get(sts_token)
            .is_some_and(|e| Instant::now() < *e);
        if !live {
            return refuse(
                self,
                401,
                format!(
                    "Authorization {:?} is no live STS token",
                    r.header("authorization")
                ),
            );
        }
        // google-auth sends {"delegates": null, "scope": [...], "lifetime": "3600s"}.
        let Some(obj) = body.as_object() else {
            return refuse(self, 400, format!("body is not a JSON object: {body}"));
        };
        for key in obj.keys() {
            if !["scope", "lifetime", "delegates"].contains(&key.as_str()) {
                return refuse(self, 400, format!("unexpected field {key} in {body}"));
            }
        }
        if body["scope"] != serde_json::json!([SCOPE]) {
            return refuse(self, 400, format!("scope {}", body["scope"]));
        }
        let lifetime_ok = match &body["lifetime"] {
            serde_json::Value::Null => true,
            serde_json::Value::String(s) => s
                .strip_suffix('s')
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| (1..=43_200).contains(&n)),
            _ => false,
        };
        if !lifetime_ok {
            return refuse(self, 400, format!("lifetime {}", body["lifetime"]));
        }
        if !(body["delegates"].is_null() || body["delegates"] == serde_json::json!([])) {
            return refuse(self, 400, format!("delegates {}", body["delegates"]));
        }
        let n = self.next();
        let token = format!("ya29.impersonated-{n}");
        let expires_in = self.tokens.expires_in.load(Ordering::Relaxed);
        self.tokens.issued.lock().unwrap().insert(
            token.clone(),
            Issued {
                iss: email.clone(),
                expires: Instant::now() + Duration::from_secs(expires_in),
            },
        );
        let expire_time = super::aws::rfc3339(SystemTime::now() + Duration::from_secs(expires_in));
        Reply::json(
            200,
            serde_json::json!({"accessToken": token, "expireTime": expire_time}).to_string(),
        )
    }
}

/// Starts the federation mock (STS at `/v1/token`, generateAccessToken, the
/// url subject source); write [`Federation::json`] with its `url`.
pub async fn federation_endpoint(transport: Transport<'_>, fed: Arc<Federation>) -> Mock {
    Mock::start(transport, move |r| fed.answer(r)).await
}

/// Who an `authorized_user` token belongs to.
pub const USER: &str = "developer@example.com";

/// An `authorized_user` file's secrets and the token endpoint that honours them.
pub struct AuthorizedUser {
    pub tokens: Arc<Tokens>,
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    grants: Mutex<Vec<FedCall>>,
    counter: AtomicUsize,
}

impl AuthorizedUser {
    pub fn new(tokens: Arc<Tokens>) -> Arc<Self> {
        Arc::new(Self {
            tokens,
            client_id: "764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur.apps.googleusercontent.com"
                .to_owned(),
            client_secret: "d-FL95Q19q7MQmFpd7hHD0Ty".to_owned(),
            refresh_token: "1//0gTestRefreshTokenSecretValue-abcdefghijklmnop".to_owned(),
            grants: Mutex::default(),
            counter: AtomicUsize::new(0),
        })
    }

    /// The `authorized_user` JSON (as gcloud writes it) with `token_uri`.
    pub fn json(&self, token_uri: &str) -> String {
        let v = serde_json::json!({
            "account": "",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "quota_project_id": "proj",
            "refresh_token": self.refresh_token,
            "type": "authorized_user",
            "universe_domain": "googleapis.com",
            "token_uri": token_uri,
        });
        let mut text = serde_json::to_string_pretty(&v).unwrap();
        text.push('\n');
        text
    }

    pub fn grants(&self) -> Vec<FedCall> {
        self.grants.lock().unwrap().clone()
    }

    pub fn assert_no_problems(&self) {
        let p = self.tokens.problems.lock().unwrap().clone();
        assert!(
            p.is_empty(),
            "the authorized_user token endpoint saw: {p:#?}"
        );
    }

    fn answer(&self, r: &Recorded) -> Reply {
        self.tokens.requests.fetch_add(1, Ordering::Relaxed);
        let f = super::aws::form(&r.body);
        self.grants.lock().unwrap().push(FedCall {
            at: Instant::now(),
            fields: f.clone(),
            body: serde_json::Value::Null,
            request: r.clone(),
        });
        let refuse = |p: String| {
            self.tokens
                .problems
                .lock()
                .unwrap()
                .push(format!("refresh grant: {p}"));
            Reply::json(
                400,
                serde_json::json!({"error": "invalid_grant", "error_description": p}).to_string(),
            )
        };
        if r.method != http::Method::POST || r.uri.path() != "/token" {
            return refuse(format!("{} {}", r.method, r.path_and_query()));
        }
        if !r
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
        {
            return refuse(format!("content-type {:?}", r.header("content-type")));
        }
        // google-auth adds `scope` when the credentials are scoped.
        let mut names: Vec<&String> = f.keys().collect();
        names.sort();
        let required = ["grant_type", "client_id", "client_secret", "refresh_token"];
        if !required.iter().all(|n| f.contains_key(*n))
            || !names
                .iter()
                .all(|n| required.contains(&n.as_str()) || n.as_str() == "scope")
        {
            return refuse(format!("fields {names:?}, expected {required:?} (+ scope)"));
        }
        for (name, want) in [
            ("grant_type", "refresh_token"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.as_str()),
            ("refresh_token", self.refresh_token.as_str()),
        ] {
            if f[name] != want {
                return refuse(format!("{name} = {:?}", f[name]));
            }
        }
        if let Some(scope) = f.get("scope")
            && scope != SCOPE
        {
            return refuse(format!("scope {scope:?}"));
        }
        if self.tokens.outage.load(Ordering::Relaxed) {
            return Reply::json(503, r#"{"error":"temporarily_unavailable"}"#);
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let token = format!("ya29.user-{n}");
        let expires_in = self.tokens.expires_in.load(Ordering::Relaxed);
        self.tokens.issued.lock().unwrap().insert(
            token.clone(),
            Issued {
                iss: USER.to_owned(),
                expires: Instant::now() + Duration::from_secs(expires_in),
            },
        );
        let reply = Reply::json(
            200,
            serde_json::json!({
                "access_token": token,
                "expires_in": expires_in,
                "scope": SCOPE,
                "token_type": "Bearer",
            })
            .to_string(),
        );
        match self.tokens.delay_ms.load(Ordering::Relaxed) {
            0 => reply,
            ms => Reply::After(Duration::from_millis(ms), Box::new(reply)),
        }
    }
}

/// Starts the refresh-token endpoint; returns it and its token URI (`/token`).
pub async fn authorized_user_endpoint(
    transport: Transport<'_>,
    user: Arc<AuthorizedUser>,
) -> (Mock, String) {
    let mock = Mock::start(transport, move |r| user.answer(r)).await;
    let uri = format!("{}/token", mock.url);
    (mock, uri)
}
