//! A request body that can be sent again, for the fallback retry.
//!
//! design.md, "Request path" step 5: after a rejected key, the *same*
//! request goes out again with the next one. Modelled on linkerd2-proxy's
//! `ReplayBody`: the first attempt streams the client's body upstream as it
//! arrives (no added latency) while keeping each frame (a reference-counted
//! `Bytes`, not a copy); a retry first replays the kept frames, then goes on
//! reading the client's body where the previous attempt stopped, so a
//! provider that rejects a key before reading the whole body is handled
//! too. Past `limits.max_replay_body` the frames are no longer kept and the
//! request cannot be retried; it still streams through.
//!
//! Only the newest attempt may read further from the client: an abandoned
//! attempt that hyper polls again gets an error instead of taking frames
//! the retry needs.
//!
//! All kept bodies share one [`Budget`] (`limits.max_replay_total`), so a
//! few concurrent large uploads cannot take the pod's memory: a body whose
//! length is declared reserves it whole when the request starts, a chunked
//! one as its frames arrive. A body the budget cannot hold is not kept (it
//! streams through, with no fallback), and the budget counts it. What a
//! body reserved goes back when its last attempt is dropped.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::BoxError;

/// The bytes all kept bodies hold at once, against `limits.max_replay_total`
/// (lock-free: one atomic, touched only by requests that may be retried).
#[derive(Debug)]
pub(crate) struct Budget {
    held: AtomicU64,
    /// Bodies not kept because the budget was spent (a metrics counter).
    refused: Arc<AtomicU64>,
}

impl Budget {
    /// An empty budget that adds each refusal to `refused`.
    pub(crate) fn new(refused: Arc<AtomicU64>) -> Self {
        Self {
            held: AtomicU64::new(0),
            refused,
        }
    }

    /// Takes `n` bytes if `held + n` stays within `total`.
    fn reserve(&self, n: u64, total: u64) -> bool {
        self.held
            .fetch_update(Relaxed, Relaxed, |held| {
                held.checked_add(n).filter(|&after| after <= total)
            })
            .is_ok()
    }

    fn release(&self, n: u64) {
        self.held.fetch_sub(n, Relaxed);
    }

    /// Bytes held now.
    #[cfg(test)]
    fn held(&self) -> u64 {
        self.held.load(Relaxed)
    }
}

/// What a body's kept frames take from the [`Budget`].
#[derive(Debug)]
struct Reservation {
    budget: Arc<Budget>,
    /// `limits.max_replay_total` when the request started.
    total: u64,
    /// Bytes reserved now.
    bytes: u64,
}

impl Reservation {
    /// Grows the reservation to `len` bytes; `false` when the budget is spent.
    fn grow_to(&mut self, len: u64) -> bool {
        if len <= self.bytes {
            return true;
        }
        let more = len - self.bytes;
        if self.budget.reserve(more, self.total) {
            self.bytes = len;
            true
        } else {
            self.budget.refused.fetch_add(1, Relaxed);
            false
        }
    }

    fn release_all(&mut self) {
        self.budget.release(std::mem::take(&mut self.bytes));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release_all();
    }
}

/// The fallback loop's handle: makes a new attempt's body.
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    /// Data frames read from the client so far (empty once capped).
    kept: Vec<Bytes>,
    kept_len: u64,
    trailers: Option<HeaderMap>,
    client: Incoming,
    client_done: bool,
    /// Longer than the limit, or more than the budget holds: nothing is
    /// kept, no retry is possible.
    capped: bool,
    limit: u64,
    reservation: Reservation,
    /// The attempt allowed to read from the client.
    generation: u64,
    /// The client's size hint when the request arrived: every attempt
    /// announces the same length, so a replay is framed like the original.
    size: SizeHint,
}

/// One attempt's view of the body.
#[derive(Debug)]
pub(crate) struct ReplayBody {
    state: Arc<Mutex<State>>,
    generation: u64,
    /// Next kept frame to send.
    pos: usize,
    trailers_sent: bool,
}

