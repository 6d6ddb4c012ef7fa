//! A request as a loop over attempts (design.md, "Request path" steps 4-5).
//!
//! [`Exchange::attempt`] performs one attempt: take the candidate
//! credential, apply it in the provider's form, forward, peek at the answer
//! and classify it. [`send`] is the loop that decides what comes next:
//! return the answer, retry once with a fresh token (when the provider's row
//! says `refresh_on_reject` and the credential is minted), or move to the
//! next candidate key. The client sees only the final answer; when every
//! key is rejected it gets the provider's last answer unchanged. A rejected
//! key is rested only when the request then succeeds with another: when
//! every key it tried is rejected, the request is the likely problem and no
//! key rests (counted in `sidekey_requests_all_keys_rejected_total`), so no
//! client can take a route's keys out of use. Connection failures are not
//! about the key and are answered at once (502/504). An answer is
//! classified only on a body read whole ([`PEEK_LIMIT`]).
//!
//! A request is retried only if its body can be sent again ([`Again`]):
//! bytes already in memory, or a body kept by [`Replay`] within
//! `limits.max_replay_body` while all kept bodies fit in
//! `limits.max_replay_total`. Another body streams through with its first
//! key only, and the route logs that once. The request's own header map
//! goes out with the first attempt; when another may follow, its entries
//! are kept first, in room the client connection lends ([`Spare`]), so a
//! retry that never happens costs no map and no allocation.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body::Frame;
use hyper::body::Incoming;

use super::body::{joined, peek};
use crate::body::UpstreamBody;
use crate::body::replay::{Budget, Replay, ReplayBody};
use crate::credentials::pool::KeyHealth;
use crate::credentials::{Candidate, Chosen, Fingerprint, KeySet, NoCredential, Policy};
use crate::error::ProxyError;
use crate::lend::Slot;
use crate::providers::aws::SigV4;
use crate::providers::{self, Verdict};
use crate::routes::Route;
use crate::timer::Reused;
use crate::tokens::{Credential, Token, TokenError};
use crate::upstream::LaneGuard;

/// How much of an error answer is read to classify it.
const PEEK_LIMIT: usize = 64 << 10;

/// Longest a request waits for a token (the first one, or a fresh one after
/// a rejection); also bounded by `limits.request_timeout`.
const TOKEN_WAIT: Duration = Duration::from_secs(30);

/// The settings a request's attempts run under (from the snapshot's config).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) request_timeout: Duration,
    pub(crate) max_replay_body: u64,
    /// `limits.max_replay_total`: what all kept bodies may hold at once.
    pub(crate) max_replay_total: u64,
    /// How long a rejected key rests.
    pub(crate) rest: Duration,
    /// How long a rate-limited pool key rests without `Retry-After`.
    pub(crate) rate_limit_rest: Duration,
}

/// The request head, ready to go out but for its credential (the body is
/// passed to [`send`], which makes it replayable when a retry may follow).
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
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
    pub(crate) fingerprint: Option<Fingerprint>,
    /// The response's place on its upstream connection, held until the body ends.
    pub(crate) lane: LaneGuard,
}

/// One attempt's answer and what it says about the credential.
struct Tried {
    answer: Answer,
    verdict: Verdict,
}

/// What a request's attempts borrow from the process and its connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Borrowed<'a> {
    /// The budget a kept body takes its bytes from.
    pub(crate) replay_budget: &'a Arc<Budget>,
    /// The connection's timer for the wait for a response head.
    pub(crate) head_wait: &'a Reused,
    /// The connection's room for the headers a retry needs.
    pub(crate) spare: &'a Spare,
}

/// A request's header entries as a retry needs them, in order: each name
/// and value a reference-counted handle, so keeping them copies no bytes.
type Entries = Vec<(HeaderName, HeaderValue)>;

/// Room for [`Entries`], kept by a client connection and lent to its
/// requests in turn ([`crate::lend`], like its timers), so copying a
/// request's headers for a possible retry allocates only on the
/// connection's first such request.
#[derive(Debug, Default)]
pub(crate) struct Spare(Slot<Entries>);

/// The most entries a connection keeps room for between requests (room
/// grown past it by an unusual request is freed with that request).
const SPARE_MAX: usize = 128;

impl Spare {
    fn lend(&self) -> Entries {
        self.0.take().unwrap_or_default()
    }

