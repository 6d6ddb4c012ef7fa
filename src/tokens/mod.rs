//! OAuth2 access tokens for Vertex AI: minted, cached, refreshed ahead of time.
//!
//! design.md, "Vertex AI tokens". Each credential (a service-account JSON or
//! the GKE metadata server) of each route has one [`TokenCache`] with one
//! background task, the only place that ever asks for a token:
//!
//! - The task mints a token at once, publishes it on a `watch` channel, and
//!   mints the next one about four minutes before the current one expires
//!   (jittered; never later than half way through a short lifetime). Inside
//!   the metadata server's last five minutes a refresh really yields a new
//!   token. So in steady state a request only reads the channel: no wait.
//! - Requests that arrive before the first token wait on the channel:
//!   however many there are, one token request is made (single flight).
//! - When the token endpoint fails, the current token is kept while it is
//!   valid and the task retries with capped exponential backoff; only when no
//!   valid token is left do requests get 503, with the reason.
//! - A 401 from Vertex asks the task for a fresh token at once
//!   ([`TokenCache::refresh_after`]); the request is retried once with it.
//!
//! Caches outlive snapshots in [`TokenRegistry`], keyed by route, setting
//! and the credential's content: a reload that keeps a service-account file
//! keeps its cache; a rotated file starts a new cache (and the old task
//! stops when no snapshot uses it), so no token minted from the old key is
//! used again. The tasks use the route's upstream client (trust roots, pool).

pub(crate) mod jwt;
pub(crate) mod metadata;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::admin::metrics::RouteMetrics;
use crate::credentials::Fingerprint;
use crate::upstream::{Client, UpstreamBody};
use jwt::ServiceAccount;

/// Refresh this long before expiry (plus jitter), inside the metadata
/// server's five-minute window.
const REFRESH_MARGIN: Duration = Duration::from_secs(240);
/// Up to this much is added to the margin, so many pods do not refresh at once.
const REFRESH_JITTER: Duration = Duration::from_secs(30);
/// First retry after a failed token request; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// One token request may take this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// A token is never trusted for longer than this (seconds), whatever
/// `expires_in` says.
const MAX_LIFETIME_S: u64 = 24 * 3600;
/// A token response larger than this is refused.
const MAX_TOKEN_RESPONSE: usize = 64 << 10;

/// Where tokens come from.
#[derive(Debug)]
pub(crate) enum Source {
    /// A service account: JWT bearer grant to its `token_uri`.
    Account(Box<ServiceAccount>),
    /// The GKE metadata server at this host (`GCE_METADATA_HOST`, default
    /// `metadata.google.internal`).
    Metadata { host: String },
}

impl Source {
    /// How logs and `check` name the source.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Account(sa) => {
                format!("service account {} ({})", sa.client_email, sa.fingerprint)
            }
            Self::Metadata { host } => format!("metadata server {host}"),
        }
    }
}

/// A minted access token.
#[derive(Clone)]
pub(crate) struct Token {
    /// `Bearer <token>`, marked sensitive.
    pub(crate) header: HeaderValue,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) expires_at: Instant,
    /// Counts tokens of this cache, so a 401 on an old token does not force
    /// yet another refresh after a new one arrived.
    pub(crate) serial: u64,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("fingerprint", &self.fingerprint)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Still good for a request now (with a small margin for the flight time).
    fn usable(&self, now: Instant) -> bool {
        self.expires_at > now + Duration::from_secs(1)
    }
}

/// What the channel holds.
#[derive(Clone, Debug)]
enum State {
    /// Nothing yet; the first request is on its way.
    Pending,
    Ready(Token),
    /// No valid token, and the last attempt failed for this reason.
    Failed(String),
}

/// Why a request got no token.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("no valid access token from {origin}: {reason}")]
    Unavailable { origin: String, reason: String },
}

/// The token cache of one credential of one route.
#[derive(Debug)]
pub(crate) struct TokenCache {
    route: Arc<str>,
    source: Arc<Source>,
    state: watch::Receiver<State>,
    /// Wakes the task for a refresh now (after a 401).
    refresh: Arc<Notify>,
    /// The serial of the token a 401 was seen with.
    rejected_serial: Arc<AtomicU64>,
    /// Unix time the current token expires; 0 without one (for the gauge).
    expiry: Arc<AtomicU64>,
    /// The refresher; `None` offline (`sidekey check` mints nothing).
    task: Option<tokio::task::AbortHandle>,
}

