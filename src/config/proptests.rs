//! Config parsing on arbitrary, TOML-ish input: it may refuse anything, but
//! never panics.

use proptest::prelude::*;

use super::*;

/// A line of a config: a table header, a known key with a value of some
/// type, or noise.
fn line() -> impl Strategy<Value = String> {
    let table = prop::sample::select(
        &[
            "[limits]",
            "[keys]",
            "[routes.openai]",
            "[routes.az]",
            "[routes.az.deployments.d1]",
            "[routes.v]",
            "[provider_types.openai.defaults]",
            "[[routes]]",
        ][..],
    )
    .prop_map(String::from);
    let key = prop::sample::select(
        &[
            "listen",
            "admin_listen",
            "type",
            "upstream",
            "key",
            "credentials",
            "models",
            "headers",
            "max_replay_body",
            "request_timeout",
            "rest",
            "location",
            "project",
            "endpoint",
            "region",
            "inbound_token",
            "allowed_origins",
            "scope",
            "ca_file",
        ][..],
    );
    let value = prop_oneof![
        "\"[a-z0-9:/._@ -]{0,24}\"".prop_map(String::from),
        prop::sample::select(
            &[
                "\"openai\"",
                "\"azure\"",
                "\"vertex\"",
                "\"bedrock\"",
                "\"gemini\"",
                "\"env::K\"",
                "\"path::/x\"",
                "\"dynamic::t\"",
                "\"none\"",
                "\"metadata\"",
                "\"32MiB\"",
                "\"5s\"",
                "\"0s\"",
                "\"99999999999999999999s\"",
                "\"-1KiB\"",
                "\"http://127.0.0.1:1\"",
                "\"https://h/p?key=x\"",
                "\"us-central1\"",
            ][..],
        )
        .prop_map(String::from),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("[\"env::A\", \"env::B\"]".to_owned()),
        Just("{ default = \"env::A\", fallback = \"env::B\" }".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("true".to_owned()),
    ];
    let assignment = (key, value).prop_map(|(k, v)| format!("{k} = {v}"));
    prop_oneof![
        table,
        assignment,
        "[\\[\\]{}=\" a-z.:]{0,12}".prop_map(String::from)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn parsing_never_panics(lines in prop::collection::vec(line(), 0..16)) {
        let _ = Config::parse(
            &lines.join("\n"),
            ConfigSource::File("sidekey.toml".into()),
            Some(Path::new("/etc/sidekey")),
            true,
            &Overrides::default(),
        );
    }

    #[test]
    fn any_text_never_panics(text in any::<String>()) {
        let _ = Config::parse(
            &text,
            ConfigSource::File("sidekey.toml".into()),
            None,
            true,
            &Overrides::default(),
        );
    }
}
