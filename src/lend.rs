//! One value a client connection lends to each of its requests in turn.
//!
//! Some things a request needs are costly to make and can be used again by
//! the connection's next request: a timer already in tokio's wheel
//! ([`crate::timer`]), room for a copy of the request's headers
//! (`proxy::attempt`). A connection keeps one in a [`Slot`]; a request
//! takes it and puts it back when done. The lock is per connection and
//! uncontended (an HTTP/1.1 connection serves one request at a time). A
//! request that finds the slot empty (two HTTP/2 streams of one connection
//! at once) makes its own, which is kept afterwards if the slot is still
//! empty.

use std::sync::{Mutex, PoisonError};

/// A value lent to one request at a time.
pub(crate) struct Slot<T>(Mutex<Option<T>>);

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<T> std::fmt::Debug for Slot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

impl<T> Slot<T> {
    /// The value, if no other request has it.
    pub(crate) fn take(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Gives `value` back, unless the slot already holds another.
    pub(crate) fn put_back(&self, value: T) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(value);
        }
    }

    /// Looks at what the slot holds (tests).
    #[cfg(test)]
    pub(crate) fn peek<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R {
        f(self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_lent_in_turn_and_the_first_back_is_kept() {
        let slot = Slot::<u8>::default();
        assert_eq!(slot.take(), None, "empty at first");
        slot.put_back(1);
        assert_eq!(slot.take(), Some(1));
        assert_eq!(slot.take(), None, "lent out");
        slot.put_back(2);
        slot.put_back(3);
        assert_eq!(slot.peek(|v| v.copied()), Some(2), "the first back is kept");
    }
}
