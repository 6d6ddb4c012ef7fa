//! Config validation: every error names file, line and key.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(
        text,
        ConfigSource::File("sidekey.toml".into()),
        Some(Path::new("/etc/sidekey")),
        true,
        &Overrides::default(),
    )
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn design_example_parses() {
    let cfg = parse(
        r#"
listen = "127.0.0.1:8787"
admin_listen = "0.0.0.0:9901"
ca_file = "/etc/sidekey/ca.pem"

[limits]
max_replay_body = "32MiB"
connect_timeout = "5s"
request_timeout = "600s"
header_read_timeout = "10s"

[routes.openai]
type = "openai"
key = { default = "path::/var/run/secrets/sidekey/openai/key",
        fallback = "path::/var/run/secrets/sidekey/openai/fallback" }
models = ["gpt-4o", "gpt-4o-mini"]

[routes.azure]
type = "azure"
[routes.azure.deployments.gpt-4o]
endpoint = "https://my-resource.openai.azure.com"
key = "path::/var/run/secrets/sidekey/azure-gpt4o/key"

[routes.vertex]
type = "vertex"
credentials = "path::/var/run/secrets/sidekey/vertex/sa.json"
project = "my-project"
location = "us-central1"

[routes.local-llm]
type = "openai-compatible"
upstream = "http://vllm.ml.svc.cluster.local:8000"
key = "none"
headers = { "X-Auth-Token" = "path::/var/run/secrets/sidekey/local/token" }
"#,
    )
    .unwrap();
    assert_eq!(cfg.routes.len(), 4);
    let openai = cfg.routes.iter().find(|r| r.name == "openai").unwrap();
    assert_eq!(openai.key.policy, Policy::Fallback);
    assert_eq!(
        openai.upstream.as_ref().unwrap().to_string(),
        "https://api.openai.com"
    );
    let azure = cfg.routes.iter().find(|r| r.name == "azure").unwrap();
    assert_eq!(azure.deployments[0].name, "gpt-4o");
    assert_eq!(
        azure.deployments[0].key.to_string(),
        "path::/var/run/secrets/sidekey/azure-gpt4o/key"
    );
    let local = cfg.routes.iter().find(|r| r.name == "local-llm").unwrap();
    assert_eq!(local.key.to_string(), "none");
    assert_eq!(local.headers[0].0.as_str(), "x-auth-token");
    assert_eq!(cfg.limits.max_replay_body, 32 << 20);
}

#[test]
fn unknown_keys_are_errors_with_a_line() {
    let e = err("[routes.openai]\ntype = \"openai\"\nmodles = [\"x\"]\n");
    assert!(e.starts_with("sidekey.toml:3:1: "), "{e}");
    assert!(e.contains("unknown field `modles`"), "{e}");
}

#[test]
fn unknown_type_names_the_key_and_lists_types() {
    let e = err("[routes.x]\ntype = \"opnai\"\n");
    assert!(
        e.starts_with(
            "sidekey.toml:2:8: routes.x.type: unknown provider type: a 5-character value (not shown);"
        ),
        "{e}"
    );
    assert!(e.contains("openai, openai-compatible"), "{e}");
}

#[test]
fn a_pasted_key_is_never_echoed() {
    let e = err("[routes.openai]\ntype = \"openai\"\nkey = \"sk-live-123456\"\n");
    assert!(e.contains("routes.openai.key"), "{e}");
    assert!(!e.contains("sk-live"), "{e}");
    // Even a syntax error on the line with the key does not show the line.
    let e = err("[routes.openai]\ntype = \"openai\"\nkey = \"sk-live-123456\n");
    assert!(!e.contains("sk-live"), "{e}");
    assert!(e.starts_with("sidekey.toml:3:"), "{e}");
}

#[test]
fn self_hosted_types_need_an_upstream() {
    let e = err("[routes.local]\ntype = \"vllm\"\n");
    assert!(e.contains("routes.local.upstream"), "{e}");
}

#[test]
fn misplaced_keys_are_errors() {
    assert!(
        err("[routes.o]\ntype = \"openai\"\nregion = \"us-east-1\"\n")
            .contains("only valid for bedrock")
    );
    assert!(
        err("[routes.o]\ntype = \"openai\"\nproject = \"p\"\n").contains("only valid for vertex")
    );
    assert!(err("[routes.v]\ntype = \"vertex\"\nkey = \"env::X\"\n").contains("not `key`"));
    assert!(
        err("[routes.o]\ntype = \"openai\"\nkey = \"metadata\"\n")
            .contains("only valid as `credentials`")
    );
    assert!(err("[routes.a]\ntype = \"azure\"\n").contains("deployments"));
}

