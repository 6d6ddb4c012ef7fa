//! Timers that a connection lends to each of its requests in turn.
//!
//! A tokio `Sleep` costs an insert into the runtime's timer wheel when it
//! first waits and a removal when it is dropped. Resetting a `Sleep` that
//! is still in the wheel to a *later* deadline costs neither: tokio stores
//! the new deadline, and the wheel moves the entry when the old one comes.
//! The timeouts a connection arms for every request (hyper's header-read
//! timer, the wait for the upstream's response head) have the same length,
//! so each deadline is later than the last: a connection keeps one `Sleep`
//! per purpose in a [`Reused`] and lends it to each request ([`Lent`]),
//! which puts it back when done. The wheel then sees each of a
//! connection's timers about once per timeout period, not once per request.
//! [`within`] is `tokio::time::timeout` on such a timer.
//!
//! The slot is a [`Slot`]: per connection, its lock uncontended, and a
//! request that finds it empty (two HTTP/2 streams of one connection
//! waiting at once) gets a `Sleep` of its own, kept afterwards if the slot
//! is still empty. [`ConnTimer`] is the same thing behind hyper's `Timer`
//! trait.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::lend::Slot;

/// Far enough away never to come (about 30 years).
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// A connection's timer for one purpose, lent to one request at a time.
#[derive(Debug, Default)]
pub(crate) struct Reused {
    slot: Slot<Pin<Box<Sleep>>>,
}

impl Reused {
    /// A timer that fires at `deadline`: the connection's, if it is free.
    /// `home` is where it goes back (`&Reused` or `Arc<Reused>`).
    pub(crate) fn lend<H: Deref<Target = Self>>(home: H, deadline: Instant) -> Lent<H> {
        let sleep = match home.slot.take() {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Lent {
            sleep: Some(sleep),
            home,
        }
    }

    /// [`Self::lend`] for a timeout of `after` from now. A timeout too long
    /// to represent is a deadline far enough away never to fire (config
    /// durations are at most 30 days; this is for hyper's calls).
    pub(crate) fn lend_for<H: Deref<Target = Self>>(home: H, after: Duration) -> Lent<H> {
        let now = Instant::now();
        let deadline = now
            .checked_add(after)
            .or_else(|| now.checked_add(FAR))
            .unwrap_or(now);
        Self::lend(home, deadline)
    }
}

/// A timer lent by a [`Reused`]: a future that resolves at its deadline,
/// given back when dropped.
pub(crate) struct Lent<H: Deref<Target = Reused>> {
    /// Always `Some` until dropped.
    sleep: Option<Pin<Box<Sleep>>>,
    home: H,
}

impl<H: Deref<Target = Reused>> Lent<H> {
    /// Moves the deadline.
    pub(crate) fn reset(&mut self, deadline: Instant) {
        if let Some(sleep) = self.sleep.as_mut() {
            sleep.as_mut().reset(deadline);
        }
    }
}

impl<H: Deref<Target = Reused> + Unpin> Future for Lent<H> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut().sleep.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl<H: Deref<Target = Reused>> Drop for Lent<H> {
    fn drop(&mut self) {
        if let Some(sleep) = self.sleep.take() {
            self.home.slot.put_back(sleep);
        }
    }
}

impl<H: Deref<Target = Reused>> fmt::Debug for Lent<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lent")
            .field("deadline", &self.sleep.as_ref().map(|s| s.deadline()))
            .finish()
    }
}

/// hyper's timer for one connection (its header-read timeout), lending the
/// connection's [`Reused`] timer. Set per connection.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnTimer(Arc<Reused>);

#[allow(
    clippy::disallowed_types,
    reason = "hyper's Timer trait speaks std's Instant; converted at once"
)]
impl hyper::rt::Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Reused::lend_for(self.0.clone(), duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Reused::lend(self.0.clone(), Instant::from_std(deadline)))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<Lent<Arc<Reused>>>() {
            // Unpin: its timer is boxed.
            Some(lent) => Pin::into_inner(lent).reset(Instant::from_std(deadline)),
            None => *sleep = self.sleep_until(deadline),
        }
    }
}

impl hyper::rt::Sleep for Lent<Arc<Reused>> {}

