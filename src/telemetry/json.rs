//! JSON log lines, written for less.
//!
//! tracing-subscriber's JSON format (with `flatten_event`) is the chart's
//! default log format, and it is costly on every access line: it parses the
//! request span's stored fields back from JSON twice per event (for `span`
//! and for `spans`) and allocates for the timestamp and each field. [`Line`]
//! writes the same line, byte for byte: `timestamp`, `level`, the event's
//! fields, `target`, the current `span` and the `spans` from the root,
//! splicing the span fields (stored as a JSON object by
//! [`SpanFields`]) as text rather than parsing them. Values are written
//! straight into the line: integers by `itoa`, strings escaped as serde_json
//! escapes them, with no byte-to-text adaptor in between.

use std::fmt;
use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use super::json_fields::SpanFields;

/// The JSON event format of `fmt().json().flatten_event(true)`.
#[derive(Debug, Default)]
pub(super) struct Line<T> {
    pub(super) timer: T,
}

impl<S, T> super::LineFormat<S, SpanFields> for Line<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    T: FormatTime,
{
    fn line(
        &self,
        ctx: &FmtContext<'_, S, SpanFields>,
        w: &mut String,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut time = Small::default();
        self.timer.format_time(&mut Writer::new(&mut time))?;
        let meta = event.metadata();
        w.push_str("{\"timestamp\":");
        string(w, time.as_str())?;
        w.push_str(",\"level\":");
        string(w, meta.level().as_str())?;
        entries(w, event, true)?;
        w.push_str(",\"target\":");
        string(w, meta.target())?;
        let current = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = &current {
            w.push_str(",\"span\":");
            write_span(w, span)?;
            w.push_str(",\"spans\":[");
            if let Some(leaf) = ctx.lookup_current() {
                for (i, span) in leaf.scope().from_root().enumerate() {
                    if i > 0 {
                        w.push(',');
                    }
                    write_span(w, &span)?;
                }
            }
            w.push(']');
        }
        w.push_str("}\n");
        Ok(())
    }
}

/// `{<the span's fields>,"name":"<its name>"}`.
fn write_span<S>(w: &mut String, span: &SpanRef<'_, S>) -> fmt::Result
where
    S: for<'a> LookupSpan<'a>,
{
    let ext = span.extensions();
    // The stored fields are a JSON object, `{}` when there are none.
    let stored = ext
        .get::<FormattedFields<SpanFields>>()
        .map_or("{}", |f| f.fields.as_str());
    let inner = stored
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or_default();
    w.write_char('{')?;
    if !inner.is_empty() {
        w.write_str(inner)?;
        w.write_char(',')?;
    }
    w.write_str("\"name\":")?;
    string(w, span.metadata().name())?;
    w.write_char('}')
}

/// Writes `fields` as `"name":value` pairs (a comma before each but the
/// first, and before the first too if `comma`). An event's fields map as
/// tracing-serde maps them, a span's as `JsonFields` does, which here is
/// the same: 64-bit numbers, floats and booleans as JSON, anything else
/// (128-bit numbers and errors included) as its `Debug` text.
pub(super) fn entries<W, R>(w: &mut W, fields: &R, comma: bool) -> fmt::Result
where
    W: fmt::Write + ?Sized,
    R: RecordFields,
{
    struct Entries<'a, W: ?Sized> {
        w: &'a mut W,
        comma: bool,
        result: fmt::Result,
    }
    impl<W: fmt::Write + ?Sized> Entries<'_, W> {
        fn put(&mut self, field: &Field, value: Value<'_>) {
            if self.result.is_ok() {
                self.result = entry(self.w, self.comma, field.name(), value);
                self.comma = true;
            }
        }
    }
    impl<W: fmt::Write + ?Sized> Visit for Entries<'_, W> {
        fn record_bool(&mut self, field: &Field, value: bool) {
            self.put(field, Value::Bool(value));
        }
        fn record_i64(&mut self, field: &Field, value: i64) {
            self.put(field, Value::I64(value));
        }
        fn record_u64(&mut self, field: &Field, value: u64) {
            self.put(field, Value::U64(value));
        }
        fn record_f64(&mut self, field: &Field, value: f64) {
            self.put(field, Value::F64(value));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.put(field, Value::Str(value));
        }
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            self.put(field, Value::Debug(value));
        }
    }
    let mut entries = Entries {
        w,
        comma,
        result: Ok(()),
    };
    fields.record(&mut entries);
    entries.result
}

