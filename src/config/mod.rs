//! `sidekey.toml`: loading, validation and the validated [`Config`].
//!
//! design.md, "Configuration". [`raw`] mirrors the file with serde; this module
//! turns it into a [`Config`] whose values are all checked (addresses parse,
//! provider types exist, locations are well formed, type-specific keys sit on
//! the right type) and reports the first problem with file, line, column and
//! key. It never reads a secret: credentials are resolved when a snapshot is
//! built (`reload::snapshot`).
//!
//! # Layout
//!
//! - this file: [`Config`], [`Config::load`] and [`Config::parse`], the top
//!   level of the file (addresses, `inbound_token`) and the re-exports.
//! - [`raw`]: the serde mirror of the file; [`units`]: `"5s"` and `"32MiB"`.
//! - `cx`: the validation context and the one-value checks every section
//!   uses (durations, addresses, paths, locations, key specs).
//! - `settings`: `[limits]`, `[shutdown]`, `[reload]`, `[keys]` and their
//!   defaults.
//! - `route`: `[routes.NAME]` and `[provider_types.TYPE]` → [`RouteConfig`].
//! - `error`: [`ConfigError`], line and column from a span, redaction.
//! - [`defaults`]: the built-in config.
//!
//! The arrows run one way: `config` reads `credentials`, `providers`,
//! `routes` and `headers`, and nothing on the request path.

mod cx;
pub(crate) mod defaults;
mod error;
pub(crate) mod raw;
mod route;
mod settings;
pub(crate) mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::Spanned;

use crate::credentials::Location;
#[cfg(test)]
use crate::credentials::Policy;
use crate::env::Env;
use crate::files::{FileError, Files, Kind};
use cx::Cx;
use error::redact_quoted;
use raw::ConfigToml;

pub use error::ConfigError;
pub(crate) use route::{AwsAuth, RouteConfig, VertexConfig};
pub(crate) use settings::{KeysSettings, Limits, ReloadSettings, ShutdownSettings};

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

/// The optional TLS listener (`tls_listen`, `tls_cert`, `tls_key`): the
/// same service as `listen`, over TLS, for clients that insist on
/// `https://`/`wss://`. The certificate chain and key are read when a
/// snapshot is built, so a rotated pair is served to new connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsListen {
    pub(crate) addr: SocketAddr,
    /// PEM certificate chain, leaf first.
    pub(crate) cert: Location,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub(crate) key: Location,
}

/// A validated `sidekey.toml`. Holds locations, never secret values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) source: ConfigSource,
    pub(crate) listen: SocketAddr,
    pub(crate) admin_listen: SocketAddr,
    /// The optional TLS listener.
    pub(crate) tls: Option<TlsListen>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) inbound_token: Option<Location>,
    /// `allow_unauthenticated`: a non-loopback `listen` without a token.
    pub(crate) allow_unauthenticated: bool,
    /// `allowed_origins`: a request with an `Origin` header is refused
    /// unless it is one of these (lowercase, no trailing `/`).
    pub(crate) allowed_origins: Vec<String>,
    /// `allowed_hosts`: on a loopback listener, `Host` names accepted besides
    /// `localhost` and loopback addresses (lowercase, no port).
    pub(crate) allowed_hosts: Vec<String>,
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

// === impl Cx: the top level ===

