//! Credentials minted from an identity: cached, refreshed ahead of time.
//!
//! design.md, "Vertex AI tokens" and "Keyless identities". A source that can
//! mint a credential and say when it expires implements [`Mint`]; everything
//! else is the same for every source and lives here, provider-agnostic:
//!
//! - [`TokenCache`] (`cache.rs`): one per credential of a route, with one
//!   background task, the only place that ever asks the source. It mints at
//!   once, publishes on a `watch` channel, and mints the next credential
//!   about four minutes before the current one expires (jittered; never
//!   later than half way through a short lifetime). In steady state a
//!   request only reads the channel: no wait.
//! - Requests that arrive before the first credential wait on the channel:
//!   however many there are, one mint happens (single flight).
//! - When minting fails, the current credential is kept while it is valid
//!   and the task retries with capped exponential backoff; only when none is
//!   left do requests get 503, with the reason.
//! - A rejection by the provider asks the task for a fresh credential at once
//!   ([`TokenCache::refresh_after`]); the request is retried once with it
//!   (when the provider's row says `refresh_on_reject`).
//! - [`TokenRegistry`] (`registry.rs`) keeps caches across snapshots, keyed by
//!   route, setting and the source's content: a reload that keeps a source
//!   keeps its cache; a rotated one starts a new cache, so nothing minted
//!   from an old key is used again.
//!
//! Sources: a Google service account's JWT grant ([`jwt`]) and the GKE
//! metadata server ([`metadata`]), both ending in an OAuth2 token request
//! ([`oauth`]); and AWS credentials ([`aws`]: environment or files, web
//! identity through STS, container and instance metadata endpoints). Every
//! endpoint is asked through one bounded exchange (`fetch.rs`), and its
//! error text reaches logs and 503 bodies only escaped and cut
//! (`fetch::printable`). Token requests that carry a secret (an assertion,
//! a client secret, a refresh or subject token) are built in buffers wiped
//! once sent (`oauth::form_body`); a service account's key is decoded in
//! wiped buffers (`pem.rs`).

pub(crate) mod authorized_user;
pub(crate) mod aws;
mod cache;
pub(crate) mod entra;
pub(crate) mod external_account;
mod fetch;
pub(crate) mod jwt;
pub(crate) mod metadata;
pub(crate) mod oauth;
mod pem;
mod registry;
mod time;
mod token_file;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, StatusCode};
use tokio::time::Instant;

pub(crate) use cache::TokenCache;
pub(crate) use registry::TokenRegistry;

use crate::secret::Fingerprint;
use crate::upstream::Client;

/// What a source's mint returns.
pub(crate) type MintFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Minted, MintError>> + Send + 'a>>;

/// A source of short-lived credentials.
pub(crate) trait Mint: Send + Sync + fmt::Debug {
    /// How logs and `check` name the source (never a secret).
    fn describe(&self) -> String;

    /// The kind of source, a metric label: `service-account`, `web-identity`, ...
    fn kind(&self) -> &'static str;

    /// Mints one credential, through `client` (the route's trust settings),
    /// at wall-clock time `now` (for signed assertions).
    fn mint<'a>(&'a self, client: &'a Client, now: SystemTime) -> MintFuture<'a>;

    /// Whether asking again can give a different credential: false for
    /// keys fixed when the snapshot was built, which a rejection does not
    /// make worth a retry with the same source.
    fn renews(&self) -> bool {
        true
    }

    /// The cloud project the identity belongs to, when it says (a Google
    /// service account's `project_id`); routes default to it.
    fn project_id(&self) -> Option<&str> {
        None
    }
}

/// What a source mints.
#[derive(Clone)]
pub(crate) enum Credential {
    /// A header value ready to send (`Bearer <token>`, marked sensitive),
    /// never formatted again.
    Header(HeaderValue),
    /// AWS keys that sign each request (SigV4).
    Aws(Arc<aws::AwsKeys>),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(_) => f.write_str("Header(<redacted>)"),
            Self::Aws(keys) => write!(f, "Aws({keys:?})"),
        }
    }
}

/// A credential as minted, and how long it lives. `Debug` shows no secret.
#[derive(Debug)]
pub(crate) struct Minted {
    pub(crate) credential: Credential,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) lifetime: Duration,
}

/// Why a mint failed. Names the endpoint's host, never a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MintError {
    #[error("{host} is unreachable: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("{host} did not answer within {}s", .after.as_secs())]
    Timeout { host: String, after: Duration },
    #[error("{host} answered {status} {detail}")]
    Refused {
        host: String,
        status: StatusCode,
        /// The OAuth `error` and `error_description`, if any.
        detail: String,
    },
    #[error("{host}: {reason}")]
    BadAnswer { host: String, reason: String },
    /// The request could not be built or signed.
    #[error("{0}")]
    Request(String),
}

/// A minted credential in a cache.
#[derive(Clone)]
pub(crate) struct Token {
    pub(crate) credential: Credential,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) expires_at: Instant,
    /// Counts credentials of this cache, so a rejection of an old one does
    /// not force yet another refresh after a new one arrived.
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

/// Why a request got no token.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum TokenError {
    /// The last mint failed and no valid credential is left.
    #[error("no valid credential from {origin}: {source}")]
    Failed {
        origin: String,
        #[source]
        source: MintError,
    },
    /// None arrived in time (the first one, or a fresh one after a
    /// rejection).
    #[error("no valid credential from {origin}: {reason}")]
    NotYet {
        origin: String,
        reason: &'static str,
    },
}

#[cfg(test)]
mod tests;
