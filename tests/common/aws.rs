//! AWS-shaped mocks for the Bedrock and SageMaker tests, and the
//! independent check of what sidekey signed.
//!
//! - [`Runtime`]: Bedrock runtime and SageMaker runtime: Converse, ConverseStream and
//!   InvokeModel(WithResponseStream) answers (the streams as binary
//!   `application/vnd.amazon.eventstream` frames, sent a gap apart), SageMaker
//!   InvokeEndpoint echoing its body, and 403 `UnrecognizedClientException` for
//!   the credentials a test marks as rejected.
//! - [`Issuer`] with [`sts`] (AssumeRoleWithWebIdentity, checking the web-identity
//!   token against the file's current content), [`container`] (EKS Pod Identity
//!   and ECS, checking the authorization token) and [`imds`] (EC2 IMDSv2, session
//!   token first): each call mints fresh credentials with a distinct access key id.
//! - [`verify`] and friends: the requests a mock recorded, fed to
//!   `tests/aws/verify_sigv4.py`, where botocore recomputes each SigV4 signature
//!   from exactly what arrived.
//! - [`boto3`]: runs a case of `tests/aws/clients.py` (boto3 pointed at a URL).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;

use super::mock::{Mock, Recorded, Reply, Transport};
use super::sidekey::Running;

/// A Bedrock model id, as the app names it.
pub const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";
/// The same id in a request path, as boto3 encodes it (`:` as `%3A`).
pub const MODEL_IN_PATH: &str = "anthropic.claude-3-haiku-20240307-v1%3A0";
/// The Converse path after the route prefix.
pub const CONVERSE: &str = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";
/// The SageMaker endpoint `clients.py` invokes.
pub const ENDPOINT_NAME: &str = "my-endpoint";
/// The path of the credentials on the container-credentials mock (Pod Identity's).
pub const CONTAINER_PATH: &str = "/v1/credentials";
/// The role the IMDS mock names.
pub const IMDS_ROLE: &str = "sidekey-node-role";
/// The role ARN the IRSA tests set.
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/sidekey-bedrock";

/// One set of AWS credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creds {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl Creds {
    pub fn new(access_key_id: &str, secret_access_key: &str, session_token: Option<&str>) -> Self {
        Self {
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret_access_key.to_owned(),
            session_token: session_token.map(str::to_owned),
        }
    }

    /// The same, with another secret (the oracle must then refuse).
    pub fn with_secret(&self, secret: &str) -> Self {
        Self {
            secret_access_key: secret.to_owned(),
            ..self.clone()
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "session_token": self.session_token,
        })
    }
}

/// The access key id that signed `r` (from its SigV4 `Authorization`).
pub fn access_key_id(r: &Recorded) -> Option<String> {
    let auth = r.header("authorization")?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 Credential=")?;
    Some(rest.split('/').next()?.to_owned())
}

/// The credential `r` carries: the signing access key id, or a Bedrock API
/// key (`Authorization: Bearer <key>`).
pub fn credential_of(r: &Recorded) -> Option<String> {
    access_key_id(r).or_else(|| {
        r.header("authorization")?
            .strip_prefix("Bearer ")
            .map(str::to_owned)
    })
}

/// Panics if anything the app sent as a dummy (headers or URL containing
/// `dummy`) reached the provider.
pub fn assert_no_dummy(requests: &[Recorded]) {
    for r in requests {
        let all = format!("{:?} {}", r.headers, r.path_and_query());
        assert!(
            !all.to_ascii_lowercase().contains("dummy"),
            "a dummy credential reached the provider: {all}"
        );
    }
}

