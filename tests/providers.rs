//! The provider table of design.md, row by row: default upstream, where the
//! credential goes, and the default credential location. The built-in config
//! (one route per type) is the oracle for upstreams, as `sidekey check`
//! shows it; injection is checked against a mock provider for every
//! key-based type. The table must have exactly one row per provider type
//! sidekey knows (the list its config errors give), so a new type without a
//! row fails here.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

mod common;

use common::client;
use common::mock::{Mock, Reply, Transport};
use common::process::command;
use common::sidekey::{start_in, with_ephemeral_ports};
use sidekey::{ConfigSource, MapEnv, Options, Overrides, Server};

struct Row {
    ty: &'static str,
    upstream: Option<&'static str>,
    /// `(header, value prefix)` the key goes into, for key-based types.
    header: Option<(&'static str, &'static str)>,
    default_env: Option<&'static str>,
}

const fn row(
    ty: &'static str,
    upstream: Option<&'static str>,
    header: Option<(&'static str, &'static str)>,
    default_env: Option<&'static str>,
) -> Row {
    Row {
        ty,
        upstream,
        header,
        default_env,
    }
}

const BEARER: Option<(&str, &str)> = Some(("authorization", "Bearer "));

/// design.md, "Provider types".
const TABLE: &[Row] = &[
    row(
        "openai",
        Some("https://api.openai.com"),
        BEARER,
        Some("OPENAI_API_KEY"),
    ),
    row("openai-compatible", None, BEARER, Some("OPENAI_API_KEY")),
    row(
        "azure",
        None,
        Some(("api-key", "")),
        Some("AZURE_OPENAI_API_KEY"),
    ),
    row(
        "anthropic",
        Some("https://api.anthropic.com"),
        Some(("x-api-key", "")),
        Some("ANTHROPIC_API_KEY"),
    ),
    row(
        "gemini",
        Some("https://generativelanguage.googleapis.com"),
        Some(("x-goog-api-key", "")),
        Some("GOOGLE_API_KEY"),
    ),
    row("vertex", None, None, None),
    row("bedrock", None, None, None),
    row("sagemaker", None, None, None),
    row(
        "deepseek",
        Some("https://api.deepseek.com"),
        BEARER,
        Some("DEEPSEEK_API_KEY"),
    ),
    row(
        "fireworks",
        Some("https://api.fireworks.ai/inference"),
        BEARER,
        Some("FIREWORKS_API_KEY"),
    ),
    row(
        "groq",
        Some("https://api.groq.com/openai"),
        BEARER,
        Some("GROQ_API_KEY"),
    ),
    row(
        "hyperbolic",
        Some("https://api.hyperbolic.xyz"),
        BEARER,
        Some("HYPERBOLIC_API_KEY"),
    ),
    row(
        "mistral",
        Some("https://api.mistral.ai"),
        BEARER,
        Some("MISTRAL_API_KEY"),
    ),
    row(
        "openrouter",
        Some("https://openrouter.ai/api"),
        BEARER,
        Some("OPENROUTER_API_KEY"),
    ),
    row("sglang", None, BEARER, Some("SGLANG_API_KEY")),
    row("tgi", None, BEARER, None),
    row(
        "together",
        Some("https://api.together.xyz"),
        BEARER,
        Some("TOGETHER_API_KEY"),
    ),
    row("vllm", None, BEARER, None),
    row("xai", Some("https://api.x.ai"), BEARER, Some("XAI_API_KEY")),
];

/// Every provider type sidekey knows, as a config naming an unknown type
/// lists them: "unknown provider type `...`; expected one of a, b, c".
async fn known_types() -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidekey.toml");
    let toml = with_ephemeral_ports("[routes.x]\ntype = \"no-such-type\"\n");
    std::fs::write(&path, toml).unwrap();
    let started = Server::start(Options {
        config: ConfigSource::File(path),
        env: std::sync::Arc::new(MapEnv::default()),
        overrides: Overrides::default(),
    })
    .await;
    let Err(e) = started else {
        panic!("a config with an unknown provider type was accepted");
    };
    let message = e.to_string();
    let (_, list) = message
        .split_once("expected one of ")
        .unwrap_or_else(|| panic!("no list of types in: {message}"));
    list.split(',').map(|t| t.trim().to_owned()).collect()
}

