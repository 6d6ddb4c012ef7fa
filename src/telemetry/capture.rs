//! What the log formats' tests share: a fixed clock, a writer that keeps
//! what it is given, and one script of events and spans.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// A fixed time, so two formats write the same line.
pub(super) struct Fixed;

impl FormatTime for Fixed {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        w.write_str("2026-12-07T01:02:03.456789Z")
    }
}

/// Keeps the lines written to it.
#[derive(Clone, Default)]
pub(super) struct Buf(Arc<Mutex<Vec<u8>>>);

impl Buf {
    pub(super) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

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

/// An access line outside any span, then events in the request span
/// (before and after its `route` is recorded) and in a span inside it, at
/// four levels, with every kind of value and text that needs escaping.
pub(super) fn events() {
    let e = io::Error::other("gone \"away\"");
    tracing::info!(target: "sidekey::access", route = "openai", path = "/v1/\"x\"\n", status = 200u16, elapsed_ms = 2.054_105_000_000_000_3, ok = true, n = -3i64, "request");
    let span = tracing::info_span!("request", id = 7u64, route = tracing::field::Empty);
    let _in = span.enter();
    tracing::warn!(error = %"upstream \u{1b}[31m said\tno", "failover");
    span.record("route", "azure \"x\"");
    tracing::info!(fingerprint = ?Some("sha256:00"), error = &e as &(dyn std::error::Error + 'static), "{} keys", 2);
    let inner = tracing::info_span!("inner");
    let _in2 = inner.enter();
    tracing::debug!(f = f64::NAN, big = 1e21, "nested");
    tracing::error!(target: "sidekey::x", odd = "é\u{7f}", max = u64::MAX, min = i64::MIN, "{}", "last");
}
