//! The validation context [`Cx`] and the checks every section of the file
//! shares.
//!
//! design.md, "Configuration". `Cx` holds what an error needs (the source
//! text, to turn a value's span into a line and column, and the file name)
//! and the directory relative paths resolve against. The checks here read one
//! value each: a duration, a socket address, a path, a credential location, a
//! key spec. Whole sections are built from them beside this file:
//! [`super::settings`] for the settings tables, [`super::route`] for routes,
//! [`super`] for the top level.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::error::{ConfigError, described};
use super::raw::KeyToml;
use super::units;
use crate::credentials::{KeySpec, Location, Policy};

/// Validation context: the source text (for line numbers) and paths.
pub(super) struct Cx<'a> {
    /// The whole config text; spans index into it.
    pub(super) text: &'a str,
    /// How errors name the source (a path or `<built-in config>`).
    pub(super) file: String,
    /// Relative paths and locations resolve against this directory.
    pub(super) base: Option<PathBuf>,
}

impl Cx<'_> {
    /// An error at `span` of the source, about `key` if known.
    pub(super) fn error(
        &self,
        span: Range<usize>,
        key: Option<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::at_span(&self.file, self.text, span, key, message.into())
    }

    /// An error about the value `v` of `key`.
    pub(super) fn at<T>(
        &self,
        v: &Spanned<T>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error(v.span(), Some(key.to_owned()), message)
    }

    /// A configured path, relative ones taken from the config's directory.
    pub(super) fn path(&self, v: &Spanned<String>) -> PathBuf {
        let p = PathBuf::from(v.get_ref());
        match &self.base {
            Some(base) if p.is_relative() => base.join(p),
            _ => p,
        }
    }

    /// A duration (`"5s"`, `"100ms"`), or `default` when not set.
    pub(super) fn duration(
        &self,
        v: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        v.map_or(Ok(default), |v| {
            units::parse_duration(v.get_ref()).map_err(|m| self.at(v, key, m))
        })
    }

    /// An `IP:PORT`, or `default` when not set.
    pub(super) fn addr(
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
                        "{} is not an address; expected IP:PORT such as \"127.0.0.1:8787\"",
                        described(v.get_ref())
                    ),
                )
            }),
        }
    }

    /// One credential location, with `path::` made absolute.
    pub(super) fn location(
        &self,
        text: &str,
        span: &Spanned<impl Sized>,
        key: &str,
    ) -> Result<Location, ConfigError> {
        text.parse::<Location>()
            .map(|l| l.relative_to(self.base.as_deref()))
            .map_err(|e| self.at(span, key, format!("credential location {e}")))
    }

    /// A credential setting: one location, a fallback pair or a pool.
    /// `metadata` is accepted only where `allow_metadata` says so.
    pub(super) fn key_spec(
        &self,
        v: &Spanned<KeyToml>,
        key: &str,
        allow_metadata: bool,
    ) -> Result<KeySpec, ConfigError> {
        let (policy, texts): (Policy, Vec<&String>) = match v.get_ref() {
            KeyToml::One(s) => (Policy::Single, vec![s]),
            KeyToml::Fallback { default, fallback } => (Policy::Fallback, vec![default, fallback]),
            KeyToml::Pool(p) => (Policy::Pool, p.iter().collect()),
            KeyToml::AwsKeys { .. } => {
                return Err(self.at(
                    v,
                    key,
                    "`{ access_key_id, secret_access_key, session_token }` is only valid as \
                     `credentials` of a bedrock or sagemaker route",
                ));
            }
            KeyToml::EntraSecret { .. } => {
                return Err(self.at(
                    v,
                    key,
                    "`{ tenant_id, client_id, client_secret }` is only valid as `credentials` \
                     of an azure route or deployment",
                ));
            }
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
}