    fn give_back(&self, mut entries: Entries) {
        entries.clear();
        if entries.capacity() <= SPARE_MAX {
            self.0.put_back(entries);
        }
    }
}

/// What one request carries through its attempts (pingora's `CTX`).
pub(crate) struct Exchange<'a> {
    pub(crate) route: &'a Route,
    pub(crate) keys: &'a KeySet,
    /// The upstream host, for errors.
    pub(crate) host: &'a str,
    pub(crate) limits: Limits,
    /// Signs each attempt (AWS routes that sign; not a Bedrock API key).
    signer: Option<&'a SigV4>,
    borrowed: Borrowed<'a>,
    method: Method,
    /// Taken by the last attempt; copied by the ones before it.
    uri: Uri,
    /// The request's own headers, taken by the first attempt.
    headers: HeaderMap,
    /// Their entries, kept by the first attempt when another may follow;
    /// each later attempt sends a map made from them.
    kept: Option<Entries>,
    again: Again,
    attempts: u8,
}

/// Sends the request with each candidate in turn until an answer is final.
///
/// # Errors
///
/// [`ProxyError::UpstreamUnreachable`] / [`ProxyError::UpstreamTimeout`]
/// when the provider cannot be reached; [`ProxyError::CredentialUnavailable`]
/// when no candidate yields a token.
pub(crate) async fn send(
    x: &mut Exchange<'_>,
    candidates: &[Candidate<'_>],
    body: UpstreamBody,
) -> Result<Answer, ProxyError> {
    let refreshes = x.route.spec.refresh_on_reject;
    let mut body = x.keep_for_retry(body, candidates.len() > 1 || refreshes);
    let mut no_token = None;
    let mut rejected = Rejections::default();
    let mut candidates = candidates.iter().peekable();
    while let Some(candidate) = candidates.next() {
        let mut token = match x.first_token(candidate).await {
            Ok(token) => token,
            Err(e) => {
                no_token = Some(e);
                continue;
            }
        };
        let mut refresh_left = refreshes && token.is_some() && candidate.chosen.renews();
        loop {
            let more = refresh_left || candidates.peek().is_some();
            let tried = x.attempt(candidate, token.as_ref(), body, more).await?;
            if !x.wants_another(candidate, &tried.verdict) {
                x.settle(rejected, false);
                return Ok(tried.answer);
            }
            // A rejected minted credential: one retry with a fresh one.
            if refresh_left && matches!(tried.verdict, Verdict::Rejected(_)) {
                refresh_left = false;
                if let Some(fresh) = x.fresh_token(candidate, token.as_ref()).await {
                    let Some(next) = x.again.next() else {
                        x.over_limit();
                        x.settle(rejected, true);
                        return Ok(tried.answer);
                    };
                    tracing::info!(
                        status = tried.answer.response.status().as_u16(),
                        "access token rejected; retrying once with a fresh token"
                    );
                    (token, body) = (Some(fresh), next);
                    continue;
                }
            }
            // A rejection is only held against the key once the request has
            // shown it can succeed (see `settle`); a 429 rests the key now.
            let last_rejected = match tried.verdict {
                Verdict::Rejected(_) => {
                    rejected.add(candidate);
                    true
                }
                verdict => {
                    x.rest(candidate.health, verdict);
                    false
                }
            };
            let Some(next) = candidates.peek() else {
                // Every key was tried: the client gets the provider's last word.
                x.settle(rejected, last_rejected);
                return Ok(tried.answer);
            };
            let Some(next_body) = x.again.next() else {
                x.over_limit();
                x.settle(rejected, last_rejected);
                return Ok(tried.answer);
            };
            x.failover(candidate, next, &tried);
            // The rejected answer is dropped unread; its connection is not reused.
            drop(tried);
            body = next_body;
            break;
        }
    }
    // Only token sources leave the loop without an answer: none could mint,
    // and there was nothing else to try.
    Err(ProxyError::CredentialUnavailable {
        route: x.route.name.to_string(),
        source: NoCredential(vec![no_token.map_or_else(
            || "no credential could be used".to_owned(),
            |e| e.to_string(),
        )]),
    })
}

impl<'a> Exchange<'a> {
    /// The exchange for `req` on `route`, before any attempt.
    pub(crate) fn new(
        route: &'a Route,
        keys: &'a KeySet,
        host: &'a str,
        limits: Limits,
        signer: Option<&'a SigV4>,
        borrowed: Borrowed<'a>,
        req: Prepared,
    ) -> Self {
        Self {
            route,
            keys,
            host,
            limits,
            signer,
            borrowed,
            method: req.method,
            uri: req.uri,
            headers: req.headers,
            kept: None,
            again: Again::Never,
            attempts: 0,
        }
    }

    /// One attempt: `candidate` (carrying `token` when it is a token
    /// source) in the provider's form, forwarded, and its answer peeked at
    /// and classified. `more`: another attempt may follow.
    async fn attempt(
        &mut self,
        candidate: &Candidate<'_>,
        token: Option<&Token>,
        body: UpstreamBody,
        more: bool,
    ) -> Result<Tried, ProxyError> {
        self.attempts = self.attempts.saturating_add(1);
        let chosen = match (&candidate.chosen, token) {
            (Chosen::Token { .. }, Some(t)) => match &t.credential {
                Credential::Header(h) => Chosen::Minted(h.clone()),
                Credential::Aws(keys) => Chosen::Signed {
                    keys: keys.clone(),
                    fingerprint: t.fingerprint,
                },
            },
            (other, _) => other.clone(),
        };
        let keep = more && self.again.possible();
        let mut headers = self.headers_to_send(keep);
        let uri = if keep {
            self.uri.clone()
        } else {
            std::mem::take(&mut self.uri)
        };
        let signing = match &chosen {
            Chosen::Signed { keys, .. } => self.signer.map(|s| (s, keys.clone())),
            _ => None,
        };
        providers::api_key::inject(self.route.spec, &mut headers, chosen);
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        if let Some((signer, keys)) = signing {
            sign(self.route, signer, &mut req, &keys)?;
        }
        let timeout = self.limits.request_timeout;
        let (mut response, lane) =
            super::forward::send(self.route, self.host, req, timeout, self.borrowed.head_wait)
                .await?;
        let rejects = self.route.spec.rejects;
        let mut prefix = VecDeque::new();
        let verdict = if rejects.needs_body(response.status()) {
            // Boxed: an answer that needs its body read is the rare case,
            // and its reading stays out of every request's state machine.
            Box::pin(read_and_classify(
                &mut response,
                &mut prefix,
                timeout,
                rejects,
            ))
            .await
        } else {
            rejects.classify(response.status(), response.headers(), None)
        };
        let answer = Answer {
            response,
            prefix,
            attempts: self.attempts,
            fingerprint: candidate.chosen.fingerprint(),
            lane,
        };
        Ok(Tried { answer, verdict })
    }

    /// The headers an attempt sends. The first sends the request's own map
    /// (hyper parsed it with room to spare, and parses the answer's headers
    /// into it once it is written), keeping its entries first if another
    /// attempt may follow (`keep`); a later attempt sends a map made from
    /// the kept entries, with room for the credential and `Host`.
    fn headers_to_send(&mut self, keep: bool) -> HeaderMap {
        let Some(kept) = &self.kept else {
            if keep {
                let mut room = self.borrowed.spare.lend();
                room.extend(self.headers.iter().map(|(n, v)| (n.clone(), v.clone())));
                self.kept = Some(room);
            }
            return std::mem::take(&mut self.headers);
        };
        let mut map = HeaderMap::try_with_capacity(kept.len() + 2).unwrap_or_default();
        for (name, value) in kept {
            // Never past the limit: the request's own map held these.
            let _ = map.try_append(name.clone(), value.clone());
        }
        map
    }

    /// Whether the verdict asks for another attempt. An accepted key that
    /// was resting ends its rest.
    fn wants_another(&self, candidate: &Candidate<'_>, verdict: &Verdict) -> bool {
        match verdict {
            Verdict::Accepted => {
                if let Some(health) = candidate.health.filter(|_| candidate.was_rested)
                    && health.accepted()
                {
                    tracing::info!(location = %candidate.location, fingerprint = candidate.chosen.fingerprint().map(tracing::field::display), "key accepted again: its rest is over");
                }
                false
            }
            Verdict::Rejected(_) => true,
            Verdict::RateLimited(_) => self.keys.policy == Policy::Pool,
        }
    }

    /// The token a token source carries first (`None` for other
    /// credentials): at once in steady state.
    async fn first_token(&self, candidate: &Candidate<'_>) -> Result<Option<Token>, TokenError> {
        let Chosen::Token { cache, .. } = &candidate.chosen else {
            return Ok(None);
        };
        match cache.token(self.token_wait()).await {
            Ok(t) => Ok(Some(t)),
            Err(e) => {
                tracing::warn!(error = %e, "no access token; trying the next credential");
                Err(e)
            }
        }
    }

    /// A token newer than the rejected `old`, if one arrives in time.
    async fn fresh_token(&self, candidate: &Candidate<'_>, old: Option<&Token>) -> Option<Token> {
        let (Chosen::Token { cache, .. }, Some(old)) = (&candidate.chosen, old) else {
            return None;
        };
        match cache.refresh_after(old, self.token_wait()).await {
            Ok(Some(fresh)) => Some(fresh),
            Ok(None) => {
                tracing::debug!("a fresh token was forced recently: the rejection stands");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "no fresh token after a rejection");
                None
            }
        }
    }

    fn token_wait(&self) -> Duration {
        self.limits.request_timeout.min(TOKEN_WAIT)
    }

    /// Applies the rests of the keys this request saw rejected, unless
    /// every key it tried was rejected (`last_rejected` and more than one):
    /// then the request, not the keys, is the likely problem (a shape or
    /// path every upstream answers 401 to), and resting them would let any
    /// client take every key of the route out of use. That case is counted.
    fn settle(&self, rejected: Rejections<'_>, last_rejected: bool) {
        if rejected.tried > 0 {
            self.settle_rejections(rejected, last_rejected);
        }
    }

    #[cold]
    #[inline(never)]
    fn settle_rejections(&self, rejected: Rejections<'_>, last_rejected: bool) {
        if last_rejected && rejected.tried > 1 {
            self.route.metrics.all_keys_rejected();
            tracing::info!(
                keys = rejected.tried,
                "every key was rejected for this request: taken as a problem with the request, no key rested"
            );
            return;
        }
        for health in rejected.health {
            self.rest(Some(health), Verdict::Rejected("401"));
        }
    }

    /// Rests a key so later requests avoid it, unless it is the set's only
    /// key (there is nothing to avoid it for).
    #[inline(never)]
    fn rest(&self, health: Option<&KeyHealth>, verdict: Verdict) {
        if let Some(health) = health.filter(|_| self.keys.keys.len() > 1) {
            health.rest(match verdict {
                Verdict::RateLimited(after) => after.unwrap_or(self.limits.rate_limit_rest),
                _ => self.limits.rest,
            });
        }
    }

    #[cold]
    #[inline(never)]
    fn failover(&self, from: &Candidate<'_>, to: &Candidate<'_>, tried: &Tried) {
        let verdict = tried.verdict;
        self.route
            .metrics
            .failover(matches!(verdict, Verdict::RateLimited(_)));
        tracing::warn!(
            reason = verdict.reason(),
            status = tried.answer.response.status().as_u16(),
            detail = match verdict { Verdict::Rejected(d) => d, _ => "429" },
            from = %from.location,
            from_fingerprint = from.chosen.fingerprint().map(tracing::field::display),
            to = %to.location,
            to_fingerprint = to.chosen.fingerprint().map(tracing::field::display),
            "credential failover"
        );
    }

    /// Makes `body` replayable when a retry could follow.
    fn keep_for_retry(&mut self, body: UpstreamBody, retry: bool) -> UpstreamBody {
        let limit = self.limits.max_replay_body;
        let (body, again) = match body {
            _ if !retry => (body, Again::Never),
            UpstreamBody::Buffered { bytes } => {
                let bytes = bytes.unwrap_or_default();
                (UpstreamBody::buffered(bytes.clone()), Again::Bytes(bytes))
            }
            UpstreamBody::Stream { body } => {
                use http_body::Body as _;
                if body.size_hint().lower() > limit {
                    self.over_limit();
                    (UpstreamBody::stream(body), Again::Never)
                } else {
                    let (budget, total) = (
                        self.borrowed.replay_budget.clone(),
                        self.limits.max_replay_total,
                    );
                    let (replay, first): (Replay, ReplayBody) =
                        Replay::new(body, limit, budget, total);
                    (UpstreamBody::replay(first), Again::Kept(replay))
                }
            }
            other @ UpstreamBody::Replay { .. } => (other, Again::Never),
        };
        self.again = again;
        body
    }

    /// Logs, once per route, that a body that could not be kept was not retried.
    #[cold]
    #[inline(never)]
    fn over_limit(&self) {
        if !self
            .route
            .metrics
            .over_limit_logged
            .swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                limit = self.limits.max_replay_body,
                "a request body could not be kept for a retry (larger than limits.max_replay_body, or limits.max_replay_total was in use by other requests): such requests go out with one key and are not retried with the fallback (logged once per route)"
            );
        }
    }
}

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        if let Some(kept) = self.kept.take() {
            self.borrowed.spare.give_back(kept);
        }
    }
}

