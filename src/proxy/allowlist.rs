//! The model allowlist (`models = [...]`).
//!
//! design.md, "Request path" step 3. The model is read from where the
//! provider puts it: the JSON body's `model` (which means the body is read
//! into memory, up to `limits.max_replay_body` and within
//! `limits.body_read_timeout`), the `models/{model}:method`
//! path segment (Gemini), or the Azure deployment. A request whose model
//! cannot be determined passes only if it has no body (listing models,
//! fetching a file); otherwise it gets a 400, because an allowlist that can be
//! bypassed by leaving the model out is not one.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::providers::ModelIn;
use crate::routes::Route;
use crate::timer::{self, Reused};
use crate::upstream::UpstreamBody;

/// How much of a request body sidekey reads itself, and for how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadLimits<'a> {
    /// `limits.max_replay_body`.
    pub(crate) max: u64,
    /// `limits.body_read_timeout`: the whole body must arrive within it.
    pub(crate) timeout: Duration,
    /// The connection's timer for it.
    pub(crate) timer: &'a Reused,
}

/// Lets the request through or refuses it. Returns the body to send on:
/// untouched when nothing had to be read, else the bytes that were read.
///
/// # Errors
///
/// 403 for a model not on the list, 413 when the body is too large to check,
/// 408 when it does not arrive in time, 400 when the model cannot be found
/// in a request that has a body.
pub(crate) async fn check(
    route: &Route,
    rest: &str,
    deployment: Option<&str>,
    headers: &HeaderMap,
    body: Incoming,
    limit: ReadLimits<'_>,
) -> Result<UpstreamBody, ProxyError> {
    if route.models.is_none() {
        return Ok(UpstreamBody::stream(body));
    }
    let (model, body) = match route.spec.model_in {
        ModelIn::JsonBody => {
            let bytes = read_body(route, headers, body, limit).await?;
            // Judged while the model still borrows the body's bytes.
            judge(route, model_from_json(&bytes).as_deref(), bytes.is_empty())?;
            return Ok(UpstreamBody::buffered(bytes));
        }
        ModelIn::PathModelsSegment => (
            models_segment(rest).map(Cow::Borrowed),
            UpstreamBody::stream(body),
        ),
        ModelIn::PathModelSegment => (model_segment(rest), UpstreamBody::stream(body)),
        ModelIn::AzureDeployment => (deployment.map(Cow::Borrowed), UpstreamBody::stream(body)),
    };
    judge(route, model.as_deref(), is_empty(&body))?;
    Ok(body)
}

/// Lets `model` through or refuses it; a request without one passes only
/// if it has no body (`empty`).
fn judge(route: &Route, model: Option<&str>, empty: bool) -> Result<(), ProxyError> {
    match model {
        Some(model) if route.allows(model) => Ok(()),
        Some(model) => Err(ProxyError::ModelNotAllowed {
            route: route.name.to_string(),
            model: model.to_owned(),
        }),
        None if empty => Ok(()),
        None => Err(ProxyError::NoModel {
            route: route.name.to_string(),
        }),
    }
}

/// The model a path names, on routes that put it there (Gemini, Vertex,
/// Bedrock); `None` elsewhere.
pub(crate) fn path_model(model_in: ModelIn, rest: &str) -> Option<Cow<'_, str>> {
    match model_in {
        ModelIn::PathModelsSegment => models_segment(rest).map(Cow::Borrowed),
        ModelIn::PathModelSegment => model_segment(rest),
        ModelIn::JsonBody | ModelIn::AzureDeployment => None,
    }
}

fn is_empty(body: &UpstreamBody) -> bool {
    use http_body::Body as _;
    body.is_end_stream()
}

