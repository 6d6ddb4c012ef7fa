//! AWS Bedrock and SageMaker: sidekey drops the app's dummy SigV4 signature
//! and signs again with the pod's real identity, and every signature that
//! reaches the mock provider is recomputed by botocore (an independent
//! implementation, `tests/aws/verify_sigv4.py`) from exactly the bytes that
//! arrived, with the real secret; a wrong secret must fail, so the check bites.
//!
//! - The official boto3 clients with dummy credentials: `bedrock-runtime`
//!   `converse`, `converse_stream` (events arrive spread over the stream, as
//!   the mock sends them), `invoke_model(_with_response_stream)`, and
//!   `sagemaker-runtime` `invoke_endpoint`; a raw request with a query string
//!   and a session token; the model id's `%3A` forwarded byte for byte.
//! - The credential chain from the environment: static variables, IRSA (STS
//!   `AssumeRoleWithWebIdentity`: one call for concurrent first requests, a
//!   refresh before expiry with the token file rotated kubelet-style, the new
//!   token sent, an STS outage survived on valid credentials), EKS Pod Identity (container credentials with the token file
//!   re-read), EC2 IMDSv2 (and not asked when disabled).
//! - Static credential files rotated kubelet-style; a Bedrock API key sent as
//!   `Authorization: Bearer` without any signing header, rotated, and falling
//!   back when rejected.
//! - A 403 `UnrecognizedClientException` forces one credential refresh and one
//!   retry; the model allowlist reads Bedrock model ids (with `:`, and ARNs
//!   URL-encoded); `sidekey check` names the chain source and no secret.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

mod common;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use common::aws::{
    self, CONTAINER_PATH, CONVERSE, ContainerToken, Creds, ENDPOINT_NAME, IMDS_ROLE, Issuer,
    MODEL_IN_PATH, ROLE_ARN, Runtime, access_key_id, assert_no_dummy, assert_signed,
    assert_signed_by_one_of, assert_wrong_secret_fails, boto3, converse_raw, metric,
};
use common::client::{self, Resp};
use common::kubelet::SecretVolume;
use common::mock::{Mock, Recorded};
use common::sidekey::{Running, start_in};
use sidekey::MapEnv;

const REGION: &str = "us-east-1";
/// AWS's documentation example keys: the shape of real ones.
const AKID: &str = "AKIAIOSFODNN7EXAMPLE";
/// The last four characters of [`AKID`], all that `sidekey check` may show.
const AKID_TAIL: &str = "MPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLE//session+token=";
/// Every bounded wait for a refresh or a reload.
const WAIT: Duration = Duration::from_secs(16);

fn env(vars: &[(&str, &str)]) -> MapEnv {
    MapEnv::new(vars.iter().copied())
}

