//! Building a [`Snapshot`]: every credential read, every route prepared.
//!
//! design.md, "Hot reload": building reads files (credentials, CA bundles)
//! through the reload's [`Files`] reader and never touches the network. A
//! credential that cannot be read now but served a value in the previous
//! snapshot keeps that value and is reported [`Stale`]: one bad file never
//! blocks the rest of a change, and never takes a working key away. New
//! content still being written keeps the previous value silently. The
//! inbound token is the exception: a deleted or empty token file revokes it
//! (fail closed).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;

use super::Registries;
use super::snapshot::{InboundToken, Problem, Snapshot, Stale};
use crate::config::{AwsAuth, Config, RouteConfig, TlsListen};
use crate::credentials::resolve::{Reader, Unavailable};
use crate::credentials::{
    AwsSource, EntraIdentity, HealthScope, KeySet, KeySpec, KeyValue, Location, Minting, Secret,
};
use crate::env::Env;
use crate::files::Files;
use crate::providers::aws::{self, AwsTarget, SigV4};
use crate::providers::vertex::{DEFAULT_LOCATION, VertexTarget};
use crate::providers::{Auth, Family};
use crate::routes::{Route, RouteTable, Target, Targets};
use crate::tls_listener::{ServerTls, TlsListenerError};
use crate::upstream::Client;
use crate::upstream::tls::TlsError;

