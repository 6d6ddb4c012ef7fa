//! What a reload could not apply, as typed errors.
//!
//! A [`Rejection`] keeps its cause as a `#[source]` (a [`ConfigError`], a
//! [`BuildError`]) or as the [`Stale`] credential it is about, so the log
//! line, the `/readyz` body and the tests read the same value. None of them
//! holds a credential value.

use std::net::SocketAddr;

use std::sync::Arc;

use super::build::{BuildError, TlsPairError};
use super::snapshot::Stale;
use crate::config::ConfigError;

/// One part of a change a reload did not apply.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Rejection {
    /// The config does not load: the last good config stays whole.
    #[error("config not applied, the last good one stays: {0}")]
    Config(#[source] Box<ConfigError>),
    /// The config would open the bound public socket to anyone.
    #[error("config not applied, the last good one stays: {0}")]
    OpenSocket(#[source] OpenSocket),
    /// A route's TLS settings do not load: nothing of the change applies.
    #[error("{file}: {source}")]
    Build {
        file: String,
        #[source]
        source: BuildError,
    },
    /// The TLS listener's new pair cannot serve: the last good pair stays.
    #[error("tls_cert/tls_key not applied, the last good pair stays: {0}")]
    TlsListener(#[source] Arc<TlsPairError>),
    /// A credential cannot be read: it keeps its last good value.
    #[error("credential not applied, the last good value stays: {0}")]
    Credential(Box<Stale>),
}

/// A new config drops `inbound_token` while sidekey listens beyond
/// loopback (a reload cannot move the socket).
#[derive(Debug, thiserror::Error)]
#[error(
    "{file}: sidekey listens on {bound} (changing `listen` needs a restart), which is not a \
     loopback address: the config must keep `inbound_token` (or say `allow_unauthenticated = true`)"
)]
pub(crate) struct OpenSocket {
    pub(crate) file: String,
    pub(crate) bound: SocketAddr,
}
