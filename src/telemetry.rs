//! Logging: `tracing` to stderr, as text or JSON lines.
//!
//! The level comes from `SIDEKEY_LOG`, else `RUST_LOG`, else `info`. Nothing
//! logged anywhere in sidekey carries a credential value: secrets are types
//! whose `Debug` shows a fingerprint, header values holding keys are marked
//! sensitive, and access lines log the path without its query.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::env::Env;

/// The log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Environment variable naming the log filter (takes precedence over `RUST_LOG`).
pub const ENV_LOG: &str = "SIDEKEY_LOG";

/// Installs the global subscriber.
///
/// # Errors
///
/// When the filter does not parse or a subscriber is already installed.
pub fn init(format: LogFormat, env: &dyn Env) -> Result<(), String> {
    let directives = env
        .var(ENV_LOG)
        .or_else(|| env.var("RUST_LOG"))
        .unwrap_or_else(|| "info".to_owned());
    let filter = EnvFilter::try_new(&directives)
        .map_err(|e| format!("{ENV_LOG}={directives:?} is not a valid filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never in collected logs.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}
