//! [`Snapshot`]: the immutable state every request runs on.
//!
//! design.md, "Hot reload": a snapshot is the validated config plus the route
//! table with every credential already read and prepared (`build.rs`), plus
//! what could not be read ([`Problem`]) and what serves a last good value
//! ([`Stale`]). It is built whole, then swapped in (see [`super::Shared`]);
//! a request loads it once and keeps it to the end, so a reload never
//! changes anything under a request in flight. What `/metrics`, `/readyz`
//! and the watcher read from a snapshot lives here too.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::time::Instant;

use crate::config::{Config, ConfigSource};
use crate::credentials::resolve::Unavailable;
use crate::credentials::{Fingerprint, KeyValue, Location, Secret};
use crate::env::Env;
use crate::metrics::CredentialLive;
use crate::routes::RouteTable;
use crate::tls_listener::ServerTls;

use super::build::TlsPairError;
use crate::upstream::Client;

/// A credential that cannot be used, found while building a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// `routes.NAME.key`, `inbound_token`, ...
    pub(crate) key: String,
    /// Whether a request through it will fail (no usable key at all), as
    /// opposed to a missing fallback or pool member.
    pub(crate) fatal: bool,
    /// Whether it counts for readiness.
    pub(crate) required: bool,
    pub(crate) reasons: Vec<Unavailable>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.key)?;
        for (i, r) in self.reasons.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// A credential serving its last good value: its location cannot be read
/// now (missing, unreadable, not a regular file, too large, empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stale {
    pub(crate) route: String,
    /// `key`, `deployments.NAME.key`, `headers.NAME`, `credentials`.
    pub(crate) label: String,
    /// Position in a `{ default, fallback }` or a pool.
    pub(crate) index: usize,
    /// The location as configured now.
    pub(crate) location: String,
    /// Why the location cannot serve (never a value).
    pub(crate) reason: String,
    /// Of the value still served.
    pub(crate) fingerprint: Fingerprint,
    /// Since when the value served is older than the location.
    pub(crate) since: Instant,
}

impl Stale {
    /// `routes.NAME.LABEL`.
    pub(crate) fn setting(&self) -> String {
        format!("routes.{}.{}", self.route, self.label)
    }
}

impl fmt::Display for Stale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}; still serving {}",
            self.setting(),
            self.location,
            self.reason,
            self.fingerprint
        )
    }
}

/// The inbound token, when the config sets one.
#[derive(Debug)]
pub(crate) enum InboundToken {
    Ready(Secret),
    Missing(Unavailable),
}

/// Everything a request needs, read once and never changed.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) config: Config,
    pub(crate) routes: RouteTable,
    pub(crate) inbound_token: Option<InboundToken>,
    /// The TLS listener's server config, when `tls_listen` is set.
    pub(crate) tls: Option<ServerTls>,
    /// Why the TLS listener's pair on disk is not served (the last good
    /// one is).
    pub(crate) tls_stale: Option<Arc<TlsPairError>>,
    /// Credentials that could not be read and have no last good value.
    pub(crate) problems: Vec<Problem>,
    /// Credentials serving their last good value.
    pub(crate) stale: Vec<Stale>,
    /// Digest of everything the snapshot was built from (config, credential
    /// values, trust roots): equal digests mean a reload changes nothing.
    pub(crate) digest: [u8; 32],
}

impl Snapshot {
    /// The stale entry of the `index`-th key of `route`'s setting `label`.
    pub(crate) fn stale_of(&self, route: &str, label: &str, index: usize) -> Option<&Stale> {
        self.stale
            .iter()
            .find(|s| s.route == route && s.label == label && s.index == index)
    }

    pub(super) fn compute_digest(&self) -> [u8; 32] {
        let mut d = ring::digest::Context::new(&ring::digest::SHA256);
        let mut field = |bytes: &[u8]| {
            d.update(&(bytes.len() as u64).to_be_bytes());
            d.update(bytes);
        };
        // The validated config holds locations and settings, never values.
        field(format!("{:?}", self.config).as_bytes());
        for route in self.routes.iter_sorted() {
            field(route.name.as_bytes());
            field(route.client.id());
            for (label, keys) in route.key_sets() {
                field(label.as_bytes());
                for key in keys.keys.iter() {
                    match &key.value {
                        KeyValue::Static { header, .. } => field(header.as_bytes()),
                        KeyValue::Token { digest, .. } => field(digest),
                        KeyValue::Missing(why) => field(why.to_string().as_bytes()),
                        KeyValue::Dynamic(_) | KeyValue::None => field(b"-"),
                    }
                }
            }
        }
        match &self.inbound_token {
            Some(InboundToken::Ready(s)) => field(s.expose()),
            Some(InboundToken::Missing(why)) => field(why.to_string().as_bytes()),
            None => field(b"-"),
        }
        match &self.tls {
            Some(tls) => field(tls.digest()),
            None => field(b"-"),
        }
        if let Some(why) = &self.tls_stale {
            field(why.to_string().as_bytes());
        }
        // What is stale shows in `/readyz` and the metrics: a change in it
        // is a change.
        for st in &self.stale {
            field(st.to_string().as_bytes());
        }
        let mut out = [0; 32];
        out.copy_from_slice(d.finish().as_ref());
        out
    }

