//! [`TokenCache`]: one credential source of one route, with the background
//! task that mints for it. See the module above for the behaviour.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{Mint, MintError, Minted, Token, TokenError};
use crate::metrics::RouteMetrics;
use crate::upstream::Client;

/// Refresh this long before expiry (plus jitter), inside the GKE metadata
/// server's five-minute window (it hands out a fresh token only then).
pub(crate) const REFRESH_MARGIN: Duration = Duration::from_secs(240);
/// Up to this much is added to the margin, so many pods do not refresh at once.
pub(crate) const REFRESH_JITTER: Duration = Duration::from_secs(30);
/// First retry after a failed mint; doubles up to [`MAX_BACKOFF`].
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(500);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// At most one refresh forced by a rejection per credential in this time:
/// a client that sends requests the provider answers 401 to (whatever the
/// token) must not make sidekey mint once per request. A token the provider
/// really revoked is replaced by the first forced refresh; scheduled
/// refreshes are not limited.
pub(crate) const FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// What the channel holds.
#[derive(Clone, Debug)]
enum State {
    /// Nothing yet; the first mint is on its way.
    Pending,
    Ready(Token),
    /// No valid credential, and the last mint failed so.
    Failed(MintError),
}

/// The token cache of one credential of one route.
#[derive(Debug)]
pub(crate) struct TokenCache {
    route: Arc<str>,
    source: Arc<dyn Mint>,
    state: watch::Receiver<State>,
    /// Wakes the task for a refresh now (after a rejection).
    refresh: Arc<Notify>,
    /// The last refresh a rejection forced. A lock, not atomics: it is
    /// taken only after a provider rejected a token, never in steady state,
    /// and held for a few loads and stores.
    forced: Mutex<Forced>,
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
    /// Starts the cache's task, which mints at once; or, offline, a cache
    /// that never mints.
    pub(crate) fn start(
        route: Arc<str>,
        source: Arc<dyn Mint>,
        client: Client,
        metrics: Arc<RouteMetrics>,
        online: bool,
    ) -> Self {
        let (tx, state) = watch::channel(State::Pending);
        let refresh = Arc::new(Notify::new());
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
            forced: Mutex::new(Forced::default()),
            expiry,
            task,
        }
    }

    /// The source, for logs and `check`.
    pub(crate) fn source(&self) -> &dyn Mint {
        &*self.source
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
    /// [`TokenError`] when no valid token can be had.
    pub(crate) async fn token(&self, wait: Duration) -> Result<Token, TokenError> {
        let mut rx = self.state.clone();
        let deadline = Instant::now() + wait;
        loop {
            let reason = match &*rx.borrow_and_update() {
                State::Ready(t) if t.usable(Instant::now()) => return Ok(t.clone()),
                State::Ready(_) => "the token expired and no new one was minted yet",
                State::Pending => "the first token has not arrived yet",
                // The last attempt failed and no valid token is left: answer
                // now rather than hold every request through the backoff.
                State::Failed(e) => return Err(self.failed(e.clone())),
            };
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.not_yet("the token task stopped")),
                Err(_) => return Err(self.not_yet(reason)),
            }
        }
    }

    /// After the provider rejected `token`: a newer token, asking the task
    /// for one once per token however many requests saw the rejection, and
    /// waiting for it. `None` when no refresh may be forced now (one was
    /// forced less than [`FORCED_REFRESH_INTERVAL`] ago and nothing newer
    /// is cached): the rejection stands.
    ///
    /// # Errors
    ///
    /// [`TokenError::NotYet`] when no newer token arrives in time.
    pub(crate) async fn refresh_after(
        &self,
        token: &Token,
        wait: Duration,
    ) -> Result<Option<Token>, TokenError> {
        let mut rx = self.state.clone();
        if let State::Ready(t) = &*rx.borrow_and_update()
            && t.serial > token.serial
        {
            return Ok(Some(t.clone()));
        }
        match self.force(token.serial) {
            Force::Asked => self.refresh.notify_one(),
            Force::Pending => {}
            Force::Limited => return Ok(None),
        }
        let deadline = Instant::now() + wait;
        loop {
            if let State::Ready(t) = &*rx.borrow_and_update()
                && t.serial > token.serial
            {
                return Ok(Some(t.clone()));
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.not_yet("the token task stopped")),
                Err(_) => return Err(self.not_yet("no fresh token after the rejection")),
            }
        }
    }

    /// Whether a rejection of the token `serial` forces a refresh now.
    fn force(&self, serial: u64) -> Force {
        let now = Instant::now();
        let mut forced = self.forced.lock().unwrap_or_else(PoisonError::into_inner);
        if forced.serial >= serial {
            return Force::Pending;
        }
        if forced
            .at
            .is_some_and(|at| now.duration_since(at) < FORCED_REFRESH_INTERVAL)
        {
            return Force::Limited;
        }
        *forced = Forced {
            serial,
            at: Some(now),
        };
        Force::Asked
    }

    fn origin(&self) -> String {
        format!("route {}: {}", self.route, self.source.describe())
    }

    fn failed(&self, source: MintError) -> TokenError {
        TokenError::Failed {
            origin: self.origin(),
            source,
        }
    }

    fn not_yet(&self, reason: &'static str) -> TokenError {
        TokenError::NotYet {
            origin: self.origin(),
            reason,
        }
    }
}