#[test]
fn non_loopback_listen_needs_a_token_or_an_explicit_opt_out() {
    let e = err("listen = \"0.0.0.0:8787\"\n");
    assert!(e.contains("inbound_token"), "{e}");
    parse("listen = \"0.0.0.0:8787\"\ninbound_token = \"path::/t\"\n").unwrap();
    parse("listen = \"0.0.0.0:8787\"\nallow_unauthenticated = true\n").unwrap();
}

#[test]
fn durations_and_sizes_are_checked() {
    assert!(
        err("[limits]\nconnect_timeout = \"5\"\n")
            .contains("limits.connect_timeout: a 1-character value (not shown) needs a unit")
    );
    assert!(err("[limits]\nmax_replay_body = \"lots\"\n").contains("limits.max_replay_body"));
    assert!(err("[limits]\nrequest_timeout = \"0s\"\n").contains("greater than zero"));
    // Bounded, so `now + timeout` cannot overflow.
    assert!(err("[limits]\nrequest_timeout = \"9999999999999h\"\n").contains("at most 30 days"));
    parse("[limits]\nrequest_timeout = \"720h\"\n").unwrap();
}

#[test]
fn counts_accept_whole_numbers_written_as_floats() {
    // Helm's toToml writes the chart's `50` as `50.0`.
    for text in ["50", "50.0"] {
        let config = parse(&format!(
            "[limits]\nupstream_streams_per_connection = {text}\n"
        ))
        .unwrap();
        assert_eq!(config.limits.upstream_streams_per_connection, 50);
    }
    for bad in ["2.5", "-1", "\"50\""] {
        let e = err(&format!(
            "[limits]\nupstream_streams_per_connection = {bad}\n"
        ));
        assert!(
            e.contains("a whole number") || e.contains("expected"),
            "{bad}: {e}"
        );
    }
    assert!(err("[limits]\nupstream_streams_per_connection = 0\n").contains("must be at least 1"));
}

#[test]
fn provider_type_defaults_apply_to_routes_without_a_key() {
    let cfg = parse(
        "[provider_types.openai.defaults]\napi_key_location = \"path::keys/openai\"\n\
         [routes.a]\ntype = \"openai\"\n[routes.b]\ntype = \"openai\"\nkey = \"env::B\"\n",
    )
    .unwrap();
    let key = |n: &str| {
        cfg.routes
            .iter()
            .find(|r| r.name == n)
            .unwrap()
            .key
            .to_string()
    };
    assert_eq!(key("a"), "path::/etc/sidekey/keys/openai");
    assert_eq!(key("b"), "env::B");
}

#[test]
fn bad_route_names_and_headers_are_errors() {
    assert!(err("[routes.\"a/b\"]\ntype = \"openai\"\n").contains("one path segment"));
    assert!(
        err("[routes.a]\ntype = \"openai\"\nheaders = { \"Host\" = \"env::H\" }\n")
            .contains("managed by sidekey")
    );
}

#[test]
fn values_that_may_be_keys_are_never_echoed() {
    // A key pasted where a list belongs: serde would quote it.
    let e = err("[routes.o]\ntype = \"openai\"\nmodels = \"sk-proj-SECRET\"\n");
    assert!(!e.contains("SECRET"), "{e}");
    // A key in the upstream URL's query or user info.
    let e =
        err("[routes.g]\ntype = \"gemini\"\nupstream = \"https://h.example/v1?key=AIzaSECRET\"\n");
    assert!(
        e.contains("must not have a query") && !e.contains("SECRET"),
        "{e}"
    );
    let e = err("[routes.g]\ntype = \"gemini\"\nupstream = \"ftp://u:SECRET@h.example/v1\"\n");
    assert!(!e.contains("SECRET"), "{e}");
}

#[test]
fn vertex_location_and_project_are_checked() {
    let route =
        |extra: &str| format!("[routes.v]\ntype = \"vertex\"\ncredentials = \"metadata\"\n{extra}");
    parse(&route(
        "location = \"us-central1\"\nproject = \"my-proj\"\n",
    ))
    .unwrap();
    assert!(err(&route("location = \"US Central\"\n")).contains("routes.v.location"));
    assert!(err(&route("project = \"p/../x\"\n")).contains("routes.v.project"));
}

