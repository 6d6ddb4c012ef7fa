//! [`ConfigError`]: a config problem, told precisely enough to fix it without
//! reading the source, and never quoting a value.
//!
//! design.md, "Configuration". Validation errors name file, line, column and
//! the dotted key; [`ConfigError::at_span`] turns a value's byte span into
//! that position. Messages never echo a value, which may be a key pasted in
//! the wrong place: validation words its own messages, and serde's, which
//! quote the offending value, go through [`redact_quoted`]. Which checks
//! produce these errors is the business of the sibling modules.

use std::ops::Range;

use crate::files::FileError;

/// A config problem, precise enough to fix without reading the source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, not a regular file, over
    /// 4 MiB, or being written).
    #[error("{file}: cannot read config: {source}")]
    Read {
        /// The config file.
        file: String,
        /// Why.
        source: FileError,
    },
    /// The file is empty: most likely caught half-written (truncated,
    /// not yet filled), so it is not applied.
    #[error("{file}: the config file is empty")]
    Empty {
        /// The config file.
        file: String,
    },
    /// The file was read but is not a valid config.
    #[error("{file}:{line}:{column}: {}{message}", key_prefix(.key))]
    Invalid {
        /// The config file.
        file: String,
        /// 1-based line of the offending value.
        line: usize,
        /// 1-based column of the offending value.
        column: usize,
        /// Dotted path of the key (`routes.openai.type`), when known.
        key: Option<String>,
        /// What is wrong and what was expected.
        message: String,
    },
}

impl ConfigError {
    /// [`ConfigError::Invalid`] for the value at byte `span` of `text`, the
    /// contents of `file`.
    pub(super) fn at_span(
        file: &str,
        text: &str,
        span: Range<usize>,
        key: Option<String>,
        message: String,
    ) -> Self {
        let upto = text.get(..span.start).unwrap_or(text);
        let line = upto.matches('\n').count() + 1;
        let column = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Self::Invalid {
            file: file.to_owned(),
            line,
            column,
            key,
            message,
        }
    }
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default()
}

/// `message` with every double-quoted value replaced by `"…"`: serde quotes
/// the offending value (which may be a key pasted in the wrong place) in
/// double quotes, and names keys in backticks, which stay.
pub(super) fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    let mut inside = true;
    for part in parts {
        if inside {
            out.push_str("\"…\"");
        } else {
            out.push_str(part);
        }
        inside = !inside;
    }
    out
}
