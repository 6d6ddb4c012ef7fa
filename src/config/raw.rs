//! The serde mirror of `sidekey.toml`.
//!
//! Every struct denies unknown fields, so a misspelt key is an error with a
//! line number rather than a silently ignored setting. Values that need
//! checking beyond their TOML type keep their [`Spanned`] position so that
//! [`super`] can report file, line and key. Nothing here validates.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigToml {
    pub(crate) listen: Option<Spanned<String>>,
    pub(crate) admin_listen: Option<Spanned<String>>,
    /// The optional TLS listener's address, with its certificate chain and
    /// key (credential locations, PEM).
    pub(crate) tls_listen: Option<Spanned<String>>,
    pub(crate) tls_cert: Option<Spanned<String>>,
    pub(crate) tls_key: Option<Spanned<String>>,
    pub(crate) ca_file: Option<Spanned<String>>,
    pub(crate) inbound_token: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) allow_unauthenticated: bool,
    /// Origins (`scheme://host[:port]`) whose web pages may call sidekey.
    pub(crate) allowed_origins: Option<Spanned<Vec<String>>>,
    /// Host names a loopback listener answers besides `localhost` and
    /// loopback addresses.
    pub(crate) allowed_hosts: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(crate) limits: LimitsToml,
    #[serde(default)]
    pub(crate) shutdown: ShutdownToml,
    #[serde(default)]
    pub(crate) reload: ReloadToml,
    #[serde(default)]
    pub(crate) keys: KeysToml,
    #[serde(default)]
    pub(crate) routes: BTreeMap<String, Spanned<RouteToml>>,
    #[serde(default)]
    pub(crate) provider_types: BTreeMap<String, Spanned<ProviderTypeToml>>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsToml {
    pub(crate) max_replay_body: Option<Spanned<String>>,
    pub(crate) connect_timeout: Option<Spanned<String>>,
    pub(crate) request_timeout: Option<Spanned<String>>,
    pub(crate) header_read_timeout: Option<Spanned<String>>,
    pub(crate) upstream_streams_per_connection: Option<Spanned<Count>>,
    pub(crate) websocket_idle: Option<Spanned<String>>,
    pub(crate) max_connections: Option<Spanned<Count>>,
    pub(crate) max_header_bytes: Option<Spanned<String>>,
    pub(crate) body_read_timeout: Option<Spanned<String>>,
    pub(crate) max_replay_total: Option<Spanned<String>>,
}

/// A whole number written `50` or `50.0`: Helm's `toToml` renders every
/// number of a values file as a float, so the chart's `config` map turns
/// `50` into `50.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Count(pub(crate) u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                u64::try_from(v)
                    .map(Count)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "checked: a whole number from 0 to 2^53, exact in both types"
            )]
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
                if v.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(&v) {
                    Ok(Count(v as u64))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `[shutdown]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShutdownToml {
    pub(crate) drain_delay: Option<Spanned<String>>,
    pub(crate) grace_period: Option<Spanned<String>>,
}

/// `[reload]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReloadToml {
    pub(crate) interval: Option<Spanned<String>>,
    pub(crate) debounce: Option<Spanned<String>>,
    pub(crate) settle: Option<Spanned<String>>,
    pub(crate) watch: Option<bool>,
}

/// `[keys]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeysToml {
    pub(crate) rest: Option<Spanned<String>>,
    pub(crate) rate_limit_rest: Option<Spanned<String>>,
}

/// `[routes.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteToml {
    #[serde(rename = "type")]
    pub(crate) ty: Spanned<String>,
    pub(crate) upstream: Option<Spanned<String>>,
    pub(crate) key: Option<Spanned<KeyToml>>,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, Spanned<String>>,
    pub(crate) models: Option<Vec<String>>,
    pub(crate) ca_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) deployments: BTreeMap<String, Spanned<DeploymentToml>>,
    pub(crate) credentials: Option<Spanned<KeyToml>>,
    pub(crate) project: Option<Spanned<String>>,
    pub(crate) location: Option<Spanned<String>>,
    pub(crate) region: Option<Spanned<String>>,
    pub(crate) scope: Option<Spanned<String>>,
}