impl Cx<'_> {
    /// The whole file, section by section; the first problem is reported.
    fn config(
        &self,
        raw: ConfigToml,
        source: ConfigSource,
        required: bool,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let (listen, admin_listen) = self.listen_addrs(&raw, overrides)?;
        let inbound_token = self.inbound_token(&raw, listen)?;
        let tls = self.tls_listen(&raw, listen, admin_listen, inbound_token.is_some())?;
        let allowed_origins = self.allowed_origins(raw.allowed_origins.as_ref())?;
        let allowed_hosts = self.allowed_hosts(raw.allowed_hosts.as_ref())?;
        let limits = self.limits(&raw.limits)?;
        let shutdown = self.shutdown(&raw.shutdown)?;
        let reload = self.reload(&raw.reload)?;
        let keys = self.keys(&raw.keys)?;
        self.nonzero_reload_interval(&raw.reload, &reload)?;

        let type_defaults = self.type_defaults(&raw.provider_types)?;
        let mut routes = Vec::with_capacity(raw.routes.len());
        for (name, route) in &raw.routes {
            routes.push(self.route(name, route, &type_defaults, required)?);
        }

        Ok(Config {
            source,
            listen,
            admin_listen,
            tls,
            ca_file: raw.ca_file.as_ref().map(|v| self.path(v)),
            inbound_token,
            allow_unauthenticated: raw.allow_unauthenticated,
            allowed_origins,
            allowed_hosts,
            limits,
            shutdown,
            reload,
            keys,
            routes,
        })
    }

    /// `listen` and `admin_listen` (command-line overrides win): two
    /// different sockets.
    fn listen_addrs(
        &self,
        raw: &ConfigToml,
        overrides: &Overrides,
    ) -> Result<(SocketAddr, SocketAddr), ConfigError> {
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
        Ok((listen, admin_listen))
    }

    /// `inbound_token`: a location that can hold a token, and required when
    /// `listen` is open beyond loopback ([`open_to_anyone`]).
    fn inbound_token(
        &self,
        raw: &ConfigToml,
        listen: SocketAddr,
    ) -> Result<Option<Location>, ConfigError> {
        let inbound_token = match &raw.inbound_token {
            None => None,
            Some(v) => {
                let loc = self.location(v.get_ref(), v, "inbound_token")?;
                if matches!(
                    loc,
                    Location::None
                        | Location::Dynamic(_)
                        | Location::Metadata
                        | Location::Ambient(_)
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
        Ok(inbound_token)
    }
}

// === impl Cx: the TLS listener ===

impl Cx<'_> {
    /// `tls_listen`, `tls_cert` and `tls_key`: all three or none; an
    /// address of its own; stored locations (read when a snapshot is
    /// built); beyond loopback, the same token rule as `listen`.
    fn tls_listen(
        &self,
        raw: &ConfigToml,
        listen: SocketAddr,
        admin_listen: SocketAddr,
        has_token: bool,
    ) -> Result<Option<TlsListen>, ConfigError> {
        let (addr, cert, key) = match (&raw.tls_listen, &raw.tls_cert, &raw.tls_key) {
            (None, None, None) => return Ok(None),
            (Some(a), Some(c), Some(k)) => (a, c, k),
            (a, c, k) => {
                let present = [("tls_listen", a), ("tls_cert", c), ("tls_key", k)];
                let missing: Vec<&str> = present
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(n, _)| *n)
                    .collect();
                let Some((name, v)) = present
                    .iter()
                    .find_map(|(n, v)| v.as_ref().map(|v| (*n, v)))
                else {
                    return Ok(None);
                };
                return Err(self.at(
                    v,
                    name,
                    format!(
                        "`tls_listen`, `tls_cert` and `tls_key` go together: `{}` is missing",
                        missing.join("`, `")
                    ),
                ));
            }
        };
        let addr_value = addr;
        let addr = self.addr(Some(addr), "tls_listen", DEFAULT_LISTEN)?;
        if addr.port() != 0 && (addr == listen || addr == admin_listen) {
            return Err(self.at(
                addr_value,
                "tls_listen",
                "must differ from `listen` and `admin_listen`",
            ));
        }
        if open_to_anyone(addr, has_token, raw.allow_unauthenticated) {
            return Err(self.at(
                addr_value,
                "tls_listen",
                format!(
                    "{addr} is not a loopback address: set `inbound_token` so only clients holding \
                     it can use your keys, or `allow_unauthenticated = true` to accept anyone who can connect"
                ),
            ));
        }
        let stored = |v: &Spanned<String>, name: &str| -> Result<Location, ConfigError> {
            let loc = self.location(v.get_ref(), v, name)?;
            if matches!(
                loc,
                Location::None | Location::Dynamic(_) | Location::Metadata | Location::Ambient(_)
            ) {
                return Err(self.at(v, name, "must be env::, path:: or path_from_env::"));
            }
            Ok(loc)
        };
        Ok(Some(TlsListen {
            addr,
            cert: stored(cert, "tls_cert")?,
            key: stored(key, "tls_key")?,
        }))
    }
}

// === impl Cx: who may call (design.md, "WebSocket: realtime and live APIs") ===

impl Cx<'_> {
    /// `allowed_origins`: each `scheme://host[:port]` (or `null`), kept
    /// lowercase without a trailing `/`, as browsers send `Origin`.
    fn allowed_origins(
        &self,
        raw: Option<&Spanned<Vec<String>>>,
    ) -> Result<Vec<String>, ConfigError> {
        let Some(v) = raw else { return Ok(Vec::new()) };
        let mut out = Vec::with_capacity(v.get_ref().len());
        for (i, origin) in v.get_ref().iter().enumerate() {
            let o = origin.trim().trim_end_matches('/').to_ascii_lowercase();
            if o != "null" && !is_origin(&o) {
                return Err(self.at(
                    v,
                    "allowed_origins",
                    format!("entry {}, {}, is not an origin: write scheme://host[:port], such as http://localhost:3000", i + 1, error::described(origin)),
                ));
            }
            out.push(o);
        }
        Ok(out)
    }

    /// `allowed_hosts`: host names or IP addresses, without port.
    fn allowed_hosts(
        &self,
        raw: Option<&Spanned<Vec<String>>>,
    ) -> Result<Vec<String>, ConfigError> {
        let Some(v) = raw else { return Ok(Vec::new()) };
        let mut out = Vec::with_capacity(v.get_ref().len());
        for (i, host) in v.get_ref().iter().enumerate() {
            let h = host.trim().to_ascii_lowercase();
            let ok = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
                && (h.starts_with('[') || !h.contains(':'));
            if !ok {
                return Err(self.at(
                    v,
                    "allowed_hosts",
                    format!(
                        "entry {}, {}, is not a host name: write it without scheme, port or path",
                        i + 1,
                        error::described(host)
                    ),
                ));
            }
            out.push(h);
        }
        Ok(out)
    }
}

/// `scheme://authority` with nothing after the authority.
fn is_origin(text: &str) -> bool {
    match text.parse::<http::Uri>() {
        Ok(uri) => {
            uri.scheme().is_some()
                && uri.authority().is_some()
                && uri
                    .path_and_query()
                    .is_none_or(|pq| pq.as_str().is_empty() || pq.as_str() == "/")
                && !text.contains('@')
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
