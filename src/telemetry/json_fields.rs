//! A span's fields as JSON text, recorded for less.
//!
//! tracing-subscriber's `JsonFields` keeps a span's fields as the text of a
//! JSON object with its keys in order. Its own writer gathers them in a map
//! of `serde_json::Value`s first, and when a field is recorded later (as
//! the request span's `route` is) it parses the stored text back into such
//! a map, adds the field and writes the map again. [`SpanFields`]
//! writes the same text straight away and, when the new fields' names sort
//! after the last one stored (`route` after `id`), appends them in place.
//! Anything else (names out of order or recorded twice, byte slices, `r#`
//! names) goes to `JsonFields` itself, so the text is always what it would
//! have written. With the line's own value writers (`json.rs`), this took
//! 6,600 instructions and 5 allocations off each request's JSON access line
//! (callgrind).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FormatFields, FormattedFields};

use super::json::entries;

/// Span fields as `JsonFields` writes them.
#[derive(Debug, Default)]
pub(super) struct SpanFields;

impl<'w> FormatFields<'w> for SpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        if !ascending(&fields, None) {
            return JsonFields::default().format_fields(writer, fields);
        }
        writer.write_char('{')?;
        entries(&mut writer, &fields, false)?;
        writer.write_char('}')
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        let in_place = match last_key(&current.fields) {
            Some(last) => ascending(fields, last),
            None => false,
        };
        if !in_place {
            let mut theirs =
                FormattedFields::<JsonFields>::new(std::mem::take(&mut current.fields));
            let result = JsonFields::default().add_fields(&mut theirs, fields);
            current.fields = theirs.fields;
            return result;
        }
        // `{...}` less its `}`, then `,"name":value` for each new field.
        let text = &mut current.fields;
        text.pop();
        let comma = text.len() > 1;
        let mut writer = Writer::new(text);
        entries(&mut writer, fields, comma)?;
        writer.write_char('}')
    }
}

/// Whether `fields` can be written as they come: their names ascending,
/// each after `after`, and none that `JsonFields` treats apart (byte
/// slices become arrays; `r#` is cut from a `Debug` value's name only).
fn ascending<R: RecordFields>(fields: &R, after: Option<&str>) -> bool {
    struct Check<'a> {
        last: Option<&'a str>,
        ok: bool,
    }
    impl Visit for Check<'_> {
        fn record_debug(&mut self, field: &Field, _: &dyn fmt::Debug) {
            let name = field.name();
            let after_last = self.last.is_none_or(|last| name > last);
            self.ok &= after_last && !name.starts_with("r#") && !name.starts_with("log.");
            self.last = Some(name);
        }
        fn record_bytes(&mut self, _: &Field, _: &[u8]) {
            self.ok = false;
        }
    }
    let mut check = Check {
        last: after,
        ok: true,
    };
    fields.record(&mut check);
    check.ok
}

/// The last key of a JSON object as [`SpanFields`] or `JsonFields` write
/// it: `Some(None)` for `{}`, `Some(Some(key))` when its last key needs no
/// unescaping, `None` when the text is not such an object (then
/// `JsonFields` parses it).
fn last_key(text: &str) -> Option<Option<&str>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let mut rest = inner;
    let mut last = None;
    while !rest.is_empty() {
        let (key, after) = json_string(rest)?;
        last = Some(key);
        rest = skip_value(after.strip_prefix(':')?)?;
        if let Some(next) = rest.strip_prefix(',') {
            rest = next;
            if rest.is_empty() {
                return None;
            }
        } else if !rest.is_empty() {
            return None;
        }
    }
    let last = match last {
        Some(key) if key.contains('\\') => return None,
        other => other,
    };
    Some(last)
}

/// A JSON string at the start of `text`: its contents as written and what
/// follows it.
fn json_string(text: &str) -> Option<(&str, &str)> {
    let body = text.strip_prefix('"')?;
    let bytes = body.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return Some((body.get(..i)?, body.get(i + 1..)?)),
            _ => i += 1,
        }
    }
    None
}

/// What follows the JSON value at the start of `text`, for the values
/// `JsonFields` writes: strings, and numbers, booleans and `null`.
fn skip_value(text: &str) -> Option<&str> {
    if text.starts_with('"') {
        return json_string(text).map(|(_, rest)| rest);
    }
    let end = text.find([',', '}', '"', '[', '{']).unwrap_or(text.len());
    (end > 0 && !matches!(text.as_bytes().get(end), Some(b'"' | b'[' | b'{')))
        .then(|| text.get(end..))
        .flatten()
}

#[cfg(test)]
mod tests {
    use tracing::Subscriber;
    use tracing_subscriber::fmt::{FmtContext, FormatEvent};
    use tracing_subscriber::registry::LookupSpan;

    use proptest::strategy::Strategy as _;

    use super::super::capture::Buf;
    use super::*;

