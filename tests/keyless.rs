//! Keyless identities: sidekey mints the provider token from the pod's own
//! identity, so no long-lived provider secret exists anywhere.
//!
//! The oracles first: azure-identity (WorkloadIdentityCredential,
//! ClientSecretCredential, ManagedIdentityCredential) and google-auth
//! (`external_account` with a file source, a url source with json format and
//! impersonation; `authorized_user`) get tokens straight from the mocks, and
//! openai's `AzureOpenAI` and google-genai use them against the mock
//! providers: the mocks accept exactly what the official libraries send and
//! answer what they parse. Every grant's form is checked field by field by
//! the mocks (`tests/common/entra.rs`, the federation mocks at the end of
//! `tests/common/google.rs`), and the mock providers accept only live tokens
//! their token endpoints issued.
//!
//! Then sidekey, with the same mocks judging it:
//! - Azure: the official `openai.AzureOpenAI` client with a dummy key (normal
//!   and streamed) through sidekey for workload identity, managed identity
//!   and a client secret; the token goes as `Authorization: Bearer` and no
//!   `api-key` header reaches Azure. Workload identity sends the federated
//!   token file's current content, and the kubelet-rotated one at the next
//!   refresh (before expiry); 100 concurrent first requests share one token
//!   request; a revoked token forces one refresh and one retry; managed
//!   identity asks IMDS with `Metadata: true`, the resource without
//!   `/.default`, the `client_id` when `AZURE_CLIENT_ID` is set, and copes
//!   with its string `expires_in`; a rotated client-secret file is used at
//!   the next token request; one deployment with credentials beside one with
//!   a key.
//! - Vertex: google-genai in Vertex mode through sidekey for
//!   `external_account` (file source, with and without impersonation; only
//!   the impersonated token opens Vertex when impersonating) and
//!   `authorized_user`; a url source with json format; a rotated subject-token
//!   file exchanged at the next refresh; a revoked user token refreshed once.
//! - Metrics name each token source; `sidekey check` names each identity kind
//!   offline and prints no secret, assertion, refresh token or access token.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::aws::{metric, metrics_text};
use common::client::{self, Resp};
use common::entra::{
    self, ASSERTION_TYPE, CLIENT_ID, CLIENT_SECRET, Entra, Grant, MANAGED_IDENTITY, RESOURCE,
    SCOPE, TENANT, WORKLOAD_IDENTITY,
};
use common::google::{
    self, ACCESS_TOKEN_TYPE, AuthorizedUser, FEDERATED_PRINCIPAL, Federation, IAM_SCOPE,
    IMPERSONATED, JWT_TOKEN_TYPE, SUBJECT_HEADER, Subject, TOKEN_EXCHANGE, Tokens, USER,
    WIF_AUDIENCE,
};
use common::kubelet::SecretVolume;
use common::mock::{Mock, Recorded, Reply, Transport};
use common::sidekey::{Running, start_in};
use common::tls::TestPki;
use sidekey::MapEnv;

/// Every bounded wait for a refresh.
const WAIT: Duration = Duration::from_secs(16);
const API_VERSION: &str = "2024-10-21";
const GENERATE: &str = "/vertex/v1/projects/proj/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent";
/// A client secret of the shape Entra issues.
const SECRET_1: &str = "Qx8Q~first.secret-value_AbCdEfGhIjKlMnOpQrStUv";
const SECRET_2: &str = "Rz9Q~second.secret-value_ZyXwVuTsRqPoNmLkJiHgFe";

// --- Python -----------------------------------------------------------------

/// Runs `python tests/keyless/clients.py args...` with a clean environment
/// (only PATH and `env`); panics unless it exits 0; returns its JSON lines.
async fn python(args: &[&str], env: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keyless/clients.py");
    let mut cmd = tokio::process::Command::new(common::python());
    cmd.arg(script)
        .args(args)
        .env_clear()
        .envs(env.iter().copied());
    #[allow(
        clippy::disallowed_methods,
        reason = "the child needs the machine's PATH (for nothing else)"
    )]
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    common::run_json(cmd, &format!("clients.py {args:?}")).await
}

/// A normal and a streamed call, the stream in more than one piece.
fn assert_two_calls(calls: &[serde_json::Value], what: &str) {
    assert_eq!(calls.len(), 2, "{what}: {calls:?}");
    assert!(
        calls[1]["chunks"].as_u64().unwrap() >= 2,
        "{what}: the stream came as one piece: {calls:?}"
    );
}

fn env(vars: &[(&str, &str)]) -> MapEnv {
    MapEnv::new(vars.iter().copied())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A projected service-account token, as the kubelet writes it (no newline).
fn projected_token(audience: &str, n: u32) -> String {
    format!("eyJhbGciOiJSUzI1NiIsImtpZCI6Imt1YmUifQ.{audience}-projected-token-{n}.c2lnbmF0dXJl")
}

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The number in a token the Entra mock issued (`...entra-KIND-N.sig`).
fn token_number(authorization: Option<&str>) -> Option<usize> {
    let middle = authorization?.split('.').nth(1)?;
    middle.rsplit('-').next()?.parse().ok()
}

// --- Azure: setup -------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AzureKind {
    Workload,
    Secret,
    /// Managed identity, with `AZURE_CLIENT_ID` set to this when `Some`.
    Managed(Option<&'static str>),
}

impl AzureKind {
    fn source(self) -> &'static str {
        match self {
            Self::Workload => WORKLOAD_IDENTITY,
            Self::Secret => CLIENT_SECRET,
            Self::Managed(_) => MANAGED_IDENTITY,
        }
    }
}

const USER_ASSIGNED: &str = "3b5c7f1e-2d4a-4e6b-8c9d-0a1b2c3d4e5f";

struct Azure {
    _dir: tempfile::TempDir,
    entra: Arc<Entra>,
    /// The Entra token endpoint, or IMDS.
    token_mock: Mock,
    openai: Mock,
    /// Holds `azure-identity-token` (workload identity) or `client-secret`.
    volume: SecretVolume,
    sidekey: Arc<Running>,
}

/// The federated token file's content at generation `n`.
fn federated_token(n: u32) -> String {
    projected_token("api://AzureADTokenExchange", n)
}