/// `fut`'s output, or `None` if `after` passes first: tokio's `timeout` on
/// a timer borrowed from `home`.
pub(crate) fn within<H: Deref<Target = Reused> + Unpin, F: Future>(
    home: H,
    after: Duration,
    fut: F,
) -> Within<H, F> {
    Within {
        fut,
        deadline: Reused::lend_for(home, after),
    }
}

pin_project_lite::pin_project! {
    /// The future of [`within`], written out so that it holds `fut` once
    /// (an `async fn` keeps an argument it owns twice in its state).
    pub(crate) struct Within<H: Deref<Target = Reused>, F> {
        #[pin]
        fut: F,
        deadline: Lent<H>,
    }
}

impl<H: Deref<Target = Reused> + Unpin, F: Future> Future for Within<H, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The result first: one that is there is taken even at the deadline.
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        Pin::new(this.deadline).poll(cx).map(|()| None)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    /// `within` gives the output when it comes in time, `None` at the
    /// deadline, and the timer back either way.
    #[tokio::test(start_paused = true)]
    async fn within_is_a_timeout_on_the_lent_timer() {
        let home = Reused::default();
        let quick = within(&home, Duration::from_secs(5), async {
            tokio::time::sleep(Duration::from_secs(4)).await;
            7
        });
        assert_eq!(quick.await, Some(7));
        assert!(home.slot.peek(|s| s.is_some()), "given back");
        let start = Instant::now();
        let slow = within(&home, Duration::from_secs(5), std::future::pending::<()>());
        assert_eq!(slow.await, None);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert!(home.slot.peek(|s| s.is_some()), "given back");
    }

    /// The timer fires at its deadline, and the next loan gets the same
    /// `Sleep` back, reset.
    #[tokio::test(start_paused = true)]
    async fn a_lent_timer_fires_and_comes_back() {
        let home = Reused::default();
        let start = Instant::now();
        Reused::lend_for(&home, Duration::from_secs(10)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        let first = home
            .slot
            .peek(|s| s.map(|s| std::ptr::from_ref::<Sleep>(&**s)))
            .unwrap();

        let lent = Reused::lend_for(&home, Duration::from_secs(5));
        assert!(home.slot.peek(|s| s.is_none()), "lent out");
        let again: *const Sleep = &**lent.sleep.as_ref().unwrap();
        assert_eq!(first, again, "the same Sleep");
        lent.await;
        assert_eq!(start.elapsed(), Duration::from_secs(15));
    }

    /// A timer dropped before its deadline and lent again for a later one
    /// fires at the later one only (the extended entry does not fire early).
    #[tokio::test(start_paused = true)]
    async fn an_extended_timer_waits_for_its_new_deadline() {
        let home = Reused::default();
        let start = Instant::now();
        let mut lent = Reused::lend_for(&home, Duration::from_secs(10));
        // Registered with the wheel, then given back unfired.
        assert!(futures_poll(&mut lent).is_pending());
        drop(lent);
        tokio::time::advance(Duration::from_secs(4)).await;
        Reused::lend_for(&home, Duration::from_secs(10)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(14));
    }

    /// Two loans at once: the second gets a timer of its own, and both fire.
    #[tokio::test(start_paused = true)]
    async fn a_busy_slot_lends_a_fresh_timer() {
        let home = Reused::default();
        let start = Instant::now();
        let a = Reused::lend_for(&home, Duration::from_secs(3));
        let b = Reused::lend_for(&home, Duration::from_secs(2));
        b.await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        a.await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert!(home.slot.peek(|s| s.is_some()), "one kept");
    }

    /// hyper's view: `reset` moves a lent timer rather than making another.
    #[tokio::test(start_paused = true)]
    async fn hyper_reset_moves_the_lent_timer() {
        use hyper::rt::Timer as _;
        let timer = ConnTimer::default();
        let t0 = Instant::now();
        let start = t0.into_std();
        let mut sleep = timer.sleep_until(start + Duration::from_secs(60));
        timer.reset(&mut sleep, start + Duration::from_secs(1));
        assert!(
            sleep
                .as_mut()
                .downcast_mut_pin::<Lent<Arc<Reused>>>()
                .is_some()
        );
        sleep.await;
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
    }

    fn futures_poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(f).poll(&mut cx)
    }
}
