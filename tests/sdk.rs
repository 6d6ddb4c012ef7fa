//! The official Python SDKs (openai, openai's AzureOpenAI, anthropic,
//! google-genai) drive sidekey with a dummy key and only their base URL
//! changed, against a TLS mock provider that answers in each provider's
//! format, for a normal and a streaming call.
//!
//! The SDKs come from `tests/sdk/requirements.txt`, installed into `.venv` by
//! `scripts/test` (or set `SIDEKEY_PYTHON` to an interpreter that has them).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::mock::{Mock, Recorded, Reply, Transport};
use common::sidekey::start_in;
use common::tls::TestPki;
use sidekey::MapEnv;

const TEXT: [&str; 3] = ["hello", " from", " mock"];

fn sse(events: Vec<String>) -> Reply {
    Reply::sse(events, Duration::from_millis(20))
}

fn wants_stream(r: &Recorded) -> bool {
    serde_json::from_slice::<serde_json::Value>(&r.body).is_ok_and(|v| v["stream"] == true)
}

/// Answers like the real providers do, by path.
fn provider(r: &Recorded) -> Reply {
    let path = r.uri.path();
    if path.ends_with("/chat/completions") {
        let chunk = |delta: serde_json::Value, finish: Option<&str>| {
            let c = serde_json::json!({
                "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
                "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
            });
            format!("data: {c}\n\n")
        };
        if wants_stream(r) {
            let mut events = vec![chunk(
                serde_json::json!({"role": "assistant", "content": ""}),
                None,
            )];
            events.extend(
                TEXT.iter()
                    .map(|t| chunk(serde_json::json!({"content": t}), None)),
            );
            events.push(chunk(serde_json::json!({}), Some("stop")));
            events.push("data: [DONE]\n\n".to_owned());
            return sse(events);
        }
        return Reply::json(
            200,
            serde_json::json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT.concat()}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
            })
            .to_string(),
        );
    }
    if path == "/v1/messages" {
        let usage = serde_json::json!({"input_tokens": 1, "output_tokens": 3});
        if wants_stream(r) {
            let event =
                |name: &str, data: serde_json::Value| format!("event: {name}\ndata: {data}\n\n");
            let mut events = vec![
                event(
                    "message_start",
                    serde_json::json!({"type": "message_start", "message": {
                    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                    "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage}}),
                ),
                event(
                    "content_block_start",
                    serde_json::json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
                ),
            ];
            events.extend(TEXT.iter().map(|t| {
                event(
                    "content_block_delta",
                    serde_json::json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": t}}),
                )
            }));
            events.push(event(
                "content_block_stop",
                serde_json::json!({"type": "content_block_stop", "index": 0}),
            ));
            events.push(event("message_delta", serde_json::json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 3}})));
            events.push(event(
                "message_stop",
                serde_json::json!({"type": "message_stop"}),
            ));
            return sse(events);
        }
        return Reply::json(
            200,
            serde_json::json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                "content": [{"type": "text", "text": TEXT.concat()}],
                "stop_reason": "end_turn", "stop_sequence": null, "usage": usage
            })
            .to_string(),
        );
    }
    let candidate = |text: &str| {
        serde_json::json!({
            "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 3, "totalTokenCount": 4},
            "modelVersion": "gemini-2.0-flash"
        })
    };
    if path.ends_with(":streamGenerateContent") {
        return sse(TEXT
            .iter()
            .map(|t| format!("data: {}\n\n", candidate(t)))
            .collect());
    }
    if path.ends_with(":generateContent") {
        return Reply::json(200, candidate(&TEXT.concat()).to_string());
    }
    Reply::json(404, r#"{"error":"mock: unknown path"}"#)
}

async fn run_case(case: &str, base: &str) -> Vec<serde_json::Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/clients.py");
    let mut cmd = tokio::process::Command::new(common::python());
    cmd.arg(script)
        .arg(case)
        .env("SIDEKEY_URL", base)
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("GOOGLE_API_KEY")
        .env_remove("GEMINI_API_KEY");
    common::run_json(cmd, &format!("{case}: SDK script")).await
}