/// Mocks for `kind` (Entra over TLS for workload identity, as azure-identity
/// insists on https; over plain HTTP for the client secret, as in a test
/// cluster; IMDS is plain HTTP), Azure OpenAI over TLS, and sidekey with an
/// azure route whose `credentials` name `kind`.
async fn azure(kind: AzureKind, expires_in: u64, delay_ms: u64) -> Azure {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let entra = Entra::new(expires_in);
    entra.delay_ms.store(delay_ms, Ordering::Relaxed);
    let openai = entra::azure_openai(Transport::Tls(&pki), entra.clone()).await;
    let volume = SecretVolume::create(
        &dir.path().join("azure"),
        &[
            ("azure-identity-token", &federated_token(1)),
            ("client-secret", &format!("{SECRET_1}\n")),
        ],
    );
    entra.set_assertion_file(volume.path("azure-identity-token"));
    entra.accept_secret(SECRET_1);
    let (token_mock, credentials, vars) = match kind {
        AzureKind::Workload => {
            let mock = entra::entra_endpoint(Transport::Tls(&pki), entra.clone()).await;
            let vars = vec![
                ("AZURE_CLIENT_ID", CLIENT_ID.to_owned()),
                ("AZURE_TENANT_ID", TENANT.to_owned()),
                (
                    "AZURE_FEDERATED_TOKEN_FILE",
                    volume.path("azure-identity-token").display().to_string(),
                ),
                ("AZURE_AUTHORITY_HOST", entra::authority(&mock)),
            ];
            (mock, "\"workload-identity\"".to_owned(), vars)
        }
        AzureKind::Secret => {
            let mock = entra::entra_endpoint(Transport::Plain, entra.clone()).await;
            let credentials = format!(
                "{{ tenant_id = \"{TENANT}\", client_id = \"{CLIENT_ID}\", client_secret = \"{}\" }}",
                volume.location("client-secret")
            );
            let vars = vec![("AZURE_AUTHORITY_HOST", entra::authority(&mock))];
            (mock, credentials, vars)
        }
        AzureKind::Managed(client_id) => {
            entra.set_imds_client_id(client_id);
            let mock = entra::imds_endpoint(entra.clone()).await;
            let mut vars = vec![("AZURE_POD_IDENTITY_AUTHORITY_HOST", mock.url.clone())];
            if let Some(id) = client_id {
                vars.push(("AZURE_CLIENT_ID", id.to_owned()));
            }
            (mock, "\"managed-identity\"".to_owned(), vars)
        }
    };
    let config = format!(
        "ca_file = \"{ca}\"\n[routes.azure]\ntype = \"azure\"\nupstream = \"{url}\"\ncredentials = {credentials}\n",
        ca = pki.ca_file.display(),
        url = openai.url,
    );

    let sidekey = start_in(dir.path(), &config, MapEnv::new(vars)).await;
    Azure {
        _dir: dir,
        entra,
        token_mock,
        openai,
        volume,
        sidekey: Arc::new(sidekey),
    }
}