/// A field's value, as both the event and the span fields write it.
#[derive(Clone, Copy)]
enum Value<'a> {
    Bool(bool),
    I64(i64),
    U64(u64),
    /// `null` unless finite, as serde_json writes it.
    F64(f64),
    Str(&'a str),
    /// A JSON string of its `Debug` text.
    Debug(&'a dyn fmt::Debug),
}

/// `"name":value` as serde_json writes it, after a comma if `comma`.
fn entry<W>(w: &mut W, comma: bool, name: &str, value: Value<'_>) -> fmt::Result
where
    W: fmt::Write + ?Sized,
{
    if plain(name) {
        w.write_str(if comma { ",\"" } else { "\"" })?;
        w.write_str(name)?;
        w.write_str("\":")?;
    } else {
        if comma {
            w.write_char(',')?;
        }
        string(w, name)?;
        w.write_char(':')?;
    }
    match value {
        Value::Bool(b) => w.write_str(if b { "true" } else { "false" }),
        Value::I64(n) => w.write_str(itoa::Buffer::new().format(n)),
        Value::U64(n) => w.write_str(itoa::Buffer::new().format(n)),
        Value::F64(x) => float(w, x),
        Value::Str(s) => string(w, s),
        Value::Debug(d) => {
            w.write_char('"')?;
            write!(Escaped(w), "{d:?}")?;
            w.write_char('"')
        }
    }
}

/// A float as serde_json writes it (the shortest text that reads back the
/// same, `null` for NaN and the infinities), through a stack buffer.
fn float<W: fmt::Write + ?Sized>(w: &mut W, x: f64) -> fmt::Result {
    let mut buf = [0u8; 40];
    let mut rest = &mut buf[..];
    serde_json::to_writer(&mut rest, &x).map_err(|_| fmt::Error)?;
    let len = 40 - rest.len();
    let text = buf.get(..len).ok_or(fmt::Error)?;
    w.write_str(std::str::from_utf8(text).map_err(|_| fmt::Error)?)
}

/// Whether `s` goes into a JSON string as it is.
fn plain(s: &str) -> bool {
    s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// Writes `s` as a JSON string, escaped as serde_json escapes it.
fn string<W: fmt::Write + ?Sized>(w: &mut W, s: &str) -> fmt::Result {
    w.write_char('"')?;
    if plain(s) {
        w.write_str(s)?;
    } else {
        Escaped(w).write_str(s)?;
    }
    w.write_char('"')
}

/// Text written into a JSON string: `"`, `\` and control characters
/// escaped as serde_json escapes them (`\n`, `\u001b`), anything else as
/// it is. Escaping goes byte by byte, so text written in pieces comes out
/// as if written whole.
struct Escaped<'a, W: ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut from = 0;
        for (i, b) in s.bytes().enumerate() {
            let short = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x20.. => continue,
                _ => "",
            };
            // An escaped byte is ASCII: `from` and `i` fall between characters.
            self.0.write_str(s.get(from..i).ok_or(fmt::Error)?)?;
            from = i + 1;
            if short.is_empty() {
                let hex =
                    |n: u8| char::from(HEX.get(usize::from(n & 0xf)).copied().unwrap_or(b'0'));
                self.0.write_str("\\u00")?;
                self.0.write_char(hex(b >> 4))?;
                self.0.write_char(hex(b))?;
            } else {
                self.0.write_str(short)?;
            }
        }
        self.0.write_str(s.get(from..).ok_or(fmt::Error)?)
    }
}

