//! Sending a request with one credential after another until one is accepted.
//!
//! design.md, "Request path" step 5. Each candidate key (in the order
//! [`KeySet::candidates`](crate::credentials::KeySet::candidates) gives) is
//! tried with the same request: method, URI, headers and body bytes. An
//! answer the provider table classifies as "this key was rejected" (or a 429
//! in a pool) is discarded, the key is rested, and the next key is tried.
//! The client sees only the final answer; when every key is rejected, it
//! gets the last provider answer unchanged. Connection failures are not
//! about the key and are answered at once (502/504).
//!
//! A request is retried only if its body can be sent again: bytes already
//! in memory, or a body kept by [`Replay`] within `limits.max_replay_body`.
//! A larger body streams through with its first key only, and the route logs
//! that once.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body::Frame;
use hyper::body::Incoming;

use super::body::{joined, peek};
use super::replay::{Replay, ReplayBody};
use crate::config::Config;
use crate::credentials::{Candidate, Chosen, KeySet, Policy};
use crate::error::ProxyError;
use crate::providers::{self, Rejects, Verdict};
use crate::routes::Route;
use crate::tokens::Token;
use crate::upstream::{LaneGuard, UpstreamBody};

/// How much of an error answer is read to classify it.
const PEEK_LIMIT: usize = 64 << 10;

/// Longest a request waits for a token (the first one, or a fresh one after
/// a 401); also bounded by `limits.request_timeout`.
const TOKEN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The request, ready to go out but for its credential.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) body: UpstreamBody,
}

/// The answer passed to the client: its head and body, with the frames
/// already read to classify it.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) response: Response<Incoming>,
    pub(crate) prefix: VecDeque<Frame<Bytes>>,
    /// How many attempts were made.
    pub(crate) attempts: u8,
    /// The fingerprint of the credential the final attempt carried.
    pub(crate) fingerprint: Option<crate::credentials::Fingerprint>,
    /// The response's place on its upstream connection, held until the body ends.
    pub(crate) lane: LaneGuard,
}

/// How the body is sent again.
enum Again {
    /// It cannot be: one attempt only.
    Never,
    /// Bytes in memory: every attempt sends a clone.
    Bytes(Bytes),
    /// The client's body, kept as it streams.
    Kept(Replay),
}

impl Again {
    fn next(&self) -> Option<UpstreamBody> {
        match self {
            Self::Never => None,
            Self::Bytes(b) => Some(UpstreamBody::buffered(b.clone())),
            Self::Kept(r) => r.again().map(UpstreamBody::replay),
        }
    }

    fn possible(&self) -> bool {
        match self {
            Self::Never => false,
            Self::Bytes(_) => true,
            Self::Kept(r) => r.is_replayable(),
        }
    }
}