/// Static credentials in the environment (with `AWS_SESSION_TOKEN` or
/// not), and no instance metadata.
fn env_credentials(session_token: bool) -> MapEnv {
    let mut vars = vec![
        ("AWS_ACCESS_KEY_ID", AKID),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    if session_token {
        vars.push(("AWS_SESSION_TOKEN", SESSION_TOKEN));
    }
    env(&vars)
}

/// A bedrock route `bedrock` with `region = us-east-1` to the runtime mock.
fn bedrock_route(runtime: &Runtime, extra: &str) -> String {
    aws::route(
        "bedrock",
        "bedrock",
        runtime.url(),
        &format!("region = \"{REGION}\"\n{extra}"),
    )
}

/// Requests whose path starts with `prefix`.
fn to(requests: &[Recorded], prefix: &str) -> Vec<Recorded> {
    requests
        .iter()
        .filter(|r| r.uri.path().starts_with(prefix))
        .cloned()
        .collect()
}

fn assert_ok(resp: &Resp) {
    assert_eq!(resp.status, 200, "{}", resp.text());
}

/// Like [`assert_ok`], naming what the credential endpoint objected to.
fn assert_ok_from(resp: &Resp, issuer: &Issuer) {
    assert_eq!(
        resp.status,
        200,
        "{}\ncredential endpoint problems: {:#?}\nfetches: {:?}",
        resp.text(),
        issuer.problems(),
        issuer.fetches()
    );
}

// --- The oracle and the mock, without sidekey ------------------------------

#[tokio::test]
async fn the_oracle_accepts_botocore_signatures_and_refuses_wrong_ones() {
    // botocore signs (with a query string, with a session token, with
    // headers added after signing); the oracle accepts those and refuses a
    // wrong secret, service, region, token, body, query, path or header.
    let out = aws::run_script("verify_sigv4.py", &["--self-test"], &[], b"").await;
    assert!(out.contains(r#""self_test": "ok""#), "{out}");
}

#[tokio::test]
async fn boto3_straight_to_the_mock_is_verified_and_parses_the_event_streams() {
    // The harness checked end to end with the real thing: boto3 signing with
    // real credentials, the mock's answers (event-stream frames included)
    // parsed by boto3, and the oracle verifying what the mock recorded.
    let runtime = Runtime::start().await;
    let creds = Creds::new(AKID, SECRET, Some(SESSION_TOKEN));
    let converse = boto3("bedrock-converse", runtime.url(), Some(&creds)).await;
    assert_eq!(converse["text"], "hello", "{converse}");
    let stream = boto3("bedrock-converse-stream", runtime.url(), Some(&creds)).await;
    aws::assert_streamed(&stream, Duration::from_millis(900));
    let invoke = boto3("bedrock-invoke-stream", runtime.url(), Some(&creds)).await;
    assert_eq!(invoke["chunks"].as_array().unwrap().len(), 2, "{invoke}");
    let sm = boto3("sagemaker-invoke", runtime.url(), Some(&creds)).await;
    assert_eq!(sm["status"], 200, "{sm}");

    let seen = runtime.requests();
    assert_eq!(seen.len(), 4);
    assert_eq!(
        seen[0].uri.path(),
        format!("/model/{MODEL_IN_PATH}/converse"),
        "boto3 encodes the model id's ':'"
    );
    let bedrock = to(&seen, "/model/");
    let sagemaker = to(&seen, "/endpoints/");
    assert_signed(&bedrock, &creds, REGION, "bedrock").await;
    assert_signed(&sagemaker, &creds, REGION, "sagemaker").await;
    assert_wrong_secret_fails(&bedrock, &creds, REGION, "bedrock").await;
    assert_wrong_secret_fails(&sagemaker, &creds, REGION, "sagemaker").await;
    // A signature for one service does not pass for the other.
    let verdicts = aws::verify(&sagemaker, &creds, REGION, "bedrock").await;
    assert!(verdicts.iter().all(|v| !v.ok), "{verdicts:?}");
}

/// botocore's own credential chain with `vars`; returns what it resolved.
async fn botocore_credentials(vars: &[(&str, &str)]) -> serde_json::Value {
    let out = aws::run_script("clients.py", &["credentials"], vars, b"").await;
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

fn assert_resolved(got: &serde_json::Value, method: &str, want: &Creds) {
    assert_eq!(got["method"], method, "{got}");
    assert_eq!(got["access_key_id"], want.access_key_id.as_str(), "{got}");
    assert_eq!(
        got["secret_access_key"],
        want.secret_access_key.as_str(),
        "{got}"
    );
    assert_eq!(
        got["session_token"].as_str(),
        want.session_token.as_deref(),
        "{got}"
    );
}

#[tokio::test]
async fn botocore_resolves_credentials_from_the_sts_container_and_imds_mocks() {
    // The credential mocks speak the protocols as the AWS SDKs understand
    // them: botocore's own providers get their credentials from each.
    let dir = tempfile::tempdir().unwrap();
    let volume = SecretVolume::create(
        dir.path(),
        &[("token", "web-identity-token"), ("pod", "pod-token")],
    );
    let token_file = volume.path("token").display().to_string();
    let pod_file = volume.path("pod").display().to_string();

    let issuer = Issuer::new("IRSA", 3600);
    let sts = aws::sts(volume.path("token"), issuer.clone()).await;
    let got = botocore_credentials(&[
        ("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file),
        ("AWS_ROLE_ARN", ROLE_ARN),
        ("AWS_ROLE_SESSION_NAME", "botocore"),
        ("AWS_ENDPOINT_URL_STS", &sts.url),
    ])
    .await;
    issuer.assert_no_problems();
    assert_resolved(
        &got,
        "assume-role-with-web-identity",
        &issuer.creds(1).unwrap(),
    );

    let issuer = Issuer::new("PODI", 3600);
    let agent = aws::container(ContainerToken::File(volume.path("pod")), issuer.clone()).await;
    let full_uri = format!("{}{CONTAINER_PATH}", agent.url);
    let got = botocore_credentials(&[
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full_uri),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &pod_file),
    ])
    .await;
    issuer.assert_no_problems();
    assert_resolved(&got, "container-role", &issuer.creds(1).unwrap());

    let issuer = Issuer::new("IMDS", 3600);
    let metadata = aws::imds(issuer.clone()).await;
    let got = botocore_credentials(&[
        ("AWS_EC2_METADATA_DISABLED", "false"),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &metadata.url),
    ])
    .await;
    issuer.assert_no_problems();
    assert_resolved(&got, "iam-role", &issuer.creds(1).unwrap());
}

// --- boto3 through sidekey -------------------------------------------------

#[tokio::test]
async fn boto3_bedrock_calls_through_sidekey_are_signed_with_the_environment_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::start().await;
    let sidekey = start_in(
        dir.path(),
        &bedrock_route(&runtime, ""),
        env_credentials(true),
    )
    .await;
    let endpoint = sidekey.url("/bedrock");

    let converse = boto3("bedrock-converse", &endpoint, None).await;
    assert_eq!(converse["text"], "hello", "{converse}");
    assert_eq!(converse["stop"], "end_turn");
    // The mock sends the six events 300 ms apart: unbuffered, boto3 sees
    // them spread over ~1.5 s; buffered, all at once.
    let stream = boto3("bedrock-converse-stream", &endpoint, None).await;
    aws::assert_streamed(&stream, Duration::from_millis(900));
    let invoke = boto3("bedrock-invoke", &endpoint, None).await;
    assert_eq!(invoke["body"]["content"][0]["text"], "hello", "{invoke}");
    let invoke_stream = boto3("bedrock-invoke-stream", &endpoint, None).await;
    assert_eq!(
        invoke_stream["chunks"].as_array().unwrap().len(),
        2,
        "{invoke_stream}"
    );

    let seen = runtime.requests();
    let paths: Vec<String> = seen.iter().map(Recorded::path_and_query).collect();
    assert_eq!(
        paths,
        [
            format!("/model/{MODEL_IN_PATH}/converse"),
            format!("/model/{MODEL_IN_PATH}/converse-stream"),
            format!("/model/{MODEL_IN_PATH}/invoke"),
            format!("/model/{MODEL_IN_PATH}/invoke-with-response-stream"),
        ],
        "the path after the route prefix, byte for byte"
    );
    let creds = Creds::new(AKID, SECRET, Some(SESSION_TOKEN));
    assert_signed(&seen, &creds, REGION, "bedrock").await;
    assert_wrong_secret_fails(&seen, &creds, REGION, "bedrock").await;
    assert_no_dummy(&seen);
    for r in &seen {
        assert_eq!(r.header("x-amz-security-token"), Some(SESSION_TOKEN));
        assert_eq!(r.headers.get_all("authorization").iter().count(), 1);
        assert_eq!(
            r.header("host"),
            Some(runtime.mock.addr.to_string().as_str())
        );
    }
    // The mock did space the stream out (so the spread above means something).
    let sent = runtime.mock.sent_times(0);
    assert_eq!(sent.len(), 6);
    assert!(sent[5] - sent[0] >= Duration::from_millis(1400));
}

#[tokio::test]
async fn boto3_sagemaker_invoke_endpoint_is_signed_for_sagemaker_without_a_session_token() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::start().await;
    let config = aws::route(
        "sagemaker",
        "sagemaker",
        runtime.url(),
        &format!("region = \"{REGION}\"\n"),
    );
    let sidekey = start_in(dir.path(), &config, env_credentials(false)).await;
    // The client sends a dummy session token; with long-term keys nothing
    // of it may reach the provider.
    let out = boto3("sagemaker-invoke", &sidekey.url("/sagemaker"), None).await;
    assert_eq!(out["status"], 200, "{out}");
    let seen = runtime.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].path_and_query(),
        format!("/endpoints/{ENDPOINT_NAME}/invocations")
    );
    assert_eq!(seen[0].header("x-amz-security-token"), None);
    let creds = Creds::new(AKID, SECRET, None);
    assert_signed(&seen, &creds, REGION, "sagemaker").await;
    assert_wrong_secret_fails(&seen, &creds, REGION, "sagemaker").await;
    let as_bedrock = aws::verify(&seen, &creds, REGION, "bedrock").await;
    assert!(
        !as_bedrock[0].ok,
        "signed for service sagemaker, not bedrock"
    );
    assert_no_dummy(&seen);
}