impl Drop for TokenCache {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl TokenCache {
    /// Starts the cache's task, which mints the first token at once; or,
    /// offline, a cache that never mints.
    fn start(
        route: Arc<str>,
        source: Source,
        client: Client,
        metrics: Arc<RouteMetrics>,
        online: bool,
    ) -> Self {
        let source = Arc::new(source);
        let (tx, state) = watch::channel(State::Pending);
        let refresh = Arc::new(Notify::new());
        let rejected_serial = Arc::new(AtomicU64::new(0));
        let expiry = Arc::new(AtomicU64::new(0));
        let refresher = Refresher {
            route: route.clone(),
            source: source.clone(),
            client,
            tx,
            refresh: refresh.clone(),
            expiry: expiry.clone(),
            metrics,
            now: SystemTime::now,
        };
        let task = online.then(|| tokio::spawn(refresher.run()).abort_handle());
        Self {
            route,
            source,
            state,
            refresh,
            rejected_serial,
            expiry,
            task,
        }
    }

    /// The source, for logs.
    pub(crate) fn source(&self) -> &Source {
        &self.source
    }

    /// Unix time the current token expires; 0 without one.
    pub(crate) fn expiry(&self) -> u64 {
        self.expiry.load(Ordering::Relaxed)
    }

    /// A valid token: at once in steady state; otherwise waits (at most
    /// `wait`) for the task's next result.
    ///
    /// # Errors
    ///
    /// [`TokenError::Unavailable`] when no valid token can be had.
    pub(crate) async fn token(&self, wait: Duration) -> Result<Token, TokenError> {
        let mut rx = self.state.clone();
        let deadline = Instant::now() + wait;
        loop {
            let reason = match &*rx.borrow_and_update() {
                State::Ready(t) if t.usable(Instant::now()) => return Ok(t.clone()),
                State::Ready(_) => "the token expired and no new one was minted yet".to_owned(),
                State::Pending => "the first token has not arrived yet".to_owned(),
                // The last attempt failed and no valid token is left: answer
                // now rather than hold every request through the backoff.
                State::Failed(reason) => return Err(self.unavailable(reason.clone())),
            };
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.unavailable("the token task stopped".to_owned())),
                Err(_) => return Err(self.unavailable(reason)),
            }
        }
    }

    /// After Vertex rejected `token` (401): asks for a fresh token, once per
    /// token however many requests saw the 401, and waits for it.
    ///
    /// # Errors
    ///
    /// [`TokenError::Unavailable`] when no newer token arrives in time.
    pub(crate) async fn refresh_after(
        &self,
        token: &Token,
        wait: Duration,
    ) -> Result<Token, TokenError> {
        let mut rx = self.state.clone();
        if self
            .rejected_serial
            .fetch_max(token.serial, Ordering::AcqRel)
            < token.serial
        {
            self.refresh.notify_one();
        }
        let deadline = Instant::now() + wait;
        loop {
            if let State::Ready(t) = &*rx.borrow_and_update()
                && t.serial > token.serial
            {
                return Ok(t.clone());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.unavailable("the token task stopped".to_owned())),
                Err(_) => {
                    return Err(self.unavailable("no fresh token after the rejection".to_owned()));
                }
            }
        }
    }

    fn unavailable(&self, reason: String) -> TokenError {
        TokenError::Unavailable {
            origin: format!("route {}: {}", self.route, self.source.describe()),
            reason,
        }
    }
}

/// The background task of one cache.
struct Refresher {
    route: Arc<str>,
    source: Arc<Source>,
    client: Client,
    tx: watch::Sender<State>,
    refresh: Arc<Notify>,
    expiry: Arc<AtomicU64>,
    metrics: Arc<RouteMetrics>,
    now: fn() -> SystemTime,
}