/// A chat completion through sidekey's azure route, carrying the dummy
/// `api-key` an `AzureOpenAI` client sends.
async fn chat(sidekey: &Running, deployment: &str) -> Resp {
    client::post_json(
        &sidekey.url(&format!(
            "/azure/openai/deployments/{deployment}/chat/completions?api-version={API_VERSION}"
        )),
        &[("api-key", "sidekey-dummy")],
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await
}

fn assert_ok(resp: &Resp, entra: &Entra) {
    assert_eq!(
        resp.status,
        200,
        "{}\nEntra/IMDS problems: {:#?}",
        resp.text(),
        entra.problems()
    );
}

/// What reached Azure OpenAI: a live bearer token of `kind`, no `api-key`,
/// nothing of the client's dummy credential.
fn assert_bearer_only(requests: &[Recorded], entra: &Entra, kind: &str) {
    assert!(!requests.is_empty(), "nothing reached Azure OpenAI");
    for r in requests {
        assert_eq!(
            entra.check(r.header("authorization")),
            Some(kind),
            "Azure OpenAI got Authorization {:?}",
            r.header("authorization")
        );
        assert_eq!(r.headers.get_all("authorization").iter().count(), 1);
        assert!(r.header("api-key").is_none(), "an api-key header arrived");
        let all = format!("{:?} {}", r.headers, r.path_and_query());
        assert!(
            !all.contains("sidekey-dummy"),
            "the dummy key reached Azure: {all}"
        );
    }
}

/// `sidekey_token_source_info{route, source}` is 1.
async fn assert_token_source(sidekey: &Running, route: &str, source: &str) {
    assert_eq!(
        metric(
            sidekey,
            "sidekey_token_source_info",
            &[("route", route), ("source", source)]
        )
        .await,
        Some(1.0),
        "{route} {source}:\n{}",
        metrics_text(sidekey).await
    );
}

/// The workload-identity grant, field by field.
fn assert_workload_grant(g: &Grant, assertion: &str) {
    assert_eq!(g.kind, WORKLOAD_IDENTITY);
    assert_eq!(g.request.method, http::Method::POST);
    assert_eq!(g.request.uri.path(), format!("/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(
        g.fields,
        map(&[
            ("client_id", CLIENT_ID),
            ("scope", SCOPE),
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
        ]),
    );
}

/// The client-secret grant, field by field (MSAL adds `client_info=1`).
fn assert_secret_grant(g: &Grant, secret: &str) {
    assert_eq!(g.kind, CLIENT_SECRET);
    assert_eq!(g.request.method, http::Method::POST);
    assert_eq!(g.request.uri.path(), format!("/{TENANT}/oauth2/v2.0/token"));
    let mut fields = g.fields.clone();
    if fields.get("client_info").is_some_and(|v| v == "1") {
        fields.remove("client_info");
    }
    assert_eq!(
        fields,
        map(&[
            ("client_id", CLIENT_ID),
            ("client_secret", secret),
            ("scope", SCOPE),
            ("grant_type", "client_credentials"),
        ]),
    );
}

/// The IMDS request: GET, `Metadata: true`, exactly these query parameters.
fn assert_imds_grant(g: &Grant, client_id: Option<&str>) {
    assert_eq!(g.kind, MANAGED_IDENTITY);
    assert_eq!(g.request.method, http::Method::GET);
    assert_eq!(g.request.uri.path(), "/metadata/identity/oauth2/token");
    assert_eq!(g.request.header("metadata"), Some("true"));
    let mut want = map(&[("api-version", "2018-02-01"), ("resource", RESOURCE)]);
    if let Some(id) = client_id {
        want.insert("client_id".into(), id.into());
    }
    assert_eq!(g.fields, want, "{}", g.request.path_and_query());
}

// --- Azure: the oracle --------------------------------------------------------

#[tokio::test]
async fn azure_identity_gets_tokens_from_the_mocks_and_azure_openai_accepts_them() {
    // azure-identity 1.27 (MSAL 1.39 underneath) against the Entra and IMDS
    // mocks, then openai's AzureOpenAI with those tokens against the mock
    // Azure OpenAI (plain HTTP here: the SDK's own trust store is not ours).
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let ca = pki.ca_file.display().to_string();
    let entra = Entra::new(3600);
    let openai = entra::azure_openai(Transport::Plain, entra.clone()).await;
    let tls_entra = entra::entra_endpoint(Transport::Tls(&pki), entra.clone()).await;
    let imds = entra::imds_endpoint(entra.clone()).await;
    let volume = SecretVolume::create(
        &dir.path().join("azure"),
        &[
            ("azure-identity-token", &federated_token(1)),
            ("client-secret", &format!("{SECRET_1}\n")),
        ],
    );
    entra.set_assertion_file(volume.path("azure-identity-token"));
    entra.accept_secret(SECRET_1);
    let token_file = volume.path("azure-identity-token").display().to_string();
    let secret_file = volume.path("client-secret").display().to_string();
    let authority = entra::authority(&tls_entra);
    let common = [
        ("AZURE_OPENAI_URL", openai.url.as_str()),
        ("REQUESTS_CA_BUNDLE", ca.as_str()),
        ("SSL_CERT_FILE", ca.as_str()),
    ];

    // Workload identity, from the webhook's environment.
    let mut vars = common.to_vec();
    vars.extend([
        ("AZURE_AUTHORITY_HOST", authority.as_str()),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_FEDERATED_TOKEN_FILE", token_file.as_str()),
    ]);
    let calls = python(&["azure-identity", "workload"], &vars).await;
    assert_two_calls(&calls, "workload");
    assert_eq!(calls[0]["fingerprint"], WORKLOAD_IDENTITY);
    entra.assert_no_problems();
    let grants = entra.grants();
    assert_eq!(grants.len(), 1, "{grants:#?}");
    assert_workload_grant(&grants[0], &federated_token(1));

    // A client secret (MSAL reads the OpenID configuration first).
    let mut vars = common.to_vec();
    vars.extend([
        ("AZURE_AUTHORITY_HOST", authority.as_str()),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_CLIENT_SECRET_FILE", secret_file.as_str()),
    ]);
    let calls = python(&["azure-identity", "secret"], &vars).await;
    assert_two_calls(&calls, "secret");
    assert_eq!(calls[0]["fingerprint"], CLIENT_SECRET);
    entra.assert_no_problems();
    let grants = entra.grants();
    assert_eq!(grants.len(), 2, "{grants:#?}");
    assert_secret_grant(&grants[1], SECRET_1);

    // Managed identity, user-assigned then system-assigned: IMDS answers
    // string expires_in/expires_on, which azure-identity parses.
    for client_id in [Some(USER_ASSIGNED), None] {
        entra.set_imds_client_id(client_id);
        let mut vars = common.to_vec();
        vars.push(("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url.as_str()));
        if let Some(id) = client_id {
            vars.push(("AZURE_CLIENT_ID", id));
        }
        let calls = python(&["azure-identity", "managed"], &vars).await;
        assert_two_calls(&calls, "managed");
        assert_eq!(calls[0]["fingerprint"], MANAGED_IDENTITY);
        let expires_on = calls[0]["expires_on"].as_f64().unwrap();
        assert!(
            (expires_on - (unix_now() + 3600.0)).abs() < 60.0,
            "azure-identity read expires_on {expires_on}"
        );
        entra.assert_no_problems();
        assert_imds_grant(&entra.grants().pop().unwrap(), client_id);
    }
    assert_bearer_only(&openai.requests()[..2], &entra, WORKLOAD_IDENTITY);
    assert_bearer_only(&openai.requests()[2..4], &entra, CLIENT_SECRET);
    assert_bearer_only(&openai.requests()[4..], &entra, MANAGED_IDENTITY);
}

#[tokio::test]
async fn the_azure_mocks_refuse_what_entra_and_imds_would_refuse() {
    // The mocks bite: a stale assertion, a wrong secret, a missing Metadata
    // header, a resource with /.default, an expired or unknown token.
    let entra = Entra::new(1);
    let token_mock = entra::entra_endpoint(Transport::Plain, entra.clone()).await;
    let imds = entra::imds_endpoint(entra.clone()).await;
    let openai = entra::azure_openai(Transport::Plain, entra.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, federated_token(2)).unwrap();
    entra.set_assertion_file(file);
    entra.accept_secret(SECRET_1);
    let token_url = format!("{}/{TENANT}/oauth2/v2.0/token", token_mock.url);
    let post = |body: String| {
        let url = token_url.clone();
        async move {
            client::send(client::request(
                http::Method::POST,
                &url,
                &[("content-type", "application/x-www-form-urlencoded")],
                body,
            ))
            .await
        }
    };
    let enc = |s: &str| s.replace(':', "%3A").replace('/', "%2F");
    let stale = format!(
        "client_id={CLIENT_ID}&scope={}&grant_type=client_credentials&client_assertion_type={}&client_assertion={}",
        enc(SCOPE),
        enc(ASSERTION_TYPE),
        federated_token(1)
    );
    assert_eq!(post(stale).await.status, 401);
    let wrong_secret = format!(
        "client_id={CLIENT_ID}&client_secret=nope&scope={}&grant_type=client_credentials",
        enc(SCOPE)
    );
    assert_eq!(post(wrong_secret).await.status, 401);
    let extra_field = format!(
        "client_id={CLIENT_ID}&client_secret={SECRET_1}&scope={}&grant_type=client_credentials&resource=x",
        enc(SCOPE)
    );
    assert_eq!(post(extra_field).await.status, 400);
    let good = format!(
        "client_id={CLIENT_ID}&client_secret={}&scope={}&grant_type=client_credentials",
        enc(SECRET_1),
        enc(SCOPE)
    );
    let resp = post(good).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let token = resp.json()["access_token"].as_str().unwrap().to_owned();
    let call = |auth: String| {
        let url = format!(
            "{}/openai/deployments/gpt-4o/chat/completions?api-version={API_VERSION}",
            openai.url
        );
        async move {
            client::post_json(
                &url,
                &[("authorization", &auth)],
                r#"{"messages":[{"role":"user","content":"hi"}]}"#,
            )
            .await
        }
    };
    assert_eq!(call(format!("Bearer {token}")).await.status, 200);
    assert_eq!(call("Bearer forged".into()).await.status, 401);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call(format!("Bearer {token}")).await.status, 401, "expired");

    let imds_url = |resource: &str| {
        format!(
            "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}",
            imds.url
        )
    };
    let no_header = client::get(&imds_url(RESOURCE)).await;
    assert_eq!(no_header.status, 400);
    let with_default = client::send(client::request(
        http::Method::GET,
        &imds_url(SCOPE),
        &[("metadata", "true")],
        "",
    ))
    .await;
    assert_eq!(with_default.status, 400);
    let good = client::send(client::request(
        http::Method::GET,
        &imds_url(RESOURCE),
        &[("metadata", "true")],
        "",
    ))
    .await;
    assert_eq!(good.status, 200, "{}", good.text());
    assert_eq!(good.json()["expires_in"], "1", "a string, as IMDS sends it");
    assert_eq!(entra.problems().len(), 5, "{:#?}", entra.problems());
}

// --- Azure: through sidekey ---------------------------------------------------

#[tokio::test]
async fn azure_openai_sdk_through_sidekey_for_each_azure_identity() {
    for kind in [
        AzureKind::Workload,
        AzureKind::Secret,
        AzureKind::Managed(Some(USER_ASSIGNED)),
    ] {
        let s = azure(kind, 3600, 0).await;
        let calls = python(&["azure-sdk"], &[("SIDEKEY_URL", &s.sidekey.url(""))]).await;
        assert_two_calls(&calls, kind.source());
        assert_eq!(calls[0]["fingerprint"], kind.source(), "{kind:?}");
        let seen = s.openai.requests();
        assert_eq!(seen.len(), 2, "{kind:?}: the SDK made {} calls", seen.len());
        for r in &seen {
            assert!(
                r.uri
                    .path()
                    .starts_with("/openai/deployments/gpt-4o/chat/completions"),
                "{}",
                r.path_and_query()
            );
        }
        assert_bearer_only(&seen, &s.entra, kind.source());
        s.entra.assert_no_problems();
        let grants = s.entra.grants();
        assert_eq!(grants.len(), 1, "{kind:?}: {grants:#?}");
        match kind {
            AzureKind::Workload => assert_workload_grant(&grants[0], &federated_token(1)),
            AzureKind::Secret => assert_secret_grant(&grants[0], SECRET_1),
            AzureKind::Managed(id) => assert_imds_grant(&grants[0], id),
        }
        assert_token_source(&s.sidekey, "azure", kind.source()).await;
        drop(s.token_mock);
    }
}

#[tokio::test]
async fn workload_identity_sends_the_rotated_token_file_at_the_refresh_before_expiry() {
    // 20-second tokens: refreshed within ~10 s, by which time the kubelet has
    // rotated the projected token; the new one is what Entra receives.
    let mut s = azure(AzureKind::Workload, 20, 0).await;
    assert_ok(&chat(&s.sidekey, "gpt-4o").await, &s.entra);
    let first = s.entra.grants()[0].clone();
    assert_workload_grant(&first, &federated_token(1));
    let first_token = s.openai.last().header("authorization").unwrap().to_owned();
    let first_expiry = s
        .entra
        .issued(first_token.strip_prefix("Bearer ").unwrap())
        .unwrap()
        .expires;

    let rotated = s
        .volume
        .update(&[("azure-identity-token", &federated_token(2))]);
    common::eventually("a token refresh", WAIT, || async {
        (s.entra.grant_count() >= 2).then_some(())
    })
    .await;
    let refresh = s.entra.grants()[1].clone();
    assert!(refresh.at > rotated);
    assert_workload_grant(&refresh, &federated_token(2));
    assert!(
        refresh.at < first_expiry,
        "refreshed after the first token expired"
    );
    s.entra.assert_no_problems();

    common::eventually("requests with the refreshed token", WAIT, || async {
        assert_ok(&chat(&s.sidekey, "gpt-4o").await, &s.entra);
        (token_number(s.openai.last().header("authorization")) >= Some(2)).then_some(())
    })
    .await;
    assert_bearer_only(&s.openai.requests(), &s.entra, WORKLOAD_IDENTITY);
    assert!(
        s.entra.grant_count() <= 4,
        "{} token requests: a refresh storm",
        s.entra.grant_count()
    );
    let last = s.openai.last().header("authorization").unwrap().to_owned();
    let expiry = metric(
        &s.sidekey,
        "sidekey_token_expiry_timestamp_seconds",
        &[("route", "azure")],
    )
    .await
    .unwrap_or_else(|| panic!("no expiry metric"));
    let issued = s
        .entra
        .issued(last.strip_prefix("Bearer ").unwrap())
        .unwrap()
        .expires_unix as f64;
    assert!(
        (expiry - issued).abs() <= 2.0,
        "expiry metric {expiry}, the token expires at {issued}"
    );
    let ok = metric(
        &s.sidekey,
        "sidekey_token_refreshes_total",
        &[("route", "azure"), ("result", "ok")],
    )
    .await;
    assert!(ok.is_some_and(|n| n >= 2.0), "{ok:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_concurrent_first_requests_share_one_entra_token_request() {
    // A slow token endpoint, so every request arrives before the first token.
    let s = azure(AzureKind::Workload, 3600, 500).await;
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let sidekey = s.sidekey.clone();
            tokio::spawn(async move { chat(&sidekey, "gpt-4o").await })
        })
        .collect();
    for t in tasks {
        assert_ok(&t.await.unwrap(), &s.entra);
    }
    assert_eq!(
        s.entra.grant_count(),
        1,
        "one token request for all of them"
    );
    s.entra.assert_no_problems();
    let seen = s.openai.requests();
    assert_eq!(seen.len(), 100);
    assert!(
        seen.iter()
            .all(|r| r.header("authorization") == seen[0].header("authorization"))
    );
    assert_bearer_only(&seen, &s.entra, WORKLOAD_IDENTITY);
}

#[tokio::test]
async fn a_revoked_azure_token_forces_one_refresh_and_one_retry() {
    let s = azure(AzureKind::Workload, 3600, 0).await;
    assert_ok(&chat(&s.sidekey, "gpt-4o").await, &s.entra);
    s.entra.revoke_all();
    let resp = chat(&s.sidekey, "gpt-4o").await;
    assert_ok(&resp, &s.entra);
    assert_eq!(s.entra.grant_count(), 2, "one forced refresh");
    let seen = s.openai.requests();
    assert_eq!(seen.len(), 3, "one retry");
    assert_ne!(
        seen[1].header("authorization"),
        seen[2].header("authorization")
    );
    assert_eq!(seen[1].body, seen[2].body, "the retry replays the body");
    assert_eq!(
        s.entra.check(seen[2].header("authorization")),
        Some(WORKLOAD_IDENTITY)
    );
    assert!(seen.iter().all(|r| r.header("api-key").is_none()));
    for g in s.entra.grants() {
        assert_workload_grant(&g, &federated_token(1));
    }
    s.entra.assert_no_problems();
}

#[tokio::test]
async fn managed_identity_asks_imds_with_the_metadata_header_resource_and_client_id() {
    // User-assigned (AZURE_CLIENT_ID set), 20-second tokens whose expires_in
    // comes as a string: a second IMDS call comes before the first expires.
    let s = azure(AzureKind::Managed(Some(USER_ASSIGNED)), 20, 0).await;
    assert_ok(&chat(&s.sidekey, "gpt-4o").await, &s.entra);
    assert_bearer_only(&s.openai.requests(), &s.entra, MANAGED_IDENTITY);
    let first = s.entra.grants()[0].clone();
    assert_imds_grant(&first, Some(USER_ASSIGNED));
    common::eventually("an IMDS refresh", WAIT, || async {
        (s.entra.grant_count() >= 2).then_some(())
    })
    .await;
    let refresh = s.entra.grants()[1].clone();
    assert_imds_grant(&refresh, Some(USER_ASSIGNED));
    assert!(
        refresh.at < first.at + Duration::from_secs(20),
        "the string expires_in was not honoured: refreshed {:?} after the first",
        refresh.at - first.at
    );
    assert!(
        refresh.at > first.at + Duration::from_secs(2),
        "refreshed {:?} after the first: the lifetime was misread",
        refresh.at - first.at
    );
    s.entra.assert_no_problems();
    assert_eq!(
        metric(
            &s.sidekey,
            "sidekey_token_source_info",
            &[("route", "azure"), ("source", MANAGED_IDENTITY)]
        )
        .await,
        Some(1.0)
    );

    // System-assigned: no AZURE_CLIENT_ID, no client_id parameter.
    let s = azure(AzureKind::Managed(None), 3600, 0).await;
    assert_ok(&chat(&s.sidekey, "gpt-4o").await, &s.entra);
    assert_imds_grant(&s.entra.grants()[0], None);
    s.entra.assert_no_problems();
}

#[tokio::test]
async fn a_rotated_client_secret_is_sent_at_the_next_token_request() {
    let mut s = azure(AzureKind::Secret, 20, 0).await;
    assert_ok(&chat(&s.sidekey, "gpt-4o").await, &s.entra);
    assert_secret_grant(&s.entra.grants()[0], SECRET_1);
    // The operator adds a second secret in Entra and rotates the Secret.
    s.entra.accept_secret(SECRET_2);
    let rotated = s.volume.update(&[
        ("azure-identity-token", &federated_token(1)),
        ("client-secret", &format!("{SECRET_2}\n")),
    ]);
    let grant = common::eventually("a token request with the new secret", WAIT, || async {
        s.entra
            .grants()
            .into_iter()
            .find(|g| g.field("client_secret") == Some(SECRET_2))
    })
    .await;
    assert!(grant.at > rotated);
    assert_secret_grant(&grant, SECRET_2);
    // Entra drops the old secret: from now on only the new one works, and
    // every later token request carries it.
    s.entra.only_secret(SECRET_2);
    s.entra.revoke_all();
    assert_ok(&chat(&s.sidekey, "gpt-4o").await, &s.entra);
    let grants = s.entra.grants();
    let from = grants
        .iter()
        .position(|g| g.field("client_secret") == Some(SECRET_2))
        .unwrap();
    for g in &grants[from..] {
        assert_secret_grant(g, SECRET_2);
    }
    s.entra.assert_no_problems();
    // (The earlier tokens were revoked: only the last one is live.)
    assert_bearer_only(&[s.openai.last()], &s.entra, CLIENT_SECRET);
    assert!(
        s.openai
            .requests()
            .iter()
            .all(|r| r.header("api-key").is_none())
    );
}

#[tokio::test]
async fn one_deployment_with_credentials_beside_one_with_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let entra = Entra::new(3600);
    let openai = entra::azure_openai(Transport::Tls(&pki), entra.clone()).await;
    let token_mock = entra::entra_endpoint(Transport::Tls(&pki), entra.clone()).await;
    // The key deployment's resource: accepts only its api-key, no bearer.
    let keyed = Mock::start(Transport::Tls(&pki), |r| {
        if r.header("api-key") == Some("legacy-real-key") && r.header("authorization").is_none() {
            Reply::ok()
        } else {
            Reply::json(401, r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key"}}"#)
        }
    })
    .await;
    let volume = SecretVolume::create(
        &dir.path().join("azure"),
        &[("azure-identity-token", &federated_token(1))],
    );
    entra.set_assertion_file(volume.path("azure-identity-token"));
    let key = common::write_key(dir.path(), "legacy-key", "legacy-real-key");
    let config = format!(
        "ca_file = \"{ca}\"\n[routes.azure]\ntype = \"azure\"\n\
         [routes.azure.deployments.gpt-4o]\nendpoint = \"{openai}\"\ncredentials = \"workload-identity\"\n\
         [routes.azure.deployments.legacy]\nendpoint = \"{keyed}\"\nkey = \"path::{key}\"\n",
        ca = pki.ca_file.display(),
        openai = openai.url,
        keyed = keyed.url,
    );
    let token_file = volume.path("azure-identity-token").display().to_string();
    let authority = entra::authority(&token_mock);
    let sidekey = start_in(
        dir.path(),
        &config,
        env(&[
            ("AZURE_CLIENT_ID", CLIENT_ID),
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_FEDERATED_TOKEN_FILE", &token_file),
            ("AZURE_AUTHORITY_HOST", &authority),
        ]),
    )
    .await;
    for _ in 0..2 {
        assert_ok(&chat(&sidekey, "gpt-4o").await, &entra);
        let resp = chat(&sidekey, "legacy").await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_bearer_only(&openai.requests(), &entra, WORKLOAD_IDENTITY);
    assert_eq!(openai.requests().len(), 2);
    let seen = keyed.requests();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(r.header("api-key"), Some("legacy-real-key"));
        assert_eq!(r.headers.get_all("api-key").iter().count(), 1);
        assert!(r.header("authorization").is_none());
    }
    assert_eq!(entra.grant_count(), 1);
    assert_workload_grant(&entra.grants()[0], &federated_token(1));
    entra.assert_no_problems();
}

// --- Google: setup ------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GoogleKind {
    /// `external_account`, subject token from a file (text) or, with `url`,
    /// from the federation mock (json); `impersonate` adds
    /// `service_account_impersonation_url`.
    External {
        url: bool,
        impersonate: bool,
    },
    AuthorizedUser,
}

impl GoogleKind {
    fn source(self) -> &'static str {
        match self {
            Self::External { .. } => "external-account",
            Self::AuthorizedUser => "authorized-user",
        }
    }

    /// Whom Vertex sees calling.
    fn principal(self) -> &'static str {
        match self {
            Self::External {
                impersonate: true, ..
            } => IMPERSONATED,
            Self::External { .. } => FEDERATED_PRINCIPAL,
            Self::AuthorizedUser => USER,
        }
    }
}