#[tokio::test]
async fn a_raw_request_with_a_query_string_and_a_session_token_is_signed_over_what_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::start().await;
    let sidekey = start_in(
        dir.path(),
        &bedrock_route(&runtime, ""),
        env_credentials(true),
    )
    .await;
    // Unsorted parameters and an escape: the canonical query string sorts
    // them, the forwarded query stays as the client wrote it.
    let query = "?z=last&a=first&m=x%20y";
    assert_ok(&converse_raw(&sidekey, "bedrock", query).await);
    // A body that is not ASCII: the payload hash is over its exact bytes.
    let body =
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":\"h\u{e9}llo \u{2603}\"}]}]}";
    let resp = client::post_json(&sidekey.url(&format!("/bedrock{CONVERSE}")), &[], body).await;
    assert_ok(&resp);

    let seen = runtime.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].path_and_query(), format!("{CONVERSE}{query}"));
    assert_eq!(seen[1].body.as_ref(), body.as_bytes());
    assert_ne!(seen[0].header("x-amz-date"), Some("20200101T000000Z"));
    let creds = Creds::new(AKID, SECRET, Some(SESSION_TOKEN));
    assert_signed(&seen, &creds, REGION, "bedrock").await;
    assert_wrong_secret_fails(&seen, &creds, REGION, "bedrock").await;
    assert_no_dummy(&seen);
}

#[tokio::test]
async fn converse_stream_frames_reach_the_client_as_the_mock_sends_them() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::start().await;
    let sidekey = start_in(
        dir.path(),
        &bedrock_route(&runtime, ""),
        env_credentials(false),
    )
    .await;
    let req = client::request(
        http::Method::POST,
        &sidekey.url(&format!("/bedrock/model/{MODEL_IN_PATH}/converse-stream")),
        &[("content-type", "application/json")],
        r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#,
    );
    let (status, chunks) = client::stream(req).await;
    assert_eq!(status, 200);
    let all: Vec<u8> = chunks.iter().flat_map(|(_, c)| c.to_vec()).collect();
    assert_eq!(all, aws::converse_stream_frames().concat(), "byte for byte");
    // The first frame arrived before the mock sent the second one.
    let first = chunks.first().unwrap().0;
    let sent = runtime.mock.sent_times(0);
    assert!(first < sent[1], "the first event was held back");
    assert_signed(
        &runtime.requests(),
        &Creds::new(AKID, SECRET, None),
        REGION,
        "bedrock",
    )
    .await;
}