impl Refresher {
    async fn run(self) {
        let mut serial = 0;
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.fetch().await {
                Ok((value, lifetime)) => {
                    serial += 1;
                    backoff = MIN_BACKOFF;
                    let token = self.publish(value, lifetime, serial);
                    let wait = refresh_delay(lifetime, &token);
                    tracing::debug!(route = %self.route, source = %self.source.describe(), fingerprint = %token.fingerprint, lifetime_s = lifetime.as_secs(), "access token minted");
                    // Sleep until it is time to refresh, or until a 401 asks now.
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.refresh.notified() => {}
                    }
                }
                Err(reason) => {
                    self.metrics.token_refresh(false);
                    let still_valid =
                        matches!(&*self.tx.borrow(), State::Ready(t) if t.usable(Instant::now()));
                    tracing::warn!(route = %self.route, source = %self.source.describe(), error = %reason, retry_in_ms = backoff.as_millis() as u64, still_valid, "access token request failed");
                    if !still_valid {
                        self.expiry.store(0, Ordering::Relaxed);
                        self.tx.send_replace(State::Failed(reason));
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.refresh.notified() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn publish(&self, value: Minted, lifetime: Duration, serial: u64) -> Token {
        let expires_unix = (self.now)()
            .checked_add(lifetime)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let token = Token {
            header: value.header,
            fingerprint: value.fingerprint,
            expires_at: Instant::now() + lifetime,
            serial,
        };
        self.metrics.token_refresh(true);
        self.expiry.store(expires_unix, Ordering::Relaxed);
        self.tx.send_replace(State::Ready(token.clone()));
        token
    }

    /// One token request.
    async fn fetch(&self) -> Result<(Minted, Duration), String> {
        let req = match &*self.source {
            Source::Account(sa) => {
                let body = sa
                    .token_request_body((self.now)())
                    .map_err(|e| e.to_string())?;
                Request::post(sa.token_uri.as_str())
                    .header(
                        http::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(UpstreamBody::buffered(Bytes::from(body)))
                    .map_err(|e| format!("bad token_uri: {e}"))?
            }
            Source::Metadata { host } => {
                metadata::request(host).map_err(|e| format!("bad metadata host: {e}"))?
            }
        };
        let where_ = req
            .uri()
            .authority()
            .map(ToString::to_string)
            .unwrap_or_default();
        // The lane guard lives to the end of this function: past the body read.
        let (resp, _lane) = tokio::time::timeout(FETCH_TIMEOUT, self.client.send(req))
            .await
            .map_err(|_| {
                format!(
                    "{where_} did not answer within {}s",
                    FETCH_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("{where_} is unreachable: {e}"))?;
        let status = resp.status();
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(resp.into_body(), MAX_TOKEN_RESPONSE).collect(),
        )
        .await
        .map_err(|_| format!("{where_} stalled sending the token"))?
        .map_err(|e| format!("{where_}: reading the answer failed: {e}"))?
        .to_bytes();
        if status != StatusCode::OK {
            // An OAuth error body names the error (e.g. invalid_grant), never a secret of ours.
            let detail = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    let e = v.get("error")?.as_str()?.to_owned();
                    let d = v
                        .get("error_description")
                        .and_then(|d| d.as_str())
                        .unwrap_or("");
                    Some(format!("{e} {d}").trim().to_owned())
                })
                .unwrap_or_default();
            return Err(format!("{where_} answered {status} {detail}")
                .trim()
                .to_owned());
        }
        parse_token(&body).map_err(|e| format!("{where_}: {e}"))
    }
}

/// A token as minted: the header value ready to send (never formatted again).
/// `Debug` shows the fingerprint only (the header value is sensitive).
#[derive(Debug)]
struct Minted {
    header: HeaderValue,
    fingerprint: Fingerprint,
}

/// Parses `{"access_token": ..., "expires_in": ..., "token_type": "Bearer"}`.
fn parse_token(body: &[u8]) -> Result<(Minted, Duration), String> {
    #[derive(serde::Deserialize)]
    struct TokenJson {
        access_token: zeroize::Zeroizing<String>,
        expires_in: Option<u64>,
    }
    let t: TokenJson = serde_json::from_slice(body)
        .map_err(|e| format!("not a token answer ({})", jwt::json_error_kind(&e)))?;
    let secret = crate::credentials::Secret::new(t.access_token.as_bytes().to_vec())
        .map_err(|e| format!("access_token {e}"))?;
    let header = secret
        .header_value("Bearer ")
        .map_err(|e| format!("access_token {e}"))?;
    // Google's tokens last an hour; assume so when the answer does not say,
    // and never trust more than a day.
    let lifetime = Duration::from_secs(t.expires_in.unwrap_or(3600).clamp(1, MAX_LIFETIME_S));
    Ok((
        Minted {
            header,
            fingerprint: secret.fingerprint(),
        },
        lifetime,
    ))
}

/// How long to wait before refreshing a token that lives `lifetime`: four
/// minutes (plus jitter) before expiry, but never later than half way.
fn refresh_delay(lifetime: Duration, token: &Token) -> Duration {
    // Tokens differ per pod, so their first byte spreads pods' refreshes.
    let jitter_ms =
        u64::from(token.fingerprint.bytes()[0]) * REFRESH_JITTER.as_millis() as u64 / 255;
    let margin = (REFRESH_MARGIN + Duration::from_millis(jitter_ms)).min(lifetime / 2);
    lifetime.saturating_sub(margin)
}

/// Identity of a cache: same route, setting and credential content → same cache.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct CacheId {
    route: String,
    label: String,
    digest: [u8; 32],
    /// The client's identity (trust roots, timeouts): a changed `ca_file`
    /// starts a cache that mints through the new client.
    client: Vec<u8>,
}

/// Every token cache in use, outliving snapshots.
#[derive(Debug)]
pub(crate) struct TokenRegistry {
    map: Mutex<HashMap<CacheId, Weak<TokenCache>>>,
    /// Whether caches mint (false for `sidekey check`, which calls no one).
    online: bool,
}

impl TokenRegistry {
    /// Caches that mint tokens (the proxy). Their tasks need the runtime.
    pub(crate) fn online() -> Self {
        Self {
            map: Mutex::default(),
            online: true,
        }
    }

    /// Caches that never mint (`sidekey check`: offline, no runtime).
    pub(crate) fn offline() -> Self {
        Self {
            map: Mutex::default(),
            online: false,
        }
    }

    /// The cache for `source` on `route`/`label` (identified by `digest`),
    /// started if new. Must run inside the runtime.
    pub(crate) fn get(
        &self,
        route: &str,
        label: &str,
        digest: [u8; 32],
        client: &Client,
        make: impl FnOnce() -> (Source, Arc<RouteMetrics>),
    ) -> Arc<TokenCache> {
        let id = CacheId {
            route: route.to_owned(),
            label: label.to_owned(),
            digest,
            client: client.id().to_vec(),
        };
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cache) = map.get(&id).and_then(Weak::upgrade) {
            return cache;
        }
        let (source, metrics) = make();
        let cache = Arc::new(TokenCache::start(
            Arc::from(route),
            source,
            client.clone(),
            metrics,
            self.online,
        ));
        map.insert(id, Arc::downgrade(&cache));
        map.retain(|_, c| c.strong_count() > 0);
        cache
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_four_minutes_ahead_or_half_way_for_short_tokens() {
        let token = |fp: &[u8]| Token {
            header: HeaderValue::from_static("Bearer x"),
            fingerprint: Fingerprint::of(fp),
            expires_at: Instant::now(),
            serial: 1,
        };
        let hour = Duration::from_secs(3600);
        for fp in [&b"a"[..], b"b", b"c"] {
            let d = refresh_delay(hour, &token(fp));
            assert!(
                d <= hour - REFRESH_MARGIN && d >= hour - REFRESH_MARGIN - REFRESH_JITTER,
                "{d:?}"
            );
            // Inside the metadata server's last five minutes.
            assert!(hour - d < Duration::from_secs(300));
        }
        assert_eq!(
            refresh_delay(Duration::from_secs(4), &token(b"a")),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn parses_token_answers() {
        let (z, life) =
            parse_token(br#"{"access_token":"ya29.abc","expires_in":3599,"token_type":"Bearer"}"#)
                .unwrap();
        assert_eq!(z.header, "Bearer ya29.abc");
        assert!(z.header.is_sensitive());
        assert_eq!(life, Duration::from_secs(3599));
        assert!(parse_token(b"{}").is_err());
        let err = parse_token(br#"{"access_token":"bad\nvalue"}"#).unwrap_err();
        assert!(!err.contains("bad"), "{err}");
        let err = parse_token(br#"{"access_token":["ya29.secret"]}"#).unwrap_err();
        assert!(!err.contains("ya29"), "{err}");
        let (_, life) =
            parse_token(br#"{"access_token":"a","expires_in":18446744073709551615}"#).unwrap();
        assert_eq!(
            life,
            Duration::from_secs(MAX_LIFETIME_S),
            "a huge expires_in is capped"
        );
    }
}
