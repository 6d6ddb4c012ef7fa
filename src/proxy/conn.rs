//! One client connection as the request path sees it: the listener it came
//! in on, and its place in `limits.max_connections`.
//!
//! design.md, "Operations" (limits) and "WebSocket: realtime and live
//! APIs": the server takes a [`Place`] before it accepts a connection and
//! hands it to the connection's [`Conn`]; the place goes back when the
//! connection (and every request on it) is done. An HTTP/1.1 connection
//! that switches to a WebSocket leaves hyper at the `101`, so the tunnel
//! takes the place over ([`Conn::take_place`]): an open WebSocket keeps
//! counting until it closes. It also holds the timers its requests take in
//! turn to wait for a response head and for a body read whole
//! ([`crate::timer`]), and the room they take in turn to keep their headers
//! for a retry ([`super::attempt::Spare`]).

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OwnedSemaphorePermit;

use super::attempt::Spare;
use super::websocket::Sockets;
use crate::metrics::Metrics;
use crate::timer::Reused;

/// A place in `limits.max_connections`, counted in
/// `sidekey_connections_open` while it is held.
#[derive(Debug)]
pub(crate) struct Place {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Place {
    /// Holds `permit`, and counts it as open.
    pub(crate) fn new(permit: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Self {
        metrics.connection_open(true);
        Self {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.metrics.connection_open(false);
    }
}

/// What every request of one client connection shares.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The WebSockets a handshake may open (the whole server's).
    pub(crate) sockets: Arc<Sockets>,
    /// Whether the listener is on a loopback address (the host check).
    pub(crate) loopback: bool,
    /// Given back when the last request of the connection is dropped,
    /// unless a WebSocket took it. The lock is taken only then.
    place: Mutex<Option<Place>>,
    /// The timer of `limits.request_timeout` (the wait for a response
    /// head), lent to each request in turn.
    pub(crate) head_wait: Reused,
    /// The timer of `limits.body_read_timeout` (a body read whole for the
    /// model allowlist or a signature). Its own: a deadline of another
    /// length would move the head-wait timer earlier, which costs a
    /// re-insert into the timer wheel.
    pub(crate) body_wait: Reused,
    /// Room for the headers a request keeps for a possible retry, lent
    /// to each request in turn.
    pub(crate) spare_headers: Spare,
}

impl Conn {
    /// The connection holding `place`.
    pub(crate) fn new(sockets: Arc<Sockets>, loopback: bool, place: Place) -> Arc<Self> {
        Arc::new(Self {
            sockets,
            loopback,
            place: Mutex::new(Some(place)),
            head_wait: Reused::default(),
            body_wait: Reused::default(),
            spare_headers: Spare::default(),
        })
    }

    /// The connection's place, for the WebSocket it became.
    pub(crate) fn take_place(&self) -> Option<Place> {
        self.place
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}
