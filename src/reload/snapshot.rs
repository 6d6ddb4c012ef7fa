//! [`Snapshot`]: the immutable state every request runs on.
//!
//! design.md, "Hot reload": a snapshot is the validated config plus the route
//! table with every credential already read and prepared. It is built whole,
//! then swapped in (see [`super::Shared`]); a request loads it once and keeps
//! it to the end, so a reload never changes anything under a request in
//! flight. Building reads files (credentials, CA bundles) through the
//! reload's [`Files`] reader and never touches the network.
//!
//! A credential that cannot be read now but served a value in the previous
//! snapshot keeps that value ([`Stale`]): one bad file never blocks the rest
//! of a change, and never takes a working key away. The inbound token is the
//! exception: a deleted or empty token file revokes it (fail closed).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::time::Instant;

use crate::config::{Config, ConfigSource, RouteConfig};
use crate::credentials::pool::HealthRegistry;
use crate::credentials::resolve::Reader;
use crate::credentials::resolve::Unavailable;
use crate::credentials::{
    Fingerprint, HealthScope, KeySet, KeySpec, KeyValue, Location, Minting, Secret,
};
use crate::env::Env;
use crate::files::Files;
use crate::metrics::{CredentialLive, Metrics};
use crate::providers::Family;
use crate::providers::vertex::{DEFAULT_LOCATION, VertexTarget};
use crate::routes::{Route, RouteTable, Target, Targets};
use crate::tokens::TokenRegistry;
use crate::upstream::tls::TlsError;
use crate::upstream::{Client, Clients};

/// Long-lived state that outlives snapshots, so a reload keeps warm
/// connections, counters, the rest of rejected keys, and token caches.
#[derive(Debug)]
pub(crate) struct Registries {
    pub(crate) metrics: Arc<Metrics>,
    /// Upstream clients, kept while their trust settings stay the same.
    pub(crate) clients: Clients,
    /// Health of keys, kept while a key's value stays the same.
    pub(crate) health: HealthRegistry,
    /// Vertex token caches, kept while their source stays the same.
    pub(crate) tokens: TokenRegistry,
}

impl Registries {
    /// For the proxy: token caches mint (their tasks need the runtime).
    pub(crate) fn online() -> Self {
        Self::with_tokens(TokenRegistry::online())
    }

    /// For `sidekey check`: nothing is minted and nothing is spawned.
    pub(crate) fn offline() -> Self {
        Self::with_tokens(TokenRegistry::offline())
    }

    fn with_tokens(tokens: TokenRegistry) -> Self {
        Self {
            metrics: Arc::new(Metrics::default()),
            clients: Clients::default(),
            health: HealthRegistry::default(),
            tokens,
        }
    }
}

/// A snapshot could not be built (a CA file is bad). Credential problems are
/// not errors: they are [`Problem`]s, and the route answers 503.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    #[error("route {route}: {source}")]
    Tls {
        route: String,
        #[source]
        source: TlsError,
    },
}

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

    fn same_credential(&self, other: &Self) -> bool {
        self.route == other.route && self.label == other.label && self.index == other.index
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

/// What a snapshot is built from besides its config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inputs<'a> {
    pub(crate) env: &'a dyn Env,
    pub(crate) files: &'a dyn Files,
    pub(crate) reg: &'a Registries,
    /// The snapshot serving now: credentials that cannot be read keep
    /// their value from it.
    pub(crate) prev: Option<&'a Snapshot>,
}

impl Inputs<'_> {
    fn reader(&self) -> Reader<'_> {
        Reader {
            env: self.env,
            files: self.files,
        }
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
    /// Credentials that could not be read and have no last good value.
    pub(crate) problems: Vec<Problem>,
    /// Credentials serving their last good value.
    pub(crate) stale: Vec<Stale>,
    /// Digest of everything the snapshot was built from (config, credential
    /// values, trust roots): equal digests mean a reload changes nothing.
    pub(crate) digest: [u8; 32],
}

impl Snapshot {
    /// Reads every credential `config` names and builds the route table.
    ///
    /// # Errors
    ///
    /// [`BuildError`] when a route's TLS settings cannot be loaded.
    pub(crate) fn build(config: Config, inputs: &Inputs<'_>) -> Result<Self, BuildError> {
        let mut cx = Cx {
            inputs,
            problems: Vec::new(),
            stale: Vec::new(),
            now: Instant::now(),
        };
        let mut routes = Vec::with_capacity(config.routes.len());
        for rc in &config.routes {
            routes.push(cx.route(rc, &config)?);
        }
        let inbound_token = config
            .inbound_token
            .as_ref()
            .map(|loc| cx.inbound_token(loc));
        let mut snap = Self {
            routes: RouteTable::new(routes),
            inbound_token,
            problems: cx.problems,
            stale: cx.stale,
            config,
            digest: [0; 32],
        };
        snap.digest = snap.compute_digest();
        Ok(snap)
    }