impl std::fmt::Debug for Exchange<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("route", &self.route.name)
            .field("host", &self.host)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// Signs an AWS request (out of line: most routes never sign).
#[inline(never)]
fn sign(
    route: &Route,
    signer: &SigV4,
    req: &mut Request<UpstreamBody>,
    keys: &crate::tokens::aws::AwsKeys,
) -> Result<(), ProxyError> {
    signer
        .sign(req, keys, SystemTime::now())
        .map_err(|e| ProxyError::Internal(format!("route {}: {e}", route.name)))
}

/// Reads an error answer's body (bounded in size and time; what was read
/// goes to the client) and classifies the answer by it. A body cut off (at
/// the limit, by the timeout, by an error, or while decompressing) is not
/// classified: only what was read whole can say "bad key", or a long answer
/// quoting one could rest every key.
async fn read_and_classify(
    response: &mut Response<Incoming>,
    prefix: &mut VecDeque<Frame<Bytes>>,
    timeout: Duration,
    rejects: providers::Rejects,
) -> Verdict {
    let read = tokio::time::timeout(timeout, peek(response.body_mut(), PEEK_LIMIT, prefix)).await;
    let encoding = response.headers().get(http::header::CONTENT_ENCODING);
    let body = whole_body(read.is_ok_and(|r| r.is_ok()), response, prefix)
        .then(|| joined(prefix, encoding, PEEK_LIMIT))
        .filter(|decoded| encoding.is_none() || decoded.len() < PEEK_LIMIT);
    rejects.classify(response.status(), response.headers(), body.as_deref())
}

