//! The built-in config, used when no `--config`/`SIDEKEY_CONFIG` is given.
//!
//! design.md, "Command line": one route per provider type, named after the
//! type, reading the type's default credential (table in `providers`),
//! listening on `127.0.0.1:8787`. Types without a default upstream
//! (`openai-compatible`, `sglang`, `tgi`, `vllm`) cannot have a route without
//! one, so they are left out; the `azure` route exists when
//! `AZURE_OPENAI_ENDPOINT` names the resource endpoint, as the Azure SDKs read
//! it. The config is produced as TOML text and goes through the same parser
//! as a file, so `sidekey check` shows exactly what runs.

use std::fmt::Write as _;

use crate::env::Env;
use crate::providers::{Family, SPECS};

/// The environment variable the Azure OpenAI SDKs read for the endpoint.
pub(crate) const ENV_AZURE_ENDPOINT: &str = "AZURE_OPENAI_ENDPOINT";

/// The built-in config as TOML.
pub(crate) fn builtin_toml(env: &dyn Env) -> String {
    let mut out = String::from("# built-in default config\n");
    for spec in &SPECS {
        let upstream = match (spec.family, spec.upstream) {
            (Family::Azure, _) => match env.var(ENV_AZURE_ENDPOINT) {
                // Written as a TOML string; an endpoint with a quote or a
                // control character fails validation with a clear message.
                Some(endpoint) => Some(toml_string(endpoint.trim())),
                None => continue,
            },
            (Family::ApiKey, None) => continue,
            _ => None,
        };
        let _ = writeln!(out, "\n[routes.{}]\ntype = \"{}\"", spec.name, spec.name);
        if let Some(upstream) = upstream {
            let _ = writeln!(out, "upstream = {upstream}");
        }
    }
    out
}

fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigSource, Overrides};
    use crate::env::MapEnv;

    #[test]
    fn builtin_config_parses_with_one_route_per_type() {
        let cfg = Config::load(
            &ConfigSource::BuiltIn,
            &MapEnv::default(),
            &crate::files::Direct,
            &Overrides::default(),
        )
        .unwrap();
        let names: Vec<_> = cfg.routes.iter().map(|r| r.name.as_str()).collect();
        for expected in [
            "openai",
            "anthropic",
            "gemini",
            "groq",
            "vertex",
            "bedrock",
            "xai",
        ] {
            assert!(names.contains(&expected), "{names:?}");
        }
        assert!(!names.contains(&"azure"));
        assert!(!names.contains(&"vllm"));
        assert!(cfg.routes.iter().all(|r| !r.required));
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:8787");
    }

    #[test]
    fn azure_route_appears_with_its_endpoint() {
        let env = MapEnv::new([(ENV_AZURE_ENDPOINT, "https://res.openai.azure.com/")]);
        let cfg = Config::load(
            &ConfigSource::BuiltIn,
            &env,
            &crate::files::Direct,
            &Overrides::default(),
        )
        .unwrap();
        let azure = cfg.routes.iter().find(|r| r.name == "azure").unwrap();
        assert_eq!(
            azure.upstream.as_ref().unwrap().to_string(),
            "https://res.openai.azure.com"
        );
    }

    #[test]
    fn odd_endpoints_cannot_inject_toml() {
        let env = MapEnv::new([(ENV_AZURE_ENDPOINT, "x\"\n[routes.evil]\ntype=\"openai")]);
        let err = Config::load(
            &ConfigSource::BuiltIn,
            &env,
            &crate::files::Direct,
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("upstream"), "{err}");
    }
}