/// `[routes.NAME.deployments.DEPLOYMENT]` (azure).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeploymentToml {
    pub(crate) endpoint: Spanned<String>,
    pub(crate) key: Option<Spanned<KeyToml>>,
    pub(crate) credentials: Option<Spanned<KeyToml>>,
}

/// `[provider_types.TYPE]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProviderTypeToml {
    #[serde(default)]
    pub(crate) defaults: ProviderDefaultsToml,
}

/// `[provider_types.TYPE.defaults]`. The aliases are TensorZero's names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProviderDefaultsToml {
    #[serde(alias = "api_key_location")]
    pub(crate) key: Option<Spanned<KeyToml>>,
    #[serde(alias = "credential_location")]
    pub(crate) credentials: Option<Spanned<KeyToml>>,
}

/// A credential setting: one location, `{ default, fallback }`, or a pool;
/// or, for AWS routes, `{ access_key_id, secret_access_key, session_token }`;
/// or, for azure, `{ tenant_id, client_id, client_secret }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyToml {
    One(String),
    Fallback {
        default: String,
        fallback: String,
    },
    Pool(Vec<String>),
    AwsKeys {
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    },
    /// An Entra ID app registration (azure `credentials`).
    EntraSecret {
        tenant_id: String,
        client_id: String,
        client_secret: String,
    },
}

impl<'de> Deserialize<'de> for KeyToml {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = KeyToml;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a credential location (\"env::NAME\", \"path::/file\", ...), \
             a table { default = ..., fallback = ... }, or an array of locations",
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyToml, E> {
        Ok(KeyToml::One(v.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyToml, A::Error> {
        let mut pool = Vec::new();
        while let Some(loc) = seq.next_element::<String>()? {
            pool.push(loc);
        }
        if pool.is_empty() {
            return Err(de::Error::invalid_length(0, &"at least one location"));
        }
        Ok(KeyToml::Pool(pool))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyToml, A::Error> {
        const FIELDS: &[&str] = &[
            "default",
            "fallback",
            "access_key_id",
            "secret_access_key",
            "session_token",
            "tenant_id",
            "client_id",
            "client_secret",
        ];
        let mut fields = BTreeMap::new();
        while let Some(k) = map.next_key::<String>()? {
            let Some(name) = FIELDS.iter().find(|f| **f == k) else {
                return Err(de::Error::unknown_field(&k, FIELDS));
            };
            fields.insert(*name, map.next_value::<String>()?);
        }
        // Which form, by its fields; what is left over is an error.
        let fallback_form = fields.contains_key("default") || fields.contains_key("fallback");
        let aws_form = fields
            .keys()
            .any(|k| k.contains("access_key") || *k == "session_token");
        let empty = fields.is_empty();
        let mut take = |name: &str| fields.remove(name);
        let form = if fallback_form {
            match (take("default"), take("fallback")) {
                (Some(default), Some(fallback)) => KeyToml::Fallback { default, fallback },
                (Some(default), None) => KeyToml::One(default),
                (None, _) => return Err(de::Error::missing_field("default")),
            }
        } else if aws_form {
            KeyToml::AwsKeys {
                access_key_id: take("access_key_id")
                    .ok_or_else(|| de::Error::missing_field("access_key_id"))?,
                secret_access_key: take("secret_access_key")
                    .ok_or_else(|| de::Error::missing_field("secret_access_key"))?,
                session_token: take("session_token"),
            }
        } else if !empty {
            KeyToml::EntraSecret {
                tenant_id: take("tenant_id")
                    .ok_or_else(|| de::Error::missing_field("tenant_id"))?,
                client_id: take("client_id")
                    .ok_or_else(|| de::Error::missing_field("client_id"))?,
                client_secret: take("client_secret")
                    .ok_or_else(|| de::Error::missing_field("client_secret"))?,
            }
        } else {
            return Err(de::Error::missing_field("default"));
        };
        match fields.keys().next() {
            Some(extra) => Err(de::Error::custom(format!(
                "`{extra}` does not belong with the other fields of this table"
            ))),
            None => Ok(form),
        }
    }
}