// --- IRSA (web identity) ---------------------------------------------------

struct Irsa {
    _dir: tempfile::TempDir,
    runtime: Runtime,
    issuer: Arc<Issuer>,
    sts: Mock,
    volume: SecretVolume,
    sidekey: Arc<Running>,
}

/// The region IRSA routes get from `AWS_REGION` (the route names none).
const IRSA_REGION: &str = "us-west-2";

fn projected_token(n: u32) -> String {
    format!("eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.projected-sa-token-{n}.c2ln")
}

/// A runtime mock, STS issuing `lifetime`-second credentials after
/// `delay_ms`, the projected service-account token in a kubelet-managed
/// volume, and sidekey with a bedrock route that names no region and no
/// credentials (so: AWS_REGION, and web identity from the environment).
async fn irsa(lifetime: u64, delay_ms: u64) -> Irsa {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::start().await;
    let issuer = Issuer::new("IRSA", lifetime);
    issuer
        .delay_ms
        .store(delay_ms, std::sync::atomic::Ordering::Relaxed);
    let volume = SecretVolume::create(
        &dir.path().join("eks.amazonaws.com/serviceaccount"),
        &[("token", &projected_token(1))],
    );
    let sts = aws::sts(volume.path("token"), issuer.clone()).await;
    let token_file = volume.path("token").display().to_string();
    let config = aws::route("bedrock", "bedrock", runtime.url(), "");
    let sidekey = start_in(
        dir.path(),
        &config,
        env(&[
            ("AWS_REGION", IRSA_REGION),
            ("AWS_DEFAULT_REGION", "eu-central-1"),
            ("AWS_ROLE_ARN", ROLE_ARN),
            ("AWS_ROLE_SESSION_NAME", "sidekey-test"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file),
            ("AWS_ENDPOINT_URL_STS", &sts.url),
            ("AWS_STS_REGIONAL_ENDPOINTS", "regional"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]),
    )
    .await;
    Irsa {
        _dir: dir,
        runtime,
        issuer,
        sts,
        volume,
        sidekey: Arc::new(sidekey),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irsa_concurrent_first_requests_share_one_sts_call_and_are_signed_with_its_credentials() {
    // A slow STS, so all eight requests wait for the same first credentials.
    let s = irsa(3600, 500).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let sidekey = s.sidekey.clone();
            tokio::spawn(async move { converse_raw(&sidekey, "bedrock", "").await })
        })
        .collect();
    for t in tasks {
        assert_ok_from(&t.await.unwrap(), &s.issuer);
    }
    assert_eq!(s.issuer.fetch_count(), 1, "one STS call for all of them");
    s.issuer.assert_no_problems();
    assert_eq!(
        s.issuer.fetches()[0].token.as_deref(),
        Some(projected_token(1).as_str())
    );
    assert!(
        s.sts.last().header("authorization").is_none(),
        "AssumeRoleWithWebIdentity is not signed"
    );
    let seen = s.runtime.requests();
    assert_eq!(seen.len(), 8);
    let creds = s.issuer.creds(1).unwrap();
    assert_signed(&seen, &creds, IRSA_REGION, "bedrock").await;
    assert_wrong_secret_fails(&seen[..1], &creds, IRSA_REGION, "bedrock").await;
    assert_no_dummy(&seen);
    assert_eq!(
        metric(
            &s.sidekey,
            "sidekey_token_refreshes_total",
            &[("route", "bedrock"), ("result", "ok")]
        )
        .await,
        Some(1.0),
        "{}",
        aws::metrics_text(&s.sidekey).await
    );
}

#[tokio::test]
async fn irsa_refreshes_before_expiry_with_the_rotated_token_file() {
    // 20-second credentials: refreshed well before they expire, by which
    // time the kubelet has rotated the projected token.
    let mut s = irsa(20, 0).await;
    assert_ok_from(&converse_raw(&s.sidekey, "bedrock", "").await, &s.issuer);
    let first = s.issuer.issued()[0].clone();
    assert_eq!(
        access_key_id(&s.runtime.mock.last()),
        Some(first.creds.access_key_id.clone())
    );
    s.volume.update(&[("token", &projected_token(2))]);

    common::eventually("a credential refresh", WAIT, || async {
        (s.issuer.fetch_count() >= 2).then_some(())
    })
    .await;
    let refresh = s.issuer.fetches()[1].clone();
    assert_eq!(
        refresh.token.as_deref(),
        Some(projected_token(2).as_str()),
        "the token file is read again at each refresh"
    );
    assert!(
        refresh.at < first.expires,
        "refreshed at {:?}, after the credentials expired at {:?}",
        refresh.at,
        first.expires
    );
    s.issuer.assert_no_problems();

    // Requests move to the new credentials without waiting for expiry.
    let second = s.issuer.akid(2);
    common::eventually(
        "requests signed with the refreshed credentials",
        WAIT,
        || async {
            assert_ok_from(&converse_raw(&s.sidekey, "bedrock", "").await, &s.issuer);
            (access_key_id(&s.runtime.mock.last()).as_deref() == Some(second.as_str()))
                .then_some(())
        },
    )
    .await;
    assert_signed_by_one_of(
        &s.runtime.requests(),
        &s.issuer.all_creds(),
        IRSA_REGION,
        "bedrock",
    )
    .await;
    let fetches = s.issuer.fetch_count();
    assert!(
        fetches <= 4,
        "{fetches} STS calls in ~10 s: a refresh storm"
    );

    let refreshes = metric(
        &s.sidekey,
        "sidekey_token_refreshes_total",
        &[("route", "bedrock"), ("result", "ok")],
    )
    .await;
    let expiry = metric(
        &s.sidekey,
        "sidekey_token_expiry_timestamp_seconds",
        &[("route", "bedrock")],
    )
    .await;
    let (Some(refreshes), Some(expiry)) = (refreshes, expiry) else {
        panic!("metrics missing:\n{}", aws::metrics_text(&s.sidekey).await);
    };
    assert!(refreshes >= 2.0, "refreshes ok = {refreshes}");
    let expiries: Vec<f64> = s
        .issuer
        .issued()
        .iter()
        .map(|i| i.expires.duration_since(UNIX_EPOCH).unwrap().as_secs_f64())
        .collect();
    assert!(
        expiries.iter().any(|e| (e - expiry).abs() < 1.5),
        "expiry metric {expiry} is none of the issued expirations {expiries:?}"
    );
}

#[tokio::test]
async fn an_sts_outage_costs_no_request_while_the_credentials_are_valid() {
    let s = irsa(20, 0).await;
    assert_ok_from(&converse_raw(&s.sidekey, "bedrock", "").await, &s.issuer);
    s.issuer
        .outage
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // The refresh due at ~10 s fails (and is retried); the credentials are
    // valid until ~20 s, and every request meanwhile is served with them.
    let until = tokio::time::Instant::now() + Duration::from_secs(13);
    while tokio::time::Instant::now() < until {
        assert_ok(&converse_raw(&s.sidekey, "bedrock", "").await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(s.issuer.fetch_count() >= 2, "no refresh was tried");
    let errors = metric(
        &s.sidekey,
        "sidekey_token_refreshes_total",
        &[("route", "bedrock"), ("result", "error")],
    )
    .await;
    assert!(
        errors.is_some_and(|e| e >= 1.0),
        "{}",
        aws::metrics_text(&s.sidekey).await
    );
    let seen = s.runtime.requests();
    assert_signed(&seen, &s.issuer.creds(1).unwrap(), IRSA_REGION, "bedrock").await;

    s.issuer
        .outage
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let second = s.issuer.akid(2);
    common::eventually("the refresher to recover", WAIT, || async {
        assert_ok(&converse_raw(&s.sidekey, "bedrock", "").await);
        (access_key_id(&s.runtime.mock.last()).as_deref() == Some(second.as_str())).then_some(())
    })
    .await;
    s.issuer.assert_no_problems();
}

#[tokio::test]
async fn an_unrecognized_client_403_forces_one_refresh_and_one_retry() {
    let s = irsa(3600, 0).await;
    // The provider does not recognize the first credentials STS hands out.
    s.runtime.reject(&s.issuer.akid(1));
    let resp = converse_raw(&s.sidekey, "bedrock", "").await;
    assert_ok_from(&resp, &s.issuer);
    assert_eq!(s.issuer.fetch_count(), 2, "one forced refresh");
    let seen = s.runtime.requests();
    assert_eq!(seen.len(), 2, "one retry");
    assert_eq!(access_key_id(&seen[0]), Some(s.issuer.akid(1)));
    assert_eq!(access_key_id(&seen[1]), Some(s.issuer.akid(2)));
    assert_eq!(seen[0].body, seen[1].body, "the retry replays the body");
    assert_signed_by_one_of(&seen, &s.issuer.all_creds(), IRSA_REGION, "bedrock").await;

    // Refreshed credentials rejected as well, within 30 s of that forced
    // refresh: no second one (a client must not make sidekey fetch
    // credentials per request); the client gets the provider's answer.
    s.runtime.reject(&s.issuer.akid(2));
    let resp = converse_raw(&s.sidekey, "bedrock", "").await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert!(
        resp.text()
            .contains("security token included in the request is invalid")
    );
    assert_eq!(
        s.issuer.fetch_count(),
        2,
        "forced refreshes are rate-limited"
    );
    assert_eq!(s.runtime.requests().len(), 3);
    s.issuer.assert_no_problems();
}

// --- Pod Identity and ECS (container credentials) --------------------------

#[tokio::test]
async fn pod_identity_sends_the_current_token_file_to_the_container_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::start().await;
    let issuer = Issuer::new("PODI", 20);
    let mut volume = SecretVolume::create(
        &dir.path().join("pods.eks.amazonaws.com/serviceaccount"),
        &[("eks-pod-identity-token", "pod-identity-token-1")],
    );
    let agent = aws::container(
        ContainerToken::File(volume.path("eks-pod-identity-token")),
        issuer.clone(),
    )
    .await;
    let full_uri = format!("{}{CONTAINER_PATH}", agent.url);
    let token_file = volume.path("eks-pod-identity-token").display().to_string();
    let sidekey = start_in(
        dir.path(),
        &bedrock_route(&runtime, ""),
        env(&[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full_uri),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token_file),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]),
    )
    .await;
    assert_ok_from(&converse_raw(&sidekey, "bedrock", "").await, &issuer);
    assert_eq!(issuer.fetch_count(), 1);
    assert_eq!(
        issuer.fetches()[0].token.as_deref(),
        Some("pod-identity-token-1")
    );
    assert_signed(
        &runtime.requests(),
        &issuer.creds(1).unwrap(),
        REGION,
        "bedrock",
    )
    .await;

    // The agent's token is rotated; the refresh (20-second credentials)
    // sends the new one.
    volume.update(&[("eks-pod-identity-token", "pod-identity-token-2")]);
    common::eventually("a container-credentials refresh", WAIT, || async {
        (issuer.fetch_count() >= 2).then_some(())
    })
    .await;
    assert_eq!(
        issuer.fetches()[1].token.as_deref(),
        Some("pod-identity-token-2")
    );
    assert!(issuer.fetches()[1].at < issuer.issued()[0].expires);
    issuer.assert_no_problems();
    let second = issuer.akid(2);
    common::eventually(
        "requests signed with the refreshed credentials",
        WAIT,
        || async {
            assert_ok_from(&converse_raw(&sidekey, "bedrock", "").await, &issuer);
            (access_key_id(&runtime.mock.last()).as_deref() == Some(second.as_str())).then_some(())
        },
    )
    .await;
    let seen = runtime.requests();
    assert_signed_by_one_of(&seen, &issuer.all_creds(), REGION, "bedrock").await;
    assert_no_dummy(&seen);
}