/// The federated subject token at generation `n`.
fn subject_token(n: u32) -> String {
    projected_token("gcp-wif", n)
}

struct Google {
    _dir: tempfile::TempDir,
    tokens: Arc<Tokens>,
    fed: Option<Arc<Federation>>,
    user: Option<Arc<AuthorizedUser>>,
    /// The url credential source's current value.
    url_subject: Arc<std::sync::Mutex<String>>,
    token_mock: Mock,
    vertex: Mock,
    /// Holds the subject-token file `token`.
    volume: SecretVolume,
    sidekey: Arc<Running>,
}

/// The mocks for `kind`: the federation mock over plain HTTP, the
/// refresh-token endpoint and Vertex over TLS; the subject-token file in a
/// kubelet-managed volume; the credentials JSON written to `dir`.
async fn google_mocks(dir: &Path, pki: &TestPki, kind: GoogleKind, expires_in: u64) -> GoogleMocks {
    let tokens = Tokens::new(expires_in);
    let vertex = google::vertex_endpoint(Transport::Tls(pki), tokens.clone()).await;
    let volume = SecretVolume::create(&dir.join("gcp-token"), &[("token", &subject_token(1))]);
    let url_subject = Arc::new(std::sync::Mutex::new(subject_token(1)));
    let json_path = dir.join("gcp-credentials.json");
    let (fed, user, token_mock, json) = match kind {
        GoogleKind::External { url, impersonate } => {
            let subject = if url {
                Subject::Url(url_subject.clone())
            } else {
                Subject::File(volume.path("token"))
            };
            let fed = Federation::new(tokens.clone(), subject, impersonate.then_some(IMPERSONATED));
            let mock = google::federation_endpoint(Transport::Plain, fed.clone()).await;
            let json = fed.json(&mock.url);
            (Some(fed), None, mock, json)
        }
        GoogleKind::AuthorizedUser => {
            let user = AuthorizedUser::new(tokens.clone());
            let (mock, token_uri) =
                google::authorized_user_endpoint(Transport::Tls(pki), user.clone()).await;
            let json = user.json(&token_uri);
            (None, Some(user), mock, json)
        }
    };
    std::fs::write(&json_path, json).unwrap();
    GoogleMocks {
        tokens,
        fed,
        user,
        url_subject,
        token_mock,
        vertex,
        volume,
        json_path,
    }
}