#[test]
fn allowed_origins_hosts_and_the_websocket_idle_limit_are_checked() {
    let cfg = parse(
        "allowed_origins = [\"http://LocalHost:3000/\", \"null\"]\n\
         allowed_hosts = [\"Sidekey.Internal\", \"[::1]\"]\n",
    )
    .unwrap();
    assert_eq!(cfg.allowed_origins, ["http://localhost:3000", "null"]);
    assert_eq!(cfg.allowed_hosts, ["sidekey.internal", "[::1]"]);
    assert_eq!(
        cfg.limits.websocket_idle,
        std::time::Duration::from_secs(3600)
    );
    assert!(
        parse("").unwrap().allowed_origins.is_empty(),
        "none by default"
    );

    assert!(err("allowed_origins = [\"localhost:3000\"]\n").contains("allowed_origins"));
    assert!(err("allowed_origins = [\"http://a.example/path\"]\n").contains("not an origin"));
    assert!(err("allowed_hosts = [\"http://a.example\"]\n").contains("allowed_hosts"));
    assert!(err("allowed_hosts = [\"a.example:8787\"]\n").contains("without scheme, port"));
    assert!(err("[limits]\nwebsocket_idle = \"0s\"\n").contains("greater than zero"));
    let cfg = parse("[limits]\nwebsocket_idle = \"10m\"\n").unwrap();
    assert_eq!(
        cfg.limits.websocket_idle,
        std::time::Duration::from_secs(600)
    );
}

#[test]
fn aws_and_azure_identity_settings_parse_and_misuse_is_named() {
    let cfg = parse(
        r#"
[routes.bedrock]
type = "bedrock"
region = "eu-west-1"
credentials = { access_key_id = "path::aws/id", secret_access_key = "path::aws/secret" }

[routes.keyed]
type = "bedrock"
key = "env::AWS_BEARER_TOKEN_BEDROCK"

[routes.azure]
type = "azure"
upstream = "https://r.openai.azure.com"
credentials = "workload-identity"
scope = "https://cognitiveservices.azure.com/.default"

[routes.azure.deployments.eu]
endpoint = "https://eu.openai.azure.com"
credentials = { tenant_id = "t", client_id = "c", client_secret = "path::/s/secret" }
"#,
    )
    .unwrap();
    let route = |n: &str| cfg.routes.iter().find(|r| r.name == n).unwrap();
    let aws = route("bedrock").aws.as_ref().unwrap();
    assert_eq!(aws.region.as_deref(), Some("eu-west-1"));
    assert_eq!(
        aws.auth
            .locations()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["path::/etc/sidekey/aws/id", "path::/etc/sidekey/aws/secret"],
        "relative paths follow the config file"
    );
    assert_eq!(route("keyed").aws.as_ref().unwrap().auth, AwsAuth::ApiKey);
    let azure = route("azure");
    assert_eq!(
        azure.entra.as_ref().unwrap().identity,
        Some(crate::credentials::EntraIdentity::Workload)
    );
    assert!(matches!(
        azure.deployments[0].entra,
        Some(crate::credentials::EntraIdentity::ClientSecret { .. })
    ));

    let e = err("[routes.s]\ntype = \"sagemaker\"\nkey = \"env::K\"\n");
    assert!(e.contains("API keys are a Bedrock feature"), "{e}");
    let e = err(
        "[routes.b]\ntype = \"bedrock\"\nkey = \"env::K\"\ncredentials = { access_key_id = \"env::A\", secret_access_key = \"env::B\" }\n",
    );
    assert!(e.contains("not both"), "{e}");
    let e = err("[routes.b]\ntype = \"bedrock\"\nregion = \"US East\"\n");
    assert!(e.contains("routes.b.region"), "{e}");
    let e = err("[routes.o]\ntype = \"openai\"\ncredentials = \"workload-identity\"\n");
    assert!(
        e.contains("only valid for vertex, azure, bedrock and sagemaker"),
        "{e}"
    );
    let e = err("[routes.o]\ntype = \"openai\"\nscope = \"https://x/.default\"\n");
    assert!(e.contains("only valid for azure"), "{e}");
    let e =
        err("[routes.a]\ntype = \"azure\"\nupstream = \"https://r\"\ncredentials = \"kerberos\"\n");
    assert!(
        e.contains("\"workload-identity\", \"managed-identity\""),
        "{e}"
    );
    let e = err(
        "[routes.a]\ntype = \"azure\"\nupstream = \"https://r\"\nkey = \"env::K\"\ncredentials = \"managed-identity\"\n",
    );
    assert!(e.contains("not both"), "{e}");
    let e = err(
        "[routes.o]\ntype = \"openai\"\nkey = { tenant_id = \"t\", client_id = \"c\", client_secret = \"env::S\" }\n",
    );
    assert!(e.contains("only valid as `credentials` of an azure"), "{e}");
    let e = err(
        "[routes.b]\ntype = \"bedrock\"\ncredentials = { access_key_id = \"env::A\", client_id = \"c\" }\n",
    );
    assert!(
        e.contains("does not belong") || e.contains("missing field"),
        "{e}"
    );
}