#[tokio::test]
async fn container_credentials_with_an_inline_authorization_token() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::start().await;
    let issuer = Issuer::new("ECSC", 3600);
    let agent = aws::container(ContainerToken::Value("inline-token".into()), issuer.clone()).await;
    let full_uri = format!("{}{CONTAINER_PATH}", agent.url);
    let sidekey = start_in(
        dir.path(),
        &bedrock_route(&runtime, ""),
        env(&[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full_uri),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "inline-token"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]),
    )
    .await;
    assert_ok_from(&converse_raw(&sidekey, "bedrock", "").await, &issuer);
    issuer.assert_no_problems();
    assert_eq!(issuer.fetch_count(), 1);
    assert_signed(
        &runtime.requests(),
        &issuer.creds(1).unwrap(),
        REGION,
        "bedrock",
    )
    .await;
}

// --- EC2 instance metadata ------------------------------------------------

#[tokio::test]
async fn imdsv2_credentials_come_from_the_metadata_endpoint_with_a_session_token() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::start().await;
    let issuer = Issuer::new("IMDS", 3600);
    let metadata = aws::imds(issuer.clone()).await;
    let sidekey = start_in(
        dir.path(),
        &bedrock_route(&runtime, ""),
        env(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &metadata.url)]),
    )
    .await;
    assert_ok_from(&converse_raw(&sidekey, "bedrock", "").await, &issuer);
    issuer.assert_no_problems();
    assert_eq!(issuer.fetch_count(), 1);
    let asked = metadata.requests();
    assert_eq!(
        asked[0].method,
        http::Method::PUT,
        "IMDSv2: the session token first"
    );
    assert_eq!(asked[0].uri.path(), "/latest/api/token");
    assert!(
        asked
            .iter()
            .any(|r| r.uri.path()
                == format!("/latest/meta-data/iam/security-credentials/{IMDS_ROLE}")),
        "{asked:?}"
    );
    let seen = runtime.requests();
    assert_signed(&seen, &issuer.creds(1).unwrap(), REGION, "bedrock").await;
    assert_no_dummy(&seen);
}