/// The last refresh a rejection forced.
#[derive(Debug, Default)]
struct Forced {
    /// The serial of the rejected token it replaces.
    serial: u64,
    /// When it was asked for.
    at: Option<Instant>,
}

/// What a rejection does to the cache.
enum Force {
    /// A refresh was asked for now.
    Asked,
    /// A refresh for this token (or a newer one) was already asked for.
    Pending,
    /// One was forced too recently: none now.
    Limited,
}

/// The background task of one cache.
struct Refresher {
    route: Arc<str>,
    source: Arc<dyn Mint>,
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
            let wait = match self.source.mint(&self.client, (self.now)()).await {
                Ok(minted) => {
                    serial += 1;
                    backoff = MIN_BACKOFF;
                    self.publish(minted, serial)
                }
                Err(e) => {
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    self.failed(e, wait);
                    wait
                }
            };
            // Sleep until it is time to mint again, or until a rejection asks now.
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.refresh.notified() => {}
            }
        }
    }

    /// Publishes a fresh token; returns how long until the next refresh.
    fn publish(&self, minted: Minted, serial: u64) -> Duration {
        let lifetime = minted.lifetime;
        let expires_unix = (self.now)()
            .checked_add(lifetime)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let token = Token {
            credential: minted.credential,
            fingerprint: minted.fingerprint,
            expires_at: Instant::now() + lifetime,
            serial,
        };
        tracing::debug!(route = %self.route, source = %self.source.describe(), fingerprint = %token.fingerprint, lifetime_s = lifetime.as_secs(), "access token minted");
        let wait = refresh_delay(lifetime, &token);
        self.metrics.token_refresh(true);
        self.expiry.store(expires_unix, Ordering::Relaxed);
        self.tx.send_replace(State::Ready(token));
        wait
    }

    /// Keeps a still-valid token; otherwise publishes the failure.
    fn failed(&self, e: MintError, retry_in: Duration) {
        self.metrics.token_refresh(false);
        let still_valid = matches!(&*self.tx.borrow(), State::Ready(t) if t.usable(Instant::now()));
        tracing::warn!(route = %self.route, source = %self.source.describe(), error = %e, retry_in_ms = retry_in.as_millis() as u64, still_valid, "access token request failed");
        if !still_valid {
            self.expiry.store(0, Ordering::Relaxed);
            self.tx.send_replace(State::Failed(e));
        }
    }
}

/// How long to wait before refreshing a token that lives `lifetime`: four
/// minutes (plus jitter) before expiry, but never later than half way.
pub(crate) fn refresh_delay(lifetime: Duration, token: &Token) -> Duration {
    // Tokens differ per pod, so their first byte spreads pods' refreshes.
    let jitter_ms =
        u64::from(token.fingerprint.bytes()[0]) * REFRESH_JITTER.as_millis() as u64 / 255;
    let margin = (REFRESH_MARGIN + Duration::from_millis(jitter_ms)).min(lifetime / 2);
    lifetime.saturating_sub(margin)
}