#[tokio::test]
async fn every_provider_type_has_exactly_one_row() {
    let known = known_types().await;
    let rows: Vec<&str> = TABLE.iter().map(|r| r.ty).collect();
    let missing: Vec<&String> = known
        .iter()
        .filter(|t| !rows.contains(&t.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "provider types without a row in TABLE: {missing:?}"
    );
    let unknown: Vec<&&str> = rows
        .iter()
        .filter(|r| !known.iter().any(|t| t == **r))
        .collect();
    assert!(
        unknown.is_empty(),
        "rows for types sidekey does not know: {unknown:?} (known: {known:?})"
    );
    let mut unique = rows.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), rows.len(), "a type has two rows");
}

#[tokio::test]
async fn builtin_routes_use_the_default_upstreams_and_credentials() {
    let out = command(&["check"], &[]).output().await.unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}");
    for row in TABLE {
        let section = report
            .split("\n\n")
            .find(|s| s.starts_with(&format!("route /{}/ (type {})", row.ty, row.ty)));
        let Some(upstream) = row.upstream else {
            if row.ty != "vertex" && row.ty != "bedrock" && row.ty != "sagemaker" {
                assert!(
                    section.is_none(),
                    "{}: a type without default upstream has no built-in route",
                    row.ty
                );
            }
            continue;
        };
        let section =
            section.unwrap_or_else(|| panic!("no built-in route for {}:\n{report}", row.ty));
        assert!(
            section.contains(&format!("upstream  {upstream}\n")),
            "{}:\n{section}",
            row.ty
        );
        if let Some(env) = row.default_env {
            assert!(
                section.contains(&format!("env::{env} MISSING")),
                "{}:\n{section}",
                row.ty
            );
        }
    }
}

#[tokio::test]
async fn every_key_based_type_puts_the_key_where_the_provider_expects_it() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |_| Reply::ok()).await;
    let mut config = String::new();
    // Variable → value; openai and openai-compatible share OPENAI_API_KEY by
    // design, so the first row that uses a variable sets its value.
    let mut env = std::collections::BTreeMap::new();
    let mut var_of = Vec::new();
    for row in TABLE.iter().filter(|r| r.header.is_some()) {
        let ty = row.ty;
        if ty == "azure" {
            config.push_str(&format!(
                "[routes.{ty}]\ntype = \"{ty}\"\n[routes.{ty}.deployments.d]\nendpoint = \"{}\"\n",
                mock.url
            ));
        } else {
            config.push_str(&format!(
                "[routes.{ty}]\ntype = \"{ty}\"\nupstream = \"{}\"\n",
                mock.url
            ));
        }
        // A route that names no key uses its type's default location.
        let var = match row.default_env {
            Some(var) => var.to_owned(),
            None => {
                let var = format!("KEY_{}", ty.to_uppercase());
                config.push_str(&format!("key = \"env::{var}\"\n"));
                var
            }
        };
        env.entry(var.clone())
            .or_insert_with(|| format!("key-for-{ty}"));
        var_of.push(var);
    }
    let sidekey = start_in(dir.path(), &config, MapEnv::new(env.clone())).await;

    for (row, var) in TABLE.iter().filter(|r| r.header.is_some()).zip(&var_of) {
        let (header, prefix) = row.header.unwrap();
        let path = if row.ty == "azure" {
            "/azure/openai/deployments/d/chat/completions".to_owned()
        } else {
            format!("/{}/v1/x", row.ty)
        };
        let resp = client::post_json(
            &sidekey.url(&path),
            &[("authorization", "Bearer dummy")],
            "{}",
        )
        .await;
        assert_eq!(resp.status, 200, "{}: {}", row.ty, resp.text());
        let seen = mock.last();
        assert_eq!(
            seen.header(header),
            Some(format!("{prefix}{}", env[var]).as_str()),
            "{}",
            row.ty
        );
        if header != "authorization" {
            assert!(
                seen.header("authorization").is_none(),
                "{}: client key leaked",
                row.ty
            );
        }
    }
}