#[tokio::test]
async fn instance_metadata_is_not_asked_when_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::start().await;
    let issuer = Issuer::new("IMDS", 3600);
    let metadata = aws::imds(issuer.clone()).await;
    let config = dir.path().join("sidekey.toml");
    std::fs::write(
        &config,
        common::sidekey::with_ephemeral_ports(&bedrock_route(&runtime, "")),
    )
    .unwrap();
    // With no credential source at all, sidekey may refuse to start or
    // answer without reaching the provider; either way IMDS is left alone.
    let started = sidekey::Server::start(sidekey::Options {
        config: sidekey::ConfigSource::File(config.clone()),
        env: Arc::new(env(&[
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &metadata.url),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ])),
        overrides: sidekey::Overrides::default(),
    })
    .await;
    if let Ok(server) = started {
        let addr = server.proxy_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let resp = client::post_json(
            &format!("http://{addr}/bedrock{CONVERSE}"),
            &[],
            r#"{"messages":[]}"#,
        )
        .await;
        assert_ne!(resp.status, 200, "{}", resp.text());
        assert!(runtime.requests().is_empty());
        let _ = stop.send(());
        task.await.unwrap();
    }
    assert!(metadata.requests().is_empty(), "{:?}", metadata.requests());
}

// --- Static credentials from files -----------------------------------------