    fn compute_digest(&self) -> [u8; 32] {
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
                        live.token_expiry.push((
                            route.name.to_string(),
                            key.location.to_string(),
                            cache.expiry(),
                        ));
                    }
                    if matches!(key.value, KeyValue::Dynamic(_) | KeyValue::None) {
                        continue;
                    }
                    let stale = self.stale.iter().find(|st| {
                        *st.route == *route.name && st.label == *label && st.index == index
                    });
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
            (Location::Env(_) | Location::Dynamic(_) | Location::None | Location::Metadata, _) => {}
        };
        for route in self.routes.iter_sorted() {
            let tokens = route.spec.family == crate::providers::Family::Vertex;
            for (_, keys) in route.key_sets() {
                for key in keys.keys.iter() {
                    add(&key.location, tokens);
                }
            }
        }
        if let Some(loc) = &self.config.inbound_token {
            add(loc, false);
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

/// The state of one snapshot build.
struct Cx<'a> {
    inputs: &'a Inputs<'a>,
    problems: Vec<Problem>,
    stale: Vec<Stale>,
    now: Instant,
}

impl Cx<'_> {
    fn route(&mut self, rc: &RouteConfig, config: &Config) -> Result<Route, BuildError> {
        let reg = self.inputs.reg;
        let cas: Vec<_> = config.ca_file.iter().chain(rc.ca_file.iter()).collect();
        let client = reg
            .clients
            .get(
                &cas,
                config.limits.connect_timeout,
                config.limits.upstream_streams_per_connection,
            )
            .map_err(|source| BuildError::Tls {
                route: rc.name.clone(),
                source,
            })?;
        let prefix = rc.spec.auth.prefix();
        let targets = match rc.spec.family {
            Family::ApiKey => match &rc.upstream {
                Some(upstream) => Targets::One(Target {
                    upstream: upstream.clone(),
                    keys: self.keys(rc, "key", &rc.key, prefix),
                }),
                // Config validation requires an upstream for this family.
                None => Targets::Unsupported("no upstream configured"),
            },
            Family::Azure => {
                let mut deployments = HashMap::with_capacity(rc.deployments.len());
                for d in &rc.deployments {
                    let label = format!("deployments.{}.key", d.name);
                    let keys = self.keys(rc, &label, &d.key, prefix);
                    deployments.insert(
                        Box::from(d.name.as_str()),
                        Target {
                            upstream: d.endpoint.clone(),
                            keys,
                        },
                    );
                }
                let default = rc.upstream.as_ref().map(|upstream| Target {
                    upstream: upstream.clone(),
                    keys: self.keys(rc, "key", &rc.key, prefix),
                });
                Targets::Azure {
                    deployments,
                    default,
                }
            }
            Family::Vertex => Targets::Vertex(self.vertex(rc, &client)),
            Family::Aws => Targets::Unsupported("AWS SigV4 signing is not implemented yet"),
        };
        let headers = rc
            .headers
            .iter()
            .map(|(name, spec)| {
                (
                    name.clone(),
                    self.keys(rc, &format!("headers.{name}"), spec, ""),
                )
            })
            .collect();
        Ok(Route {
            name: Arc::from(rc.name.as_str()),
            spec: rc.spec,
            targets,
            headers,
            models: rc
                .models
                .as_ref()
                .map(|m| m.iter().map(|s| Box::from(s.as_str())).collect()),
            client,
            metrics: reg.metrics.route(&rc.name),
        })
    }

    /// Reads one credential setting, keeps last good values, and records
    /// what could not be read.
    fn keys(&mut self, rc: &RouteConfig, label: &str, spec: &KeySpec, prefix: &str) -> KeySet {
        let scope = HealthScope {
            registry: &self.inputs.reg.health,
            route: &rc.name,
            label,
        };
        let mut set = KeySet::resolve(spec, prefix, self.inputs.reader(), &scope);
        self.keep_last_good(rc, label, &mut set);
        set
    }

    /// Each key of `set` that cannot be read now keeps the value it had in
    /// the previous snapshot (same route, setting and position), if it had
    /// one; the rest are [`Problem`]s.
    fn keep_last_good(&mut self, rc: &RouteConfig, label: &str, set: &mut KeySet) {
        let prev = self
            .inputs
            .prev
            .and_then(|p| Some((p, p.routes.get(&rc.name)?)))
            .and_then(|(p, route)| Some((p, route.key_set(label)?)));
        for (index, key) in set.keys.iter_mut().enumerate() {
            let KeyValue::Missing(why) = &key.value else {
                continue;
            };
            let Some((snap, prev_key)) = prev.and_then(|(p, s)| Some((p, s.keys.get(index)?)))
            else {
                continue;
            };
            let Some(fingerprint) = prev_key.value.fingerprint() else {
                continue;
            };
            // Content still being written is pending, not stale: it keeps
            // the previous value silently until the writer is done.
            if why.held {
                tracing::debug!(route = %rc.name, location = %key.location, "new content held: the file is being written");
                key.value = prev_key.value.clone();
                continue;
            }
            let mut stale = Stale {
                route: rc.name.clone(),
                label: label.to_owned(),
                index,
                location: key.location.to_string(),
                reason: why.reason.clone(),
                fingerprint,
                since: self.now,
            };
            stale.since = snap
                .stale
                .iter()
                .find(|s| s.same_credential(&stale))
                .map_or(self.now, |s| s.since);
            self.stale.push(stale);
            key.value = prev_key.value.clone();
        }
        note_missing(&mut self.problems, rc, label, set);
    }

    fn vertex(&mut self, rc: &RouteConfig, client: &Client) -> VertexTarget {
        let reg = self.inputs.reg;
        let settings = rc
            .vertex
            .clone()
            .unwrap_or_else(|| crate::config::VertexConfig {
                credentials: KeySpec::single(Location::None),
                project: None,
                location: None,
            });
        let label = "credentials";
        let scope = HealthScope {
            registry: &reg.health,
            route: &rc.name,
            label,
        };
        let metrics = reg.metrics.route(&rc.name);
        let minting = Minting {
            registry: &reg.tokens,
            client,
            metrics: &metrics,
        };
        let mut keys =
            KeySet::resolve_tokens(&settings.credentials, self.inputs.reader(), &scope, minting);
        self.keep_last_good(rc, label, &mut keys);
        // The project defaults to the first service account's.
        let project = settings.project.or_else(|| {
            keys.keys.iter().find_map(|k| match &k.value {
                KeyValue::Token { cache, .. } => cache.source().project_id().map(str::to_owned),
                _ => None,
            })
        });
        VertexTarget {
            keys,
            project,
            location: settings
                .location
                .unwrap_or_else(|| DEFAULT_LOCATION.to_owned()),
            upstream: rc.upstream.clone(),
        }
    }

    /// The inbound token fails closed: a token file that is missing, empty
    /// or unreadable revokes the token (requests get 401). Only new content
    /// held while it is being written keeps the previous token meanwhile.
    fn inbound_token(&mut self, loc: &Location) -> InboundToken {
        let why = match self.inputs.reader().read(loc) {
            Ok(s) => return InboundToken::Ready(s),
            Err(why) => why,
        };
        if why.held
            && let Some(prev) = self.inputs.prev
            && let Some(InboundToken::Ready(secret)) = &prev.inbound_token
            && let Ok(copy) = Secret::new(secret.expose().to_vec())
        {
            return InboundToken::Ready(copy);
        }
        self.problems.push(Problem {
            key: "inbound_token".to_owned(),
            fatal: true,
            required: true,
            reasons: vec![why.clone()],
        });
        InboundToken::Missing(why)
    }
}

