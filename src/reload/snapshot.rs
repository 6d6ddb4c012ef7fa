//! [`Snapshot`]: the immutable state every request runs on.
//!
//! design.md, "Hot reload": a snapshot is the validated config plus the route
//! table with every credential already read and prepared. It is built whole,
//! then swapped in (see [`super::Shared`]); a request loads it once and keeps
//! it to the end, so a reload never changes anything under a request in
//! flight. Building reads files (credentials, CA bundles) and never touches
//! the network.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::admin::metrics::Metrics;
use crate::config::{Config, RouteConfig};
use crate::credentials::resolve::{self, Unavailable};
use crate::credentials::{KeySet, Location, Secret};
use crate::env::Env;
use crate::providers::Family;
use crate::routes::{Route, RouteTable, Target, Targets};
use crate::upstream::Clients;
use crate::upstream::tls::TlsError;

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
        metrics: &Metrics,
        clients: &Clients,
    ) -> Result<Self, BuildError> {
        let mut problems = Vec::new();
        let mut routes = Vec::with_capacity(config.routes.len());
        for rc in &config.routes {
            routes.push(build_route(
                rc,
                &config,
                env,
                metrics,
                clients,
                &mut problems,
            )?);
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
        Ok(Self {
            routes: RouteTable::new(routes),
            inbound_token,
            problems,
            config,
        })
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
    metrics: &Metrics,
    clients: &Clients,
    problems: &mut Vec<Problem>,
) -> Result<Route, BuildError> {
    let cas: Vec<_> = config.ca_file.iter().chain(rc.ca_file.iter()).collect();
    let client = clients
        .get(&cas, config.limits.connect_timeout)
        .map_err(|source| BuildError::Tls {
            route: rc.name.clone(),
            source,
        })?;
    let prefix = rc.spec.auth.prefix();
    let mut check = |key: String, set: KeySet| {
        let reasons: Vec<_> = set.missing().cloned().collect();
        if !reasons.is_empty() {
            problems.push(Problem {
                key: format!("routes.{}.{key}", rc.name),
                fatal: set.all_missing(),
                required: rc.required,
                reasons,
            });
        }
        set
    };
    let targets = match rc.spec.family {
        Family::ApiKey => match &rc.upstream {
            Some(upstream) => Targets::One(Target {
                upstream: upstream.clone(),
                keys: check("key".to_owned(), KeySet::resolve(&rc.key, prefix, env)),
            }),
            // Config validation requires an upstream for this family.
            None => Targets::Unsupported("no upstream configured"),
        },
        Family::Azure => {
            let mut deployments = HashMap::with_capacity(rc.deployments.len());
            for d in &rc.deployments {
                let keys = check(
                    format!("deployments.{}.key", d.name),
                    KeySet::resolve(&d.key, prefix, env),
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
                keys: check("key".to_owned(), KeySet::resolve(&rc.key, prefix, env)),
            });
            Targets::Azure {
                deployments,
                default,
            }
        }
        Family::Vertex => {
            Targets::Unsupported("Vertex AI OAuth2 token minting is not implemented yet")
        }
        Family::Aws => Targets::Unsupported("AWS SigV4 signing is not implemented yet"),
    };
    let headers = rc
        .headers
        .iter()
        .map(|(name, spec)| {
            let set = check(format!("headers.{name}"), KeySet::resolve(spec, "", env));
            (name.clone(), set)
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
        metrics: metrics.route(&rc.name),
    })
}