#[tokio::test]
async fn static_credential_files_rotated_kubelet_style_sign_the_later_requests() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::start().await;
    let a = Creds::new("AKIAROTATEDAAAAAAAAA", "secret-a/one+1", Some("session-a"));
    let b = Creds::new("AKIAROTATEDBBBBBBBBB", "secret-b/two+2", Some("session-b"));
    let files = |c: &Creds| {
        [
            ("access_key_id", c.access_key_id.clone()),
            ("secret_access_key", c.secret_access_key.clone()),
            ("session_token", c.session_token.clone().unwrap()),
        ]
    };
    let mut volume = SecretVolume::create(&dir.path().join("secrets/aws"), &[]);
    volume.update(&files(&a).each_ref().map(|(k, v)| (*k, v.as_str())));
    let extra = format!(
        "credentials = {{ access_key_id = \"{}\", secret_access_key = \"{}\", session_token = \"{}\" }}\n",
        volume.location("access_key_id"),
        volume.location("secret_access_key"),
        volume.location("session_token"),
    );
    // A decoy in the environment: the route's own credentials win.
    let sidekey = start_in(
        dir.path(),
        &bedrock_route(&runtime, &extra),
        env(&[
            ("AWS_ACCESS_KEY_ID", "AKIADECOYDECOYDECOY0"),
            ("AWS_SECRET_ACCESS_KEY", "decoy"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]),
    )
    .await;
    assert_ok(&converse_raw(&sidekey, "bedrock", "").await);
    assert_signed(&runtime.requests(), &a, REGION, "bedrock").await;

    volume.update(&files(&b).each_ref().map(|(k, v)| (*k, v.as_str())));
    common::eventually("requests signed with the rotated files", WAIT, || async {
        assert_ok(&converse_raw(&sidekey, "bedrock", "").await);
        (access_key_id(&runtime.mock.last()).as_deref() == Some(b.access_key_id.as_str()))
            .then_some(())
    })
    .await;
    let from = runtime.requests().len();
    for _ in 0..5 {
        assert_ok(&converse_raw(&sidekey, "bedrock", "").await);
    }
    let seen = runtime.requests();
    // Every request verifies with the set its key id names: no request
    // mixes the new key id with the old secret or token.
    assert_signed_by_one_of(&seen, &[a.clone(), b.clone()], REGION, "bedrock").await;
    assert_signed(&seen[from..], &b, REGION, "bedrock").await;
    assert_no_dummy(&seen);
}

// --- Bedrock API keys ------------------------------------------------------

fn assert_bearer_only(r: &Recorded, key: &str) {
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {key}").as_str())
    );
    for h in ["x-amz-date", "x-amz-security-token", "x-amz-content-sha256"] {
        assert_eq!(r.header(h), None, "{h} with an API key");
    }
}

#[tokio::test]
async fn a_bedrock_api_key_is_sent_as_bearer_without_signing_and_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::start().await;
    let mut volume = SecretVolume::create(
        &dir.path().join("secrets/bedrock"),
        &[("api-key", "bedrock-api-key-1")],
    );
    let extra = format!("key = \"{}\"\n", volume.location("api-key"));
    let sidekey = start_in(
        dir.path(),
        &bedrock_route(&runtime, &extra),
        env_credentials(false),
    )
    .await;
    assert_ok(&converse_raw(&sidekey, "bedrock", "").await);
    let out = boto3("bedrock-converse", &sidekey.url("/bedrock"), None).await;
    assert_eq!(out["text"], "hello", "{out}");
    for r in &runtime.requests() {
        assert_bearer_only(r, "bedrock-api-key-1");
    }
    assert_no_dummy(&runtime.requests());

    volume.update(&[("api-key", "bedrock-api-key-2")]);
    common::eventually("the rotated API key", WAIT, || async {
        assert_ok(&converse_raw(&sidekey, "bedrock", "").await);
        (runtime.mock.last().header("authorization") == Some("Bearer bedrock-api-key-2"))
            .then_some(())
    })
    .await;
    assert_bearer_only(&runtime.mock.last(), "bedrock-api-key-2");
}

#[tokio::test]
async fn a_rejected_bedrock_api_key_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::start().await;
    runtime.reject("bedrock-key-primary");
    let primary = common::write_key(dir.path(), "primary", "bedrock-key-primary");
    let fallback = common::write_key(dir.path(), "fallback", "bedrock-key-fallback");
    let extra =
        format!("key = {{ default = \"path::{primary}\", fallback = \"path::{fallback}\" }}\n");
    let sidekey = start_in(
        dir.path(),
        &bedrock_route(&runtime, &extra),
        MapEnv::default(),
    )
    .await;
    let resp = converse_raw(&sidekey, "bedrock", "").await;
    assert_ok(&resp);
    assert_eq!(
        resp.json()["output"]["message"]["content"][0]["text"],
        "hello"
    );
    let seen = runtime.requests();
    assert_bearer_only(&seen[0], "bedrock-key-primary");
    assert_bearer_only(seen.last().unwrap(), "bedrock-key-fallback");
    assert!(seen.len() <= 3, "{} attempts", seen.len());
}

