//! `sidekey check`: validate the config and every credential, offline, and
//! print what each route will do.
//!
//! design.md, "Command line". Credentials are read exactly as the proxy reads
//! them (the same snapshot builder), but only fingerprints are printed. No
//! network call is made.

use std::io::{self, Write};

use crate::config::{Config, ConfigSource, Overrides};
use crate::credentials::{KeySet, KeyValue, Policy};
use crate::env::Env;
use crate::files::Direct;
use crate::providers::Family;
use crate::reload::Inputs;
use crate::reload::snapshot::{InboundToken, Snapshot};
use crate::routes::{Route, Targets};

/// Exit status: the config is invalid (`EX_USAGE`, as linkerd uses it).
pub const EXIT_CONFIG: u8 = 64;
/// Exit status: the config is valid but a credential cannot be read (`EX_UNAVAILABLE`).
pub const EXIT_CREDENTIALS: u8 = 69;

/// What `check` concluded, mapped to an exit status by `main`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Everything loads.
    Ok,
    /// The config is invalid; nothing else was checked.
    ConfigInvalid,
    /// A credential the config requires cannot be read.
    CredentialsUnavailable,
}

impl Verdict {
    /// The process exit status for this verdict.
    #[must_use]
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::ConfigInvalid => EXIT_CONFIG,
            Self::CredentialsUnavailable => EXIT_CREDENTIALS,
        }
    }
}

/// Loads `source`, reads every credential, and writes the report to `out`
/// (problems go to `err`).
///
/// # Errors
///
/// Only when writing the report fails.
pub fn run(
    source: &ConfigSource,
    env: &dyn Env,
    overrides: &Overrides,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<Verdict> {
    let config = match Config::load(source, env, &Direct, overrides) {
        Ok(c) => c,
        Err(e) => {
            writeln!(err, "error: {e}")?;
            return Ok(Verdict::ConfigInvalid);
        }
    };
    // Offline: service-account keys are loaded, no token is minted.
    let reg = crate::reload::Registries::offline();
    let inputs = Inputs {
        env,
        files: &Direct,
        reg: &reg,
        prev: None,
    };
    let snap = match Snapshot::build(config, &inputs) {
        Ok(s) => s,
        Err(e) => {
            writeln!(err, "error: {}: {e}", source.display_name())?;
            return Ok(Verdict::ConfigInvalid);
        }
    };
    report(&snap, out)?;

    let required: Vec<_> = snap.problems.iter().filter(|p| p.required).collect();
    if required.is_empty() {
        writeln!(out, "\nok: {} routes", snap.config.routes.len())?;
        return Ok(Verdict::Ok);
    }
    writeln!(err, "error: {} credential problem(s):", required.len())?;
    for p in required {
        writeln!(err, "  {p}")?;
    }
    Ok(Verdict::CredentialsUnavailable)
}

fn report(snap: &Snapshot, out: &mut dyn Write) -> io::Result<()> {
    let c = &snap.config;
    writeln!(out, "config: {}", c.source.display_name())?;
    let scope = if c.listen.ip().is_loopback() {
        "loopback only"
    } else {
        "reachable from other hosts"
    };
    writeln!(
        out,
        "listen: {} ({scope}); admin: {}",
        c.listen, c.admin_listen
    )?;
    match &snap.inbound_token {
        None => writeln!(out, "inbound token: none")?,
        Some(InboundToken::Ready(s)) => writeln!(
            out,
            "inbound token: {} {}",
            c.inbound_token
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            s.fingerprint()
        )?,
        Some(InboundToken::Missing(why)) => writeln!(out, "inbound token: MISSING ({why})")?,
    }
    for route in snap.routes.iter_sorted() {
        writeln!(out)?;
        route_report(route, out)?;
    }
    Ok(())
}

fn route_report(route: &Route, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "route /{}/ (type {})", route.name, route.spec.name)?;
    match &route.targets {
        Targets::One(t) => writeln!(out, "  upstream  {}", t.upstream)?,
        Targets::Azure {
            deployments,
            default,
        } => {
            if let Some(t) = default {
                writeln!(
                    out,
                    "  upstream  {} (deployments not listed below)",
                    t.upstream
                )?;
            }
            let mut names: Vec<_> = deployments.iter().collect();
            names.sort_by(|a, b| a.0.cmp(b.0));
            for (name, t) in names {
                writeln!(out, "  deployment {name} -> {}", t.upstream)?;
            }
        }
        Targets::Vertex(v) => {
            match &v.upstream {
                Some(u) => writeln!(out, "  upstream  {u}")?,
                None => writeln!(
                    out,
                    "  upstream  https://{{location}}-aiplatform.googleapis.com (location from the path, else {})",
                    v.location
                )?,
            }
            match &v.project {
                Some(p) => writeln!(out, "  project   {p} (for short paths)")?,
                None => writeln!(
                    out,
                    "  project   none: clients must call /v1/projects/PROJECT/locations/LOCATION/..."
                )?,
            }
        }
        Targets::Aws(a) => {
            writeln!(out, "  upstream  {}", a.upstream)?;
            match &a.signer {
                Some(s) => writeln!(
                    out,
                    "  signs     SigV4, service {}, region {}",
                    s.service, s.region
                )?,
                None => writeln!(
                    out,
                    "  signs     nothing: a Bedrock API key (Authorization: Bearer)"
                )?,
            }
        }
        Targets::Unsupported(reason) => {
            writeln!(out, "  answers 501: {reason}")?;
            return Ok(());
        }
    }
    let minted_only = route.key_sets().iter().all(|(_, keys)| {
        keys.keys
            .iter()
            .all(|k| matches!(k.value, KeyValue::Token { .. }))
    });
    match route.spec.family {
        // Entra ID tokens replace the `api-key` header.
        Family::Azure if minted_only => {
            writeln!(out, "  auth      Authorization: Bearer (Entra ID token)")?;
        }
        _ => writeln!(out, "  auth      {}", route.spec.auth.describe())?,
    }
    writeln!(out, "  rejected  {}", route.spec.rejects.describe())?;
    let minted = match route.spec.family {
        Family::Aws => "credentials",
        _ => "tokens",
    };
    for (label, keys) in route.key_sets() {
        keys_report(&label, keys, minted, out)?;
    }
    for (name, value) in route.spec.default_headers {
        writeln!(
            out,
            "  adds      {name}: {} (when the client sends none)",
            value.to_str().unwrap_or("?")
        )?;
    }
    if let Some(models) = &route.models {
        writeln!(out, "  models    {}", models.join(", "))?;
    }
    Ok(())
}

/// `minted`: what a token source gives (`tokens`, or AWS `credentials`).
fn keys_report(label: &str, keys: &KeySet, minted: &str, out: &mut dyn Write) -> io::Result<()> {
    for (i, key) in keys.keys.iter().enumerate() {
        let role = match (keys.policy, i) {
            (Policy::Single, _) => label.to_owned(),
            (Policy::Fallback, 0) => format!("{label} (default)"),
            (Policy::Fallback, _) => format!("{label} (fallback)"),
            (Policy::Pool, n) => format!("{label} [{n}]"),
        };
        let state = match &key.value {
            KeyValue::Static { fingerprint, .. } => fingerprint.to_string(),
            KeyValue::Token { cache, .. } => format!("{minted} from {}", cache.source().describe()),
            KeyValue::Dynamic(name) => format!("from request header {}", name.header()),
            KeyValue::None => "no credential sent".to_owned(),
            KeyValue::Missing(why) => format!("MISSING: {}", why.reason),
        };
        writeln!(out, "  {role:<9} {} {state}", key.location)?;
    }
    Ok(())
}
