//! Routes: `[routes.NAME]` and `[provider_types.TYPE.defaults]` validated
//! into [`RouteConfig`]s.
//!
//! design.md, "Configuration" and "Provider types". A route is checked in
//! named steps, in this order (the first problem is the one reported): its
//! name, its type, keys that only some families take, the upstream, the
//! credential (`key`, or the type's default), Azure deployments, Vertex
//! settings, AWS settings, extra credential headers and the model
//! allowlist. What each family does with its settings at request time is
//! `providers`' business.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use http::HeaderName;
use toml::Spanned;

use super::cx::Cx;
use super::error::{ConfigError, described, redact_value};
use super::raw::{KeyToml, ProviderTypeToml, RouteToml};
use crate::credentials::{EntraIdentity, KeySpec, Location};
use crate::headers;
use crate::providers::{Family, ProviderType, Spec};
use crate::routes::UpstreamBase;

/// One Azure deployment: its own endpoint and key (or Entra identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeploymentConfig {
    pub(crate) name: String,
    pub(crate) endpoint: UpstreamBase,
    pub(crate) key: KeySpec,
    /// Entra ID tokens instead of `key`.
    pub(crate) entra: Option<EntraIdentity>,
}

/// An azure route's Entra ID settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntraConfig {
    /// The route-level identity (`credentials`), if any.
    pub(crate) identity: Option<EntraIdentity>,
    /// The token scope (`scope`).
    pub(crate) scope: String,
}

/// Vertex settings (`credentials`, `project`, `location`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VertexConfig {
    pub(crate) credentials: KeySpec,
    pub(crate) project: Option<String>,
    pub(crate) location: Option<String>,
}

/// AWS settings (`region`, `credentials`, or a Bedrock API key in `key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AwsConfig {
    /// `None`: `AWS_REGION`, then `AWS_DEFAULT_REGION`, read when the
    /// snapshot is built.
    pub(crate) region: Option<String>,
    pub(crate) auth: AwsAuth,
}

/// How an AWS route authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AwsAuth {
    /// SigV4 with the AWS SDKs' credential chain, from the environment.
    Chain,
    /// SigV4 with keys read from locations (hot-reloaded like any key).
    Keys {
        access_key_id: Location,
        secret_access_key: Location,
        session_token: Option<Location>,
    },
    /// A Bedrock API key (the route's `key`): `Authorization: Bearer`, unsigned.
    ApiKey,
}

impl AwsAuth {
    /// The locations of [`AwsAuth::Keys`], in order.
    pub(crate) fn locations(&self) -> Vec<&Location> {
        match self {
            Self::Keys {
                access_key_id,
                secret_access_key,
                session_token,
            } => [
                Some(access_key_id),
                Some(secret_access_key),
                session_token.as_ref(),
            ]
            .into_iter()
            .flatten()
            .collect(),
            Self::Chain | Self::ApiKey => Vec::new(),
        }
    }
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
    pub(crate) aws: Option<AwsConfig>,
    /// Azure routes: Entra ID identity and scope.
    pub(crate) entra: Option<EntraConfig>,
    /// Whether a missing credential makes `/readyz` fail. False for the
    /// built-in default's routes, which exist for convenience.
    pub(crate) required: bool,
}

/// The credential each provider type uses when a route names none, from
/// `[provider_types.TYPE.defaults]`.
pub(super) type TypeDefaults = BTreeMap<ProviderType, KeySpec>;

// === impl Cx: provider types and routes ===

