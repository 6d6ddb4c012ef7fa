//! The token machinery on paused time, with a scripted source: minting
//! ahead of expiry, single flight, surviving an outage on a valid token,
//! backoff, and one forced refresh per rejected token.

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use http::HeaderValue;

use super::cache::{
    FORCED_REFRESH_INTERVAL, MAX_BACKOFF, MIN_BACKOFF, REFRESH_JITTER, REFRESH_MARGIN,
    refresh_delay,
};
use super::*;
use crate::metrics::Metrics;

const HOUR: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(30);

/// A source that answers from a script (then keeps giving fresh tokens),
/// counting its mints.
#[derive(Debug, Default)]
struct Scripted {
    script: Mutex<VecDeque<Result<Duration, MintError>>>,
    mints: AtomicUsize,
}

impl Scripted {
    fn new(script: impl IntoIterator<Item = Result<Duration, MintError>>) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script.into_iter().collect()),
            mints: AtomicUsize::new(0),
        })
    }

    fn mints(&self) -> usize {
        self.mints.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn down() -> MintError {
    MintError::Unreachable {
        host: "oauth2.example".to_owned(),
        reason: "connection refused".to_owned(),
    }
}

impl Mint for Scripted {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn describe(&self) -> String {
        "scripted source".to_owned()
    }

    fn mint<'a>(&'a self, _client: &'a Client, _now: SystemTime) -> MintFuture<'a> {
        let n = self.mints.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let next = self.script.lock().unwrap().pop_front().unwrap_or(Ok(HOUR));
        Box::pin(async move {
            // A token endpoint takes a moment: concurrent waiters pile up.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let lifetime = next?;
            let secret = crate::secret::Secret::new(format!("token-{n}").into_bytes()).unwrap();
            Ok(Minted {
                credential: Credential::Header(secret.header_value("Bearer ").unwrap()),
                fingerprint: secret.fingerprint(),
                lifetime,
            })
        })
    }
}

fn cache(source: Arc<Scripted>) -> TokenCache {
    let tls = crate::upstream::tls::client_config(&[]).unwrap();
    let client = Client::new(tls, Duration::from_secs(1), 1, Vec::new());
    let metrics = Metrics::default().route("r");
    TokenCache::start(Arc::from("r"), source, client, metrics, true)
}

fn value(t: &Token) -> &str {
    let Credential::Header(header) = &t.credential else {
        panic!("a header")
    };
    header.to_str().unwrap()
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_requests_share_one_mint() {
    let source = Scripted::new([]);
    let cache = cache(source.clone());
    let tokens = futures_join_all((0..20).map(|_| cache.token(WAIT))).await;
    for t in &tokens {
        assert_eq!(value(t.as_ref().unwrap()), "Bearer token-1");
    }
    assert_eq!(source.mints(), 1);
}

#[tokio::test(start_paused = true)]
async fn refreshes_ahead_of_expiry_so_requests_never_wait() {
    let source = Scripted::new([]);
    let cache = cache(source.clone());
    let first = cache.token(WAIT).await.unwrap();
    // Just before the refresh point: still the first token, no new mint.
    tokio::time::sleep(HOUR - REFRESH_MARGIN - REFRESH_JITTER - Duration::from_secs(1)).await;
    assert_eq!(source.mints(), 1);
    // Past it: a new token is there before the old one expires.
    tokio::time::sleep(REFRESH_JITTER + Duration::from_secs(2)).await;
    assert_eq!(source.mints(), 2);
    let second = cache.token(Duration::ZERO).await.unwrap();
    assert!(second.serial > first.serial);
    assert!(
        first.usable(Instant::now()),
        "refreshed while the old one was valid"
    );
}

#[tokio::test(start_paused = true)]
async fn an_outage_is_survived_on_a_valid_token_with_backoff() {
    // One good mint, then the endpoint is down for a while.
    let source = Scripted::new([Ok(HOUR), Err(down()), Err(down()), Err(down()), Err(down())]);
    let cache = cache(source.clone());
    let first = cache.token(WAIT).await.unwrap();
    tokio::time::sleep(refresh_delay(HOUR, &first) + Duration::from_millis(100)).await;
    assert_eq!(source.mints(), 2, "the refresh was tried");
    // Requests keep the valid token during the outage.
    assert_eq!(
        cache.token(Duration::ZERO).await.unwrap().serial,
        first.serial
    );
    // Retries back off: 0.5 s, 1 s, 2 s between the failed attempts.
    tokio::time::sleep(MIN_BACKOFF + Duration::from_millis(100)).await;
    assert_eq!(source.mints(), 3);
    tokio::time::sleep(MIN_BACKOFF).await;
    assert_eq!(source.mints(), 3, "the second retry waits twice as long");
    tokio::time::sleep(MIN_BACKOFF * 6).await;
    assert_eq!(source.mints(), 5);
    // The endpoint is back: a fresh token.
    tokio::time::sleep(MAX_BACKOFF).await;
    assert!(cache.token(Duration::ZERO).await.unwrap().serial > first.serial);
}

#[tokio::test(start_paused = true)]
async fn with_no_valid_token_requests_fail_at_once_with_the_reason() {
    let source = Scripted::new([Err(down())]);
    let cache = cache(source);
    let err = cache.token(WAIT).await.unwrap_err();
    assert!(matches!(err, TokenError::Failed { .. }), "{err:?}");
    assert!(
        err.to_string().contains("oauth2.example is unreachable"),
        "{err}"
    );
    // After the backoff it recovers.
    tokio::time::sleep(MIN_BACKOFF * 2).await;
    assert!(cache.token(WAIT).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_rejected_token_is_refreshed_once_however_many_requests_saw_it() {
    let source = Scripted::new([]);
    let cache = cache(source.clone());
    let old = cache.token(WAIT).await.unwrap();
    let fresh = futures_join_all((0..10).map(|_| cache.refresh_after(&old, WAIT))).await;
    for t in &fresh {
        assert_eq!(
            value(t.as_ref().unwrap().as_ref().unwrap()),
            "Bearer token-2"
        );
    }
    assert_eq!(source.mints(), 2, "one refresh for ten rejections");
    // A late rejection of the old token does not force a third mint.
    let again = cache.refresh_after(&old, WAIT).await.unwrap().unwrap();
    assert_eq!(
        again.serial,
        fresh[0].as_ref().unwrap().as_ref().unwrap().serial
    );
    assert_eq!(source.mints(), 2);
}

/// Issue 21, finding 5: requests the provider rejects whatever the token
/// force one refresh per `FORCED_REFRESH_INTERVAL`, not one per request.
#[tokio::test(start_paused = true)]
async fn forced_refreshes_are_limited_to_one_per_interval() {
    let source = Scripted::new([]);
    let cache = cache(source.clone());
    let first = cache.token(WAIT).await.unwrap();
    let second = cache.refresh_after(&first, WAIT).await.unwrap().unwrap();
    assert_eq!(source.mints(), 2);
    // The fresh token is rejected too, again and again: no more mints.
    for _ in 0..20 {
        assert!(cache.refresh_after(&second, WAIT).await.unwrap().is_none());
    }
    assert_eq!(source.mints(), 2, "one forced refresh per interval");
    // A rejection of the first token still gets the newer one, mint-free.
    let newer = cache.refresh_after(&first, WAIT).await.unwrap().unwrap();
    assert_eq!(newer.serial, second.serial);
    // Once the interval has passed, a rejection forces a refresh again.
    tokio::time::sleep(FORCED_REFRESH_INTERVAL).await;
    let third = cache.refresh_after(&second, WAIT).await.unwrap().unwrap();
    assert!(third.serial > second.serial);
    assert_eq!(source.mints(), 3);
}

#[test]
fn refreshes_four_minutes_ahead_or_half_way_for_short_tokens() {
    let token = |fp: &[u8]| Token {
        credential: Credential::Header(HeaderValue::from_static("Bearer x")),
        fingerprint: Fingerprint::of(fp),
        expires_at: Instant::now(),
        serial: 1,
    };
    for fp in [&b"a"[..], b"b", b"c"] {
        let d = refresh_delay(HOUR, &token(fp));
        assert!(
            d <= HOUR - REFRESH_MARGIN && d >= HOUR - REFRESH_MARGIN - REFRESH_JITTER,
            "{d:?}"
        );
        // Inside the metadata server's last five minutes.
        assert!(HOUR - d < Duration::from_secs(300));
    }
    assert_eq!(
        refresh_delay(Duration::from_secs(4), &token(b"a")),
        Duration::from_secs(2)
    );
}

/// Awaits every future, concurrently, on the current task.
async fn futures_join_all<F: Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|v| v.unwrap()).collect()
}
