//! Routing and credential swap, per provider family, over real TLS to a mock
//! provider: the client's credential never reaches the provider, the
//! configured one does, and path and query are mapped onto the upstream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

mod common;

use bytes::Bytes;
use common::client::{self, request};
use common::mock::{Mock, Reply, Transport};
use common::sidekey::start_in;
use common::tls::TestPki;
use common::write_key;
use http::{Method, Version};
use sidekey::MapEnv;

/// Every header a client might use to carry its own credential.
const CLIENT_CREDENTIALS: &[(&str, &str)] = &[
    ("authorization", "Bearer client-dummy"),
    ("proxy-authorization", "Basic client-dummy"),
    ("x-api-key", "client-dummy"),
    ("api-key", "client-dummy"),
    ("x-goog-api-key", "client-dummy"),
    ("x-amz-date", "20240101T000000Z"),
    ("x-amz-security-token", "client-dummy"),
    ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
    ("x-sidekey-credential-other", "client-dummy"),
];

struct Case {
    name: &'static str,
    route: String,
    path: &'static str,
    extra_client_headers: &'static [(&'static str, &'static str)],
    expect_path: &'static str,
    expect_header: (&'static str, &'static str),
}

#[tokio::test]
async fn each_family_swaps_the_credential_and_maps_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let mock = Mock::start(Transport::Tls(&pki), |_| Reply::ok()).await;
    let key = |name: &str, value: &str| write_key(dir.path(), name, value);

    let cases = [
        Case {
            name: "bearer (openai) with a base path",
            route: format!(
                "[routes.openai]\ntype = \"openai\"\nupstream = \"{}/base\"\nkey = \"path::{}\"\n",
                mock.url,
                key("openai", "sk-real-openai")
            ),
            path: "/openai/v1/chat/completions?stream=true&key=client-dummy",
            extra_client_headers: &[],
            expect_path: "/base/v1/chat/completions?stream=true",
            expect_header: ("authorization", "Bearer sk-real-openai"),
        },
        Case {
            name: "azure api-key per deployment",
            route: format!(
                "[routes.azure]\ntype = \"azure\"\n[routes.azure.deployments.gpt-4o]\nendpoint = \"{}\"\nkey = \"path::{}\"\n",
                mock.url,
                key("azure", "real-azure-key")
            ),
            path: "/azure/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            extra_client_headers: &[],
            expect_path: "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            expect_header: ("api-key", "real-azure-key"),
        },
        Case {
            name: "anthropic x-api-key",
            route: format!(
                "[routes.anthropic]\ntype = \"anthropic\"\nupstream = \"{}\"\nkey = \"path::{}\"\n",
                mock.url,
                key("anthropic", "sk-ant-real")
            ),
            path: "/anthropic/v1/messages",
            extra_client_headers: &[("anthropic-version", "2023-01-01")],
            expect_path: "/v1/messages",
            expect_header: ("x-api-key", "sk-ant-real"),
        },
        Case {
            name: "gemini x-goog-api-key, key= removed from the query",
            route: format!(
                "[routes.gemini]\ntype = \"gemini\"\nupstream = \"{}\"\nkey = \"path::{}\"\n",
                mock.url,
                key("gemini", "AIza-real")
            ),
            path: "/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent?key=client-dummy&alt=sse",
            extra_client_headers: &[],
            expect_path: "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
            expect_header: ("x-goog-api-key", "AIza-real"),
        },
    ];

    let config = format!(
        "ca_file = \"{}\"\n{}",
        pki.ca_file.display(),
        cases.iter().map(|c| c.route.as_str()).collect::<String>()
    );
    let sidekey = start_in(dir.path(), &config, MapEnv::default()).await;

    for case in &cases {
        let mut headers: Vec<(&str, &str)> = CLIENT_CREDENTIALS.to_vec();
        headers.extend_from_slice(case.extra_client_headers);
        headers.extend_from_slice(&[
            ("content-type", "application/json"),
            ("connection", "x-hop-header"),
            ("x-hop-header", "must-not-pass"),
            ("keep-alive", "timeout=5"),
            ("x-app-header", "kept"),
        ]);
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let resp = client::send(request(
            Method::POST,
            &sidekey.url(case.path),
            &headers,
            body,
        ))
        .await;
        assert_eq!(resp.status, 200, "{}: {}", case.name, resp.text());
        assert_eq!(
            resp.body,
            Bytes::from_static(br#"{"ok":true}"#),
            "{}",
            case.name
        );

        let seen = mock.last();
        assert_eq!(seen.path_and_query(), case.expect_path, "{}", case.name);
        assert_eq!(
            seen.header(case.expect_header.0),
            Some(case.expect_header.1),
            "{}",
            case.name
        );
        assert_eq!(
            seen.headers.get_all(case.expect_header.0).iter().count(),
            1,
            "{}",
            case.name
        );
        for (name, _) in CLIENT_CREDENTIALS {
            if *name != case.expect_header.0 {
                assert!(
                    seen.header(name).is_none(),
                    "{}: {name} reached the provider",
                    case.name
                );
            }
        }
        let all_values = format!("{:?} {}", seen.headers, seen.path_and_query());
        assert!(
            !all_values.contains("client-dummy"),
            "{}: client credential leaked: {all_values}",
            case.name
        );
        assert!(
            seen.header("x-hop-header").is_none(),
            "{}: Connection-named header passed",
            case.name
        );
        assert!(seen.header("keep-alive").is_none(), "{}", case.name);
        assert_eq!(seen.header("x-app-header"), Some("kept"), "{}", case.name);
        if seen.version == Version::HTTP_11 {
            assert_eq!(
                seen.header("host"),
                Some(mock.addr.to_string().as_str()),
                "{}",
                case.name
            );
        } else {
            assert_eq!(
                seen.uri.authority().map(|a| a.as_str().to_owned()),
                Some(mock.addr.to_string())
            );
        }
        assert_eq!(seen.body, Bytes::from(body), "{}", case.name);
    }

    // The client's own anthropic-version is kept; a default is added when absent.
    let anthropic = mock
        .requests()
        .into_iter()
        .find(|r| r.uri.path() == "/v1/messages")
        .unwrap();
    assert_eq!(anthropic.header("anthropic-version"), Some("2023-01-01"));
    client::post_json(&sidekey.url("/anthropic/v1/messages"), &[], "{}").await;
    assert_eq!(mock.last().header("anthropic-version"), Some("2023-06-01"));
}