/// A timestamp's text, on the stack.
struct Small {
    buf: [u8; 48],
    len: usize,
}

impl Default for Small {
    fn default() -> Self {
        Self {
            buf: [0; 48],
            len: 0,
        }
    }
}

impl Small {
    fn as_str(&self) -> &str {
        self.buf
            .get(..self.len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }
}

impl fmt::Write for Small {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::capture::{Buf, Fixed, events};
    use super::*;

    #[test]
    fn values_are_written_as_serde_json_writes_them() {
        let ours = |value: Value<'_>| {
            let mut out = String::new();
            entry(&mut Writer::new(&mut out), false, "k", value).unwrap();
            out.strip_prefix("\"k\":").unwrap().to_owned()
        };
        let all: String = (0u8..0x80)
            .map(char::from)
            .chain(['é', '\u{2028}', '😀'])
            .collect();
        for text in [all.as_str(), "plain", "", "a\"b\\c\u{7f}"] {
            assert_eq!(ours(Value::Str(text)), serde_json::to_string(text).unwrap());
            // Debug text goes through the same escaping, in pieces.
            let debug = format!("{text:?}");
            assert_eq!(
                ours(Value::Debug(&text)),
                serde_json::to_string(&debug).unwrap()
            );
        }
        for n in [0, 7, -1, i64::MIN, i64::MAX] {
            assert_eq!(ours(Value::I64(n)), serde_json::to_string(&n).unwrap());
        }
        assert_eq!(ours(Value::U64(u64::MAX)), u64::MAX.to_string());
        for x in [
            0.0,
            -0.0,
            2.054_105_000_000_000_3,
            1e21,
            1e-7,
            f64::MAX,
            f64::NAN,
            f64::INFINITY,
        ] {
            assert_eq!(ours(Value::F64(x)), serde_json::to_string(&x).unwrap());
        }
        assert_eq!(ours(Value::Bool(false)), "false");
        let mut out = String::new();
        entry(
            &mut Writer::new(&mut out),
            true,
            "we\"ird",
            Value::Bool(true),
        )
        .unwrap();
        assert_eq!(out, r#","we\"ird":true"#);
    }

    proptest::proptest! {
        /// Any text, whole or as `Debug` text written in pieces, comes out
        /// as serde_json writes it: an upstream's text cannot end the
        /// string early or break the line.
        #[test]
        fn any_text_is_escaped_as_serde_json_escapes_it(text in "\\PC*|[\\x00-\\x7f]*") {
            let mut out = String::new();
            string(&mut out, &text).unwrap();
            proptest::prop_assert_eq!(&out, &serde_json::to_string(&text).unwrap());
            proptest::prop_assert!(!out.contains('\n'));
            let mut debug = String::new();
            entry(&mut debug, false, "k", Value::Debug(&text)).unwrap();
            let expected = format!("\"k\":{}", serde_json::to_string(&format!("{text:?}")).unwrap());
            proptest::prop_assert_eq!(debug, expected);
        }
    }

    #[test]
    fn lines_are_those_of_tracing_subscribers_json_format() {
        let (ours, theirs) = (Buf::default(), Buf::default());
        let sub = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(ours.clone())
            .fmt_fields(SpanFields)
            .event_format(super::super::Buffered(Line { timer: Fixed }))
            .finish();
        tracing::subscriber::with_default(sub, events);
        let sub = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(theirs.clone())
            .with_timer(Fixed)
            .finish();
        tracing::subscriber::with_default(sub, events);
        let (ours, theirs) = (ours.text(), theirs.text());
        assert_eq!(ours.lines().count(), 5, "{ours}");
        for (a, b) in ours.lines().zip(theirs.lines()) {
            assert_eq!(a, b);
        }
        assert_eq!(ours, theirs);
    }
}
