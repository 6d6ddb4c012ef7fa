//! Every error sidekey answers itself: status, envelope and message, and that
//! no message carries a credential value.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::client::{self, request};
use common::mock::{Mock, Reply, Transport};
use common::sidekey::start_in;
use common::write_key;
use http::Method;
use sidekey::MapEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "sk-never-show-this-0123456789";

#[tokio::test]
async fn sidekey_errors_use_the_envelope_and_name_the_route() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |r| {
        if r.uri.path().ends_with("/hang") {
            Reply::Hang
        } else {
            Reply::ok()
        }
    })
    .await;
    // A port that refuses connections: bind, note it, close it.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let key = write_key(dir.path(), "key", SECRET);
    let config = format!(
        "[limits]\nrequest_timeout = \"1s\"\n\
         [routes.ok]\ntype = \"openai\"\nupstream = \"{url}\"\nkey = \"path::{key}\"\nmodels = [\"gpt-4o\"]\n\
         [routes.down]\ntype = \"openai\"\nupstream = \"http://{closed}\"\nkey = \"path::{key}\"\n\
         [routes.nokey]\ntype = \"openai\"\nupstream = \"{url}\"\nkey = \"path::{missing}\"\n\
         [routes.bedrock]\ntype = \"bedrock\"\n\
         [routes.gem]\ntype = \"gemini\"\nupstream = \"{url}\"\nkey = \"path::{key}\"\nmodels = [\"gemini-2.0-flash\"]\n",
        url = mock.url,
        missing = dir.path().join("absent-key").display(),
    );
    let sidekey = start_in(dir.path(), &config, MapEnv::default()).await;

    struct Case {
        what: &'static str,
        path: &'static str,
        body: &'static str,
        status: u16,
        code: &'static str,
        mentions: &'static [&'static str],
    }
    let cases = [
        Case {
            what: "unknown route",
            path: "/nope/v1/x",
            body: "",
            status: 404,
            code: "unknown_route",
            mentions: &["nope", "nokey, ok"],
        },
        Case {
            what: "no route",
            path: "/",
            body: "",
            status: 404,
            code: "unknown_route",
            mentions: &["configured routes"],
        },
        Case {
            what: "model not allowed",
            path: "/ok/v1/chat/completions",
            body: r#"{"model":"gpt-3.5"}"#,
            status: 403,
            code: "model_not_allowed",
            mentions: &["route ok", "gpt-3.5"],
        },
        Case {
            what: "model missing with a body",
            path: "/ok/v1/chat/completions",
            body: r#"{"messages":[]}"#,
            status: 400,
            code: "model_missing",
            mentions: &["route ok"],
        },
        Case {
            what: "gemini model in path",
            path: "/gem/v1beta/models/gemini-pro:generateContent",
            body: "{}",
            status: 403,
            code: "model_not_allowed",
            mentions: &["gemini-pro"],
        },
        Case {
            what: "unreachable upstream",
            path: "/down/v1/models",
            body: "",
            status: 502,
            code: "upstream_unreachable",
            mentions: &["route down", "127.0.0.1"],
        },
        Case {
            what: "upstream timeout",
            path: "/ok/hang",
            body: "",
            status: 504,
            code: "upstream_timeout",
            mentions: &["route ok", "request_timeout"],
        },
        Case {
            what: "credential unavailable",
            path: "/nokey/v1/models",
            body: "",
            status: 503,
            code: "credential_unavailable",
            mentions: &["route nokey", "absent-key", "no such file"],
        },
        Case {
            what: "not implemented yet",
            path: "/bedrock/model/m/invoke",
            body: "",
            status: 501,
            code: "not_implemented",
            mentions: &["route bedrock"],
        },
    ];
    for c in &cases {
        let method = if c.body.is_empty() {
            Method::GET
        } else {
            Method::POST
        };
        let resp = client::send(request(
            method,
            &sidekey.url(c.path),
            &[("authorization", "Bearer client")],
            c.body.to_owned(),
        ))
        .await;
        assert_eq!(resp.status, c.status, "{}: {}", c.what, resp.text());
        assert_eq!(resp.error_code(), c.code, "{}", c.what);
        assert_eq!(resp.headers["content-type"], "application/json");
        let message = resp.json()["error"]["message"].as_str().unwrap().to_owned();
        for m in c.mentions {
            assert!(
                message.contains(m),
                "{}: message {message:?} should mention {m:?}",
                c.what
            );
        }
        assert!(
            !resp.text().contains(SECRET),
            "{}: secret in error body",
            c.what
        );
    }
    // An allowed model passes; a body-less request passes the allowlist.
    assert_eq!(
        client::post_json(
            &sidekey.url("/ok/v1/chat/completions"),
            &[],
            r#"{"model":"gpt-4o"}"#
        )
        .await
        .status,
        200
    );
    assert_eq!(client::get(&sidekey.url("/ok/v1/models")).await.status, 200);
    assert_eq!(
        mock.requests()
            .iter()
            .filter(|r| r.uri.path() == "/v1/chat/completions")
            .count(),
        1
    );
}