/// `(name, value)` pairs of every header of `r`, as received.
fn header_pairs(r: &Recorded) -> Vec<(String, String)> {
    r.headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

// --- The Bedrock / SageMaker runtime mock --------------------------------

/// One binary event-stream message (`application/vnd.amazon.eventstream`):
/// prelude (total length, headers length, CRC32 of both), headers
/// (`:event-type`, `:content-type`, `:message-type`, all strings), the JSON
/// payload, and the CRC32 of everything before it.
pub fn event_frame(event_type: &str, payload: &serde_json::Value) -> Bytes {
    let mut headers = Vec::new();
    for (name, value) in [
        (":event-type", event_type),
        (":content-type", "application/json"),
        (":message-type", "event"),
    ] {
        headers.push(u8::try_from(name.len()).unwrap());
        headers.extend_from_slice(name.as_bytes());
        headers.push(7); // string
        headers.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        headers.extend_from_slice(value.as_bytes());
    }
    let payload = payload.to_string().into_bytes();
    let total = 12 + headers.len() + payload.len() + 4;
    let mut frame = Vec::with_capacity(total);
    frame.extend_from_slice(&u32::try_from(total).unwrap().to_be_bytes());
    frame.extend_from_slice(&u32::try_from(headers.len()).unwrap().to_be_bytes());
    let prelude_crc = crc32(&frame);
    frame.extend_from_slice(&prelude_crc.to_be_bytes());
    frame.extend_from_slice(&headers);
    frame.extend_from_slice(&payload);
    let message_crc = crc32(&frame);
    frame.extend_from_slice(&message_crc.to_be_bytes());
    Bytes::from(frame)
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

/// The text the mock's answers carry, split into stream deltas.
pub const TEXT: [&str; 2] = ["hel", "lo"];

/// The ConverseStream events, one frame each.
pub fn converse_stream_frames() -> Vec<Bytes> {
    let mut frames = vec![event_frame(
        "messageStart",
        &serde_json::json!({"role": "assistant"}),
    )];
    for t in TEXT {
        frames.push(event_frame(
            "contentBlockDelta",
            &serde_json::json!({"contentBlockIndex": 0, "delta": {"text": t}}),
        ));
    }
    frames.push(event_frame(
        "contentBlockStop",
        &serde_json::json!({"contentBlockIndex": 0}),
    ));
    frames.push(event_frame(
        "messageStop",
        &serde_json::json!({"stopReason": "end_turn"}),
    ));
    frames.push(event_frame(
        "metadata",
        &serde_json::json!({"usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3}, "metrics": {"latencyMs": 1}}),
    ));
    frames
}

fn invoke_stream_frames() -> Vec<Bytes> {
    TEXT.iter()
        .map(|t| {
            let chunk = serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}});
            event_frame(
                "chunk",
                &serde_json::json!({"bytes": STANDARD.encode(chunk.to_string())}),
            )
        })
        .collect()
}

/// An AWS JSON-protocol error as Bedrock sends it: the code only in
/// `x-amzn-ErrorType` (with Coral's namespace suffix), a bare message in the body.
fn aws_error(status: u16, kind: &str, message: &str) -> Reply {
    Reply::Full {
        status,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            (
                "x-amzn-errortype".into(),
                format!("{kind}:http://internal.amazon.com/coral/com.amazon.coral.service/"),
            ),
        ],
        body: Bytes::from(serde_json::json!({ "message": message }).to_string()),
    }
}

