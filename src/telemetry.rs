//! Logging: `tracing` to stderr, as text or JSON lines.
//!
//! The lines are those of tracing-subscriber's text and flattened JSON
//! formats, written for less: text lines without colours by the `text`
//! module, JSON lines by the `json` module (span fields by `json_fields`),
//! each line put together in a buffer of its thread's (`Buffered`).
//!
//! Lines are formatted on the thread that logs and written by a dedicated
//! thread through a buffer that is flushed whenever the queue runs empty:
//! under load many access lines share one `write(2)`, at rest every line goes
//! out at once. The queue blocks rather than drops when full, and the
//! [`LogGuard`] flushes what is left when the process exits.
//!
//! The level comes from `SIDEKEY_LOG`, else `RUST_LOG`, else `info`: a list
//! of `level` and `target=level` items, as `info,hyper=warn`. Span and field
//! filters (`EnvFilter`'s `[span{field}]`) are refused: the static filter
//! needs no regex engine in the binary and no lock when a span is entered.
//!
//! Nothing logged anywhere in sidekey carries a credential value: secrets
//! are types whose `Debug` shows a fingerprint, header values holding keys
//! are marked sensitive, and access lines log the path without its query.

#[cfg(test)]
mod capture;
mod json;
mod json_fields;
mod text;

use std::cell::RefCell;
use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

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
    let filter = filter(&directives)
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
        // The fmt subscriber's own filter only caps the level, so that
        // disabled `debug!`s cost one comparison; `filter` does the rest.
        .with_max_level(most_verbose(&filter))
        .with_writer(writer)
        // Colours only for a person at a terminal, never in collected logs.
        .with_ansi(ansi)
        .with_target(true);
    let result = match format {
        // Colours need the default's styling layer; without them the same
        // text is written for less (`text`).
        LogFormat::Text if ansi => builder.finish().with(filter).try_init(),
        LogFormat::Text => builder
            .fmt_fields(text::Fields)
            .event_format(Buffered(text::Line {
                timer: text::Timestamp,
            }))
            .finish()
            .with(filter)
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .fmt_fields(json_fields::SpanFields)
            .event_format(Buffered(json::Line {
                timer: text::Timestamp,
            }))
            .finish()
            .with(filter)
            .try_init(),
    };
    result.map_err(|e| e.to_string())?;
    Ok(LogGuard(guard))
}

/// One way of writing a log line: into a `String`, with static calls.
trait LineFormat<S, N> {
    fn line(&self, ctx: &FmtContext<'_, S, N>, line: &mut String, event: &Event<'_>)
    -> fmt::Result;
}

/// An event format that puts each line together in a buffer of this
/// thread's, written to without the dynamic call per piece that
/// tracing-subscriber's `Writer` makes, then hands it over in one write.
/// A line written while another is being put together (a value's `Debug`
/// that logs) gets a buffer of its own.
#[derive(Debug)]
struct Buffered<L>(L);

impl<S, N, L> FormatEvent<S, N> for Buffered<L>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    L: LineFormat<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        /// The most a thread's buffer keeps between lines.
        const KEPT: usize = 16 << 10;
        thread_local! {
            static LINE: RefCell<String> = const { RefCell::new(String::new()) };
        }
        LINE.with(|buf| match buf.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                self.0.line(ctx, &mut buf, event)?;
                let written = writer.write_str(&buf);
                if buf.capacity() > KEPT {
                    *buf = String::new();
                }
                written
            }
            Err(_) => {
                let mut buf = String::new();
                self.0.line(ctx, &mut buf, event)?;
                writer.write_str(&buf)
            }
        })
    }
}

/// Parses a filter such as `info,hyper=warn`: each item a level, or a
/// target and its level. Blanks around items are ignored, as `EnvFilter`
/// ignored them; a bare word that is not a level, or a target with a span
/// or field part, is an error rather than a filter that silently matches
/// nothing.
fn filter(directives: &str) -> Result<Targets, String> {
    let mut filter = Targets::new();
    for item in directives
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        let level = |text: &str| {
            text.parse::<LevelFilter>().map_err(|_| {
                format!("{text:?} is not a level (off, error, warn, info, debug, trace)")
            })
        };
        filter = match item.split_once('=') {
            None => filter.with_default(level(item)?),
            Some((target, text)) => {
                let plain = |c: char| c.is_ascii_alphanumeric() || "_:-.".contains(c);
                if target.is_empty() || !target.chars().all(plain) {
                    return Err(format!(
                        "{target:?} is not a target such as sidekey::proxy \
                         (span and field filters are not supported)"
                    ));
                }
                filter.with_target(target, level(text)?)
            }
        };
    }
    Ok(filter)
}

/// The most verbose level any item of `filter` lets through.
fn most_verbose(filter: &Targets) -> LevelFilter {
    filter
        .iter()
        .map(|(_, level)| level)
        .chain(filter.default_level())
        .max()
        .unwrap_or(LevelFilter::OFF)
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn a_filter_is_levels_and_target_levels() {
        let f = filter("info").unwrap();
        assert!(f.would_enable("sidekey::proxy", &Level::INFO));
        assert!(!f.would_enable("sidekey::proxy", &Level::DEBUG));
        assert_eq!(most_verbose(&f), LevelFilter::INFO);

        let f = filter(" WARN , sidekey::tokens=debug ,, hyper=off").unwrap();
        assert!(f.would_enable("sidekey::tokens::cache", &Level::DEBUG));
        assert!(!f.would_enable("sidekey::proxy", &Level::INFO));
        assert!(f.would_enable("sidekey::proxy", &Level::WARN));
        assert!(!f.would_enable("hyper::proto", &Level::ERROR));
        assert_eq!(most_verbose(&f), LevelFilter::DEBUG);

        // Only targets named: everything else is off.
        let f = filter("sidekey=trace").unwrap();
        assert!(!f.would_enable("hyper", &Level::ERROR));
        assert_eq!(most_verbose(&f), LevelFilter::TRACE);
        assert_eq!(most_verbose(&filter("off").unwrap()), LevelFilter::OFF);
    }

    #[test]
    fn span_and_field_filters_and_unknown_levels_are_refused() {
        for bad in [
            "sidekey[request]=debug",
            "sidekey[{route=x}]=info",
            "=info",
            "loud",
            "sidekey=loud",
            "sidekey=info=debug",
        ] {
            assert!(filter(bad).is_err(), "{bad}");
        }
    }
}