/// Records the keys of `set` that could not be read.
fn note_missing(problems: &mut Vec<Problem>, rc: &RouteConfig, label: &str, set: &KeySet) {
    let reasons: Vec<_> = set.missing().cloned().collect();
    if !reasons.is_empty() {
        problems.push(Problem {
            key: format!("routes.{}.{label}", rc.name),
            fatal: set.all_missing(),
            required: rc.required,
            reasons,
        });
    }
}

/// The directories to watch for `files`: each file's parent, or, when that
/// does not exist yet, its nearest existing ancestor (so the directory's
/// creation is seen). Symlinks are not resolved: the kubelet swaps the
/// `..data` link inside the mounted directory, which is where events arrive.
pub(crate) fn watch_dirs(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = files
        .iter()
        // `sidekey.toml` (no directory part) lives in the working directory.
        .map(|f| {
            f.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
        })
        .filter_map(|dir| dir.ancestors().find(|a| a.is_dir()).map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_dirs_are_parents_or_their_nearest_existing_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::create_dir_all(base.join("secrets/openai")).unwrap();
        let files = [
            PathBuf::from("sidekey.toml"),
            base.join("secrets/openai/key"),
            base.join("secrets/openai/fallback"),
            base.join("secrets/not-yet/key"),
        ];
        let dirs = watch_dirs(&files);
        assert_eq!(
            dirs,
            [
                base.join("secrets"),
                base.join("secrets/openai"),
                PathBuf::from(".")
            ]
        );
    }
}
