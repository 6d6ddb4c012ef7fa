//! `sidekey.toml`: loading, validation and the validated [`Config`].
//!
//! design.md, "Configuration". [`raw`] mirrors the file with serde; this module
//! turns it into a [`Config`] whose values are all checked (addresses parse,
//! provider types exist, locations are well formed, type-specific keys sit on
//! the right type) and reports the first problem with file, line, column and
//! key. It never reads a secret: credentials are resolved when a snapshot is
//! built (`reload::snapshot`). [`defaults`] holds the built-in config.

pub(crate) mod defaults;
pub(crate) mod raw;
pub(crate) mod units;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use crate::credentials::{KeySpec, Location, Policy};
use crate::env::Env;
use crate::files::{FileError, Files, Kind};
use crate::providers::{Family, ProviderType, Spec};
use crate::routes::UpstreamBase;
use raw::{ConfigToml, KeyToml, RouteToml};

/// The proxy port when the config names none: loopback only.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// The admin port when the config names none: reachable by kubelet probes.
pub(crate) const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9901";

/// Settings given on the command line that win over the config file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--listen`: the proxy address.
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`: the admin address.
    pub admin_listen: Option<SocketAddr>,
}

/// Where the config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A `sidekey.toml` on disk (watched for changes).
    File(PathBuf),
    /// The built-in default: one route per provider type, keys from the environment.
    BuiltIn,
}

impl ConfigSource {
    /// How errors name this source.
    #[must_use]
    pub fn display_name(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::BuiltIn => "<built-in config>".to_owned(),
        }
    }
}

/// A config problem, precise enough to fix without reading the source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, not a regular file, over
    /// 4 MiB, or being written).
    #[error("{file}: cannot read config: {source}")]
    Read {
        /// The config file.
        file: String,
        /// Why.
        source: FileError,
    },
    /// The file is empty: most likely caught half-written (truncated,
    /// not yet filled), so it is not applied.
    #[error("{file}: the config file is empty")]
    Empty {
        /// The config file.
        file: String,
    },
    /// The file was read but is not a valid config.
    #[error("{file}:{line}:{column}: {}{message}", key_prefix(.key))]
    Invalid {
        /// The config file.
        file: String,
        /// 1-based line of the offending value.
        line: usize,
        /// 1-based column of the offending value.
        column: usize,
        /// Dotted path of the key (`routes.openai.type`), when known.
        key: Option<String>,
        /// What is wrong and what was expected.
        message: String,
    },
}

/// `message` with every double-quoted value replaced by `"…"`: serde quotes
/// the offending value (which may be a key pasted in the wrong place) in
/// double quotes, and names keys in backticks, which stay.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    let mut inside = true;
    for part in parts {
        if inside {
            out.push_str("\"…\"");
        } else {
            out.push_str(part);
        }
        inside = !inside;
    }
    out
}

/// The rule behind `inbound_token`: a proxy socket beyond loopback needs a
/// token unless `allow_unauthenticated` says otherwise. Checked when a config
/// is parsed and, against the socket actually bound, on every reload.
pub(crate) fn open_to_anyone(
    listen: SocketAddr,
    has_token: bool,
    allow_unauthenticated: bool,
) -> bool {
    !listen.ip().is_loopback() && !has_token && !allow_unauthenticated
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default()
}

/// Timeouts and sizes (`[limits]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Request bodies up to this size are kept for a fallback retry.
    pub(crate) max_replay_body: u64,
    pub(crate) connect_timeout: Duration,
    /// Wait for the upstream's response head, and longest silence between two
    /// response chunks: a stream is not cut while bytes flow.
    pub(crate) request_timeout: Duration,
    pub(crate) header_read_timeout: Duration,
    /// Requests in flight on one upstream connection before another is
    /// opened (HTTP/2 servers cap concurrent streams per connection).
    pub(crate) upstream_streams_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_replay_body: 32 << 20,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(600),
            header_read_timeout: Duration::from_secs(10),
            upstream_streams_per_connection: 100,
        }
    }
}

/// `[shutdown]`: what happens after SIGTERM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShutdownSettings {
    /// Keep accepting for this long after SIGTERM (classic sidecars whose app
    /// is still sending); `/readyz` already answers 503.
    pub(crate) drain_delay: Duration,
    /// Longest wait for requests in flight before exiting anyway.
    pub(crate) grace_period: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_delay: Duration::ZERO,
            grace_period: Duration::from_secs(25),
        }
    }
}