#[tokio::test]
async fn upstream_h2_and_http1_and_inbound_h2c_all_work() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let h2 = Mock::start(Transport::Tls(&pki), |_| Reply::ok()).await;
    let h1 = Mock::start(Transport::TlsH1(&pki), |_| Reply::ok()).await;
    let plain = Mock::start(Transport::Plain, |_| Reply::ok()).await;
    let config = format!(
        "ca_file = \"{}\"\n\
         [routes.h2]\ntype = \"openai\"\nupstream = \"{}\"\nkey = \"env::K\"\n\
         [routes.h1]\ntype = \"openai\"\nupstream = \"{}\"\nkey = \"env::K\"\n\
         [routes.plain]\ntype = \"vllm\"\nupstream = \"{}\"\n",
        pki.ca_file.display(),
        h2.url,
        h1.url,
        plain.url
    );
    let sidekey = start_in(dir.path(), &config, MapEnv::new([("K", "sk-env")])).await;

    for (route, mock, version) in [("h2", &h2, Version::HTTP_2), ("h1", &h1, Version::HTTP_11)] {
        for inbound_h2 in [false, true] {
            let req = request(
                Method::GET,
                &sidekey.url(&format!("/{route}/v1/models")),
                &[],
                Bytes::new(),
            );
            let resp = client::send_with(req, inbound_h2).await;
            assert_eq!(
                resp.status,
                200,
                "{route} inbound_h2={inbound_h2}: {}",
                resp.text()
            );
            let seen = mock.last();
            assert_eq!(seen.version, version, "{route}");
            assert_eq!(seen.header("authorization"), Some("Bearer sk-env"));
        }
    }

    // vllm's default credential is `none`: nothing is sent, and the client's
    // own key is still removed.
    let resp = client::send(request(
        Method::GET,
        &sidekey.url("/plain/v1/models"),
        &[("authorization", "Bearer client-dummy")],
        Bytes::new(),
    ))
    .await;
    assert_eq!(resp.status, 200);
    assert!(plain.last().header("authorization").is_none());
}