/// Sends `req` with each candidate in turn.
///
/// # Errors
///
/// [`ProxyError::UpstreamUnreachable`] / [`ProxyError::UpstreamTimeout`]
/// when the provider cannot be reached; [`ProxyError::CredentialUnavailable`]
/// when no candidate yields a token.
pub(crate) async fn send(
    route: &Route,
    keys: &KeySet,
    host: &str,
    config: &Config,
    candidates: Vec<Candidate<'_>>,
    req: Prepared,
) -> Result<Answer, ProxyError> {
    let Prepared {
        method,
        uri,
        mut headers,
        body,
    } = req;
    let rejects = route.spec.rejects;
    // Vertex retries once with a fresh token before any fallback.
    let may_retry = candidates.len() > 1 || rejects == Rejects::Vertex;
    let (mut body, again) = replayable(route, body, may_retry, config.limits.max_replay_body);
    let pool = keys.policy == Policy::Pool;
    let token_wait = config.limits.request_timeout.min(TOKEN_WAIT);
    let mut attempts: u8 = 0;
    let mut last_token_error = None;
    let mut candidates = candidates.into_iter().peekable();
    'candidates: while let Some(candidate) = candidates.next() {
        let mut refreshed = false;
        let mut token: Option<Token> = None;
        loop {
            // The credential for this attempt; a token source yields its
            // current token (at once in steady state).
            let chosen = match (&candidate.chosen, &token) {
                (Chosen::Token { .. }, Some(t)) => Chosen::Minted(t.header.clone()),
                (Chosen::Token { cache, .. }, None) => match cache.token(token_wait).await {
                    Ok(t) => {
                        let header = t.header.clone();
                        token = Some(t);
                        Chosen::Minted(header)
                    }
                    Err(e) => {
                        tracing::warn!(route = %route.name, error = %e, "no access token; trying the next credential");
                        last_token_error = Some(e.to_string());
                        // Nothing was sent: the body is still unsent.
                        continue 'candidates;
                    }
                },
                (other, _) => other.clone(),
            };
            attempts = attempts.saturating_add(1);
            let fingerprint = candidate.chosen.fingerprint();
            let token_retry_left = matches!(candidate.chosen, Chosen::Token { .. })
                && !refreshed
                && rejects == Rejects::Vertex;
            let retry_possible =
                (candidates.peek().is_some() || token_retry_left) && again.possible();
            // The last attempt takes the headers; earlier ones send a copy.
            let mut attempt_headers = if retry_possible {
                headers.clone()
            } else {
                std::mem::take(&mut headers)
            };
            providers::api_key::inject(route.spec, &mut attempt_headers, chosen);
            let mut attempt = Request::new(body);
            *attempt.method_mut() = method.clone();
            *attempt.uri_mut() = uri.clone();
            *attempt.headers_mut() = attempt_headers;

            let (mut response, lane) =
                super::forward::send(route, host, attempt, config.limits.request_timeout).await?;
            let status = response.status();
            let mut prefix = VecDeque::new();
            let body_start = if rejects.needs_body(status) {
                peek_bounded(response.body_mut(), config, &mut prefix).await;
                let encoding = response.headers().get(http::header::CONTENT_ENCODING);
                Some(joined(&prefix, encoding, PEEK_LIMIT))
            } else {
                None
            };
            let verdict = rejects.classify(status, response.headers(), body_start.as_deref());
            let answer = |response, prefix| Answer {
                response,
                prefix,
                attempts,
                fingerprint,
                lane,
            };
            let wants_another = match verdict {
                Verdict::Accepted => {
                    if let Some(health) = candidate.health.filter(|_| candidate.was_rested)
                        && health.accepted()
                    {
                        tracing::info!(route = %route.name, location = %candidate.location, fingerprint = fingerprint.map(tracing::field::display), "key accepted again: its rest is over");
                    }
                    return Ok(answer(response, prefix));
                }
                Verdict::Rejected(_) => true,
                Verdict::RateLimited(_) => pool,
            };
            if !wants_another {
                return Ok(answer(response, prefix));
            }

            // Vertex: a rejected token is refreshed and the request retried
            // once with the same credential before any fallback (a 429 is
            // not the token's fault: it moves on at once).
            if let (Chosen::Token { cache, .. }, Some(old), true, Verdict::Rejected(_)) =
                (&candidate.chosen, &token, token_retry_left, &verdict)
            {
                refreshed = true;
                match cache.refresh_after(old, token_wait).await {
                    Ok(fresh) => {
                        if let Some(next_body) = again.next() {
                            tracing::info!(route = %route.name, status = status.as_u16(), "access token rejected; retrying once with a fresh token");
                            token = Some(fresh);
                            drop(response);
                            body = next_body;
                            continue;
                        }
                        log_over_limit(route, config.limits.max_replay_body);
                        return Ok(answer(response, prefix));
                    }
                    Err(e) => {
                        tracing::warn!(route = %route.name, error = %e, "no fresh token after a rejection")
                    }
                }
            }

            // Rest the key whatever happens next, so later requests avoid it,
            // unless it is the set's only key (there is nothing to avoid it for).
            if let Some(health) = candidate.health.filter(|_| keys.keys.len() > 1) {
                let period = match verdict {
                    Verdict::RateLimited(after) => after.unwrap_or(config.keys.rate_limit_rest),
                    _ => config.keys.rest,
                };
                health.rest(period);
            }
            let Some(next) = candidates.peek() else {
                // Every key was tried: the client gets the provider's last word.
                return Ok(answer(response, prefix));
            };
            let Some(next_body) = again.next() else {
                log_over_limit(route, config.limits.max_replay_body);
                return Ok(answer(response, prefix));
            };
            route.metrics.failover(verdict);
            tracing::warn!(
                route = %route.name,
                reason = verdict.reason(),
                status = status.as_u16(),
                detail = match verdict { Verdict::Rejected(d) => d, _ => "429" },
                from = %candidate.location,
                from_fingerprint = fingerprint.map(tracing::field::display),
                to = %next.location,
                to_fingerprint = next.chosen.fingerprint().map(tracing::field::display),
                "credential failover"
            );
            // The rejected answer is dropped unread; its connection is not reused.
            drop(response);
            body = next_body;
            continue 'candidates;
        }
    }
    // Only token sources can leave the loop without an answer: none of them
    // could mint, and there was nothing else to try.
    Err(ProxyError::CredentialUnavailable {
        route: route.name.to_string(),
        source: crate::credentials::NoCredential(vec![
            last_token_error.unwrap_or_else(|| "no credential could be used".to_owned()),
        ]),
    })
}

/// Makes `body` replayable when a retry could follow.
fn replayable(route: &Route, body: UpstreamBody, retry: bool, limit: u64) -> (UpstreamBody, Again) {
    if !retry {
        return (body, Again::Never);
    }
    match body {
        UpstreamBody::Buffered { bytes } => {
            let bytes = bytes.unwrap_or_default();
            (UpstreamBody::buffered(bytes.clone()), Again::Bytes(bytes))
        }
        UpstreamBody::Stream { body } => {
            use http_body::Body as _;
            if body.size_hint().lower() > limit {
                log_over_limit(route, limit);
                return (UpstreamBody::stream(body), Again::Never);
            }
            let (replay, first): (Replay, ReplayBody) = Replay::new(body, limit);
            (UpstreamBody::replay(first), Again::Kept(replay))
        }
        other @ UpstreamBody::Replay { .. } => (other, Again::Never),
    }
}

/// Reads the start of an error answer into `frames`, bounded in size and
/// time; a failure leaves what was read (the client then gets it, and the
/// answer ends short, as it would have anyway).
async fn peek_bounded(body: &mut Incoming, config: &Config, frames: &mut VecDeque<Frame<Bytes>>) {
    let _ = tokio::time::timeout(
        config.limits.request_timeout,
        peek(body, PEEK_LIMIT, frames),
    )
    .await;
}

fn log_over_limit(route: &Route, limit: u64) {
    if !route
        .metrics
        .over_limit_logged
        .swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            route = %route.name,
            limit,
            "a request body is larger than limits.max_replay_body: such requests go out with one key and are not retried with the fallback (logged once per route)"
        );
    }
}