    /// What `/metrics` reads from the snapshot: keys resting now, and the
    /// expiry of each token source's current token.
    pub(crate) fn live_metrics(&self) -> crate::metrics::Live {
        let now = crate::credentials::pool::now_ms();
        let mut live = crate::metrics::Live::default();
        for route in self.routes.iter_sorted() {
            let sets = route.key_sets();
            live.rested.push((
                route.name.to_string(),
                sets.iter().map(|(_, k)| k.rested(now)).sum(),
            ));
            for (label, set) in &sets {
                for (index, key) in set.keys.iter().enumerate() {
                    if let KeyValue::Token { cache, .. } = &key.value {
                        live.tokens.push(crate::metrics::TokenLive {
                            route: route.name.to_string(),
                            credential: key.location.to_string(),
                            source: cache.source().kind(),
                            expiry: cache.expiry(),
                        });
                    }
                    if matches!(key.value, KeyValue::Dynamic(_) | KeyValue::None) {
                        continue;
                    }
                    let stale = self.stale_of(&route.name, label, index);
                    live.credentials.push(CredentialLive {
                        route: route.name.to_string(),
                        credential: label.clone(),
                        location: key.location.to_string(),
                        fingerprint: key.value.fingerprint().map(|f| f.to_string()),
                        stale_seconds: stale.map_or(0.0, |st| st.since.elapsed().as_secs_f64()),
                    });
                }
            }
        }
        live
    }

    /// The upstream clients this snapshot uses.
    pub(crate) fn clients(&self) -> Vec<Client> {
        self.routes
            .iter_sorted()
            .iter()
            .map(|r| r.client.clone())
            .collect()
    }

    /// Every file this snapshot was built from: the config file, credential
    /// files, the inbound token, CA files. The reloader watches their
    /// directories.
    pub(crate) fn files(&self, source: &ConfigSource, env: &dyn Env) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let ConfigSource::File(path) = source {
            files.push(path.clone());
        }
        // `env_is_path`: a Vertex `env::NAME` holds the *path* of the
        // service-account JSON, a file like any other.
        let mut add = |loc: &Location, env_is_path: bool| match (loc, env_is_path) {
            (Location::Path(p), _) => files.push(p.clone()),
            (Location::PathFromEnv(var), _) | (Location::Env(var), true) => {
                if let Some(p) = env.var(var) {
                    files.push(PathBuf::from(p));
                }
            }
            (
                Location::Env(_)
                | Location::Dynamic(_)
                | Location::None
                | Location::Metadata
                | Location::Ambient(_),
                _,
            ) => {}
        };
        for route in self.routes.iter_sorted() {
            let tokens = route.spec.family == crate::providers::Family::Vertex;
            for (_, keys) in route.key_sets() {
                for key in keys.keys.iter() {
                    add(&key.location, tokens);
                }
            }
        }
        // AWS keys in files: the access key id's location is the key's;
        // the secret and session token are watched too.
        for rc in &self.config.routes {
            for loc in rc.aws.iter().flat_map(|a| a.auth.locations()) {
                add(loc, false);
            }
        }
        if let Some(loc) = &self.config.inbound_token {
            add(loc, false);
        }
        // The TLS listener's certificate chain and key.
        if let Some(t) = &self.config.tls {
            add(&t.cert, false);
            add(&t.key, false);
        }
        files.extend(self.config.ca_file.iter().cloned());
        files.extend(self.config.routes.iter().filter_map(|r| r.ca_file.clone()));
        files.sort();
        files.dedup();
        files
    }

    /// Problems that make `/readyz` fail.
    pub(crate) fn readiness_problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| p.fatal && p.required)
    }
}