#[tokio::test]
async fn fallback_dynamic_and_extra_header_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |_| Reply::ok()).await;
    let token = write_key(dir.path(), "token", "extra-token");
    let fallback = write_key(dir.path(), "fallback", "sk-fallback");
    let config = format!(
        "[routes.fb]\ntype = \"openai-compatible\"\nupstream = \"{url}\"\n\
         key = {{ default = \"path::{missing}\", fallback = \"path::{fallback}\" }}\n\
         [routes.dyn]\ntype = \"openai-compatible\"\nupstream = \"{url}\"\n\
         key = {{ default = \"dynamic::tenant\", fallback = \"env::STATIC\" }}\n\
         [routes.extra]\ntype = \"openai-compatible\"\nupstream = \"{url}\"\nkey = \"none\"\n\
         headers = {{ \"X-Auth-Token\" = \"path::{token}\" }}\n",
        url = mock.url,
        missing = dir.path().join("missing").display(),
    );
    let sidekey = start_in(dir.path(), &config, MapEnv::new([("STATIC", "sk-static")])).await;

    // The default file does not exist: the fallback serves.
    assert_eq!(client::get(&sidekey.url("/fb/v1/models")).await.status, 200);
    assert_eq!(
        mock.last().header("authorization"),
        Some("Bearer sk-fallback")
    );

    // A dynamic credential comes from the request and is never forwarded as such.
    let resp = client::send(request(
        Method::GET,
        &sidekey.url("/dyn/v1/models"),
        &[("x-sidekey-credential-tenant", "sk-tenant")],
        Bytes::new(),
    ))
    .await;
    assert_eq!(resp.status, 200);
    let seen = mock.last();
    assert_eq!(seen.header("authorization"), Some("Bearer sk-tenant"));
    assert!(seen.header("x-sidekey-credential-tenant").is_none());
    // Without it, the static fallback is used.
    client::get(&sidekey.url("/dyn/v1/models")).await;
    assert_eq!(
        mock.last().header("authorization"),
        Some("Bearer sk-static")
    );

    // Extra headers carry their own credential; a client cannot override it.
    let resp = client::send(request(
        Method::GET,
        &sidekey.url("/extra/v1/models"),
        &[("x-auth-token", "client-dummy")],
        Bytes::new(),
    ))
    .await;
    assert_eq!(resp.status, 200);
    let seen = mock.last();
    assert_eq!(seen.header("x-auth-token"), Some("extra-token"));
    assert_eq!(seen.headers.get_all("x-auth-token").iter().count(), 1);
    assert!(seen.header("authorization").is_none());
}

