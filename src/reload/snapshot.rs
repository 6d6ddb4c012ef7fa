//! [`Snapshot`]: the immutable state every request runs on.
//!
//! design.md, "Hot reload": a snapshot is the validated config plus the route
//! table with every credential already read and prepared. It is built whole,
//! then swapped in (see [`super::Shared`]); a request loads it once and keeps
//! it to the end, so a reload never changes anything under a request in
//! flight. Building reads files (credentials, CA bundles) and never touches
//! the network.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::admin::metrics::Metrics;
use crate::config::{Config, ConfigSource, RouteConfig};
use crate::credentials::pool::HealthRegistry;
use crate::credentials::resolve::{self, Unavailable};
use crate::credentials::{HealthScope, KeySet, KeySpec, KeyValue, Location, Secret};
use crate::env::Env;
use crate::providers::Family;
use crate::providers::vertex::{DEFAULT_LOCATION, VertexTarget};
use crate::routes::{Route, RouteTable, Target, Targets};
use crate::tokens::{Source, TokenRegistry};
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
    /// Credentials that could not be read.
    pub(crate) problems: Vec<Problem>,
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
    pub(crate) fn build(
        config: Config,
        env: &dyn Env,
        reg: &Registries,
    ) -> Result<Self, BuildError> {
        let mut problems = Vec::new();
        let mut routes = Vec::with_capacity(config.routes.len());
        for rc in &config.routes {
            routes.push(build_route(rc, &config, env, reg, &mut problems)?);
        }
        let inbound_token = config
            .inbound_token
            .as_ref()
            .map(|loc| match read_token(loc, env) {
                Ok(s) => InboundToken::Ready(s),
                Err(why) => {
                    problems.push(Problem {
                        key: "inbound_token".to_owned(),
                        fatal: true,
                        required: true,
                        reasons: vec![why.clone()],
                    });
                    InboundToken::Missing(why)
                }
            });
        let mut snap = Self {
            routes: RouteTable::new(routes),
            inbound_token,
            problems,
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
        let mut out = [0; 32];
        out.copy_from_slice(d.finish().as_ref());
        out
    }

    /// The credential problems of `self` that `current` does not have, as
    /// one message; `None` when there are none. A reload that would lose a
    /// working key is rejected.
    pub(crate) fn new_problems(&self, current: &Self) -> Option<String> {
        let new: Vec<String> = self
            .problems
            .iter()
            .filter(|p| !current.problems.contains(p))
            .map(ToString::to_string)
            .collect();
        (!new.is_empty()).then(|| format!("credential unavailable: {}", new.join("; ")))
    }

    /// What `/metrics` reads from the snapshot: keys resting now, and the
    /// expiry of each token source's current token.
    pub(crate) fn live_metrics(&self) -> crate::admin::metrics::Live {
        let now = crate::credentials::pool::now_ms();
        let mut live = crate::admin::metrics::Live::default();
        for route in self.routes.iter_sorted() {
            let sets = route.key_sets();
            live.rested.push((
                route.name.to_string(),
                sets.iter().map(|(_, k)| k.rested(now)).sum(),
            ));
            for (_, set) in &sets {
                for key in set.keys.iter() {
                    if let KeyValue::Token { cache, .. } = &key.value {
                        live.token_expiry.push((
                            route.name.to_string(),
                            key.location.to_string(),
                            cache.expiry(),
                        ));
                    }
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

fn read_token(loc: &Location, env: &dyn Env) -> Result<Secret, Unavailable> {
    resolve::read(loc, env)
}

fn build_route(
    rc: &RouteConfig,
    config: &Config,
    env: &dyn Env,
    reg: &Registries,
    problems: &mut Vec<Problem>,
) -> Result<Route, BuildError> {
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
    // Reads one credential setting and records what could not be read.
    let resolve = |label: String, spec: &KeySpec, prefix: &str, problems: &mut Vec<Problem>| {
        let scope = HealthScope {
            registry: &reg.health,
            route: &rc.name,
            label: &label,
        };
        let set = KeySet::resolve(spec, prefix, env, &scope);
        note_missing(problems, rc, &label, &set);
        set
    };
    let targets = match rc.spec.family {
        Family::ApiKey => match &rc.upstream {
            Some(upstream) => Targets::One(Target {
                upstream: upstream.clone(),
                keys: resolve("key".to_owned(), &rc.key, prefix, problems),
            }),
            // Config validation requires an upstream for this family.
            None => Targets::Unsupported("no upstream configured"),
        },
        Family::Azure => {
            let mut deployments = HashMap::with_capacity(rc.deployments.len());
            for d in &rc.deployments {
                let keys = resolve(
                    format!("deployments.{}.key", d.name),
                    &d.key,
                    prefix,
                    problems,
                );
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
                keys: resolve("key".to_owned(), &rc.key, prefix, problems),
            });
            Targets::Azure {
                deployments,
                default,
            }
        }
        Family::Vertex => Targets::Vertex(vertex_target(rc, env, reg, &client, problems)),
        Family::Aws => Targets::Unsupported("AWS SigV4 signing is not implemented yet"),
    };
    let headers = rc
        .headers
        .iter()
        .map(|(name, spec)| {
            (
                name.clone(),
                resolve(format!("headers.{name}"), spec, "", problems),
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

fn vertex_target(
    rc: &RouteConfig,
    env: &dyn Env,
    reg: &Registries,
    client: &Client,
    problems: &mut Vec<Problem>,
) -> VertexTarget {
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
    let keys = KeySet::resolve_tokens(
        &settings.credentials,
        env,
        &scope,
        &reg.tokens,
        client,
        &metrics,
    );
    note_missing(problems, rc, label, &keys);
    // The project defaults to the first service account's.
    let project = settings.project.or_else(|| {
        keys.keys.iter().find_map(|k| match &k.value {
            KeyValue::Token { cache, .. } => match cache.source() {
                Source::Account(sa) => sa.project_id.clone(),
                Source::Metadata { .. } => None,
            },
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

/// What changed between two snapshots, for the reload log line: routes added
/// and removed, keys whose fingerprint changed, settings that changed.
pub(crate) fn describe_changes(old: &Snapshot, new: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    fn routes(s: &Snapshot) -> BTreeMap<&str, &RouteConfig> {
        s.config
            .routes
            .iter()
            .map(|r| (r.name.as_str(), r))
            .collect()
    }
    let (before, after) = (routes(old), routes(new));
    for name in after.keys().filter(|n| !before.contains_key(*n)) {
        out.push(format!("route {name} added"));
    }
    for name in before.keys().filter(|n| !after.contains_key(*n)) {
        out.push(format!("route {name} removed"));
    }
    for (name, cfg) in &after {
        if let Some(prev) = before.get(name)
            && prev != cfg
        {
            out.push(format!("route {name} settings changed"));
        }
    }
    for route in new.routes.iter_sorted() {
        let Some(prev) = old.routes.get(&route.name) else {
            continue;
        };
        let prev_keys: BTreeMap<String, &KeySet> = prev.key_sets().into_iter().collect();
        for (label, keys) in route.key_sets() {
            let Some(prev_keys) = prev_keys.get(&label) else {
                continue;
            };
            for (i, key) in keys.keys.iter().enumerate() {
                let was = prev_keys.keys.get(i).map(|k| fingerprint_of(&k.value));
                let now = fingerprint_of(&key.value);
                if was.as_deref() != Some(now.as_str()) {
                    let was = was.unwrap_or_else(|| "none".to_owned());
                    out.push(format!(
                        "routes.{}.{label}[{i}] {} {was} -> {now}",
                        route.name, key.location
                    ));
                }
            }
        }
    }
    if out.is_empty() {
        out.push("settings changed".to_owned());
    }
    out
}

fn fingerprint_of(value: &KeyValue) -> String {
    match value {
        KeyValue::Static { fingerprint, .. } | KeyValue::Token { fingerprint, .. } => {
            fingerprint.to_string()
        }
        KeyValue::Dynamic(_) => "dynamic".to_owned(),
        KeyValue::None => "none".to_owned(),
        KeyValue::Missing(_) => "missing".to_owned(),
    }
}

/// Settings read once at start: a changed value only takes effect after a
/// restart, which the reloader says in a log line.
pub(crate) fn restart_required(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.listen != new.listen {
        out.push("listen");
    }
    if old.admin_listen != new.admin_listen {
        out.push("admin_listen");
    }
    if old.limits.header_read_timeout != new.limits.header_read_timeout {
        out.push("limits.header_read_timeout");
    }
    out
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
