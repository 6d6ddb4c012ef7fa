//! Talking to providers: one upstream client per trust configuration.
//!
//! design.md, "Request path" step 4. [`tls`] builds the rustls config (webpki
//! roots plus optional private CAs, ring as the only crypto provider);
//! [`client`] is the client routes and token sources send through, keeping
//! an [`endpoint`] (the connections to one host: idle HTTP/1.1 connections,
//! HTTP/2 lanes) per upstream host; `sending` is the (small) future of one
//! request; [`connect`] opens connections (TCP_NODELAY, connect timeout, ALPN
//! h2 and http/1.1); [`error`] says what went wrong before a response head. Clients are cached in [`Clients`] across reloads,
//! so a config change that keeps a route's trust settings keeps its warm
//! connections. Knows nothing of routes or credentials.

pub(crate) mod client;
pub(crate) mod connect;
pub(crate) mod endpoint;
pub(crate) mod error;
mod sending;
pub(crate) mod tls;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

pub(crate) use crate::body::UpstreamBody;
pub(crate) use client::Client;
pub(crate) use endpoint::LaneGuard;
pub(crate) use error::Error;
use tls::TlsError;

/// What distinguishes one client from another.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct ClientKey {
    /// Digest of the extra CA certificates (empty when none).
    cas: Vec<u8>,
    connect_timeout: Duration,
    per_lane: usize,
}

/// The clients in use, keyed by trust settings and connect timeout.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    cache: Mutex<HashMap<ClientKey, Client>>,
}

impl Clients {
    /// The client trusting webpki roots plus the certificates in `ca_files`.
    /// Reads the CA files every time (they may have changed); builds a new
    /// client only when their content or the timeout changed.
    ///
    /// # Errors
    ///
    /// [`TlsError`] when a CA file cannot be read or holds no certificate.
    pub(crate) fn get(
        &self,
        ca_files: &[&PathBuf],
        connect_timeout: Duration,
        per_lane: usize,
    ) -> Result<Client, TlsError> {
        let cas = tls::read_cas(ca_files)?;
        let key = ClientKey {
            cas: tls::digest(&cas),
            connect_timeout,
            per_lane,
        };
        // Never held across an await; only snapshot builds take it.
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let mut id = key.cas.clone();
        id.extend_from_slice(&connect_timeout.as_nanos().to_be_bytes());
        id.extend_from_slice(&per_lane.to_be_bytes());
        let client = Client::new(tls::client_config(&cas)?, connect_timeout, per_lane, id);
        cache.insert(key, client.clone());
        Ok(client)
    }

    /// Drops the cache's reference to clients that `in_use` does not hold;
    /// their connections close once the last request using them ends.
    pub(crate) fn retain(&self, in_use: &[Client]) {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.retain(|_, c| in_use.iter().any(|u| u.same(c)));
    }
}