/// The allowlist reads the model as the provider will: JSON escapes are
/// decoded, so `gpt\u002d3.5` is refused as `gpt-3.5`, and an allowed model
/// written with escapes goes through, its body forwarded byte for byte.
#[tokio::test]
async fn json_escapes_neither_hide_nor_block_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |_| Reply::ok()).await;
    let key = write_key(dir.path(), "key", SECRET);
    let config = format!(
        "[routes.ok]\ntype = \"openai\"\nupstream = \"{url}\"\nkey = \"path::{key}\"\nmodels = [\"gpt-4o\"]\n",
        url = mock.url,
    );
    let sidekey = start_in(dir.path(), &config, MapEnv::default()).await;
    let url = sidekey.url("/ok/v1/chat/completions");

    let hidden = r#"{"model":"gpt\u002d3.5","messages":[]}"#;
    let resp = client::post_json(&url, &[], hidden).await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert_eq!(resp.error_code(), "model_not_allowed");
    assert!(resp.text().contains("gpt-3.5"), "{}", resp.text());
    assert!(mock.requests().is_empty(), "nothing reached the provider");

    let escaped = r#"{"messages":[{"content":"say \"hi\""}],"model":"gpt\u002d4o"}"#;
    let resp = client::post_json(&url, &[], escaped).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, Bytes::from_static(escaped.as_bytes()));
}

#[tokio::test]
async fn unreachable_upstream_fails_fast() {
    // A blackholed address would take connect_timeout; a refused port must be
    // answered well before the request timeout. Bounded, not timed: the
    // request completes at all within a request_timeout of 60 s.
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!("[routes.down]\ntype = \"vllm\"\nupstream = \"http://{closed}\"\n");
    let sidekey = start_in(dir.path(), &config, MapEnv::default()).await;
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        client::get(&sidekey.url("/down/x")),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 502);
    assert!(
        resp.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("connect"),
        "{}",
        resp.text()
    );
}

#[tokio::test]
async fn forward_proxy_requests_and_upgrades_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |_| Reply::ok()).await;
    let config = format!(
        "[routes.ok]\ntype = \"vllm\"\nupstream = \"{}\"\n",
        mock.url
    );
    let sidekey = start_in(dir.path(), &config, MapEnv::default()).await;

    let raw = |text: &'static str| {
        let addr = sidekey.addr;
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(text.as_bytes()).await.unwrap();
            let mut buf = vec![0; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }
    };
    let connect = raw("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n").await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");
    assert!(connect.contains("connect_refused"));
    let absolute = raw("GET http://example.com/ok/x HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert!(absolute.starts_with("HTTP/1.1 400"), "{absolute}");
    assert!(absolute.contains("absolute_form_refused"));
    // WebSocket is proxied (tests/websocket.rs); other upgrades are not.
    let upgrade = raw(
        "GET /ok/realtime HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: IRC/6.9\r\n\r\n",
    )
    .await;
    assert!(upgrade.starts_with("HTTP/1.1 501"), "{upgrade}");
    // A `..` the provider would resolve, plain or encoded, never leaves.
    for path in ["/ok/v1/models/a/../b", "/ok/v1/%2e%2E/x", "/ok/v1/a%2Fb"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let answer = raw(Box::leak(req.into_boxed_str())).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("bad_path"), "{answer}");
    }
    assert!(mock.requests().is_empty(), "nothing reached the provider");

    // `Upgrade: h2c` (Java's HttpClient) is ignored: answered in HTTP/1.1,
    // and neither it nor HTTP2-Settings is forwarded.
    let h2c = raw(
        "GET /ok/v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(h2c.starts_with("HTTP/1.1 200"), "{h2c}");
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].header("upgrade").is_none() && seen[0].header("http2-settings").is_none());
}

#[tokio::test]
async fn inbound_token_is_required_when_listening_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |_| Reply::ok()).await;
    let token = write_key(dir.path(), "token", "gateway-token-123");
    let key = write_key(dir.path(), "key", SECRET);
    let config = format!(
        "listen = \"0.0.0.0:0\"\ninbound_token = \"path::{token}\"\n\
         [routes.openai]\ntype = \"openai\"\nupstream = \"{url}\"\nkey = \"path::{key}\"\n\
         [routes.anthropic]\ntype = \"anthropic\"\nupstream = \"{url}\"\nkey = \"path::{key}\"\n",
        url = mock.url
    );
    let sidekey = start_in(dir.path(), &config, MapEnv::default()).await;
    let url = format!("http://127.0.0.1:{}", sidekey.addr.port());
    let call = |route: &str, headers: Vec<(&'static str, &'static str)>| {
        let url = format!("{url}/{route}/v1/x");
        async move { client::send(request(Method::GET, &url, &headers, Bytes::new())).await }
    };

    let none = call("openai", vec![]).await;
    assert_eq!(
        (none.status.as_u16(), none.error_code().as_str()),
        (401, "unauthorized")
    );
    let wrong = call("openai", vec![("authorization", "Bearer nope")]).await;
    assert_eq!(wrong.status, 401);
    assert!(mock.requests().is_empty());

    for (route, header) in [
        ("openai", ("authorization", "Bearer gateway-token-123")),
        ("anthropic", ("x-api-key", "gateway-token-123")),
        ("openai", ("x-sidekey-token", "gateway-token-123")),
    ] {
        let ok = call(route, vec![header]).await;
        assert_eq!(ok.status, 200, "{route} {header:?}: {}", ok.text());
        let seen = mock.last();
        let all = format!("{:?}", seen.headers);
        assert!(
            !all.contains("gateway-token-123"),
            "the inbound token was forwarded: {all}"
        );
        assert!(seen.header("x-sidekey-token").is_none());
    }
}