struct GoogleMocks {
    tokens: Arc<Tokens>,
    fed: Option<Arc<Federation>>,
    user: Option<Arc<AuthorizedUser>>,
    url_subject: Arc<std::sync::Mutex<String>>,
    token_mock: Mock,
    vertex: Mock,
    volume: SecretVolume,
    json_path: PathBuf,
}

/// [`google_mocks`] and sidekey with a vertex route using the JSON.
async fn google_setup(kind: GoogleKind, expires_in: u64) -> Google {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let m = google_mocks(dir.path(), &pki, kind, expires_in).await;
    let config = format!(
        "ca_file = \"{ca}\"\n[routes.vertex]\ntype = \"vertex\"\nupstream = \"{url}\"\ncredentials = \"path::{json}\"\nproject = \"proj\"\n",
        ca = pki.ca_file.display(),
        url = m.vertex.url,
        json = m.json_path.display(),
    );
    let sidekey = start_in(dir.path(), &config, MapEnv::default()).await;
    Google {
        _dir: dir,
        tokens: m.tokens,
        fed: m.fed,
        user: m.user,
        url_subject: m.url_subject,
        token_mock: m.token_mock,
        vertex: m.vertex,
        volume: m.volume,
        sidekey: Arc::new(sidekey),
    }
}

