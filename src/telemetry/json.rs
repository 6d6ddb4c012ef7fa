//! JSON log lines, written for less.
//!
//! tracing-subscriber's JSON format (with `flatten_event`) is the chart's
//! default log format, and it is costly on every access line: it parses the
//! request span's stored fields back from JSON twice per event (for `span`
//! and for `spans`) and allocates for the timestamp and each field. [`Line`]
//! writes the same line, byte for byte: `timestamp`, `level`, the event's
//! fields, `target`, the current `span` and the `spans` from the root,
//! splicing the span fields (stored as a JSON object by the format's own
//! `JsonFields`) as text rather than parsing them.

use std::fmt;
use std::io;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// The JSON event format of `fmt().json().flatten_event(true)`.
#[derive(Debug, Default)]
pub(super) struct Line<T> {
    pub(super) timer: T,
}

impl<S, T> FormatEvent<S, JsonFields> for Line<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut time = Small::default();
        self.timer.format_time(&mut Writer::new(&mut time))?;
        let meta = event.metadata();
        let w = &mut writer;
        w.write_str("{\"timestamp\":")?;
        string(w, time.as_str())?;
        w.write_str(",\"level\":")?;
        string(w, meta.level().as_str())?;
        let mut fields = Fields {
            writer: w.by_ref(),
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        w.write_str(",\"target\":")?;
        string(w, meta.target())?;
        let current = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = &current {
            w.write_str(",\"span\":")?;
            write_span(w, span)?;
            w.write_str(",\"spans\":[")?;
            if let Some(leaf) = ctx.lookup_current() {
                for (i, span) in leaf.scope().from_root().enumerate() {
                    if i > 0 {
                        w.write_char(',')?;
                    }
                    write_span(w, &span)?;
                }
            }
            w.write_char(']')?;
        }
        w.write_str("}\n")
    }
}

/// `{<the span's fields>,"name":"<its name>"}`.
fn write_span<S>(w: &mut Writer<'_>, span: &SpanRef<'_, S>) -> fmt::Result
where
    S: for<'a> LookupSpan<'a>,
{
    let ext = span.extensions();
    // The stored fields are a JSON object, `{}` when there are none.
    let stored = ext
        .get::<FormattedFields<JsonFields>>()
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

/// The event's fields, as `,"name":value` each (tracing-serde's mapping:
/// 64-bit numbers, floats and booleans as JSON, anything else, 128-bit
/// numbers and errors included, as its `Debug` text).
struct Fields<'w> {
    writer: Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_> {
    fn entry(&mut self, field: &Field, value: &dyn erased::Value) {
        if self.result.is_err() {
            return;
        }
        let w = &mut self.writer;
        self.result = w
            .write_char(',')
            .and_then(|()| string(w, field.name()))
            .and_then(|()| w.write_char(':'))
            .and_then(|()| value.write(w));
    }
}

impl Visit for Fields<'_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, &value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, &value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, &value);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, &value);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, &erased::Str(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, &erased::Debug(value));
    }
}

/// A value written as JSON through serde_json, straight into the line.
mod erased {
    use std::fmt;

    pub(super) trait Value {
        fn write(&self, w: &mut super::Writer<'_>) -> fmt::Result;
    }

    impl<T: serde::Serialize> Value for T {
        fn write(&self, w: &mut super::Writer<'_>) -> fmt::Result {
            super::json(w, self)
        }
    }

    /// A string, written by [`super::string`].
    pub(super) struct Str<'a>(pub(super) &'a str);

    impl Value for Str<'_> {
        fn write(&self, w: &mut super::Writer<'_>) -> fmt::Result {
            super::string(w, self.0)
        }
    }

    /// A `Debug` value, as a JSON string of its text.
    pub(super) struct Debug<'a>(pub(super) &'a dyn fmt::Debug);

    impl serde::Serialize for Debug<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&format_args!("{:?}", self.0))
        }
    }
}

/// Writes `s` as a JSON string: at once when nothing in it needs escaping
/// (field names, levels, targets, most values), else through serde_json.
fn string(w: &mut Writer<'_>, s: &str) -> fmt::Result {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        w.write_char('"')?;
        w.write_str(s)?;
        return w.write_char('"');
    }
    json(w, s)
}

/// Writes `value` as JSON.
fn json<V: serde::Serialize + ?Sized>(w: &mut Writer<'_>, value: &V) -> fmt::Result {
    value
        .serialize(&mut serde_json::Serializer::new(Adaptor(w)))
        .map_err(|_| fmt::Error)
}

/// serde_json writes bytes; the line is text (and serde_json writes UTF-8).
struct Adaptor<'a, 'w>(&'a mut Writer<'w>);

impl io::Write for Adaptor<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let s = std::str::from_utf8(buf).map_err(io::Error::other)?;
        self.0.write_str(s).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// A fixed time, so both formats write the same line.
    struct Fixed;
    impl FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            w.write_str("2026-12-07T01:02:03.456789Z")
        }
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    fn events() {
        let e = std::io::Error::other("gone \"away\"");
        tracing::info!(target: "sidekey::access", route = "openai", path = "/v1/\"x\"\n", status = 200u16, elapsed_ms = 2.054_105_000_000_000_3, ok = true, n = -3i64, "request");
        let span = tracing::info_span!("request", id = 7u64, route = tracing::field::Empty);
        let _in = span.enter();
        tracing::warn!(error = %"upstream \u{1b}[31m said\tno", "failover");
        span.record("route", "azure \"x\"");
        tracing::info!(fingerprint = ?Some("sha256:00"), error = &e as &(dyn std::error::Error + 'static), "{} keys", 2);
        let inner = tracing::info_span!("inner");
        let _in2 = inner.enter();
        tracing::debug!(f = f64::NAN, big = 1e21, "nested");
    }

    #[test]
    fn lines_are_those_of_tracing_subscribers_json_format() {
        let (ours, theirs) = (Buf::default(), Buf::default());
        let sub = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(ours.clone())
            .event_format(Line { timer: Fixed })
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
        let ours = String::from_utf8(ours.0.lock().unwrap().clone()).unwrap();
        let theirs = String::from_utf8(theirs.0.lock().unwrap().clone()).unwrap();
        assert_eq!(ours.lines().count(), 4, "{ours}");
        for (a, b) in ours.lines().zip(theirs.lines()) {
            assert_eq!(a, b);
        }
        assert_eq!(ours, theirs);
    }
}