/// Reads a request body into memory, refusing more than `limits.max` bytes
/// (and refusing early when `Content-Length` already says so) or a body
/// that takes longer than `limits.timeout` to arrive (a client that stops
/// sending mid-way).
///
/// # Errors
///
/// [`ProxyError::BodyTooLarge`], [`ProxyError::BodyTimeout`] or
/// [`ProxyError::RequestBody`].
pub(crate) async fn read_body(
    route: &Route,
    headers: &HeaderMap,
    body: Incoming,
    limits: ReadLimits<'_>,
) -> Result<Bytes, ProxyError> {
    let limit = limits.max;
    let too_large = || ProxyError::BodyTooLarge {
        route: route.name.to_string(),
        limit,
    };
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let expected = declared.map_or(0, |n| usize::try_from(n).unwrap_or(limit));
    let read = whole(body, limit, expected);
    let Some(read) = timer::within(limits.timer, limits.timeout, read).await else {
        return Err(ProxyError::BodyTimeout {
            route: route.name.to_string(),
            after: limits.timeout,
        });
    };
    match read {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(too_large()),
        Err(e) => Err(ProxyError::RequestBody {
            route: route.name.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// The data of `body`, or `None` once it holds more than `limit` bytes.
/// A body that comes in one frame (the usual request) is that frame, as
/// hyper read it: no copy and no list of frames. A longer one is gathered
/// in a buffer sized for `expected` (its `Content-Length`) when known.
/// Trailers are ignored.
async fn whole(
    mut body: Incoming,
    limit: usize,
    expected: usize,
) -> Result<Option<Bytes>, hyper::Error> {
    let mut first: Option<Bytes> = None;
    let mut gathered: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > limit {
            return Ok(None);
        }
        if let Some(buf) = &mut gathered {
            buf.extend_from_slice(&data);
        } else if let Some(one) = first.take() {
            let mut buf = BytesMut::with_capacity(expected.max(total).min(limit));
            buf.extend_from_slice(&one);
            buf.extend_from_slice(&data);
            gathered = Some(buf);
        } else {
            first = Some(data);
        }
    }
    Ok(Some(gathered.map_or_else(
        || first.unwrap_or_default(),
        BytesMut::freeze,
    )))
}

/// `body` in memory (SigV4 signs a hash of it): as it is when the allowlist
/// already read it, else read now under the same bound.
///
/// # Errors
///
/// As [`read_body`].
pub(crate) async fn in_memory(
    route: &Route,
    headers: &HeaderMap,
    body: UpstreamBody,
    limit: ReadLimits<'_>,
) -> Result<UpstreamBody, ProxyError> {
    match body {
        UpstreamBody::Stream { body } => Ok(UpstreamBody::buffered(
            read_body(route, headers, body, limit).await?,
        )),
        other => Ok(other),
    }
}

/// The `model` of a JSON object body, borrowed from it unless it holds
/// escapes (the usual request allocates nothing for it).
fn model_from_json(bytes: &[u8]) -> Option<Cow<'_, str>> {
    #[derive(serde::Deserialize)]
    struct ModelOnly<'a> {
        #[serde(borrow)]
        model: Option<Text<'a>>,
    }
    serde_json::from_slice::<ModelOnly<'_>>(bytes)
        .ok()?
        .model
        .map(|t| t.0)
}

/// A JSON string. serde's own `Cow<str>` is always owned inside an
/// `Option`; this one borrows what it can.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = Text<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(Visitor(std::marker::PhantomData))
    }
}

/// `.../models/{model}:method` or `.../models/{model}` (Gemini, Vertex).
fn models_segment(rest: &str) -> Option<&str> {
    let mut segments = rest.split('/');
    segments.find(|s| *s == "models")?;
    let seg = segments.next()?;
    let model = seg.split(':').next().unwrap_or(seg);
    (!model.is_empty()).then_some(model)
}

/// `/model/{model}/...` (Bedrock), percent-decoded: SDKs send
/// `anthropic.claude-v2%3A1` and URL-encoded ARNs, while the allowlist
/// names `anthropic.claude-v2:1` and `arn:aws:bedrock:...`.
fn model_segment(rest: &str) -> Option<Cow<'_, str>> {
    let mut segments = rest.split('/');
    segments.find(|s| *s == "model")?;
    let raw = segments.next().filter(|m| !m.is_empty())?;
    percent_decode(raw)
}

/// `%XX` escapes decoded; `None` when they are malformed or not UTF-8 (such
/// a model is never on a list).
fn percent_decode(text: &str) -> Option<Cow<'_, str>> {
    if !text.contains('%') {
        return Some(Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_models() {
        assert_eq!(
            model_from_json(br#"{"model":"gpt-4o","messages":[]}"#).as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(model_from_json(br#"{"messages":[]}"#), None);
        assert_eq!(model_from_json(b"not json"), None);
        assert_eq!(model_from_json(br#"{"model":null}"#), None);
        assert_eq!(model_from_json(br#"{"model":4}"#), None);
        // Borrowed from the body; decoded (and owned) only with escapes.
        assert!(matches!(
            model_from_json(br#"{"messages":[{"content":"a \"model\""}],"model":"gpt-4o"}"#),
            Some(Cow::Borrowed("gpt-4o"))
        ));
        assert!(matches!(
            model_from_json(br#"{"model":"gpt\u002d4o"}"#),
            Some(Cow::Owned(m)) if m == "gpt-4o"
        ));
        assert_eq!(
            models_segment("/v1beta/models/gemini-2.0-flash:generateContent"),
            Some("gemini-2.0-flash")
        );
        assert_eq!(models_segment("/v1beta/models"), None);
        assert_eq!(
            model_segment("/model/anthropic.claude-v2/invoke").as_deref(),
            Some("anthropic.claude-v2")
        );
        assert_eq!(
            model_segment("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse").as_deref(),
            Some("anthropic.claude-3-haiku-20240307-v1:0")
        );
        assert_eq!(
            model_segment(
                "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123%3Ainference-profile%2Fus.x/invoke"
            )
            .as_deref(),
            Some("arn:aws:bedrock:us-east-1:123:inference-profile/us.x")
        );
        assert_eq!(model_segment("/model/bad%zz/invoke"), None);
    }
}