/// The answer of Bedrock runtime / SageMaker runtime to `r`.
fn runtime_answer(r: &Recorded, rejected: &HashSet<String>, gap: Duration) -> Reply {
    let Some(credential) = credential_of(r) else {
        return aws_error(
            403,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        );
    };
    if rejected.contains(&credential) {
        return aws_error(
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        );
    }
    let path = r.uri.path();
    if r.method != http::Method::POST {
        return aws_error(404, "UnknownOperationException", "mock: POST only");
    }
    if path.starts_with("/endpoints/") && path.ends_with("/invocations") {
        return Reply::Full {
            status: 200,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                (
                    "x-amzn-invoked-production-variant".into(),
                    "AllTraffic".into(),
                ),
            ],
            body: r.body.clone(),
        };
    }
    let Some((_model, op)) = path
        .strip_prefix("/model/")
        .and_then(|rest| rest.rsplit_once('/'))
    else {
        return aws_error(404, "UnknownOperationException", "mock: unknown path");
    };
    let stream = |frames: Vec<Bytes>| Reply::Stream {
        status: 200,
        headers: vec![(
            "content-type".into(),
            "application/vnd.amazon.eventstream".into(),
        )],
        chunks: frames,
        gap,
    };
    match op {
        "converse" => Reply::json(
            200,
            serde_json::json!({
                "output": {"message": {"role": "assistant", "content": [{"text": TEXT.concat()}]}},
                "stopReason": "end_turn",
                "usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3},
                "metrics": {"latencyMs": 1},
            })
            .to_string(),
        ),
        "converse-stream" => stream(converse_stream_frames()),
        "invoke" => Reply::json(
            200,
            serde_json::json!({
                "id": "msg_1", "type": "message", "role": "assistant",
                "content": [{"type": "text", "text": TEXT.concat()}],
                "stop_reason": "end_turn",
            })
            .to_string(),
        ),
        "invoke-with-response-stream" => stream(invoke_stream_frames()),
        _ => aws_error(404, "UnknownOperationException", "mock: unknown operation"),
    }
}

/// A Bedrock / SageMaker runtime. Streams send one event frame per chunk,
/// `gap` apart.
pub struct Runtime {
    pub mock: Mock,
    rejected: Arc<Mutex<HashSet<String>>>,
}

impl Runtime {
    /// Plain HTTP, with 300 ms between stream events.
    pub async fn start() -> Self {
        Self::start_with(Transport::Plain, Duration::from_millis(300)).await
    }

    pub async fn start_with(transport: Transport<'_>, gap: Duration) -> Self {
        let rejected: Arc<Mutex<HashSet<String>>> = Arc::default();
        let r = rejected.clone();
        let mock = Mock::start(transport, move |req| {
            let rejected = r.lock().unwrap().clone();
            runtime_answer(req, &rejected, gap)
        })
        .await;
        Self { mock, rejected }
    }

    /// Answers 403 `UnrecognizedClientException` from now on to requests
    /// signed with this access key id (or carrying this Bedrock API key).
    pub fn reject(&self, credential: &str) {
        self.rejected.lock().unwrap().insert(credential.to_owned());
    }

    pub fn url(&self) -> &str {
        &self.mock.url
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.mock.requests()
    }
}

// --- Credential endpoints -------------------------------------------------

/// Credentials an endpoint handed out, and when they expire.
#[derive(Clone, Debug)]
pub struct Issued {
    pub creds: Creds,
    pub expires: SystemTime,
}

/// One credential request that an endpoint answered (or refused).
#[derive(Clone, Debug)]
pub struct Fetch {
    pub at: SystemTime,
    /// The web-identity token (STS) or authorization token (container) it carried.
    pub token: Option<String>,
}

/// What the STS, container and IMDS mocks share: the credentials they mint
/// (numbered, so a test knows the n-th access key id in advance), every
/// fetch, and every protocol problem seen (which should stay empty).
#[derive(Debug)]
pub struct Issuer {
    /// Four capital letters in every access key id (`ASIA` + tag + number).
    tag: &'static str,
    /// Lifetime of the credentials minted, seconds.
    pub lifetime: AtomicU64,
    /// Delay before answering, milliseconds.
    pub delay_ms: AtomicU64,
    /// When set, credential requests fail with 503.
    pub outage: AtomicBool,
    issued: Mutex<Vec<Issued>>,
    fetches: Mutex<Vec<Fetch>>,
    problems: Mutex<Vec<String>>,
}