impl Cx<'_> {
    /// `[provider_types.TYPE.defaults]`: `key`, or `credentials` for vertex.
    pub(super) fn type_defaults(
        &self,
        raw: &BTreeMap<String, Spanned<ProviderTypeToml>>,
    ) -> Result<TypeDefaults, ConfigError> {
        let mut out = BTreeMap::new();
        for (name, v) in raw {
            let key = format!("provider_types.{name}");
            let ty = self.provider_type(name, v, &key)?;
            let d = &v.get_ref().defaults;
            let (field, setting) = match (ty.spec().family, &d.key, &d.credentials) {
                (Family::Aws, Some(k), _) | (Family::Aws, None, Some(k)) => {
                    return Err(self.at(
                        k,
                        &format!("{key}.defaults"),
                        "AWS routes take no type-wide default: they use the AWS credential chain unless a route sets `credentials` or `key`",
                    ));
                }
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

    /// A provider type name, at the value `span` of `key`.
    fn provider_type<T>(
        &self,
        name: &str,
        span: &Spanned<T>,
        key: &str,
    ) -> Result<ProviderType, ConfigError> {
        name.parse().map_err(|()| {
            self.at(
                span,
                key,
                format!(
                    "unknown provider type: {}; expected one of {}",
                    described(name),
                    crate::providers::type_names()
                ),
            )
        })
    }

    /// `[routes.NAME]`, step by step (see the module docs).
    pub(super) fn route(
        &self,
        name: &str,
        v: &Spanned<RouteToml>,
        type_defaults: &TypeDefaults,
        required: bool,
    ) -> Result<RouteConfig, ConfigError> {
        self.route_name(name, v)?;
        let r = v.get_ref();
        let ty = self.provider_type(r.ty.get_ref(), &r.ty, &format!("routes.{name}.type"))?;
        let route = RouteCx {
            cx: self,
            name,
            v,
            ty,
            spec: ty.spec(),
        };
        route.misplaced_keys()?;
        let upstream = route.upstream()?;
        let key = route.key(type_defaults)?;
        let entra = route.entra()?;
        let deployments = route.deployments(&key, entra.as_ref(), upstream.is_some())?;
        let vertex = route.vertex(type_defaults)?;
        let aws = route.aws()?;
        let headers = route.headers()?;
        route.models()?;
        Ok(RouteConfig {
            name: name.to_owned(),
            spec: route.spec,
            upstream,
            key,
            headers,
            models: r.models.clone(),
            ca_file: r.ca_file.as_ref().map(|c| self.path(c)),
            deployments,
            vertex,
            aws,
            entra,
            required,
        })
    }

    /// A route name is one path segment of unreserved characters.
    fn route_name(&self, name: &str, v: &Spanned<RouteToml>) -> Result<(), ConfigError> {
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
        Ok(())
    }
}

/// One `[routes.NAME]` table whose type is known, being validated.
struct RouteCx<'a> {
    cx: &'a Cx<'a>,
    name: &'a str,
    v: &'a Spanned<RouteToml>,
    ty: ProviderType,
    spec: &'static Spec,
}

// === impl RouteCx: the steps of a route ===

impl RouteCx<'_> {
    fn raw(&self) -> &RouteToml {
        self.v.get_ref()
    }

    /// `routes.NAME.field`, the key errors name.
    fn key_name(&self, field: &str) -> String {
        format!("routes.{}.{field}", self.name)
    }

    fn at<T>(&self, v: &Spanned<T>, field: &str, message: impl Into<String>) -> ConfigError {
        self.cx.at(v, &self.key_name(field), message)
    }

    /// Keys that only make sense on some families, and `key` on vertex.
    fn misplaced_keys(&self) -> Result<(), ConfigError> {
        let (r, family) = (self.raw(), self.spec.family);
        let span = |v: &Option<Spanned<String>>| v.as_ref().map(Spanned::span);
        // (the family the key belongs to, where it is set, key, types named)
        let misplaced: [(Family, Option<Range<usize>>, &str, &str); 4] = [
            (
                Family::Azure,
                (!r.deployments.is_empty()).then(|| self.v.span()),
                "deployments",
                "azure",
            ),
            (Family::Vertex, span(&r.project), "project", "vertex"),
            (Family::Vertex, span(&r.location), "location", "vertex"),
            (
                Family::Aws,
                span(&r.region),
                "region",
                "bedrock and sagemaker",
            ),
        ];
        if let (Family::ApiKey, Some(c)) = (family, &r.credentials) {
            return Err(self.at(
                c,
                "credentials",
                "`credentials` is only valid for vertex, azure, bedrock and sagemaker routes",
            ));
        }
        if let (false, Some(v)) = (family == Family::Azure, &r.scope) {
            return Err(self.at(v, "scope", "`scope` is only valid for azure routes"));
        }
        for (owner, span, field, types) in misplaced {
            if let (true, Some(span)) = (family != owner, span) {
                return Err(self.cx.error(
                    span,
                    Some(self.key_name(field)),
                    format!("`{field}` is only valid for {types} routes"),
                ));
            }
        }
        if family == Family::Vertex
            && let Some(key) = &r.key
        {
            return Err(self.at(key, "key", "vertex routes take `credentials` (a service-account JSON or \"metadata\"), not `key`"));
        }
        Ok(())
    }

    /// `upstream`, or the type's default; API-key types without one need it.
    fn upstream(&self) -> Result<Option<UpstreamBase>, ConfigError> {
        let (r, spec) = (self.raw(), self.spec);
        if let Some(u) = &r.upstream {
            return u
                .get_ref()
                .parse::<UpstreamBase>()
                .map(Some)
                .map_err(|e| self.at(u, "upstream", redact_value(&e, u.get_ref())));
        }
        match spec.upstream {
            Some(default) => default
                .parse::<UpstreamBase>()
                .map(Some)
                .map_err(|e| self.at(&r.ty, "type", e)),
            None if spec.family == Family::ApiKey => Err(self.at(
                &r.ty,
                "upstream",
                format!(
                    "type `{}` has no default upstream: set `upstream = \"http://...\"`",
                    spec.name
                ),
            )),
            None => Ok(None),
        }
    }

    /// The credential of a route that names none: the type's configured
    /// default, else the built-in one. `field` is the key errors name.
    fn default_key(
        &self,
        type_defaults: &TypeDefaults,
        field: &str,
    ) -> Result<KeySpec, ConfigError> {
        match type_defaults.get(&self.ty) {
            Some(s) => Ok(s.clone()),
            None => self
                .spec
                .default_key
                .parse::<Location>()
                .map(KeySpec::single)
                .map_err(|e| {
                    self.at(
                        &self.raw().ty,
                        field,
                        format!("built-in default credential {e}"),
                    )
                }),
        }
    }

    /// `key` (`none` for vertex, whose credential is `credentials`, and for
    /// AWS routes that sign).
    fn key(&self, type_defaults: &TypeDefaults) -> Result<KeySpec, ConfigError> {
        match &self.raw().key {
            Some(key) => self.cx.key_spec(key, &self.key_name("key"), false),
            None if matches!(self.spec.family, Family::Vertex | Family::Aws) => {
                Ok(KeySpec::single(Location::None))
            }
            // Entra ID tokens replace the key.
            None if self.spec.family == Family::Azure && self.raw().credentials.is_some() => {
                Ok(KeySpec::single(Location::None))
            }
            None => self.default_key(type_defaults, "key"),
        }
    }

    /// AWS `region` and `credentials` (or `key`, a Bedrock API key); `None`
    /// for other families.
    fn aws(&self) -> Result<Option<AwsConfig>, ConfigError> {
        if self.spec.family != Family::Aws {
            return Ok(None);
        }
        let r = self.raw();
        if let Some(region) = &r.region {
            self.host_ident(Some(region), "region", &[])?;
        }
        let auth = match (&r.key, &r.credentials) {
            (Some(key), Some(_)) => {
                return Err(self.at(key, "key", "set `key` (a Bedrock API key) or `credentials` (AWS keys to sign with), not both"));
            }
            (Some(key), None) if self.ty != ProviderType::Bedrock => {
                return Err(self.at(key, "key", "API keys are a Bedrock feature: sagemaker routes sign with `credentials` or the AWS credential chain"));
            }
            (Some(_), None) => AwsAuth::ApiKey,
            (None, None) => AwsAuth::Chain,
            (None, Some(c)) => self.aws_keys(c)?,
        };
        Ok(Some(AwsConfig {
            region: r.region.as_ref().map(|v| v.get_ref().clone()),
            auth,
        }))
    }

    /// `credentials = { access_key_id, secret_access_key, session_token }`.
    fn aws_keys(&self, c: &Spanned<KeyToml>) -> Result<AwsAuth, ConfigError> {
        let KeyToml::AwsKeys {
            access_key_id,
            secret_access_key,
            session_token,
        } = c.get_ref()
        else {
            return Err(self.at(c, "credentials", "AWS routes take `credentials = { access_key_id = \"path::...\", secret_access_key = \"path::...\", session_token = \"path::...\" }` (session_token optional), or no `credentials` for the AWS credential chain"));
        };
        let location = |text: &str, field: &str| {
            let key = self.key_name(&format!("credentials.{field}"));
            let loc = self.cx.location(text, c, &key)?;
            match loc {
                Location::Env(_) | Location::Path(_) | Location::PathFromEnv(_) => Ok(loc),
                _ => Err(self
                    .cx
                    .at(c, &key, "must be env::, path:: or path_from_env::")),
            }
        };
        Ok(AwsAuth::Keys {
            access_key_id: location(access_key_id, "access_key_id")?,
            secret_access_key: location(secret_access_key, "secret_access_key")?,
            session_token: session_token
                .as_deref()
                .map(|t| location(t, "session_token"))
                .transpose()?,
        })
    }

    /// Azure `credentials` (an Entra ID identity instead of `key`) and
    /// `scope`; `None` for other families.
    fn entra(&self) -> Result<Option<EntraConfig>, ConfigError> {
        if self.spec.family != Family::Azure {
            return Ok(None);
        }
        let r = self.raw();
        if let (Some(k), Some(_)) = (&r.key, &r.credentials) {
            return Err(self.at(
                k,
                "key",
                "set `key` or `credentials` (an Entra ID identity), not both",
            ));
        }
        let identity = r
            .credentials
            .as_ref()
            .map(|c| self.entra_identity(c, "credentials"))
            .transpose()?;
        let scope = match &r.scope {
            None => crate::tokens::entra::DEFAULT_SCOPE.to_owned(),
            Some(v)
                if v.get_ref().starts_with("https://")
                    && !v.get_ref().contains(char::is_whitespace) =>
            {
                v.get_ref().clone()
            }
            Some(v) => {
                return Err(self.at(
                    v,
                    "scope",
                    "expected a scope URL such as \"https://cognitiveservices.azure.com/.default\"",
                ));
            }
        };
        Ok(Some(EntraConfig { identity, scope }))
    }

    /// `"workload-identity"`, `"managed-identity"` or `{ tenant_id,
    /// client_id, client_secret }`.
    fn entra_identity(
        &self,
        c: &Spanned<KeyToml>,
        field: &str,
    ) -> Result<EntraIdentity, ConfigError> {
        let key = self.key_name(field);
        match c.get_ref() {
            KeyToml::One(s) if s == "workload-identity" => Ok(EntraIdentity::Workload),
            KeyToml::One(s) if s == "managed-identity" => Ok(EntraIdentity::Managed),
            KeyToml::EntraSecret {
                tenant_id,
                client_id,
                client_secret,
            } => {
                let secret = self.cx.location(client_secret, c, &format!("{key}.client_secret"))?;
                if !matches!(secret, Location::Env(_) | Location::Path(_) | Location::PathFromEnv(_)) {
                    return Err(self.cx.at(c, &format!("{key}.client_secret"), "must be env::, path:: or path_from_env::"));
                }
                Ok(EntraIdentity::ClientSecret {
                    tenant_id: tenant_id.clone(),
                    client_id: client_id.clone(),
                    client_secret: secret,
                })
            }
            _ => Err(self.cx.at(c, &key, "azure `credentials` is \"workload-identity\", \"managed-identity\" or { tenant_id = \"...\", client_id = \"...\", client_secret = \"path::...\" }")),
        }
    }

    /// Azure `deployments`: an endpoint each, and a key (or identity)
    /// defaulting to the route's. An azure route needs deployments or a
    /// route-level upstream.
    fn deployments(
        &self,
        route_key: &KeySpec,
        entra: Option<&EntraConfig>,
        has_upstream: bool,
    ) -> Result<Vec<DeploymentConfig>, ConfigError> {
        let route_identity = entra.and_then(|e| e.identity.clone());
        let mut deployments = Vec::new();
        for (dname, d) in &self.raw().deployments {
            let dk = |f: &str| self.key_name(&format!("deployments.{dname}.{f}"));
            let dv = d.get_ref();
            deployments.push(DeploymentConfig {
                name: dname.clone(),
                endpoint: dv.endpoint.get_ref().parse().map_err(|e: String| {
                    let e = redact_value(&e, dv.endpoint.get_ref());
                    self.cx.at(&dv.endpoint, &dk("endpoint"), e)
                })?,
                key: match (&dv.key, &dv.credentials) {
                    (Some(key), None) => self.cx.key_spec(key, &dk("key"), false)?,
                    (Some(key), Some(_)) => {
                        return Err(self.cx.at(
                            key,
                            &dk("key"),
                            "set `key` or `credentials`, not both",
                        ));
                    }
                    (None, Some(_)) => KeySpec::single(Location::None),
                    (None, None) => route_key.clone(),
                },
                entra: match (&dv.key, &dv.credentials) {
                    (None, Some(c)) => {
                        Some(self.entra_identity(c, &format!("deployments.{dname}.credentials"))?)
                    }
                    (None, None) => route_identity.clone(),
                    (Some(_), _) => None,
                },
            });
        }
        if self.spec.family == Family::Azure && deployments.is_empty() && !has_upstream {
            return Err(self.cx.at(self.v, &format!("routes.{}", self.name), "an azure route needs `[routes.NAME.deployments.DEPLOYMENT]` tables (endpoint and key per deployment) or a route-level `upstream` for every deployment"));
        }
        Ok(deployments)
    }

    /// Vertex `credentials`, `project` and `location`; `None` for others.
    fn vertex(&self, type_defaults: &TypeDefaults) -> Result<Option<VertexConfig>, ConfigError> {
        if self.spec.family != Family::Vertex {
            return Ok(None);
        }
        let r = self.raw();
        self.host_ident(r.location.as_ref(), "location", &[])?;
        self.host_ident(r.project.as_ref(), "project", &['.', ':'])?;
        Ok(Some(VertexConfig {
            credentials: match &r.credentials {
                Some(c) => self.cx.key_spec(c, &self.key_name("credentials"), true)?,
                None => self.default_key(type_defaults, "credentials")?,
            },
            project: r.project.as_ref().map(|p| p.get_ref().clone()),
            location: r.location.as_ref().map(|l| l.get_ref().clone()),
        }))
    }

    /// A Vertex `project` or `location`, or an AWS `region`, is spliced into
    /// a host name or the path: checked here, so a typo is a config error
    /// and not a 400 blaming the client.
    fn host_ident(
        &self,
        v: Option<&Spanned<String>>,
        field: &str,
        extra: &[char],
    ) -> Result<(), ConfigError> {
        let Some(v) = v else { return Ok(()) };
        let text = v.get_ref();
        if !text.is_empty()
            && text.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || extra.contains(&c)
            })
        {
            Ok(())
        } else {
            Err(self.at(
                v,
                field,
                "expected lowercase letters, digits and `-` (e.g. \"us-central1\", \"my-project\")",
            ))
        }
    }

    /// `headers = { NAME = "location" }`: valid names that sidekey does not
    /// manage, each read from a location that holds a value.
    fn headers(&self) -> Result<Vec<(HeaderName, KeySpec)>, ConfigError> {
        let raw = &self.raw().headers;
        let mut out = Vec::with_capacity(raw.len());
        for (hname, loc) in raw {
            let key = self.key_name(&format!("headers.{hname}"));
            let header = HeaderName::try_from(hname.as_str()).map_err(|_| {
                self.cx
                    .at(loc, &key, format!("`{hname}` is not a valid header name"))
            })?;
            if headers::is_reserved(&header) {
                return Err(self.cx.at(
                    loc,
                    &key,
                    format!("`{hname}` is managed by sidekey and cannot be set per route"),
                ));
            }
            let location = self.cx.location(loc.get_ref(), loc, &key)?;
            if matches!(
                location,
                Location::None | Location::Metadata | Location::Ambient(_)
            ) {
                return Err(self.cx.at(
                    loc,
                    &key,
                    "an extra header needs a location that holds a value",
                ));
            }
            out.push((header, KeySpec::single(location)));
        }
        Ok(out)
    }

    /// `models`: no empty names.
    fn models(&self) -> Result<(), ConfigError> {
        match &self.raw().models {
            Some(models) if models.iter().any(String::is_empty) => Err(self.cx.at(
                self.v,
                &self.key_name("models"),
                "model names must not be empty",
            )),
            _ => Ok(()),
        }
    }
}
