//! Logging: `tracing` to stderr, as text or JSON lines.
//!
//! The lines are those of tracing-subscriber's text and flattened JSON
//! formats, written for less: text lines without colours by the `text`
//! module, JSON lines by the `json` module.
//!
//! Lines are formatted on the thread that logs and written by a dedicated
//! thread through a buffer that is flushed whenever the queue runs empty:
//! under load many access lines share one `write(2)`, at rest every line goes
//! out at once. The queue blocks rather than drops when full, and the
//! [`LogGuard`] flushes what is left when the process exits.
//!
//! The level comes from `SIDEKEY_LOG`, else `RUST_LOG`, else `info`. Nothing
//! logged anywhere in sidekey carries a credential value: secrets are types
//! whose `Debug` shows a fingerprint, header values holding keys are marked
//! sensitive, and access lines log the path without its query.

mod json;
mod text;

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

/// Keeps the log writer thread alive; dropping it flushes the last lines.
#[must_use = "dropping the guard stops the log writer"]
#[derive(Debug)]
pub struct LogGuard(
    #[allow(dead_code, reason = "held for its Drop")] tracing_appender::non_blocking::WorkerGuard,
);

/// Installs the global subscriber.
///
/// # Errors
///
/// When the filter does not parse or a subscriber is already installed.
pub fn init(format: LogFormat, env: &dyn Env) -> Result<LogGuard, String> {
    let (from, directives) = env
        .var(ENV_LOG)
        .map(|d| (ENV_LOG, d))
        .or_else(|| env.var("RUST_LOG").map(|d| ("RUST_LOG", d)))
        .unwrap_or_else(|| ("default", "info".to_owned()));
    let filter = EnvFilter::try_new(&directives)
        .map_err(|e| format!("{from}={directives:?} is not a valid filter: {e}"))?;
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        // The queue is preallocated: 8,192 lines is ample slack for the
        // writer thread, and costs ~300 KiB rather than the default's ~5 MiB.
        .buffered_lines_limit(8192)
        .thread_name("sidekey-log")
        .finish(std::io::BufWriter::with_capacity(
            64 << 10,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // Colours only for a person at a terminal, never in collected logs.
        .with_ansi(ansi)
        .with_target(true);
    let result = match format {
        // Colours need the default's styling layer; without them the same
        // text is written for less (`text`).
        LogFormat::Text if ansi => builder.try_init(),
        LogFormat::Text => builder
            .fmt_fields(text::Fields)
            .with_timer(text::Timestamp)
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .event_format(json::Line {
                timer: text::Timestamp,
            })
            .try_init(),
    };
    result.map_err(|e| e.to_string())?;
    Ok(LogGuard(guard))
}