    /// Writes, for each event, the fields of the spans it is in.
    struct SpansOnly;
    impl<S, N> FormatEvent<S, N> for SpansOnly
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut w: Writer<'_>,
            _: &tracing::Event<'_>,
        ) -> fmt::Result {
            if let Some(leaf) = ctx.lookup_current() {
                for span in leaf.scope().from_root() {
                    let ext = span.extensions();
                    let text = ext
                        .get::<FormattedFields<N>>()
                        .map_or("-", |f| f.fields.as_str());
                    write!(w, "{text} ")?;
                }
            }
            writeln!(w)
        }
    }

    fn spans() {
        let e = std::io::Error::other("gone \"away\"");
        // sidekey's own: `id` at the start, `route` recorded later.
        let request = tracing::info_span!("request", id = 7u64, route = tracing::field::Empty);
        let _a = request.enter();
        tracing::info!("a");
        request.record("route", "azure \"x\"\n");
        tracing::info!("b");
        // Recorded again (a name already stored), and out of order.
        request.record("route", "other");
        request.record("id", 8u64);
        tracing::info!("c");
        // Every kind of value, in order, then one before the last.
        let kinds = tracing::info_span!(
            "kinds",
            a = true,
            b = -3i64,
            c = 2.5f64,
            d = f64::NAN,
            e = ?Some("x"),
            f = %"tab\there",
            g = &e as &(dyn std::error::Error + 'static),
            h = 1u128 << 70,
            j = tracing::field::Empty,
            k = tracing::field::Empty,
        );
        let _b = kinds.enter();
        kinds.record("k", 1e21);
        tracing::info!("d");
        kinds.record("j", "late");
        tracing::info!("e");
        // Names out of order at creation; `r#` names; byte slices; none.
        let odd = tracing::info_span!("odd", z = 1u64, r#type = "t", m = tracing::field::Empty);
        let _c = odd.enter();
        odd.record("m", &b"\x01\x02"[..]);
        tracing::info!("f");
        let empty = tracing::info_span!("empty", later = tracing::field::Empty);
        let _d = empty.enter();
        tracing::info!("g");
        empty.record("later", 5u64);
        tracing::info!("h");
    }

    fn lines<N>(fields: N) -> String
    where
        N: for<'a> FormatFields<'a> + Send + Sync + 'static,
    {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt()
            .fmt_fields(fields)
            .event_format(SpansOnly)
            .with_writer(buf.clone())
            .finish();
        tracing::subscriber::with_default(sub, spans);
        buf.text()
    }

    #[test]
    fn span_fields_are_those_of_json_fields() {
        let ours = lines(SpanFields);
        let theirs = lines(JsonFields::default());
        assert_eq!(ours.lines().count(), 8, "{ours}");
        for (a, b) in ours.lines().zip(theirs.lines()) {
            assert_eq!(a, b);
        }
        assert_eq!(ours, theirs);
        // The request span's line after `route` is recorded.
        assert!(
            ours.lines()
                .nth(1)
                .unwrap()
                .starts_with(r#"{"id":7,"route":"azure \"x\"\n"} "#),
            "{ours}"
        );
    }

    proptest::proptest! {
        /// On any object serde_json writes from a sorted map of the values
        /// `JsonFields` records, the last key is the map's last key, or
        /// none is claimed when it has an escape.
        #[test]
        fn the_last_key_of_any_such_object_is_found(
            map in proptest::collection::btree_map(
                "[a-z_\"\\\\.]{1,6}",
                proptest::prop_oneof![
                    "\\PC*".prop_map(serde_json::Value::from),
                    proptest::num::i64::ANY.prop_map(serde_json::Value::from),
                    proptest::num::f64::ANY.prop_map(serde_json::Value::from),
                    proptest::bool::ANY.prop_map(serde_json::Value::from),
                ],
                0..5,
            )
        ) {
            let text = serde_json::to_string(&map).unwrap();
            let expected = match map.keys().next_back() {
                Some(key) if key.contains(['"', '\\']) => None,
                other => Some(other.map(String::as_str)),
            };
            proptest::prop_assert_eq!(last_key(&text), expected, "{}", text);
        }
    }

    #[test]
    fn the_last_key_is_found_or_left_to_json_fields() {
        assert_eq!(last_key("{}"), Some(None));
        assert_eq!(last_key(r#"{"id":7}"#), Some(Some("id")));
        assert_eq!(
            last_key(r#"{"a":"x\",\"b\":1","b":null,"c":-1.5e-7}"#),
            Some(Some("c"))
        );
        assert_eq!(last_key(r#"{"a":true,"b\"c":1}"#), None);
        for bad in [
            "",
            "{",
            r#"{"a":1,}"#,
            r#"{"a":}"#,
            r#"{"a":[1]}"#,
            r#"{"a" :1}"#,
            r#"{"a":{}}"#,
            "x",
        ] {
            assert_eq!(last_key(bad), None, "{bad}");
        }
    }
}