#[tokio::test]
async fn official_sdks_work_through_sidekey() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let mock = Mock::start(Transport::Tls(&pki), provider).await;
    let config = format!(
        "ca_file = \"{ca}\"\n\
         [routes.openai]\ntype = \"openai\"\nupstream = \"{url}\"\nkey = \"env::OPENAI_KEY\"\n\
         [routes.azure]\ntype = \"azure\"\n[routes.azure.deployments.gpt-4o]\nendpoint = \"{url}\"\nkey = \"env::AZURE_KEY\"\n\
         [routes.anthropic]\ntype = \"anthropic\"\nupstream = \"{url}\"\nkey = \"env::ANTHROPIC_KEY\"\n\
         [routes.gemini]\ntype = \"gemini\"\nupstream = \"{url}\"\nkey = \"env::GEMINI_KEY\"\n",
        ca = pki.ca_file.display(),
        url = mock.url
    );
    let env = MapEnv::new([
        ("OPENAI_KEY", "sk-real-openai"),
        ("AZURE_KEY", "real-azure"),
        ("ANTHROPIC_KEY", "sk-ant-real"),
        ("GEMINI_KEY", "AIza-real"),
    ]);
    let sidekey = start_in(dir.path(), &config, env).await;
    let base = sidekey.url("");

    // (case, path the provider must see (the SDK picks the API version), header, value)
    let cases = [
        (
            "openai",
            "/v1/chat/completions",
            "authorization",
            "Bearer sk-real-openai",
        ),
        (
            "azure",
            "/openai/deployments/gpt-4o/chat/completions",
            "api-key",
            "real-azure",
        ),
        ("anthropic", "/v1/messages", "x-api-key", "sk-ant-real"),
        (
            "gemini",
            "/models/gemini-2.0-flash:",
            "x-goog-api-key",
            "AIza-real",
        ),
    ];
    for (case, path, header, value) in cases {
        let before = mock.requests().len();
        let calls = run_case(case, &base).await;
        assert_eq!(calls.len(), 2, "{case}: {calls:?}");
        assert!(
            calls[1]["chunks"].as_u64().unwrap() >= 2,
            "{case}: the stream came as one piece: {calls:?}"
        );

        let seen: Vec<Recorded> = mock.requests().into_iter().skip(before).collect();
        assert_eq!(seen.len(), 2, "{case}: the SDK made {} calls", seen.len());
        for r in &seen {
            assert!(
                r.uri.path().contains(path),
                "{case}: provider saw {}",
                r.path_and_query()
            );
            assert_eq!(r.header(header), Some(value), "{case}: wrong credential");
            assert_eq!(r.headers.get_all(header).iter().count(), 1);
            let all = format!("{:?} {}", r.headers, r.path_and_query());
            assert!(
                !all.contains("sidekey"),
                "{case}: the dummy key reached the provider: {all}"
            );
        }
    }
}

#[tokio::test]
async fn google_genai_in_vertex_mode_works_through_sidekey() {
    use common::google::{Account, Tokens, VertexOverTls, vertex_over_tls};
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let tokens = Tokens::new(3600);
    let account = Account::generate("sdk@proj.iam.gserviceaccount.com", "proj");
    tokens.trust(&account);
    let VertexOverTls {
        token_mock: _token_mock,
        vertex,
        config,
    } = vertex_over_tls(dir.path(), &pki, &tokens, &account).await;
    let sidekey = start_in(dir.path(), &config, MapEnv::default()).await;
    let calls = run_case("vertex", &sidekey.url("")).await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[1]["chunks"].as_u64().unwrap() >= 2, "{calls:?}");
    let seen = vertex.requests();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert!(
            r.uri.path().contains(
                "/projects/proj/locations/us-central1/publishers/google/models/gemini-2.0-flash:"
            ),
            "{}",
            r.path_and_query()
        );
        let auth = r.header("authorization").unwrap();
        assert!(
            auth.starts_with("Bearer ya29.test-"),
            "the provider got {auth}"
        );
    }
    assert!(tokens.problems.lock().unwrap().is_empty());
}
