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