/// The TLS listener's pair cannot be loaded (`tls_cert`, `tls_key`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsPairError {
    #[error("{0}")]
    Read(#[source] Unavailable),
    #[error(transparent)]
    Bad(#[from] TlsListenerError),
}

/// A snapshot could not be built (a CA file is bad, or the TLS listener
/// has no usable certificate and key and no last good pair). Credential problems are
/// not errors: they are [`Problem`]s, and the route answers 503.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    #[error("route {route}: {source}")]
    Tls {
        route: String,
        #[source]
        source: TlsError,
    },
    #[error("TLS listener: {0}")]
    TlsListener(#[source] Arc<TlsPairError>),
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
        let (tls, tls_stale) = match &config.tls {
            None => (None, None),
            Some(t) => cx.tls_listener(t)?,
        };
        let mut snap = Self {
            routes: RouteTable::new(routes),
            inbound_token,
            tls,
            tls_stale,
            problems: cx.problems,
            stale: cx.stale,
            config,
            digest: [0; 32],
        };
        snap.digest = snap.compute_digest();
        Ok(snap)
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
                    let keys = match &d.entra {
                        Some(identity) => self.entra(rc, &label, identity, &client),
                        None => self.keys(rc, &label, &d.key, prefix),
                    };
                    deployments.insert(
                        Box::from(d.name.as_str()),
                        Target {
                            upstream: d.endpoint.clone(),
                            keys,
                        },
                    );
                }
                let identity = rc.entra.as_ref().and_then(|e| e.identity.as_ref());
                let default = rc.upstream.as_ref().map(|upstream| Target {
                    upstream: upstream.clone(),
                    keys: match identity {
                        Some(identity) => self.entra(rc, "key", identity, &client),
                        None => self.keys(rc, "key", &rc.key, prefix),
                    },
                });
                Targets::Azure {
                    deployments,
                    default,
                }
            }
            Family::Vertex => Targets::Vertex(self.vertex(rc, &client)),
            Family::Aws => self.aws(rc, &client),
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
            self.stale.push(Stale {
                route: rc.name.clone(),
                label: label.to_owned(),
                index,
                location: key.location.to_string(),
                reason: why.reason.clone(),
                fingerprint,
                // Stale since the first build that could not read it.
                since: snap
                    .stale_of(&rc.name, label, index)
                    .map_or(self.now, |s| s.since),
            });
            key.value = prev_key.value.clone();
        }
        note_missing(&mut self.problems, rc, label, set);
    }

    /// Entra ID tokens for an azure route or deployment.
    fn entra(
        &mut self,
        rc: &RouteConfig,
        label: &str,
        identity: &EntraIdentity,
        client: &Client,
    ) -> KeySet {
        let token_scope = rc
            .entra
            .as_ref()
            .map_or(crate::tokens::entra::DEFAULT_SCOPE, |e| e.scope.as_str());
        self.minted(rc, label, client, |reader, scope, minting| {
            KeySet::resolve_entra(identity, token_scope, reader, scope, minting)
        })
    }

    /// A setting of token sources (labelled `label`) that mint through
    /// `client`, resolved by `resolve`; last good values kept.
    fn minted(
        &mut self,
        rc: &RouteConfig,
        label: &str,
        client: &Client,
        resolve: impl FnOnce(Reader<'_>, &HealthScope<'_>, Minting<'_>) -> KeySet,
    ) -> KeySet {
        let reg = self.inputs.reg;
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
        let mut keys = resolve(self.inputs.reader(), &scope, minting);
        self.keep_last_good(rc, label, &mut keys);
        keys
    }

    fn vertex(&mut self, rc: &RouteConfig, client: &Client) -> VertexTarget {
        let settings = rc
            .vertex
            .clone()
            .unwrap_or_else(|| crate::config::VertexConfig {
                credentials: KeySpec::single(Location::None),
                project: None,
                location: None,
            });
        let keys = self.minted(rc, "credentials", client, |reader, scope, minting| {
            KeySet::resolve_tokens(&settings.credentials, reader, scope, minting)
        });
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

    /// A Bedrock or SageMaker route: its region and host, and its keys (a
    /// token source that mints AWS keys, or a Bedrock API key).
    fn aws(&mut self, rc: &RouteConfig, client: &Client) -> Targets {
        let Some(settings) = &rc.aws else {
            return Targets::Unsupported("no AWS settings");
        };
        let service = match rc.spec.auth {
            Auth::SigV4 { service } => service,
            _ => "bedrock",
        };
        let Some(region) = self.region(rc, settings.region.as_deref()) else {
            return Targets::Unsupported(
                "no AWS region: set `region` on the route, or AWS_REGION in the environment",
            );
        };
        let upstream = match &rc.upstream {
            Some(u) => u.clone(),
            None => match aws::default_upstream(service, &region).parse() {
                Ok(u) => u,
                Err(_) => return Targets::Unsupported("the region does not make a host name"),
            },
        };
        if settings.auth == AwsAuth::ApiKey {
            return Targets::Aws(AwsTarget {
                upstream,
                keys: self.keys(rc, "key", &rc.key, "Bearer "),
                signer: None,
            });
        }
        let source = match &settings.auth {
            AwsAuth::Keys {
                access_key_id,
                secret_access_key,
                session_token,
            } => AwsSource::Keys {
                access_key_id,
                secret_access_key,
                session_token: session_token.as_ref(),
            },
            AwsAuth::Chain | AwsAuth::ApiKey => AwsSource::Chain { region: &region },
        };
        let keys = self.minted(rc, "credentials", client, |reader, scope, minting| {
            KeySet::resolve_aws(source, reader, scope, minting)
        });
        Targets::Aws(AwsTarget {
            upstream,
            keys,
            signer: Some(SigV4 {
                region: region.into(),
                service,
            }),
        })
    }

    /// The route's `region`, else `AWS_REGION`, else `AWS_DEFAULT_REGION`;
    /// a missing or malformed one is a problem that fails `/readyz`.
    fn region(&mut self, rc: &RouteConfig, configured: Option<&str>) -> Option<String> {
        let env = self.inputs.env;
        let region = configured
            .map(str::to_owned)
            .or_else(|| env.var("AWS_REGION"))
            .or_else(|| env.var("AWS_DEFAULT_REGION"))
            .filter(|r| {
                !r.is_empty()
                    && r.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        if region.is_none() {
            self.problems.push(Problem {
                key: format!("routes.{}.region", rc.name),
                fatal: true,
                required: rc.required,
                reasons: vec![Unavailable::reason(
                    &Location::Ambient(crate::credentials::AWS_CHAIN),
                    "no AWS region: set `region` on the route, or AWS_REGION (lowercase letters, digits, `-`)",
                )],
            });
        }
        region
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

impl Cx<'_> {
    /// The TLS listener's pair. One that cannot be loaded keeps the last
    /// good pair (silently while a file is being written, else reported as
    /// a rejection); with no last good pair, the build fails.
    fn tls_listener(
        &self,
        t: &TlsListen,
    ) -> Result<(Option<ServerTls>, Option<Arc<TlsPairError>>), BuildError> {
        let reader = self.inputs.reader();
        let loaded = reader
            .read_bytes(&t.cert)
            .and_then(|cert| Ok((cert, reader.read_bytes(&t.key)?)))
            .map_err(TlsPairError::Read)
            .and_then(|(cert, key)| Ok(ServerTls::new(&cert, &key)?));
        let why = match loaded {
            Ok(tls) => return Ok((Some(tls), None)),
            Err(why) => why,
        };
        let held = matches!(&why, TlsPairError::Read(u) if u.held);
        match self.inputs.prev.and_then(|p| p.tls.clone()) {
            Some(prev) if held => Ok((Some(prev), None)),
            Some(prev) => Ok((Some(prev), Some(Arc::new(why)))),
            None => Err(BuildError::TlsListener(Arc::new(why))),
        }
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