/// `[reload]`: how changes are picked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReloadSettings {
    /// Re-read everything this often even without a file event.
    pub(crate) interval: Duration,
    /// Wait until watched directories have been quiet this long.
    pub(crate) debounce: Duration,
    /// A file changed in place with no write event to tell when its writer
    /// finished is applied once it has not been modified for this long
    /// (the stability rule, `reload::gate`).
    pub(crate) settle: Duration,
    /// Watch the files' directories for changes (off: SIGHUP and the
    /// periodic re-read only, for file systems that deliver no events).
    pub(crate) watch: bool,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            debounce: Duration::from_millis(100),
            settle: Duration::from_secs(2),
            watch: true,
        }
    }
}

/// `[keys]`: how rejected and rate-limited keys are rested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeysSettings {
    /// How long a rejected key is left out before one request probes it.
    pub(crate) rest: Duration,
    /// How long a pool key that answered 429 is left out when the answer
    /// carries no `Retry-After`.
    pub(crate) rate_limit_rest: Duration,
}

impl Default for KeysSettings {
    fn default() -> Self {
        Self {
            rest: Duration::from_secs(60),
            rate_limit_rest: Duration::from_secs(30),
        }
    }
}

/// One Azure deployment: its own endpoint and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeploymentConfig {
    pub(crate) name: String,
    pub(crate) endpoint: UpstreamBase,
    pub(crate) key: KeySpec,
}

/// Vertex settings (`credentials`, `project`, `location`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VertexConfig {
    pub(crate) credentials: KeySpec,
    pub(crate) project: Option<String>,
    pub(crate) location: Option<String>,
}

/// A validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteConfig {
    /// The first path segment that selects this route.
    pub(crate) name: String,
    pub(crate) spec: &'static Spec,
    /// The upstream base; `None` only for azure (deployments carry their own)
    /// and for vertex/AWS routes, whose hosts derive from other settings.
    pub(crate) upstream: Option<UpstreamBase>,
    pub(crate) key: KeySpec,
    /// Extra credential headers, each read from a location.
    pub(crate) headers: Vec<(HeaderName, KeySpec)>,
    pub(crate) models: Option<Vec<String>>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) deployments: Vec<DeploymentConfig>,
    pub(crate) vertex: Option<VertexConfig>,
    pub(crate) region: Option<String>,
    /// Whether a missing credential makes `/readyz` fail. False for the
    /// built-in default's routes, which exist for convenience.
    pub(crate) required: bool,
}

/// A validated `sidekey.toml`. Holds locations, never secret values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) source: ConfigSource,
    pub(crate) listen: SocketAddr,
    pub(crate) admin_listen: SocketAddr,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) inbound_token: Option<Location>,
    /// `allow_unauthenticated`: a non-loopback `listen` without a token.
    pub(crate) allow_unauthenticated: bool,
    pub(crate) limits: Limits,
    pub(crate) shutdown: ShutdownSettings,
    pub(crate) reload: ReloadSettings,
    pub(crate) keys: KeysSettings,
    pub(crate) routes: Vec<RouteConfig>,
}

impl Config {
    /// Loads and validates the config from `source`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming file, line, key and the problem.
    pub(crate) fn load(
        source: &ConfigSource,
        env: &dyn Env,
        files: &dyn Files,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        match source {
            ConfigSource::File(path) => {
                let read_error = |source| ConfigError::Read {
                    file: path.display().to_string(),
                    source,
                };
                let contents = files.read(path, Kind::Config).map_err(read_error)?;
                let text = std::str::from_utf8(&contents.bytes)
                    .map_err(|_| read_error(FileError::Io("is not UTF-8 text".to_owned())))?;
                if text.trim().is_empty() {
                    return Err(ConfigError::Empty {
                        file: path.display().to_string(),
                    });
                }
                Self::parse(text, source.clone(), path.parent(), true, overrides)
            }
            ConfigSource::BuiltIn => Self::parse(
                &defaults::builtin_toml(env),
                ConfigSource::BuiltIn,
                None,
                false,
                overrides,
            ),
        }
    }

