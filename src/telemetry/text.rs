//! The text log line's fields and timestamp, written for less.
//!
//! tracing-subscriber's default text format writes each field, span name
//! and target through its styling layer (`nu_ansi_term`), even with colours
//! off, and formats the full date for every line: an access line cost about
//! a third of the whole request (callgrind). [`Line`] writes the same line
//! with colours off, [`Fields`] the same fields (`name=value` in `Debug`
//! form; the message and errors through the default's own writer, which
//! escapes terminal control characters), both without the styling, and
//! [`Timestamp`] writes the same RFC 3339 time, formatting the date and time
//! of day once per second.

use std::cell::Cell;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::{RecordFields, VisitOutput as _};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The default text format's line with colours off: the time, the level,
/// the spans from the root (`name{fields}:`), the target, the fields.
#[derive(Debug, Default)]
pub(super) struct Line<T> {
    pub(super) timer: T,
}

impl<S, T> super::LineFormat<S, Fields> for Line<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    T: FormatTime,
{
    fn line(
        &self,
        ctx: &FmtContext<'_, S, Fields>,
        w: &mut String,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.timer.format_time(&mut Writer::new(w)).is_err() {
            w.push_str("<unknown time>");
        }
        let meta = event.metadata();
        w.push_str(match *meta.level() {
            Level::TRACE => " TRACE ",
            Level::DEBUG => " DEBUG ",
            Level::INFO => "  INFO ",
            Level::WARN => "  WARN ",
            Level::ERROR => " ERROR ",
        });
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                seen = true;
                w.push_str(span.metadata().name());
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<Fields>>()
                    && !fields.is_empty()
                {
                    w.push('{');
                    w.push_str(fields);
                    w.push('}');
                }
                w.push(':');
            }
            if seen {
                w.push(' ');
            }
        }
        w.push_str(meta.target());
        w.push_str(": ");
        // The event's fields as `Fields` writes them, straight into the line.
        let mut visitor = Visitor {
            writer: &mut *w,
            first: true,
            result: Ok(()),
        };
        event.record(&mut visitor);
        visitor.result?;
        w.push('\n');
        Ok(())
    }
}

/// Fields as the default text format writes them with colours off.
#[derive(Debug, Default)]
pub(super) struct Fields;

impl<'w> FormatFields<'w> for Fields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// Writes fields to a [`Writer`] (a span's) or to a line being put
/// together (an event's).
struct Visitor<W> {
    writer: W,
    first: bool,
    result: fmt::Result,
}

impl<W: fmt::Write> Visitor<W> {
    /// ` name=` then the value (no space before the first field).
    fn put(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let first = std::mem::replace(&mut self.first, false);
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        // Piece by piece: cheaper than one `write!` of three arguments.
        let w = &mut self.writer;
        self.result = (if first { Ok(()) } else { w.write_char(' ') })
            .and_then(|()| w.write_str(name))
            .and_then(|()| w.write_char('='))
            .and_then(|()| value(w));
    }
}

impl<W: fmt::Write> Visit for Visitor<W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else if value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            // What `Debug` writes for text it leaves as it is.
            self.put(field, |w| {
                w.write_char('"')?;
                w.write_str(value)?;
                w.write_char('"')
            });
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        if field.name() == "message" {
            // The default's own escaping of terminal control characters.
            let first = std::mem::replace(&mut self.first, false);
            let mut default = DefaultVisitor::new(Writer::new(&mut self.writer), first);
            default.record_debug(field, value);
            self.result = default.finish();
            return;
        }
        self.put(field, |w| write!(w, "{value:?}"));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_err() {
            return;
        }
        let first = std::mem::replace(&mut self.first, false);
        let mut default = DefaultVisitor::new(Writer::new(&mut self.writer), first);
        default.record_error(field, value);
        self.result = default.finish();
    }
}

/// `2026-12-07T01:02:03.456789Z`, as tracing-subscriber's `SystemTime`.
#[derive(Debug, Default)]
pub(super) struct Timestamp;

thread_local! {
    /// The second last formatted on this thread, and its text up to the
    /// seconds (`YYYY-MM-DDTHH:MM:SS`, 19 bytes).
    static LAST: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

impl FormatTime for Timestamp {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs();
        let (last, mut text) = LAST.get();
        if last != secs {
            text = seconds(secs);
            LAST.set((secs, text));
        }
        let line = stamp(text, now.subsec_micros());
        w.write_str(std::str::from_utf8(&line).map_err(|_| fmt::Error)?)
    }
}

