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
        .map_err(|e| unreachable(e.to_string()))?;
    let status = resp.status();
    let body = tokio::time::timeout(
        FETCH_TIMEOUT,
        Limited::new(resp.into_body(), MAX_ANSWER).collect(),
    )
    .await
    .map_err(timeout)?
    .map_err(|e| unreachable(format!("reading the answer failed: {e}")))?
    .to_bytes();
    Ok(Fetched { host, status, body })
}

/// Text from an endpoint made safe for a log line or an error: printable
/// ASCII kept, everything else escaped, at most `max` bytes of it.
pub(crate) fn printable(text: &[u8], max: usize) -> String {
    let cut = text.len() > max;
    let mut out: String = text.get(..max).unwrap_or(text).escape_ascii().to_string();
    if cut {
        out.push('…');
    }
    out
}
