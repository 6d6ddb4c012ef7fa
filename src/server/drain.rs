//! Graceful shutdown of the connections being served.
//!
//! hyper-util's `GracefulShutdown` polls a `watch` channel's `changed()`
//! future (a lock and a `Notify` check) every time a connection's future is
//! polled, several times per request. [`Drain`] costs one atomic load per
//! poll instead: a connection registers its task's waker once, when it is
//! first polled, and the drain wakes every registered connection when it
//! starts. Each watched connection is then told to shut down gracefully
//! (finish the request in flight, accept no other) on its next poll.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

/// Asks a served connection to finish the request in flight, then close
/// (hyper's `graceful_shutdown`).
pub(super) type ShutDown<C> = fn(Pin<&mut C>);

/// The connections being served, and whether they are draining.
#[derive(Debug, Default)]
pub(super) struct Drain {
    draining: AtomicBool,
    next_id: AtomicU64,
    /// The waker of every watched connection, by id.
    wakers: Mutex<HashMap<u64, Waker>>,
    /// Told when the last watched connection ends while draining.
    done: Notify,
}

impl Drain {
    /// `conn`, which `shut_down` is called on once the drain starts.
    pub(super) fn watch<C: Future>(
        self: &Arc<Self>,
        conn: C,
        shut_down: ShutDown<C>,
    ) -> Watched<C> {
        Watched {
            conn,
            shut_down,
            drain: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            waker: None,
            shut: false,
        }
    }

    /// How many watched connections are open.
    pub(super) fn count(&self) -> usize {
        self.lock().len()
    }

    /// Starts the drain (every watched connection shuts down gracefully)
    /// and resolves when the last one has ended.
    pub(super) async fn shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        for waker in self.lock().values() {
            waker.wake_by_ref();
        }
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            done.await;
        }
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waker>> {
        self.wakers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self, id: u64, waker: Waker) {
        self.lock().insert(id, waker);
    }

    fn forget(&self, id: u64) {
        let mut wakers = self.lock();
        if wakers.remove(&id).is_some() && wakers.is_empty() && self.draining() {
            self.done.notify_waiters();
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection watched by a [`Drain`].
    pub(super) struct Watched<C> {
        #[pin]
        conn: C,
        shut_down: ShutDown<C>,
        drain: Arc<Drain>,
        id: u64,
        // The waker registered with the drain (a task's waker does not
        // change between polls, so this is registered once).
        waker: Option<Waker>,
        // Told to shut down already.
        shut: bool,
    }

    impl<C> PinnedDrop for Watched<C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.waker.is_some() {
                this.drain.forget(*this.id);
            }
        }
    }
}

impl<C: Future> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.shut {
            if this.waker.as_ref().is_none_or(|w| !w.will_wake(cx.waker())) {
                // Registered before the flag is read: a drain starting
                // meanwhile either is seen below or wakes this waker.
                this.drain.register(*this.id, cx.waker().clone());
                *this.waker = Some(cx.waker().clone());
            }
            if this.drain.draining() {
                *this.shut = true;
                (this.shut_down)(this.conn.as_mut());
            }
        }
        this.conn.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that ends once told to shut down.
    struct Idle {
        told: bool,
    }

    impl Future for Idle {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if self.told {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    fn tell(mut idle: Pin<&mut Idle>) {
        idle.told = true;
    }

    #[tokio::test]
    async fn a_drain_shuts_every_connection_down_and_waits_for_them() {
        let drain = Arc::new(Drain::default());
        let tasks: Vec<_> = (0..3)
            .map(|_| tokio::spawn(drain.watch(Idle { told: false }, tell)))
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(drain.count(), 3);
        drain.shutdown().await;
        assert_eq!(drain.count(), 0);
        for t in tasks {
            t.await.unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[tokio::test]
    async fn a_connection_watched_after_the_drain_started_is_shut_down_at_once() {
        let drain = Arc::new(Drain::default());
        drain.shutdown().await;
        drain.watch(Idle { told: false }, tell).await;
        assert_eq!(drain.count(), 0);
    }
}