#[tokio::test]
async fn azure_route_level_upstream_serves_unlisted_deployments_and_v1_paths() {
    let dir = tempfile::tempdir().unwrap();
    let listed = Mock::start(Transport::Plain, |_| Reply::ok()).await;
    let shared = Mock::start(Transport::Plain, |_| Reply::ok()).await;
    let config = format!(
        "[routes.azure]\ntype = \"azure\"\nupstream = \"{}\"\nkey = \"env::AZ_SHARED\"\n\
         [routes.azure.deployments.gpt-4o]\nendpoint = \"{}\"\nkey = \"env::AZ_4O\"\n",
        shared.url, listed.url
    );
    let env = MapEnv::new([("AZ_SHARED", "shared-key"), ("AZ_4O", "4o-key")]);
    let sidekey = start_in(dir.path(), &config, env).await;

    client::post_json(
        &sidekey.url("/azure/openai/deployments/gpt-4o/chat/completions"),
        &[],
        "{}",
    )
    .await;
    assert_eq!(listed.last().header("api-key"), Some("4o-key"));
    client::post_json(
        &sidekey.url("/azure/openai/deployments/other/chat/completions"),
        &[],
        "{}",
    )
    .await;
    assert_eq!(shared.last().header("api-key"), Some("shared-key"));
    client::post_json(&sidekey.url("/azure/openai/v1/chat/completions"), &[], "{}").await;
    assert_eq!(shared.last().uri.path(), "/openai/v1/chat/completions");
    assert_eq!(shared.requests().len(), 2);
}

/// sidekey with a gemini route allowing model `ok`, an azure route allowing
/// deployment `d2` and a bedrock route with an API key, all to `mock`.
async fn hardened_routes(dir: &std::path::Path, mock: &Mock) -> common::sidekey::Running {
    let config = format!(
        "[routes.gem]\ntype = \"gemini\"\nupstream = \"{url}\"\nkey = \"env::G\"\nmodels = [\"ok\"]\n\
         [routes.az]\ntype = \"azure\"\nkey = \"env::AZ\"\nupstream = \"{url}\"\nmodels = [\"d2\"]\n\
         [routes.bedrock]\ntype = \"bedrock\"\nregion = \"us-east-1\"\nupstream = \"{url}\"\nkey = \"env::BR\"\n",
        url = mock.url
    );
    let env = MapEnv::new([("G", "AIza-real"), ("AZ", "az-real"), ("BR", "br-real")]);
    start_in(dir, &config, env).await
}

/// Issue 21, finding 3: a backslash in the path (raw or encoded), which an
/// upstream may read as `/` and resolve `..\` with, is refused before
/// anything leaves, so it cannot reach a model or deployment the allowlist
/// did not check. A Bedrock inference-profile ARN keeps its `%2F`.
#[tokio::test]
async fn backslash_paths_are_refused_before_anything_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |_| Reply::ok()).await;
    let sidekey = hardened_routes(dir.path(), &mock).await;
    for path in [
        r"/gem/v1beta/models/ok/..\..\..\v1beta\models\forbidden:generateContent",
        r"/az/openai/deployments/d2/..\d1/chat/completions",
        "/az/openai/deployments/d2/..%5Cd1/chat/completions",
    ] {
        let resp = client::post_json(&sidekey.url(path), &[], "{}").await;
        assert_eq!(resp.status, 400, "{path}: {}", resp.text());
        assert_eq!(resp.error_code(), "bad_path", "{path}");
    }
    assert!(mock.requests().is_empty(), "nothing reached the provider");
    let arn = "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x/converse";
    let resp = client::post_json(&sidekey.url(&format!("/bedrock{arn}")), &[], "{}").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        mock.requests()[0].path_and_query(),
        arn,
        "the ARN's %2F is kept"
    );
}

/// Issue 21, finding 6: a credential in the query is removed however its
/// name is written (percent-encoded, any case), `access_token` and
/// `api-key` as well as `key`; other parameters stay, in order.
#[tokio::test]
async fn query_credentials_are_removed_in_any_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |_| Reply::ok()).await;
    let sidekey = hardened_routes(dir.path(), &mock).await;
    let resp = client::post_json(
        &sidekey.url(
            "/gem/v1beta/models/ok:generateContent?%6bey=AIza-client&alt=sse&access_token=ya29.client\
             &KEY=AIza-client&%6B%65%79=AIza-client&api-key=c&model=key",
        ),
        &[],
        "{}",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = mock.requests();
    assert_eq!(
        seen[0].path_and_query(),
        "/v1beta/models/ok:generateContent?alt=sse&model=key"
    );
    assert_eq!(seen[0].header("x-goog-api-key"), Some("AIza-real"));
}