impl Google {
    fn fed(&self) -> &Federation {
        self.fed.as_deref().expect("an external_account setup")
    }

    fn problems(&self) -> Vec<String> {
        self.tokens.problems.lock().unwrap().clone()
    }

    fn assert_no_problems(&self) {
        let p = self.problems();
        assert!(p.is_empty(), "the Google mocks saw: {p:#?}");
    }
}

async fn generate(sidekey: &Running) -> Resp {
    client::post_json(
        &sidekey.url(GENERATE),
        &[("authorization", "Bearer sidekey-dummy")],
        r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
    )
    .await
}

fn assert_generated(resp: &Resp, principal: &str, problems: &[String]) {
    assert_eq!(
        resp.status,
        200,
        "{}\nGoogle mock problems: {problems:#?}",
        resp.text()
    );
    assert_eq!(resp.json()["account"], principal, "{}", resp.text());
}

/// The STS exchange, field by field; `scopes` lists the scopes accepted
/// (google-auth asks for `iam` when impersonating, sidekey's interface says
/// cloud-platform: Google's STS takes both).
fn assert_sts_form(call: &google::FedCall, subject: &str, scopes: &[&str]) {
    assert_eq!(call.request.method, http::Method::POST);
    assert_eq!(call.request.uri.path(), "/v1/token");
    let mut fields = call.fields.clone();
    let scope = fields.remove("scope").expect("no scope");
    assert!(scopes.contains(&scope.as_str()), "scope {scope:?}");
    assert_eq!(
        fields,
        map(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("audience", WIF_AUDIENCE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("subject_token", subject),
            ("subject_token_type", JWT_TOKEN_TYPE),
        ]),
    );
}

/// generateAccessToken: authorized by the STS token, for cloud-platform.
fn assert_generate_call(call: &google::FedCall, sts_token: &str, lifetime: Option<&str>) {
    assert_eq!(call.request.method, http::Method::POST);
    assert_eq!(
        call.request.uri.path(),
        format!("/v1/projects/-/serviceAccounts/{IMPERSONATED}:generateAccessToken")
    );
    assert_eq!(
        call.request.header("authorization"),
        Some(format!("Bearer {sts_token}").as_str())
    );
    assert_eq!(
        call.body["scope"],
        serde_json::json!([google::SCOPE]),
        "{}",
        call.body
    );
    if let Some(lifetime) = lifetime {
        assert_eq!(call.body["lifetime"], lifetime, "{}", call.body);
    }
}

/// The refresh-token grant, field by field (`scope` optional: google-auth
/// sends it for scoped credentials).
fn assert_refresh_form(call: &google::FedCall, user: &AuthorizedUser) {
    assert_eq!(call.request.method, http::Method::POST);
    assert_eq!(call.request.uri.path(), "/token");
    let mut fields = call.fields.clone();
    if let Some(scope) = fields.remove("scope") {
        assert_eq!(scope, google::SCOPE);
    }
    assert_eq!(
        fields,
        map(&[
            ("grant_type", "refresh_token"),
            ("client_id", &user.client_id),
            ("client_secret", &user.client_secret),
            ("refresh_token", &user.refresh_token),
        ]),
    );
}

/// Posts `token` to the mock Vertex directly.
async fn vertex_status(vertex: &Mock, token: &str) -> u16 {
    client::post_json(
        &format!("{}/v1/projects/proj/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent", vertex.url),
        &[("authorization", &format!("Bearer {token}"))],
        "{}",
    )
    .await
    .status
    .as_u16()
}

// --- Google: the oracle -------------------------------------------------------