/// Whether `prefix` holds the whole body of `response`: the peek ended
/// without error or timeout (`read_ok`), and either stopped short of the
/// limit (it saw the end) or the body says it has nothing more.
fn whole_body(
    read_ok: bool,
    response: &Response<Incoming>,
    prefix: &VecDeque<Frame<Bytes>>,
) -> bool {
    use http_body::Body as _;
    let read: usize = prefix
        .iter()
        .filter_map(|f| f.data_ref())
        .map(Bytes::len)
        .sum();
    read_ok && (read < PEEK_LIMIT || response.body().is_end_stream())
}

/// The keys one request saw rejected, rested only once the request ends
/// ([`Exchange::settle`]). Allocates only when a key with health is rejected.
#[derive(Default)]
struct Rejections<'a> {
    /// How many candidates were rejected (dynamic keys included).
    tried: u8,
    health: Vec<&'a KeyHealth>,
}

impl<'a> Rejections<'a> {
    fn add(&mut self, candidate: &Candidate<'a>) {
        self.tried = self.tried.saturating_add(1);
        if let Some(health) = candidate.health {
            self.health.push(health);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: usize) -> Entries {
        (0..n)
            .map(|i| (HeaderName::from_static("x-app"), HeaderValue::from(i)))
            .collect()
    }

    #[test]
    fn spare_room_is_lent_in_turn_and_kept_within_its_bound() {
        let spare = Spare::default();
        // The first request makes the room; it comes back empty and is
        // lent again, allocation and all.
        let room = spare.lend();
        assert_eq!(room.capacity(), 0);
        let mut room = room;
        room.extend(entries(10));
        let ptr = room.as_ptr();
        spare.give_back(room);
        let again = spare.lend();
        assert!(again.is_empty(), "given back cleared");
        assert_eq!(again.as_ptr(), ptr, "the same room, no new allocation");
        // While it is lent (another HTTP/2 stream), a request gets its own.
        let other = spare.lend();
        assert_eq!(other.capacity(), 0);
        spare.give_back(again);
        // Room grown past the bound is not kept, even in an empty slot.
        drop(spare.lend());
        spare.give_back(entries(SPARE_MAX + 1));
        assert!(spare.lend().capacity() <= SPARE_MAX);
    }
}
