//! One request to a credential endpoint (a token endpoint, STS, a metadata
//! server), bounded in time and size. Every source asks through [`fetch`],
//! so a hung or flooding endpoint costs the same bounded wait everywhere.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};

use super::MintError;
use crate::upstream::{Client, UpstreamBody};

/// One request may take this long, for its head and again for its body.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// An answer larger than this is refused.
const MAX_ANSWER: usize = 64 << 10;

/// An endpoint's answer.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// The endpoint's `host:port`, for errors.
    pub(crate) host: String,
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

impl Fetched {
    /// The body of a 200 answer; any other status is [`MintError::Refused`]
    /// with `detail(body)` (which must name the problem, never a value).
    pub(crate) fn ok_or_refused(self, detail: fn(&[u8]) -> String) -> Result<Bytes, MintError> {
        if self.status == StatusCode::OK {
            return Ok(self.body);
        }
        Err(MintError::Refused {
            detail: detail(&self.body),
            host: self.host,
            status: self.status,
        })
    }
}

/// Sends `req` through `client` and reads the whole answer.
///
/// # Errors
///
/// [`MintError::Timeout`] or [`MintError::Unreachable`], naming the host.
pub(crate) async fn fetch(
    client: &Client,
    req: Request<UpstreamBody>,
) -> Result<Fetched, MintError> {
    let host = req
        .uri()
        .authority()
        .map(ToString::to_string)
        .unwrap_or_default();
    let timeout = |_| MintError::Timeout {
        host: host.clone(),
        after: FETCH_TIMEOUT,
    };
    let unreachable = |reason| MintError::Unreachable {
        host: host.clone(),
        reason,
    };
    // The lane guard lives to the end of this function: past the body read.
    let (resp, _lane) = tokio::time::timeout(FETCH_TIMEOUT, client.send(req))
        .await
        .map_err(timeout)?
        .map_err(|e| unreachable(printable(e.to_string().as_bytes())))?;
    let status = resp.status();
    let body = tokio::time::timeout(
        FETCH_TIMEOUT,
        Limited::new(resp.into_body(), MAX_ANSWER).collect(),
    )
    .await
    .map_err(timeout)?
    .map_err(|e| {
        unreachable(format!(
            "reading the answer failed: {}",
            printable(e.to_string().as_bytes())
        ))
    })?
    .to_bytes();
    Ok(Fetched { host, status, body })
}

/// At most this many characters of an endpoint's text reach a log line or
/// an error body (escapes count; a cut is marked with `…`).
pub(crate) const MAX_SHOWN: usize = 256;

/// Text from an endpoint (an `error_description`, an STS `Message`, a
/// metadata server's body) made safe for a log line or an error body: read
/// as UTF-8 (invalid bytes become U+FFFD), every control character, quote,
/// backslash and invisible or line-breaking character escaped as Rust does
/// (`\n`, `\"`, `\u{202e}`), cut on a character boundary at [`MAX_SHOWN`].
/// The only way such text reaches a log or an answer: a newline from an
/// upstream can never start a forged log line.
pub(crate) fn printable(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let mut out = String::with_capacity(text.len().min(MAX_SHOWN) + '…'.len_utf8());
    let mut shown = 0;
    for c in text.chars() {
        let escaped = c.escape_debug();
        shown += escaped.len();
        if shown > MAX_SHOWN {
            out.push('…');
            break;
        }
        out.extend(escaped);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_text_is_escaped_and_bounded() {
        let forged = "bad\n{\"level\":\"ERROR\",\"message\":\"forged\"}\r\u{2028}\u{202e}\x1b[31m";
        let shown = printable(forged.as_bytes());
        assert_eq!(
            shown,
            r#"bad\n{\"level\":\"ERROR\",\"message\":\"forged\"}\r\u{2028}\u{202e}\u{1b}[31m"#
        );
        assert!(!shown.chars().any(char::is_control));
        // Cut on a character boundary, marked.
        let long = "é".repeat(10_000);
        let shown = printable(long.as_bytes());
        assert_eq!(shown.chars().count(), MAX_SHOWN + 1);
        assert!(shown.ends_with('…'));
        // An escape is never cut in half.
        let shown = printable("\n".repeat(MAX_SHOWN).as_bytes());
        assert_eq!(shown, format!("{}…", "\\n".repeat(MAX_SHOWN / 2)));
        assert_eq!(printable(b"\xff ok"), "\u{fffd} ok");
        assert_eq!(printable(b"short"), "short");
    }
}