impl Issuer {
    pub fn new(tag: &'static str, lifetime_secs: u64) -> Arc<Self> {
        assert_eq!(tag.len(), 4);
        Arc::new(Self {
            tag,
            lifetime: AtomicU64::new(lifetime_secs),
            delay_ms: AtomicU64::new(0),
            outage: AtomicBool::new(false),
            issued: Mutex::default(),
            fetches: Mutex::default(),
            problems: Mutex::default(),
        })
    }

    /// The access key id of the `n`-th credentials minted (from 1): 20
    /// characters, as AWS's are.
    pub fn akid(&self, n: usize) -> String {
        format!("ASIA{}{n:012}", self.tag)
    }

    /// The `n`-th credentials minted (from 1), if minted yet.
    pub fn creds(&self, n: usize) -> Option<Creds> {
        let issued = self.issued.lock().unwrap();
        n.checked_sub(1)
            .and_then(|i| issued.get(i))
            .map(|i| i.creds.clone())
    }

    pub fn issued(&self) -> Vec<Issued> {
        self.issued.lock().unwrap().clone()
    }

    pub fn all_creds(&self) -> Vec<Creds> {
        self.issued().into_iter().map(|i| i.creds).collect()
    }

    /// Credential requests received (answered or not).
    pub fn fetches(&self) -> Vec<Fetch> {
        self.fetches.lock().unwrap().clone()
    }