// --- The model allowlist ---------------------------------------------------

#[tokio::test]
async fn the_model_allowlist_reads_bedrock_model_ids_and_encoded_arns() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::start().await;
    let arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0";
    let extra = format!("models = [\"{}\", \"{arn}\"]\n", aws::MODEL);
    let sidekey = start_in(
        dir.path(),
        &bedrock_route(&runtime, &extra),
        env_credentials(false),
    )
    .await;
    assert_ok(&converse_raw(&sidekey, "bedrock", "").await);
    // boto3 percent-encodes an ARN model id whole, '/' included.
    let encoded = "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-haiku-20240307-v1%3A0";
    let resp = client::post_json(
        &sidekey.url(&format!("/bedrock/model/{encoded}/converse")),
        &[],
        r#"{"messages":[]}"#,
    )
    .await;
    assert_ok(&resp);
    assert_eq!(
        runtime.mock.last().uri.path(),
        format!("/model/{encoded}/converse")
    );
    let resp = client::post_json(
        &sidekey.url("/bedrock/model/amazon.titan-text-express-v1/converse"),
        &[],
        r#"{"messages":[]}"#,
    )
    .await;
    assert_eq!(
        (resp.status.as_u16(), resp.error_code().as_str()),
        (403, "model_not_allowed")
    );
    assert_eq!(runtime.requests().len(), 2);
    assert_signed(
        &runtime.requests(),
        &Creds::new(AKID, SECRET, None),
        REGION,
        "bedrock",
    )
    .await;
}

// --- sidekey check ---------------------------------------------------------

/// (environment, what `check` must say, secrets it must not print)
type CheckCase<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>, Vec<&'a str>);

async fn check(config: &std::path::Path, env: &[(&str, &str)]) -> (i32, String) {
    let out = common::process::command(&["check", "--config", config.to_str().unwrap()], env)
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
async fn check_names_the_chain_source_offline_and_prints_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::new("CHCK", 3600);
    let volume = SecretVolume::create(
        &dir.path().join("tokens"),
        &[
            ("token", "web-identity-token-secret"),
            ("pod", "pod-token-secret"),
        ],
    );
    let sts = aws::sts(volume.path("token"), issuer.clone()).await;
    let agent = aws::container(ContainerToken::File(volume.path("pod")), issuer.clone()).await;
    let metadata = aws::imds(issuer.clone()).await;
    let api_key = common::write_key(dir.path(), "api-key", "bedrock-api-key-secret");
    let config = dir.path().join("sidekey.toml");
    std::fs::write(
        &config,
        format!(
            "[routes.bedrock]\ntype = \"bedrock\"\nregion = \"{REGION}\"\n\
             [routes.sagemaker]\ntype = \"sagemaker\"\nregion = \"{REGION}\"\n\
             [routes.bedrock-key]\ntype = \"bedrock\"\nregion = \"{REGION}\"\nkey = \"path::{api_key}\"\n"
        ),
    )
    .unwrap();
    let token_file = volume.path("token").display().to_string();
    let pod_file = volume.path("pod").display().to_string();
    let full_uri = format!("{}{CONTAINER_PATH}", agent.url);
    assert!(AKID.ends_with(AKID_TAIL));
    let cases: [CheckCase<'_>; 4] = [
        (
            vec![
                ("AWS_ACCESS_KEY_ID", AKID),
                ("AWS_SECRET_ACCESS_KEY", SECRET),
                ("AWS_SESSION_TOKEN", SESSION_TOKEN),
            ],
            vec!["environment", AKID_TAIL],
            vec![AKID, SECRET, SESSION_TOKEN],
        ),
        (
            vec![
                ("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file),
                ("AWS_ROLE_ARN", ROLE_ARN),
                ("AWS_ENDPOINT_URL_STS", &sts.url),
            ],
            vec!["web identity", ROLE_ARN],
            vec!["web-identity-token-secret"],
        ),
        (
            vec![
                ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full_uri),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &pod_file),
            ],
            vec!["container"],
            vec!["pod-token-secret"],
        ),
        (
            vec![("AWS_EC2_METADATA_SERVICE_ENDPOINT", &metadata.url)],
            vec!["instance metadata"],
            vec![],
        ),
    ];
    for (vars, says, secrets) in cases {
        let (code, out) = check(&config, &vars).await;
        assert_eq!(code, 0, "with {vars:?}:\n{out}");
        for s in says {
            assert!(out.contains(s), "with {vars:?}, no {s:?} in:\n{out}");
        }
        for s in secrets.iter().chain(&["bedrock-api-key-secret"]) {
            assert!(
                !out.contains(s),
                "with {vars:?}, check printed {s:?}:\n{out}"
            );
        }
    }
    assert_eq!(issuer.fetch_count(), 0, "check is offline");
    assert!(
        sts.requests().is_empty() && agent.requests().is_empty() && metadata.requests().is_empty()
    );
}