#[tokio::test]
async fn google_auth_gets_tokens_from_the_mocks_and_genai_uses_them_on_vertex() {
    // google-auth 2.63 against the federation and refresh-token mocks, then
    // google-genai in Vertex mode with those credentials against the mock
    // Vertex (plain HTTP: genai's own trust store is not ours).
    for kind in [
        GoogleKind::External {
            url: false,
            impersonate: false,
        },
        GoogleKind::External {
            url: true,
            impersonate: true,
        },
        GoogleKind::AuthorizedUser,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new(dir.path());
        let m = google_mocks(dir.path(), &pki, kind, 3600).await;
        let plain_vertex = google::vertex_endpoint(Transport::Plain, m.tokens.clone()).await;
        let ca = pki.ca_file.display().to_string();
        let json = m.json_path.display().to_string();
        let which = match kind {
            GoogleKind::AuthorizedUser => "authorized-user",
            GoogleKind::External { .. } => "external-account",
        };
        let calls = python(
            &["google-auth", which],
            &[
                ("GOOGLE_CREDENTIALS_FILE", &json),
                ("VERTEX_URL", &plain_vertex.url),
                ("REQUESTS_CA_BUNDLE", &ca),
            ],
        )
        .await;
        assert_two_calls(&calls, which);
        let problems = m.tokens.problems.lock().unwrap().clone();
        assert!(problems.is_empty(), "{kind:?}: {problems:#?}");
        let seen = plain_vertex.requests();
        assert_eq!(seen.len(), 2);
        for r in &seen {
            assert_eq!(
                m.tokens.check(r.header("authorization")).as_deref(),
                Some(kind.principal()),
                "{kind:?}"
            );
        }
        match kind {
            GoogleKind::External { url, impersonate } => {
                let fed = m.fed.as_deref().unwrap();
                let sts = fed.sts_calls();
                assert_eq!(sts.len(), 1, "{kind:?}");
                // google-auth asks STS for the iam scope when impersonating.
                let scope = if impersonate {
                    IAM_SCOPE
                } else {
                    google::SCOPE
                };
                assert_sts_form(&sts[0], &subject_token(1), &[scope]);
                if url {
                    let fetches = fed.subject_fetches();
                    assert_eq!(fetches.len(), 1);
                    assert_eq!(fetches[0].header(SUBJECT_HEADER.0), Some(SUBJECT_HEADER.1));
                }
                if impersonate {
                    let iam = fed.iam_calls();
                    assert_eq!(iam.len(), 1);
                    let sts_token = fed.sts_tokens()[0].clone();
                    assert_generate_call(&iam[0], &sts_token, Some("3600s"));
                    assert_eq!(
                        iam[0].body,
                        serde_json::json!({"delegates": null, "scope": [google::SCOPE], "lifetime": "3600s"}),
                        "what google-auth sends"
                    );
                    // The STS token opens generateAccessToken, not Vertex.
                    assert_eq!(vertex_status(&plain_vertex, &sts_token).await, 401);
                }
            }
            GoogleKind::AuthorizedUser => {
                let user = m.user.as_deref().unwrap();
                let grants = user.grants();
                assert_eq!(grants.len(), 1);
                assert_refresh_form(&grants[0], user);
                assert_eq!(grants[0].field("scope"), Some(google::SCOPE));
            }
        }
        drop(m.token_mock);
    }
}

// --- Google: through sidekey --------------------------------------------------

#[tokio::test]
async fn google_genai_through_sidekey_for_external_account_and_authorized_user() {
    for kind in [
        GoogleKind::External {
            url: false,
            impersonate: false,
        },
        GoogleKind::External {
            url: false,
            impersonate: true,
        },
        GoogleKind::AuthorizedUser,
    ] {
        let s = google_setup(kind, 3600).await;
        let calls = python(&["vertex-sdk"], &[("SIDEKEY_URL", &s.sidekey.url(""))]).await;
        assert_two_calls(&calls, kind.source());
        s.assert_no_problems();
        let seen = s.vertex.requests();
        assert_eq!(seen.len(), 2, "{kind:?}");
        for r in &seen {
            assert!(
                r.uri.path().contains(
                    "/projects/proj/locations/us-central1/publishers/google/models/gemini-2.0-flash:"
                ),
                "{}",
                r.path_and_query()
            );
            assert_eq!(
                s.tokens.check(r.header("authorization")).as_deref(),
                Some(kind.principal()),
                "{kind:?}: Vertex got {:?}",
                r.header("authorization")
            );
            assert_eq!(r.headers.get_all("authorization").iter().count(), 1);
        }
        match kind {
            GoogleKind::External { impersonate, .. } => {
                let fed = s.fed();
                let sts = fed.sts_calls();
                assert_eq!(sts.len(), 1, "{kind:?}");
                assert_sts_form(&sts[0], &subject_token(1), &[google::SCOPE, IAM_SCOPE]);
                if impersonate {
                    let iam = fed.iam_calls();
                    assert_eq!(iam.len(), 1);
                    let sts_token = fed.sts_tokens()[0].clone();
                    assert_generate_call(&iam[0], &sts_token, Some("3600s"));
                    for r in &seen {
                        assert_ne!(
                            r.header("authorization"),
                            Some(format!("Bearer {sts_token}").as_str()),
                            "the STS token went to Vertex"
                        );
                    }
                    // The mock Vertex would refuse it (its own check).
                    assert!(
                        s.tokens
                            .check(Some(&format!("Bearer {sts_token}")))
                            .is_none()
                    );
                } else {
                    assert!(fed.iam_calls().is_empty());
                }
            }
            GoogleKind::AuthorizedUser => {
                let user = s.user.as_deref().unwrap();
                let grants = user.grants();
                assert_eq!(grants.len(), 1);
                assert_refresh_form(&grants[0], user);
            }
        }
        assert_token_source(&s.sidekey, "vertex", kind.source()).await;
        drop(s.token_mock);
    }
}

#[tokio::test]
async fn an_external_account_url_source_with_json_format_is_fetched_at_each_exchange() {
    let s = google_setup(
        GoogleKind::External {
            url: true,
            impersonate: true,
        },
        3600,
    )
    .await;
    assert_generated(&generate(&s.sidekey).await, IMPERSONATED, &s.problems());
    let fed = s.fed();
    let fetches = fed.subject_fetches();
    assert_eq!(fetches.len(), 1);
    assert_eq!(fetches[0].method, http::Method::GET);
    assert_eq!(fetches[0].header(SUBJECT_HEADER.0), Some(SUBJECT_HEADER.1));
    assert_sts_form(
        &fed.sts_calls()[0],
        &subject_token(1),
        &[google::SCOPE, IAM_SCOPE],
    );
    assert_generate_call(&fed.iam_calls()[0], &fed.sts_tokens()[0], Some("3600s"));

    // The source now serves another token; Vertex revokes what it issued: the
    // 401 forces a refresh, which fetches the source again.
    *s.url_subject.lock().unwrap() = subject_token(2);
    s.tokens.revoke_all();
    assert_generated(&generate(&s.sidekey).await, IMPERSONATED, &s.problems());
    assert_eq!(fed.subject_fetches().len(), 2);
    let sts = fed.sts_calls();
    assert_eq!(sts.len(), 2);
    assert_sts_form(&sts[1], &subject_token(2), &[google::SCOPE, IAM_SCOPE]);
    assert_eq!(fed.iam_calls().len(), 2);
    assert_eq!(s.vertex.requests().len(), 3, "one retry");
    s.assert_no_problems();
}