    pub fn fetch_count(&self) -> usize {
        self.fetches.lock().unwrap().len()
    }

    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap().clone()
    }

    /// Panics if any credential request broke the protocol.
    pub fn assert_no_problems(&self) {
        let problems = self.problems();
        assert!(
            problems.is_empty(),
            "credential endpoint saw: {problems:#?}"
        );
    }

    fn problem(&self, p: String) {
        self.problems.lock().unwrap().push(p);
    }

    fn record(&self, token: Option<String>) {
        self.fetches.lock().unwrap().push(Fetch {
            at: SystemTime::now(),
            token,
        });
    }

    fn mint(&self) -> Issued {
        let mut issued = self.issued.lock().unwrap();
        let n = issued.len() + 1;
        let lifetime = self.lifetime.load(Ordering::Relaxed);
        // Expiration is whole seconds on the wire: round down so the mock's
        // idea of expiry is the one sidekey reads.
        let expires = UNIX_EPOCH + Duration::from_secs(unix_now() + lifetime);
        let creds = Creds {
            access_key_id: self.akid(n),
            secret_access_key: format!("{}-secret/{n}+{}", self.tag.to_lowercase(), unix_now()),
            session_token: Some(format!("{}-session-token-{n}", self.tag.to_lowercase())),
        };
        let i = Issued { creds, expires };
        issued.push(i.clone());
        i
    }

    fn delayed(&self, reply: Reply) -> Reply {
        match self.delay_ms.load(Ordering::Relaxed) {
            0 => reply,
            ms => Reply::After(Duration::from_millis(ms), Box::new(reply)),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `t` as RFC 3339 UTC with whole seconds (`2026-12-06T21:00:00Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = i64::try_from(days).unwrap() + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(v) = hex {
                    out.push(v);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An `application/x-www-form-urlencoded` body, decoded.
pub fn form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// The file's content, as the credential provider should send it.
fn read_token(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("mock: cannot read {}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// STS `AssumeRoleWithWebIdentity`: a POST form with `Action`, `Version`,
/// `RoleArn`, `RoleSessionName` and `WebIdentityToken`, which must equal the
/// current content of `token_file` (the kubelet rotates it; sidekey must
/// re-read it). Answers STS's XML with fresh credentials.
pub async fn sts(token_file: PathBuf, issuer: Arc<Issuer>) -> Mock {
    Mock::start(Transport::Plain, move |r| {
        let f = form(&r.body);
        issuer.record(f.get("WebIdentityToken").cloned());
        let fail = |issuer: &Issuer, problem: String, code: &str| {
            issuer.problem(problem.clone());
            Reply::Full {
                status: 400,
                headers: vec![("content-type".into(), "text/xml".into())],
                body: Bytes::from(format!(
                    "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{problem}</Message></Error></ErrorResponse>"
                )),
            }
        };
        if r.method != http::Method::POST {
            return fail(&issuer, format!("STS called with {}", r.method), "InvalidAction");
        }
        for (field, want) in [
            ("Action", Some("AssumeRoleWithWebIdentity")),
            ("Version", Some("2011-06-15")),
            ("RoleArn", Some(ROLE_ARN)),
            ("RoleSessionName", None),
        ] {
            match (f.get(field), want) {
                (None, _) => return fail(&issuer, format!("no {field} in {f:?}"), "MissingParameter"),
                (Some(v), Some(want)) if v != want => {
                    return fail(&issuer, format!("{field} = {v:?}, expected {want:?}"), "InvalidParameterValue");
                }
                (Some(v), None) if v.is_empty() => {
                    return fail(&issuer, format!("empty {field}"), "InvalidParameterValue");
                }
                _ => {}
            }
        }
        let current = read_token(&token_file);
        match f.get("WebIdentityToken") {
            Some(t) if *t == current => {}
            other => {
                return fail(
                    &issuer,
                    format!("WebIdentityToken {other:?} is not the token file's current content {current:?}"),
                    "InvalidIdentityToken",
                );
            }
        }
        if issuer.outage.load(Ordering::Relaxed) {
            return issuer.delayed(Reply::Full {
                status: 503,
                headers: vec![("content-type".into(), "text/xml".into())],
                body: Bytes::from("<ErrorResponse><Error><Type>Receiver</Type><Code>ServiceUnavailable</Code><Message>outage</Message></Error></ErrorResponse>"),
            });
        }
        let Issued { creds, expires } = issuer.mint();
        let session = f.get("RoleSessionName").cloned().unwrap_or_default();
        let xml = format!(
            r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:default:app</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/sidekey-bedrock/{session}</Arn>
      <AssumedRoleId>AROAEXAMPLEROLEID:{session}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>{akid}</AccessKeyId>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <SessionToken>{token}</SessionToken>
      <Expiration>{expiration}</Expiration>
    </Credentials>
    <Provider>arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/TEST</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata>
    <RequestId>00000000-0000-0000-0000-000000000000</RequestId>
  </ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>
"#,
            akid = creds.access_key_id,
            secret = creds.secret_access_key,
            token = creds.session_token.as_deref().unwrap_or_default(),
            expiration = rfc3339(expires),
        );
        issuer.delayed(Reply::Full {
            status: 200,
            headers: vec![("content-type".into(), "text/xml".into())],
            body: Bytes::from(xml),
        })
    })
    .await
}

/// Where the container-credentials endpoint expects its authorization token.
#[derive(Clone, Debug)]
pub enum ContainerToken {
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`: the file's current content.
    File(PathBuf),
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
    Value(String),
    /// None (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, ECS).
    None,
}

/// The credential JSON of the container endpoint and IMDS.
fn creds_json(i: &Issued, imds: bool) -> String {
    let mut v = serde_json::json!({
        "AccessKeyId": i.creds.access_key_id,
        "SecretAccessKey": i.creds.secret_access_key,
        "Token": i.creds.session_token,
        "Expiration": rfc3339(i.expires),
    });
    if imds {
        v["Code"] = "Success".into();
        v["Type"] = "AWS-HMAC".into();
        v["LastUpdated"] = rfc3339(SystemTime::now()).into();
    } else {
        v["AccountId"] = "123456789012".into();
        v["RoleArn"] = ROLE_ARN.into();
    }
    v.to_string()
}

/// The container-credentials endpoint (EKS Pod Identity agent, ECS): GET
/// [`CONTAINER_PATH`] with `Authorization` equal to `token` answers the
/// credentials as JSON; a wrong or missing token gets 401.
pub async fn container(token: ContainerToken, issuer: Arc<Issuer>) -> Mock {
    Mock::start(Transport::Plain, move |r| {
        let got = r.header("authorization").map(str::to_owned);
        issuer.record(got.clone());
        let want = match &token {
            ContainerToken::File(path) => Some(read_token(path)),
            ContainerToken::Value(v) => Some(v.clone()),
            ContainerToken::None => None,
        };
        if r.method != http::Method::GET || r.uri.path() != CONTAINER_PATH {
            issuer.problem(format!(
                "container endpoint called with {} {}",
                r.method,
                r.path_and_query()
            ));
            return Reply::json(404, r#"{"message":"not found"}"#);
        }
        if got != want {
            issuer.problem(format!("Authorization {got:?}, expected {want:?}"));
            return Reply::json(401, r#"{"message":"invalid authorization token"}"#);
        }
        if issuer.outage.load(Ordering::Relaxed) {
            return issuer.delayed(Reply::json(503, r#"{"message":"outage"}"#));
        }
        issuer.delayed(Reply::json(200, creds_json(&issuer.mint(), false)))
    })
    .await
}

/// EC2 instance metadata, IMDSv2 only: `PUT /latest/api/token` with
/// `X-aws-ec2-metadata-token-ttl-seconds` answers a session token; every GET
/// must carry it in `X-aws-ec2-metadata-token` (401 otherwise, as IMDSv2-only
/// instances do). `/latest/meta-data/iam/security-credentials/` names
/// [`IMDS_ROLE`], and that role's path answers the credentials. The extended
/// credentials API answers 404, as on instances without it.
pub async fn imds(issuer: Arc<Issuer>) -> Mock {
    let sessions: Arc<Mutex<Vec<String>>> = Arc::default();
    Mock::start(Transport::Plain, move |r| {
        let path = r.uri.path();
        if r.method == http::Method::PUT && path == "/latest/api/token" {
            let ttl = r
                .header("x-aws-ec2-metadata-token-ttl-seconds")
                .and_then(|v| v.parse::<u32>().ok());
            if !ttl.is_some_and(|t| (1..=21_600).contains(&t)) {
                issuer.problem(format!("token PUT with ttl {ttl:?}"));
                return Reply::json(400, "");
            }
            let mut sessions = sessions.lock().unwrap();
            let token = format!("imds-session-{}", sessions.len() + 1);
            sessions.push(token.clone());
            return Reply::Full {
                status: 200,
                headers: vec![
                    ("content-type".into(), "text/plain".into()),
                    (
                        "x-aws-ec2-metadata-token-ttl-seconds".into(),
                        ttl.unwrap().to_string(),
                    ),
                ],
                body: Bytes::from(token),
            };
        }
        let token = r.header("x-aws-ec2-metadata-token");
        if r.method != http::Method::GET {
            issuer.problem(format!("{} {path}", r.method));
            return Reply::json(405, "");
        }
        if !token.is_some_and(|t| sessions.lock().unwrap().iter().any(|s| s == t)) {
            issuer.problem(format!(
                "GET {path} without a valid IMDSv2 session token ({token:?})"
            ));
            return Reply::Full {
                status: 401,
                headers: vec![],
                body: Bytes::new(),
            };
        }
        let text = |body: &str| Reply::Full {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: Bytes::from(body.to_owned()),
        };
        match path.strip_prefix("/latest/meta-data/iam/security-credentials/") {
            Some("") => text(IMDS_ROLE),
            Some(IMDS_ROLE) => {
                issuer.record(token.map(str::to_owned));
                if issuer.outage.load(Ordering::Relaxed) {
                    return issuer.delayed(Reply::json(503, ""));
                }
                issuer.delayed(Reply::json(200, creds_json(&issuer.mint(), true)))
            }
            _ => Reply::Full {
                status: 404,
                headers: vec![],
                body: Bytes::new(),
            },
        }
    })
    .await
}

// --- The oracle ------------------------------------------------------------

/// One verdict of `verify_sigv4.py`.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub ok: bool,
    pub why: String,
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/aws")
        .join(name)
}

/// Runs `python tests/aws/<name> args...` with a clean environment (no AWS
/// variables or config files of the machine), `env` added and `stdin` fed;
/// panics unless it exits 0; returns stdout.
pub async fn run_script(name: &str, args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> String {
    let mut cmd = tokio::process::Command::new(super::python());
    cmd.arg(script(name))
        .args(args)
        .env_clear()
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied());
    #[allow(
        clippy::disallowed_methods,
        reason = "the child needs the machine's PATH (for nothing else)"
    )]
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    super::run_script(cmd, Some(stdin), &format!("{name} {args:?}")).await
}

/// The request as verify_sigv4.py takes it.
fn request_json(r: &Recorded) -> serde_json::Value {
    let host = r
        .header("host")
        .map(str::to_owned)
        .or_else(|| r.uri.authority().map(ToString::to_string))
        .expect("a request without a host");
    serde_json::json!({
        "method": r.method.as_str(),
        "url": format!("http://{host}{}", r.path_and_query()),
        "headers": header_pairs(r),
        "body_b64": STANDARD.encode(&r.body),
    })
}

/// botocore's verdict on each of `requests`, signed with `creds` for
/// `service` in `region`.
pub async fn verify(
    requests: &[Recorded],
    creds: &Creds,
    region: &str,
    service: &str,
) -> Vec<Verdict> {
    let doc = serde_json::json!({
        "credentials": creds.json(),
        "region": region,
        "service": service,
        "requests": requests.iter().map(request_json).collect::<Vec<_>>(),
    });
    let out = run_script("verify_sigv4.py", &[], &[], doc.to_string().as_bytes()).await;
    let verdicts: Vec<serde_json::Value> = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("verify_sigv4.py printed no verdicts ({e}): {out}"));
    assert_eq!(verdicts.len(), requests.len());
    verdicts
        .into_iter()
        .map(|v| Verdict {
            ok: v["ok"].as_bool().unwrap(),
            why: v["why"].as_str().unwrap().to_owned(),
        })
        .collect()
}

/// Panics unless botocore verifies every request as signed with `creds`.
pub async fn assert_signed(requests: &[Recorded], creds: &Creds, region: &str, service: &str) {
    assert!(!requests.is_empty(), "no request to verify");
    let verdicts = verify(requests, creds, region, service).await;
    let bad: Vec<String> = verdicts
        .iter()
        .zip(requests)
        .filter(|(v, _)| !v.ok)
        .map(|(v, r)| format!("{} {}: {}", r.method, r.path_and_query(), v.why))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests do not verify with {}'s secret:\n{}",
        bad.len(),
        requests.len(),
        creds.access_key_id,
        bad.join("\n")
    );
}

/// Panics if botocore verifies any request with a wrong secret: the oracle bites.
pub async fn assert_wrong_secret_fails(
    requests: &[Recorded],
    creds: &Creds,
    region: &str,
    service: &str,
) {
    let wrong = creds.with_secret(&format!("{}-wrong", creds.secret_access_key));
    let verdicts = verify(requests, &wrong, region, service).await;
    for (v, r) in verdicts.iter().zip(requests) {
        assert!(!v.ok, "{} verified with a wrong secret", r.path_and_query());
        assert!(v.why.contains("signature mismatch"), "{}", v.why);
    }
}

/// Verifies each request with the credentials among `known` whose access key
/// id signed it; panics if one was signed by an unknown key or does not verify.
pub async fn assert_signed_by_one_of(
    requests: &[Recorded],
    known: &[Creds],
    region: &str,
    service: &str,
) {
    assert!(!requests.is_empty(), "no request to verify");
    for r in requests {
        let akid = access_key_id(r)
            .unwrap_or_else(|| panic!("not SigV4-signed: {:?}", r.header("authorization")));
        let creds = known
            .iter()
            .find(|c| c.access_key_id == akid)
            .unwrap_or_else(|| panic!("signed by {akid}, none of {known:?}"));
        assert_signed(std::slice::from_ref(r), creds, region, service).await;
    }
}

/// Runs `clients.py case` against `endpoint` (dummy credentials unless
/// `creds`); returns the JSON line it printed.
pub async fn boto3(case: &str, endpoint: &str, creds: Option<&Creds>) -> serde_json::Value {
    let mut env = vec![("AWS_TEST_ENDPOINT", endpoint)];
    if let Some(c) = creds {
        env.push(("AWS_TEST_ACCESS_KEY_ID", &c.access_key_id));
        env.push(("AWS_TEST_SECRET_ACCESS_KEY", &c.secret_access_key));
        if let Some(t) = &c.session_token {
            env.push(("AWS_TEST_SESSION_TOKEN", t));
        }
    } else {
        // A dummy session token too: sidekey must drop it.
        env.push(("AWS_TEST_SESSION_TOKEN", "dummy-session-token"));
    }
    let out = run_script("clients.py", &[case], &env, b"").await;
    let line = out
        .lines()
        .last()
        .unwrap_or_else(|| panic!("{case} printed nothing"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{case}: not JSON ({e}): {line}"))
}

/// Checks what `clients.py bedrock-converse-stream` reported: every event, in
/// order, the text, and that the events arrived spread over the stream (at
/// least `min_spread` from the first to the last), not all at once.
pub fn assert_streamed(report: &serde_json::Value, min_spread: Duration) {
    let events: Vec<&str> = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "messageStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata"
        ],
        "{report}"
    );
    assert_eq!(report["text"], TEXT.concat(), "{report}");
    let last = report["events"].as_array().unwrap().last().unwrap()["at"]
        .as_f64()
        .unwrap();
    assert!(
        last >= min_spread.as_secs_f64(),
        "the last event came {last:.3} s after the first: the stream was buffered ({report})"
    );
}

// --- sidekey side ----------------------------------------------------------

/// A route `[routes.<name>]` of `ty` (`bedrock` or `sagemaker`) to `upstream`,
/// with `extra` lines.
pub fn route(name: &str, ty: &str, upstream: &str, extra: &str) -> String {
    format!("[routes.{name}]\ntype = \"{ty}\"\nupstream = \"{upstream}\"\n{extra}")
}

/// A raw Converse call through `route`, carrying the dummy signature an SDK
/// with dummy credentials sends (all of it must be replaced); `query` is
/// appended to the path as is.
pub async fn converse_raw(sidekey: &Running, route: &str, query: &str) -> super::client::Resp {
    let url = sidekey.url(&format!("/{route}{CONVERSE}{query}"));
    super::client::post_json(
        &url,
        &[
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=dummy/20200101/us-east-1/bedrock/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date, Signature=dummy",
            ),
            ("x-amz-date", "20200101T000000Z"),
            ("x-amz-security-token", "dummy-session-token"),
            ("x-amz-content-sha256", "dummy-payload-hash"),
        ],
        r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#,
    )
    .await
}

/// The value of metric `name` whose labels include all of `labels`, from
/// sidekey's `/metrics` (labels in any order).
pub async fn metric(sidekey: &Running, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = super::client::get(&sidekey.admin_url("/metrics"))
        .await
        .text();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (set, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let have: Vec<(&str, &str)> = set
            .split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.trim(), v.trim().trim_matches('"')))
            })
            .collect();
        labels
            .iter()
            .all(|want| have.contains(want))
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// The whole `/metrics` text (for failure messages).
pub async fn metrics_text(sidekey: &Running) -> String {
    super::client::get(&sidekey.admin_url("/metrics"))
        .await
        .text()
}