/// The previous attempt is still being polled after a retry took over.
#[derive(Debug, thiserror::Error)]
#[error("request body superseded by a retry")]
struct Superseded;

impl Replay {
    /// Wraps the client's body, to be kept up to `limit` bytes within
    /// `budget` (of `total` bytes); returns the handle and the first
    /// attempt's body. A declared length is reserved whole now: a body the
    /// budget cannot hold streams without being kept, from its first byte.
    pub(crate) fn new(
        client: Incoming,
        limit: u64,
        budget: Arc<Budget>,
        total: u64,
    ) -> (Self, ReplayBody) {
        let size = client.size_hint();
        let mut reservation = Reservation {
            budget,
            total,
            bytes: 0,
        };
        let capped = size
            .exact()
            .is_some_and(|n| n > limit || !reservation.grow_to(n));
        let state = Arc::new(Mutex::new(State {
            kept: Vec::new(),
            kept_len: 0,
            trailers: None,
            client,
            client_done: false,
            capped,
            limit,
            reservation,
            generation: 0,
            size,
        }));
        let first = ReplayBody {
            state: state.clone(),
            generation: 0,
            pos: 0,
            trailers_sent: false,
        };
        (Self { state }, first)
    }

    /// The body for the next attempt, or `None` when the body grew past the
    /// limit and cannot be sent again.
    pub(crate) fn again(&self) -> Option<ReplayBody> {
        let mut st = lock(&self.state);
        if st.capped {
            return None;
        }
        st.generation += 1;
        Some(ReplayBody {
            state: self.state.clone(),
            generation: st.generation,
            pos: 0,
            trailers_sent: false,
        })
    }

    /// Whether the body can still be sent again.
    pub(crate) fn is_replayable(&self) -> bool {
        !lock(&self.state).capped
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut st = lock(&this.state);
        // Held only while polling: nothing here awaits.
        if let Some(kept) = st.kept.get(this.pos).cloned() {
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(kept))));
        }
        if st.client_done {
            return match st.trailers.clone() {
                Some(t) if !this.trailers_sent => {
                    this.trailers_sent = true;
                    Poll::Ready(Some(Ok(Frame::trailers(t))))
                }
                _ => Poll::Ready(None),
            };
        }
        if this.generation != st.generation {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        loop {
            let frame = match Pin::new(&mut st.client).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    st.client_done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    if !st.capped {
                        st.kept_len += data.len() as u64;
                        let len = st.kept_len;
                        if len > st.limit || !st.reservation.grow_to(len) {
                            // No retry for this request: free what was kept.
                            st.capped = true;
                            st.kept = Vec::new();
                            st.reservation.release_all();
                        } else {
                            st.kept.push(data.clone());
                            this.pos = st.kept.len();
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        st.trailers = Some(trailers.clone());
                        this.trailers_sent = true;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    // Unknown frame kinds are not forwarded; read on.
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let st = lock(&self.state);
        st.client_done && self.pos >= st.kept.len() && (st.trailers.is_none() || self.trailers_sent)
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.state).size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reservation(budget: &Arc<Budget>, total: u64) -> Reservation {
        Reservation {
            budget: budget.clone(),
            total,
            bytes: 0,
        }
    }

    #[test]
    fn the_budget_is_shared_and_given_back_on_drop() {
        let refused = Arc::new(AtomicU64::new(0));
        let budget = Arc::new(Budget::new(refused.clone()));
        let mut a = reservation(&budget, 1000);
        let mut b = reservation(&budget, 1000);
        assert!(a.grow_to(600));
        assert!(a.grow_to(400), "already held");
        assert!(!b.grow_to(600), "600 + 600 is past the budget");
        assert_eq!(refused.load(Relaxed), 1);
        assert!(b.grow_to(400));
        assert_eq!(budget.held(), 1000);
        drop(a);
        assert_eq!(budget.held(), 400);
        b.release_all();
        assert_eq!(budget.held(), 0);
        drop(b);
        assert_eq!(budget.held(), 0, "released once");
    }
}
