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
        let message = redact_literals(&message, text.get(span.clone()).unwrap_or(""));
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

/// How a message names a value it must not show: its length only.
pub(super) fn described(value: &str) -> String {
    match value.chars().count() {
        0 => "an empty value".to_owned(),
        1 => "a 1-character value (not shown)".to_owned(),
        n => format!("a {n}-character value (not shown)"),
    }
}

/// `message` with `value` (as written and trimmed; quoted in backticks or
/// double quotes, or bare when 8 characters or more, so a short value does
/// not take out a word of the message) replaced by its [`described`] length.
pub(super) fn redact_value(message: &str, value: &str) -> String {
    let said = described(value);
    let mut out = message.to_owned();
    for v in [value, value.trim()] {
        if v.is_empty() {
            continue;
        }
        for quoted in [format!("`{v}`"), format!("\"{v}\"")] {
            out = out.replace(&quoted, &said);
        }
        if v.chars().count() >= 8 {
            out = out.replace(v, &said);
        }
    }
    out
}

/// A string this long in the offending value is taken out of the message
/// whatever the check said: no word a message quotes on purpose (a type
/// name, a keyword) is this long, and a pasted key is longer.
const LONG_LITERAL: usize = 20;

/// `message` with every string literal of [`LONG_LITERAL`] characters or
/// more in `source` (the TOML text of the offending value: a string, an
/// array, an inline table) redacted.
fn redact_literals(message: &str, source: &str) -> String {
    let mut out = message.to_owned();
    let mut rest = source;
    while let Some(open) = rest.find(['"', '\'']) {
        let quote = if rest.get(open..=open) == Some("'") {
            '\''
        } else {
            '"'
        };
        let after = rest.get(open + 1..).unwrap_or("");
        // The closing quote: the next one not escaped by a backslash (basic
        // strings; literal strings have no escapes).
        let mut close = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            if c == quote && !escaped {
                close = Some(i);
                break;
            }
            escaped = quote == '"' && c == '\\' && !escaped;
        }
        let Some(close) = close else { break };
        let literal = after.get(..close).unwrap_or("");
        // As written, and each run between escapes (the message holds the
        // decoded value).
        for part in std::iter::once(literal).chain(literal.split('\\')) {
            if part.trim().chars().count() >= LONG_LITERAL {
                out = redact_value(&out, part);
            }
        }
        rest = after.get(close + 1..).unwrap_or("");
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-proj-0123456789abcdefghijklmnopqrstuvwxyzABCD";

    #[test]
    fn a_long_string_in_the_offending_value_never_reaches_the_message() {
        let text = format!("listen = \"{KEY}\"\n");
        let span = text.find('"').unwrap()..text.len() - 1;
        let e = ConfigError::at_span(
            "f.toml",
            &text,
            span,
            Some("listen".into()),
            format!("`{KEY}` is wrong, and so is {KEY}"),
        );
        let shown = e.to_string();
        assert!(!shown.contains("sk-proj"), "{shown}");
        assert_eq!(
            shown,
            "f.toml:1:10: listen: a 48-character value (not shown) is wrong, and so is a 48-character value (not shown)"
        );
        // In an array or an inline table, single-quoted, with escapes.
        let text = format!("x = ['ok', {{ a = \"{KEY}\\\"\" }}]");
        let e = ConfigError::at_span("f", &text, 4..text.len(), None, format!("{KEY}\""));
        assert!(!e.to_string().contains("sk-proj"), "{e}");
    }

    #[test]
    fn short_words_a_message_quotes_on_purpose_stay() {
        let text = "key = [\"none\", \"env::A\"]";
        let e = ConfigError::at_span(
            "f",
            text,
            6..text.len(),
            None,
            "`none` cannot be combined with other locations".into(),
        );
        assert!(e.to_string().contains("`none` cannot"), "{e}");
        assert_eq!(
            redact_value("`5x` is odd; use \"5s\"", "5x"),
            "a 2-character value (not shown) is odd; use \"5s\""
        );
        assert_eq!(described(""), "an empty value");
    }
}