/// The time to the second, then `.`, six digits of `micros` and `Z`.
fn stamp(seconds: [u8; 19], mut micros: u32) -> [u8; 27] {
    let mut line = [0u8; 27];
    let (date, rest) = line.split_at_mut(19);
    date.copy_from_slice(&seconds);
    for (i, b) in rest.iter_mut().enumerate().rev() {
        *b = match i {
            0 => b'.',
            7 => b'Z',
            _ => {
                // A digit: `micros % 10` is below 10.
                let digit = b'0' + u8::try_from(micros % 10).unwrap_or(0);
                micros /= 10;
                digit
            }
        };
    }
    line
}

/// `YYYY-MM-DDTHH:MM:SS` for `secs` after the epoch (years 1970-9999).
fn seconds(secs: u64) -> [u8; 19] {
    let days = secs / 86_400;
    let rest = secs % 86_400;
    let (year, month, day) = civil(days);
    let mut out = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut n: u64| {
        for i in (at..at + width).rev() {
            if let Some(b) = out.get_mut(i) {
                // A digit: `n % 10` is below 10.
                *b = b'0' + u8::try_from(n % 10).unwrap_or(0);
            }
            n /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, rest / 3600);
    put(14, 2, rest % 3600 / 60);
    put(17, 2, rest % 60);
    out
}

/// The civil date (year, month, day) of `days` after 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for dates from 1970 on).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_are_those_of_rfc_3339() {
        let at = |s| String::from_utf8(seconds(s).to_vec()).unwrap();
        assert_eq!(at(0), "1970-01-01T00:00:00");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(at(951_868_799), "2000-02-29T23:59:59");
        assert_eq!(at(951_955_199), "2000-03-01T23:59:59");
        assert_eq!(at(1_796_605_323), "2026-12-07T01:02:03");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00");
        assert_eq!(at(253_402_300_799), "9999-12-31T23:59:59");
        let full = |s, micros| String::from_utf8(stamp(seconds(s), micros).to_vec()).unwrap();
        assert_eq!(full(1_796_605_323, 4_567), "2026-12-07T01:02:03.004567Z");
        assert_eq!(full(0, 999_999), "1970-01-01T00:00:00.999999Z");
        assert_eq!(full(0, 0), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn the_timestamp_reads_as_tracing_subscribers_own() {
        for _ in 0..3 {
            let (mut ours, mut theirs) = (String::new(), String::new());
            Timestamp.format_time(&mut Writer::new(&mut ours)).unwrap();
            tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut Writer::new(&mut theirs))
                .unwrap();
            // The same second (unless it turned between the two calls).
            if ours.get(..19) == theirs.get(..19) {
                assert_eq!(ours.len(), theirs.len(), "{ours} / {theirs}");
                assert!(ours.ends_with('Z'));
                return;
            }
        }
        panic!("the timestamps never agreed");
    }

    #[test]
    fn lines_are_those_of_the_default_format_without_colours() {
        use super::super::capture::{Buf, Fixed, events};
        let (ours, theirs) = (Buf::default(), Buf::default());
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(ours.clone())
            .fmt_fields(Fields)
            .event_format(super::super::Buffered(Line { timer: Fixed }))
            .finish();
        tracing::subscriber::with_default(sub, events);
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
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

    #[test]
    fn fields_read_as_the_default_formats_without_colours() {
        use tracing_subscriber::fmt::format::DefaultFields;
        // Both formatters, on the fields of one event.
        struct Capture(std::sync::Mutex<Vec<(String, String)>>);
        impl tracing::Subscriber for Capture {
            fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
                tracing::span::Id::from_u64(1)
            }
            fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
            fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
            fn event(&self, event: &tracing::Event<'_>) {
                let (mut ours, mut theirs) = (String::new(), String::new());
                Fields.format_fields(Writer::new(&mut ours), event).unwrap();
                DefaultFields::new()
                    .format_fields(Writer::new(&mut theirs), event)
                    .unwrap();
                self.0.lock().unwrap().push((ours, theirs));
            }
            fn enter(&self, _: &tracing::span::Id) {}
            fn exit(&self, _: &tracing::span::Id) {}
        }
        let capture = std::sync::Arc::new(Capture(std::sync::Mutex::new(Vec::new())));
        tracing::subscriber::with_default(capture.clone(), || {
            let path = "/v1/chat \"x\"";
            tracing::info!(
                route = "openai",
                path,
                status = 200u16,
                elapsed_ms = 1.25,
                "request"
            );
            tracing::warn!(error = %"upstream \x1b[31m said\tno", r#type = "x", "failover \x1b[0m\u{85}");
            let e = std::io::Error::other("gone \x1b[0m");
            tracing::warn!(error = &e as &(dyn std::error::Error + 'static), "x");
            tracing::info!(attempts = 2u8, ok = true, "{} keys", 2);
        });
        let lines = capture.0.lock().unwrap();
        assert_eq!(lines.len(), 4);
        for (ours, theirs) in lines.iter() {
            assert_eq!(ours, theirs);
        }
    }
}