#[tokio::test]
async fn a_rotated_subject_token_file_is_exchanged_at_the_refresh_before_expiry() {
    // 20-second tokens, impersonated: the refresh within ~10 s exchanges the
    // kubelet-rotated subject token, then impersonates again.
    let mut s = google_setup(
        GoogleKind::External {
            url: false,
            impersonate: true,
        },
        20,
    )
    .await;
    assert_generated(&generate(&s.sidekey).await, IMPERSONATED, &s.problems());
    let first_auth = s.vertex.last().header("authorization").unwrap().to_owned();
    let first_at = s.fed().sts_calls()[0].at;
    let rotated = s.volume.update(&[("token", &subject_token(2))]);
    common::eventually("a token refresh", WAIT, || async {
        (s.fed().iam_calls().len() >= 2).then_some(())
    })
    .await;
    let fed = s.fed();
    let sts = fed.sts_calls();
    assert!(sts.len() >= 2);
    assert!(sts[1].at > rotated);
    assert!(
        sts[1].at < first_at + Duration::from_secs(20),
        "refreshed after the first token expired"
    );
    assert_sts_form(&sts[1], &subject_token(2), &[google::SCOPE, IAM_SCOPE]);
    let sts_tokens = fed.sts_tokens();
    let iam = fed.iam_calls();
    assert!(
        sts_tokens
            .iter()
            .any(|t| iam[1].request.header("authorization") == Some(format!("Bearer {t}").as_str())),
        "generateAccessToken was not authorized by an STS token"
    );
    s.assert_no_problems();
    common::eventually("requests with the refreshed token", WAIT, || async {
        let resp = generate(&s.sidekey).await;
        assert_generated(&resp, IMPERSONATED, &s.problems());
        (s.vertex.last().header("authorization") != Some(first_auth.as_str())).then_some(())
    })
    .await;
    assert!(
        fed.sts_calls().len() <= 4,
        "{} STS calls: a refresh storm",
        fed.sts_calls().len()
    );
    let ok = metric(
        &s.sidekey,
        "sidekey_token_refreshes_total",
        &[("route", "vertex"), ("result", "ok")],
    )
    .await;
    assert!(ok.is_some_and(|n| n >= 2.0), "{ok:?}");
}

#[tokio::test]
async fn a_revoked_authorized_user_token_forces_one_refresh_and_one_retry() {
    let s = google_setup(GoogleKind::AuthorizedUser, 3600).await;
    assert_generated(&generate(&s.sidekey).await, USER, &s.problems());
    s.tokens.revoke_all();
    assert_generated(&generate(&s.sidekey).await, USER, &s.problems());
    let user = s.user.as_deref().unwrap();
    assert_eq!(user.grants().len(), 2, "one forced refresh");
    for g in user.grants() {
        assert_refresh_form(&g, user);
    }
    let seen = s.vertex.requests();
    assert_eq!(seen.len(), 3, "one retry");
    assert_ne!(
        seen[1].header("authorization"),
        seen[2].header("authorization")
    );
    assert_eq!(seen[1].body, seen[2].body);
    s.assert_no_problems();
}

// --- sidekey check --------------------------------------------------------------

/// (config, environment, what `check` must say, what it must not print)
type CheckCase<'a> = (String, Vec<(&'a str, &'a str)>, &'a str, Vec<&'a str>);

async fn check(config: &Path, vars: &[(&str, &str)]) -> (i32, String) {
    let out = common::process::command(&["check", "--config", config.to_str().unwrap()], vars)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn check_names_each_identity_kind_offline_and_prints_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let entra = Entra::new(3600);
    let token_mock = entra::entra_endpoint(Transport::Plain, entra.clone()).await;
    let imds = entra::imds_endpoint(entra.clone()).await;
    let volume = SecretVolume::create(
        &dir.path().join("azure"),
        &[
            ("azure-identity-token", &federated_token(1)),
            ("client-secret", &format!("{SECRET_1}\n")),
        ],
    );
    let token_file = volume.path("azure-identity-token").display().to_string();
    let authority = entra::authority(&token_mock);
    let wi_env = [
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_FEDERATED_TOKEN_FILE", token_file.as_str()),
        ("AZURE_AUTHORITY_HOST", authority.as_str()),
    ];
    let wif_dir = dir.path().join("wif");
    std::fs::create_dir(&wif_dir).unwrap();
    let wif = google_mocks(
        &wif_dir,
        &pki,
        GoogleKind::External {
            url: false,
            impersonate: true,
        },
        3600,
    )
    .await;
    let user_dir = dir.path().join("user");
    std::fs::create_dir(&user_dir).unwrap();
    let user = google_mocks(&user_dir, &pki, GoogleKind::AuthorizedUser, 3600).await;
    let u = user.user.as_deref().unwrap();

    let azure_route = |credentials: &str| {
        format!(
            "[routes.azure]\ntype = \"azure\"\nupstream = \"https://my-resource.openai.azure.com\"\ncredentials = {credentials}\n"
        )
    };
    let vertex_route = |json: &Path| {
        format!(
            "[routes.vertex]\ntype = \"vertex\"\ncredentials = \"path::{}\"\nproject = \"proj\"\n",
            json.display()
        )
    };
    let secret_table = format!(
        "{{ tenant_id = \"{TENANT}\", client_id = \"{CLIENT_ID}\", client_secret = \"{}\" }}",
        volume.location("client-secret")
    );
    let imds_env = [
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url.as_str()),
        ("AZURE_CLIENT_ID", USER_ASSIGNED),
    ];
    let fed_token = federated_token(1);
    let subject = subject_token(1);
    let cases: Vec<CheckCase<'_>> = vec![
        (
            azure_route("\"workload-identity\""),
            wi_env.to_vec(),
            "workload identity",
            vec![fed_token.as_str()],
        ),
        (
            azure_route("\"managed-identity\""),
            imds_env.to_vec(),
            "managed identity",
            vec![],
        ),
        (
            azure_route(&secret_table),
            vec![("AZURE_AUTHORITY_HOST", authority.as_str())],
            "client secret",
            vec![SECRET_1],
        ),
        (
            vertex_route(&wif.json_path),
            vec![],
            "external account",
            vec![subject.as_str()],
        ),
        (
            vertex_route(&user.json_path),
            vec![],
            "authorized user",
            vec![u.refresh_token.as_str(), u.client_secret.as_str()],
        ),
    ];
    for (i, (route, vars, says, secrets)) in cases.iter().enumerate() {
        let config = dir.path().join(format!("check-{i}.toml"));
        std::fs::write(&config, route).unwrap();
        let (code, out) = check(&config, vars).await;
        assert_eq!(code, 0, "{says}:\n{out}");
        assert!(
            out.to_lowercase().contains(says),
            "check does not say {says:?}:\n{out}"
        );
        for s in secrets {
            assert!(!out.contains(s), "check printed {s:?}:\n{out}");
        }
        // No access token either: none may have been minted.
        assert!(!out.contains("eyJ0eXAiOiJKV1QifQ.entra"), "{out}");
        assert!(!out.contains("ya29."), "{out}");
    }
    assert_eq!(entra.grant_count(), 0, "check is offline");
    assert!(token_mock.requests().is_empty() && imds.requests().is_empty());
    assert!(wif.token_mock.requests().is_empty() && user.token_mock.requests().is_empty());
}