#[test]
fn the_tls_listener_takes_all_three_settings_or_none() {
    let cfg = parse(
        "tls_listen = \"127.0.0.1:8443\"\ntls_cert = \"path::tls/tls.crt\"\ntls_key = \"env::TLS_KEY\"\n",
    )
    .unwrap();
    let tls = cfg.tls.unwrap();
    assert_eq!(tls.addr, "127.0.0.1:8443".parse().unwrap());
    assert_eq!(tls.cert, Location::Path("/etc/sidekey/tls/tls.crt".into()));
    assert_eq!(tls.key, Location::Env("TLS_KEY".into()));
    assert!(parse("").unwrap().tls.is_none());

    let e = err("listen = \"127.0.0.1:8787\"\n\ntls_cert = \"path::/c.pem\"\n");
    assert!(e.contains("sidekey.toml:3"), "{e}");
    assert!(e.contains("tls_cert"), "{e}");
    assert!(e.contains("`tls_listen`, `tls_key` is missing"), "{e}");
    let e = err("tls_listen = \"127.0.0.1:8443\"\ntls_cert = \"path::/c.pem\"\n");
    assert!(
        e.contains("sidekey.toml:1") && e.contains("`tls_key` is missing"),
        "{e}"
    );
}

#[test]
fn the_tls_listener_is_checked_like_listen() {
    let pair = "tls_cert = \"path::/c.pem\"\ntls_key = \"path::/k.pem\"\n";
    let e = err(&format!("tls_listen = \"nope\"\n{pair}"));
    assert!(
        e.contains("sidekey.toml:1") && e.contains("tls_listen"),
        "{e}"
    );
    let e = err(&format!("tls_listen = \"127.0.0.1:8787\"\n{pair}"));
    assert!(e.contains("must differ from `listen`"), "{e}");
    let e = err(&format!("tls_listen = \"0.0.0.0:8443\"\n{pair}"));
    assert!(e.contains("not a loopback address"), "{e}");
    assert!(
        parse(&format!(
            "tls_listen = \"0.0.0.0:8443\"\ninbound_token = \"env::T\"\n{pair}"
        ))
        .is_ok()
    );
    let e =
        err("tls_listen = \"127.0.0.1:8443\"\ntls_cert = \"none\"\ntls_key = \"path::/k.pem\"\n");
    assert!(
        e.contains("sidekey.toml:2") && e.contains("must be env::, path:: or path_from_env::"),
        "{e}"
    );
}

#[test]
fn connection_header_body_and_replay_limits_have_defaults_and_are_checked() {
    let l = parse("").unwrap().limits;
    assert_eq!(l.max_connections, 1024);
    assert_eq!(l.max_header_bytes, 64 << 10);
    assert_eq!(l.body_read_timeout, std::time::Duration::from_secs(30));
    assert_eq!(l.max_replay_total, 64 << 20);

    let l = parse(
        "[limits]\nmax_connections = 8.0\nmax_header_bytes = \"16KiB\"\n\
         body_read_timeout = \"300ms\"\nmax_replay_total = \"1MiB\"\n",
    )
    .unwrap()
    .limits;
    assert_eq!(l.max_connections, 8);
    assert_eq!(l.max_header_bytes, 16 << 10);
    assert_eq!(l.body_read_timeout, std::time::Duration::from_millis(300));
    assert_eq!(l.max_replay_total, 1 << 20);

    assert!(
        err("[limits]\nmax_connections = 0\n")
            .contains("limits.max_connections: must be at least 1")
    );
    // hyper panics on a smaller HTTP/1 buffer.
    assert!(
        err("[limits]\nmax_header_bytes = \"4KiB\"\n")
            .contains("limits.max_header_bytes: must be from 8KiB")
    );
    assert!(err("[limits]\nmax_header_bytes = \"8GiB\"\n").contains("limits.max_header_bytes"));
    assert!(err("[limits]\nbody_read_timeout = \"0s\"\n").contains("limits.body_read_timeout"));
    assert!(err("[limits]\nmax_replay_total = \"lots\"\n").contains("limits.max_replay_total"));
    // Zero is allowed: no request is kept for a fallback.
    assert_eq!(
        parse("[limits]\nmax_replay_total = \"0\"\n")
            .unwrap()
            .limits
            .max_replay_total,
        0
    );
}