    /// Parses and validates config text. `base` resolves relative paths;
    /// `required` marks whether routes' credentials count for readiness.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] for the first problem found.
    pub(crate) fn parse(
        text: &str,
        source: ConfigSource,
        base: Option<&Path>,
        required: bool,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let cx = Cx {
            text,
            file: source.display_name(),
            base: base.map(Path::to_path_buf),
        };
        let raw: ConfigToml = toml::from_str(text).map_err(|e| {
            // `e.message()` without the source snippet that `Display` adds:
            // the offending line may hold a secret pasted in the wrong place.
            // Nor a quoted value ("invalid type: string \"sk-...\"").
            cx.error(
                e.span().unwrap_or(0..0),
                None,
                redact_quoted(e.message().trim()),
            )
        })?;
        cx.config(raw, source, required, overrides)
    }
}

/// Validation context: the source text (for line numbers) and paths.
struct Cx<'a> {
    text: &'a str,
    file: String,
    base: Option<PathBuf>,
}

impl Cx<'_> {
    fn error(
        &self,
        span: Range<usize>,
        key: Option<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let upto = self.text.get(..span.start).unwrap_or(self.text);
        let line = upto.matches('\n').count() + 1;
        let column = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError::Invalid {
            file: self.file.clone(),
            line,
            column,
            key,
            message: message.into(),
        }
    }

    fn at<T>(&self, v: &Spanned<T>, key: &str, message: impl Into<String>) -> ConfigError {
        self.error(v.span(), Some(key.to_owned()), message)
    }

    fn path(&self, v: &Spanned<String>) -> PathBuf {
        let p = PathBuf::from(v.get_ref());
        match &self.base {
            Some(base) if p.is_relative() => base.join(p),
            _ => p,
        }
    }

    fn duration(
        &self,
        v: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        v.map_or(Ok(default), |v| {
            units::parse_duration(v.get_ref()).map_err(|m| self.at(v, key, m))
        })
    }

    fn addr(
        &self,
        v: Option<&Spanned<String>>,
        key: &str,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        match v {
            None => default
                .parse()
                .map_err(|_| self.error(0..0, Some(key.to_owned()), "invalid built-in address")),
            Some(v) => v.get_ref().parse().map_err(|_| {
                self.at(
                    v,
                    key,
                    format!(
                        "`{}` is not an address; expected IP:PORT such as \"127.0.0.1:8787\"",
                        v.get_ref()
                    ),
                )
            }),
        }
    }

    fn location(
        &self,
        text: &str,
        span: &Spanned<impl Sized>,
        key: &str,
    ) -> Result<Location, ConfigError> {
        text.parse::<Location>()
            .map(|l| l.relative_to(self.base.as_deref()))
            .map_err(|e| self.at(span, key, format!("credential location {e}")))
    }

    fn key_spec(
        &self,
        v: &Spanned<KeyToml>,
        key: &str,
        allow_metadata: bool,
    ) -> Result<KeySpec, ConfigError> {
        let (policy, texts): (Policy, Vec<&String>) = match v.get_ref() {
            KeyToml::One(s) => (Policy::Single, vec![s]),
            KeyToml::Fallback { default, fallback } => (Policy::Fallback, vec![default, fallback]),
            KeyToml::Pool(p) => (Policy::Pool, p.iter().collect()),
        };
        let locations = texts
            .into_iter()
            .map(|t| self.location(t, v, key))
            .collect::<Result<Vec<_>, _>>()?;
        if locations.len() > 1 && locations.contains(&Location::None) {
            return Err(self.at(v, key, "`none` cannot be combined with other locations"));
        }
        if !allow_metadata && locations.contains(&Location::Metadata) {
            return Err(self.at(
                v,
                key,
                "`metadata` is only valid as `credentials` of a vertex route",
            ));
        }
        Ok(KeySpec { policy, locations })
    }

    fn config(
        &self,
        raw: ConfigToml,
        source: ConfigSource,
        required: bool,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let listen = match overrides.listen {
            Some(addr) => addr,
            None => self.addr(raw.listen.as_ref(), "listen", DEFAULT_LISTEN)?,
        };
        let admin_listen = match overrides.admin_listen {
            Some(addr) => addr,
            None => self.addr(
                raw.admin_listen.as_ref(),
                "admin_listen",
                DEFAULT_ADMIN_LISTEN,
            )?,
        };
        if listen == admin_listen && listen.port() != 0 {
            let span = raw.admin_listen.as_ref().map_or(0..0, Spanned::span);
            return Err(self.error(
                span,
                Some("admin_listen".into()),
                "must differ from `listen`",
            ));
        }

        let inbound_token = match &raw.inbound_token {
            None => None,
            Some(v) => {
                let loc = self.location(v.get_ref(), v, "inbound_token")?;
                if matches!(
                    loc,
                    Location::None | Location::Dynamic(_) | Location::Metadata
                ) {
                    return Err(self.at(
                        v,
                        "inbound_token",
                        "must be env::, path:: or path_from_env::",
                    ));
                }
                Some(loc)
            }
        };
        if open_to_anyone(listen, inbound_token.is_some(), raw.allow_unauthenticated) {
            let span = raw.listen.as_ref().map_or(0..0, Spanned::span);
            return Err(self.error(
                span,
                Some("listen".into()),
                format!(
                    "{listen} is not a loopback address: set `inbound_token` so only clients holding \
                     it can use your keys, or `allow_unauthenticated = true` to accept anyone who can connect"
                ),
            ));
        }

        let d = Limits::default();
        let l = &raw.limits;
        let limits = Limits {
            max_replay_body: match &l.max_replay_body {
                None => d.max_replay_body,
                Some(v) => units::parse_size(v.get_ref())
                    .map_err(|m| self.at(v, "limits.max_replay_body", m))?,
            },
            connect_timeout: self.duration(
                l.connect_timeout.as_ref(),
                "limits.connect_timeout",
                d.connect_timeout,
            )?,
            request_timeout: self.duration(
                l.request_timeout.as_ref(),
                "limits.request_timeout",
                d.request_timeout,
            )?,
            header_read_timeout: self.duration(
                l.header_read_timeout.as_ref(),
                "limits.header_read_timeout",
                d.header_read_timeout,
            )?,
            upstream_streams_per_connection: match &l.upstream_streams_per_connection {
                None => d.upstream_streams_per_connection,
                Some(v) if v.get_ref().0 == 0 => {
                    return Err(self.at(
                        v,
                        "limits.upstream_streams_per_connection",
                        "must be at least 1",
                    ));
                }
                Some(v) => usize::try_from(v.get_ref().0).unwrap_or(usize::MAX),
            },
        };
        for (v, key, value) in [
            (
                &l.connect_timeout,
                "limits.connect_timeout",
                limits.connect_timeout,
            ),
            (
                &l.request_timeout,
                "limits.request_timeout",
                limits.request_timeout,
            ),
            (
                &l.header_read_timeout,
                "limits.header_read_timeout",
                limits.header_read_timeout,
            ),
        ] {
            if let (Some(v), true) = (v, value.is_zero()) {
                return Err(self.at(v, key, "must be greater than zero"));
            }
        }
        let ds = ShutdownSettings::default();
        let shutdown = ShutdownSettings {
            drain_delay: self.duration(
                raw.shutdown.drain_delay.as_ref(),
                "shutdown.drain_delay",
                ds.drain_delay,
            )?,
            grace_period: self.duration(
                raw.shutdown.grace_period.as_ref(),
                "shutdown.grace_period",
                ds.grace_period,
            )?,
        };
        let dr = ReloadSettings::default();
        let reload = ReloadSettings {
            interval: self.duration(
                raw.reload.interval.as_ref(),
                "reload.interval",
                dr.interval,
            )?,
            debounce: self.duration(
                raw.reload.debounce.as_ref(),
                "reload.debounce",
                dr.debounce,
            )?,
            settle: self.duration(raw.reload.settle.as_ref(), "reload.settle", dr.settle)?,
            watch: raw.reload.watch.unwrap_or(dr.watch),
        };
        let dk = KeysSettings::default();
        let keys = KeysSettings {
            rest: self.duration(raw.keys.rest.as_ref(), "keys.rest", dk.rest)?,
            rate_limit_rest: self.duration(
                raw.keys.rate_limit_rest.as_ref(),
                "keys.rate_limit_rest",
                dk.rate_limit_rest,
            )?,
        };
        if let (Some(v), true) = (&raw.reload.interval, reload.interval.is_zero()) {
            return Err(self.at(v, "reload.interval", "must be greater than zero"));
        }

        let type_defaults = self.type_defaults(&raw.provider_types)?;
        let mut routes = Vec::with_capacity(raw.routes.len());
        for (name, route) in &raw.routes {
            routes.push(self.route(name, route, &type_defaults, required)?);
        }

        Ok(Config {
            source,
            listen,
            admin_listen,
            ca_file: raw.ca_file.as_ref().map(|v| self.path(v)),
            inbound_token,
            allow_unauthenticated: raw.allow_unauthenticated,
            limits,
            shutdown,
            reload,
            keys,
            routes,
        })
    }

    fn type_defaults(
        &self,
        raw: &BTreeMap<String, Spanned<raw::ProviderTypeToml>>,
    ) -> Result<BTreeMap<ProviderType, KeySpec>, ConfigError> {
        let mut out = BTreeMap::new();
        for (name, v) in raw {
            let key = format!("provider_types.{name}");
            let ty: ProviderType = name.parse().map_err(|()| {
                self.at(
                    v,
                    &key,
                    format!(
                        "unknown provider type `{name}`; expected one of {}",
                        crate::providers::type_names()
                    ),
                )
            })?;
            let d = &v.get_ref().defaults;
            let (field, setting) = match (ty.spec().family, &d.key, &d.credentials) {
                (Family::Vertex, None, Some(c)) => ("credentials", c),
                (Family::Vertex, Some(k), _) => {
                    return Err(self.at(
                        k,
                        &format!("{key}.defaults.key"),
                        "vertex takes `credentials`, not `key`",
                    ));
                }
                (_, Some(k), None) => ("key", k),
                (_, _, Some(c)) => {
                    return Err(self.at(
                        c,
                        &format!("{key}.defaults.credentials"),
                        "only vertex takes `credentials`; use `key`",
                    ));
                }
                (_, None, None) => continue,
            };
            let spec = self.key_spec(
                setting,
                &format!("{key}.defaults.{field}"),
                ty.spec().family == Family::Vertex,
            )?;
            out.insert(ty, spec);
        }
        Ok(out)
    }

    fn route(
        &self,
        name: &str,
        v: &Spanned<RouteToml>,
        type_defaults: &BTreeMap<ProviderType, KeySpec>,
        required: bool,
    ) -> Result<RouteConfig, ConfigError> {
        let r = v.get_ref();
        let k = |field: &str| format!("routes.{name}.{field}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        {
            return Err(self.at(
                v,
                &format!("routes.{name}"),
                "a route name is one path segment: letters, digits, `-`, `_`, `.`, `~`",
            ));
        }
        let ty: ProviderType = r.ty.get_ref().parse().map_err(|()| {
            self.at(
                &r.ty,
                &k("type"),
                format!(
                    "unknown provider type `{}`; expected one of {}",
                    r.ty.get_ref(),
                    crate::providers::type_names()
                ),
            )
        })?;
        let spec = ty.spec();
        let family = spec.family;

        // Keys that only make sense on some families.
        let misplaced: [(bool, Option<Range<usize>>, &str, &str); 5] = [
            (
                family != Family::Azure,
                (!r.deployments.is_empty()).then(|| v.span()),
                "deployments",
                "azure",
            ),
            (
                family != Family::Vertex,
                r.credentials.as_ref().map(Spanned::span),
                "credentials",
                "vertex",
            ),
            (
                family != Family::Vertex,
                r.project.as_ref().map(Spanned::span),
                "project",
                "vertex",
            ),
            (
                family != Family::Vertex,
                r.location.as_ref().map(Spanned::span),
                "location",
                "vertex",
            ),
            (
                family != Family::Aws,
                r.region.as_ref().map(Spanned::span),
                "region",
                "bedrock and sagemaker",
            ),
        ];
        for (wrong, span, field, types) in misplaced {
            if let (true, Some(span)) = (wrong, span) {
                return Err(self.error(
                    span,
                    Some(k(field)),
                    format!("`{field}` is only valid for {types} routes"),
                ));
            }
        }
        if family == Family::Vertex
            && let Some(key) = &r.key
        {
            return Err(self.at(key, &k("key"), "vertex routes take `credentials` (a service-account JSON or \"metadata\"), not `key`"));
        }

        let upstream = match &r.upstream {
            Some(u) => Some(
                u.get_ref()
                    .parse::<UpstreamBase>()
                    .map_err(|e| self.at(u, &k("upstream"), e))?,
            ),
            None => {
                match spec.upstream {
                    Some(default) => Some(
                        default
                            .parse::<UpstreamBase>()
                            .map_err(|e| self.at(&r.ty, &k("type"), e))?,
                    ),
                    None if family == Family::ApiKey => {
                        return Err(self.at(&r.ty, &k("upstream"), format!("type `{}` has no default upstream: set `upstream = \"http://...\"`", spec.name)));
                    }
                    None => None,
                }
            }
        };

        let default_spec = |field: &str| -> Result<KeySpec, ConfigError> {
            match type_defaults.get(&ty) {
                Some(s) => Ok(s.clone()),
                None => spec
                    .default_key
                    .parse::<Location>()
                    .map(KeySpec::single)
                    .map_err(|e| {
                        self.at(&r.ty, &k(field), format!("built-in default credential {e}"))
                    }),
            }
        };
        let key = match &r.key {
            Some(key) => self.key_spec(key, &k("key"), false)?,
            None if family == Family::Vertex => KeySpec::single(Location::None),
            None => default_spec("key")?,
        };

        let mut deployments = Vec::new();
        for (dname, d) in &r.deployments {
            let dk = |f: &str| format!("routes.{name}.deployments.{dname}.{f}");
            let dv = d.get_ref();
            deployments.push(DeploymentConfig {
                name: dname.clone(),
                endpoint: dv
                    .endpoint
                    .get_ref()
                    .parse()
                    .map_err(|e| self.at(&dv.endpoint, &dk("endpoint"), e))?,
                key: match &dv.key {
                    Some(key) => self.key_spec(key, &dk("key"), false)?,
                    None => key.clone(),
                },
            });
        }
        if family == Family::Azure && deployments.is_empty() && upstream.is_none() {
            return Err(self.at(v, &format!("routes.{name}"), "an azure route needs `[routes.NAME.deployments.DEPLOYMENT]` tables (endpoint and key per deployment) or a route-level `upstream` for every deployment"));
        }

        let vertex = if family == Family::Vertex {
            // Spliced into the host name and the path: checked here, so a
            // typo is a config error and not a 400 blaming the client.
            let ident = |v: Option<&Spanned<String>>, key: &str, extra: &[char]| {
                let Some(v) = v else { return Ok(()) };
                let text = v.get_ref();
                if !text.is_empty()
                    && text.chars().all(|c| {
                        c.is_ascii_lowercase()
                            || c.is_ascii_digit()
                            || c == '-'
                            || extra.contains(&c)
                    })
                {
                    Ok(())
                } else {
                    Err(self.at(v, &k(key), "expected lowercase letters, digits and `-` (e.g. \"us-central1\", \"my-project\")"))
                }
            };
            ident(r.location.as_ref(), "location", &[])?;
            ident(r.project.as_ref(), "project", &['.', ':'])?;
            Some(VertexConfig {
                credentials: match &r.credentials {
                    Some(c) => self.key_spec(c, &k("credentials"), true)?,
                    None => default_spec("credentials")?,
                },
                project: r.project.as_ref().map(|p| p.get_ref().clone()),
                location: r.location.as_ref().map(|l| l.get_ref().clone()),
            })
        } else {
            None
        };

        let mut headers = Vec::with_capacity(r.headers.len());
        for (hname, loc) in &r.headers {
            let key = k(&format!("headers.{hname}"));
            let header = HeaderName::try_from(hname.as_str())
                .map_err(|_| self.at(loc, &key, format!("`{hname}` is not a valid header name")))?;
            if crate::proxy::strip::is_reserved(&header) {
                return Err(self.at(
                    loc,
                    &key,
                    format!("`{hname}` is managed by sidekey and cannot be set per route"),
                ));
            }
            let text = loc.get_ref();
            let location = self.location(text, loc, &key)?;
            if matches!(location, Location::None | Location::Metadata) {
                return Err(self.at(
                    loc,
                    &key,
                    "an extra header needs a location that holds a value",
                ));
            }
            headers.push((header, KeySpec::single(location)));
        }

        if let Some(models) = &r.models
            && models.iter().any(String::is_empty)
        {
            return Err(self.at(v, &k("models"), "model names must not be empty"));
        }

        Ok(RouteConfig {
            name: name.to_owned(),
            spec,
            upstream,
            key,
            headers,
            models: r.models.clone(),
            ca_file: r.ca_file.as_ref().map(|c| self.path(c)),
            deployments,
            vertex,
            region: r.region.as_ref().map(|r| r.get_ref().clone()),
            required,
        })
    }
}

#[cfg(test)]
mod tests;
