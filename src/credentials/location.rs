//! Credential locations: where a secret lives, not the secret itself.
//!
//! The syntax is TensorZero's `api_key_location` (design.md, "Credential
//! locations"): `env::NAME`, `path::/file`, `path_from_env::NAME`,
//! `dynamic::NAME`, `none`, plus `metadata` for Vertex routes. This module only
//! parses and prints; reading happens in [`super::resolve`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use http::HeaderName;

/// Prefix of the request header that carries a `dynamic::NAME` credential.
pub(crate) const DYNAMIC_HEADER_PREFIX: &str = "x-sidekey-credential-";

/// Where a credential comes from.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) enum Location {
    /// `env::NAME`: an environment variable, read at start and on reload.
    Env(String),
    /// `path::/file`: a file, trimmed, re-read when it changes.
    Path(PathBuf),
    /// `path_from_env::NAME`: a file whose path an environment variable holds.
    PathFromEnv(String),
    /// `dynamic::NAME`: the request header `x-sidekey-credential-NAME`.
    Dynamic(DynamicName),
    /// `none`: send no credential.
    None,
    /// `metadata`: the GKE metadata server (Vertex routes only).
    Metadata,
    /// An identity the pod's environment provides, by name: `aws-chain`
    /// (an AWS route without `credentials` or `key`), `workload-identity`
    /// and `managed-identity` (Azure). Never parsed from a location string:
    /// the settings that take one name it.
    Ambient(&'static str),
}

/// The name in `dynamic::NAME` together with its prepared header name.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) struct DynamicName {
    name: String,
    header: HeaderName,
}

impl DynamicName {
    /// The request header that carries this credential.
    #[must_use]
    pub(crate) fn header(&self) -> &HeaderName {
        &self.header
    }
}

/// Why a location string does not parse. The offending text is never echoed:
/// a user who pasted a key where a location belongs must not see it in logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LocationError {
    /// Not one of the known forms.
    #[error(
        "is not a credential location (value not shown, it may be a secret); \
         expected env::NAME, path::/file, path_from_env::NAME, dynamic::NAME or none"
    )]
    Unknown,
    /// A known prefix with nothing after it.
    #[error("`{0}` needs a name after it")]
    EmptyName(&'static str),
    /// `env::` or `path_from_env::` with a name that is not a variable name.
    #[error("`{0}` takes an environment variable name (letters, digits, `_`)")]
    BadVarName(&'static str),
    /// `dynamic::` with a name that cannot be part of a header name.
    #[error("`dynamic::` takes a name made of letters, digits, `-` and `_`")]
    BadDynamicName,
}

impl FromStr for Location {
    type Err = LocationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "none" {
            return Ok(Self::None);
        }
        if s == "metadata" {
            return Ok(Self::Metadata);
        }
        let (prefix, rest) = s.split_once("::").ok_or(LocationError::Unknown)?;
        let prefix: &'static str = match prefix {
            "env" => "env::",
            "path" => "path::",
            "path_from_env" => "path_from_env::",
            "dynamic" => "dynamic::",
            _ => return Err(LocationError::Unknown),
        };
        if rest.is_empty() {
            return Err(LocationError::EmptyName(prefix));
        }
        let var_name = |rest: &str| {
            if rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                Ok(rest.to_owned())
            } else {
                Err(LocationError::BadVarName(prefix))
            }
        };
        match prefix {
            "env::" => var_name(rest).map(Self::Env),
            "path_from_env::" => var_name(rest).map(Self::PathFromEnv),
            "path::" => Ok(Self::Path(PathBuf::from(rest))),
            _ => {
                if !rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(LocationError::BadDynamicName);
                }
                let header = format!("{DYNAMIC_HEADER_PREFIX}{}", rest.to_ascii_lowercase());
                let header =
                    HeaderName::try_from(header).map_err(|_| LocationError::BadDynamicName)?;
                Ok(Self::Dynamic(DynamicName {
                    name: rest.to_owned(),
                    header,
                }))
            }
        }
    }
}

impl Location {
    /// Resolves a relative `path::` against `base` (the config file's
    /// directory), so a config works the same from any working directory.
    #[must_use]
    pub(crate) fn relative_to(self, base: Option<&Path>) -> Self {
        match (self, base) {
            (Self::Path(p), Some(base)) if p.is_relative() => Self::Path(base.join(p)),
            (other, _) => other,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(n) => write!(f, "env::{n}"),
            Self::Path(p) => write!(f, "path::{}", p.display()),
            Self::PathFromEnv(n) => write!(f, "path_from_env::{n}"),
            Self::Dynamic(d) => write!(f, "dynamic::{}", d.name),
            Self::None => f.write_str("none"),
            Self::Metadata => f.write_str("metadata"),
            Self::Ambient(name) => f.write_str(name),
        }
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_prints_it_back() {
        for s in [
            "env::OPENAI_API_KEY",
            "path::/var/run/secrets/key",
            "path_from_env::KEY_FILE",
            "dynamic::tenant-a",
            "none",
            "metadata",
        ] {
            let loc: Location = s.parse().unwrap();
            assert_eq!(loc.to_string(), s);
        }
    }

    #[test]
    fn dynamic_maps_to_a_lowercase_header() {
        let Location::Dynamic(d) = "dynamic::Tenant_A".parse().unwrap() else {
            panic!("not dynamic");
        };
        assert_eq!(d.header().as_str(), "x-sidekey-credential-tenant_a");
    }

    #[test]
    fn errors_never_echo_the_value() {
        let err = "sk-live-abcdef".parse::<Location>().unwrap_err();
        assert_eq!(err, LocationError::Unknown);
        assert!(!err.to_string().contains("sk-live"));
        assert_eq!(
            "env::".parse::<Location>().unwrap_err(),
            LocationError::EmptyName("env::")
        );
        assert_eq!(
            "env::A B".parse::<Location>().unwrap_err(),
            LocationError::BadVarName("env::")
        );
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        /// Location-like strings: a known or near-miss prefix and any text.
        fn location_like() -> impl Strategy<Value = String> {
            let prefix = prop_oneof![
                Just(""),
                Just("env::"),
                Just("path::"),
                Just("path_from_env::"),
                Just("dynamic::"),
                Just("none"),
                Just("metadata"),
                Just("env:"),
                Just("::"),
                Just(" env::"),
            ];
            (prefix, any::<String>()).prop_map(|(p, rest)| format!("{p}{rest}"))
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// No input panics; what parses prints back to itself.
            #[test]
            fn parsing_never_panics_and_round_trips(s in location_like()) {
                if let Ok(loc) = s.parse::<Location>() {
                    prop_assert_eq!(loc.to_string().parse::<Location>(), Ok(loc));
                }
            }

            /// A key pasted where a location belongs is never echoed.
            #[test]
            fn an_error_never_shows_the_value(key in "sk-[A-Za-z0-9]{8,40}") {
                let err = key.parse::<Location>().unwrap_err();
                prop_assert!(!err.to_string().contains(&key));
            }
        }
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let loc: Location = "path::keys/openai".parse().unwrap();
        let loc = loc.relative_to(Some(Path::new("/etc/sidekey")));
        assert_eq!(loc, Location::Path("/etc/sidekey/keys/openai".into()));
    }
}
