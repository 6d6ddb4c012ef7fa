//! Microsoft Entra ID tokens for Azure OpenAI without an API key.
//!
//! design.md, "Keyless identities". Three sources, each a [`Mint`]:
//!
//! - [`Entra`] with a federated token (AKS workload identity): the
//!   client-assertion grant to `{authority}/{tenant}/oauth2/v2.0/token`,
//!   the assertion read from `AZURE_FEDERATED_TOKEN_FILE` at every refresh
//!   (the kubelet rotates it hourly);
//! - [`Entra`] with a client secret (clusters outside Azure): the
//!   client-credentials grant, the secret read from a location (reloaded);
//! - [`ManagedIdentity`]: the instance metadata service, `Metadata: true`,
//!   `resource` = the scope without `/.default`, an optional user-assigned
//!   `client_id`; its `expires_in` is a string.
//!
//! Every token goes upstream as `Authorization: Bearer`.

use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use http::Request;

use super::{Mint, MintError, MintFuture, oauth};
use crate::env::Env;
use crate::secret::Secret;
use crate::upstream::{Client, UpstreamBody};

/// The scope Azure OpenAI wants, when a route names none.
pub(crate) const DEFAULT_SCOPE: &str = "https://cognitiveservices.azure.com/.default";
/// Entra's public cloud, when `AZURE_AUTHORITY_HOST` is not set.
const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";
/// The instance metadata service's token endpoint.
const IMDS: &str = "http://169.254.169.254";
const IMDS_PATH: &str = "/metadata/identity/oauth2/token";

/// An app registration (or a workload identity's federated credential)
/// asking Entra for tokens.
pub(crate) struct Entra {
    client_id: String,
    tenant_id: String,
    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    token_url: String,
    scope: String,
    proof: Proof,
}

/// How the app proves who it is.
enum Proof {
    /// A federated token in this file (workload identity), re-read each time.
    TokenFile(PathBuf),
    /// A client secret.
    Secret(Secret),
}

/// `AZURE_AUTHORITY_HOST` (Azure's libraries honour it for sovereign
/// clouds), else the public cloud; always with a trailing `/`.
fn authority(env: &dyn Env) -> String {
    let host = env
        .var("AZURE_AUTHORITY_HOST")
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_AUTHORITY.to_owned());
    format!("{}/", host.trim().trim_end_matches('/'))
}

/// A tenant or client id goes into a URL: GUIDs and domain names only.
fn id(name: &str, value: &str) -> Result<String, String> {
    let v = value.trim();
    if v.is_empty()
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return Err(format!("{name} must be a GUID or a domain name"));
    }
    Ok(v.to_owned())
}

impl Entra {
    /// AKS workload identity, from the variables its webhook injects.
    ///
    /// # Errors
    ///
    /// Which variable is missing (names only).
    pub(crate) fn workload_identity(env: &dyn Env, scope: &str) -> Result<Self, String> {
        let var = |name: &str| {
            env.var(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| format!("{name} is not set (is the pod labelled azure.workload.identity/use: \"true\"?)"))
        };
        let client_id = id("AZURE_CLIENT_ID", &var("AZURE_CLIENT_ID")?)?;
        let tenant_id = id("AZURE_TENANT_ID", &var("AZURE_TENANT_ID")?)?;
        let file = PathBuf::from(var("AZURE_FEDERATED_TOKEN_FILE")?);
        Ok(Self::new(
            client_id,
            tenant_id,
            &authority(env),
            scope,
            Proof::TokenFile(file),
        ))
    }

    /// An app registration with a client secret.
    ///
    /// # Errors
    ///
    /// When an id cannot go into a URL.
    pub(crate) fn client_secret(
        env: &dyn Env,
        tenant_id: &str,
        client_id: &str,
        secret: Secret,
        scope: &str,
    ) -> Result<Self, String> {
        let client_id = id("client_id", client_id)?;
        let tenant_id = id("tenant_id", tenant_id)?;
        Ok(Self::new(
            client_id,
            tenant_id,
            &authority(env),
            scope,
            Proof::Secret(secret),
        ))
    }

    fn new(
        client_id: String,
        tenant_id: String,
        authority: &str,
        scope: &str,
        proof: Proof,
    ) -> Self {
        Self {
            token_url: format!("{authority}{tenant_id}/oauth2/v2.0/token"),
            client_id,
            tenant_id,
            scope: scope.to_owned(),
            proof,
        }
    }

    async fn request(&self) -> Result<Request<UpstreamBody>, MintError> {
        let mut fields = vec![
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
            ("grant_type", "client_credentials"),
        ];
        let assertion;
        match &self.proof {
            Proof::TokenFile(path) => {
                assertion = super::token_file::read(path).await?;
                fields.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
                fields.push(("client_assertion", assertion.as_str()));
            }
            Proof::Secret(secret) => {
                let text = std::str::from_utf8(secret.expose())
                    .map_err(|_| MintError::Request("the client secret is not UTF-8".to_owned()))?;
                fields.push(("client_secret", text));
            }
        }
        oauth::form_post(&self.token_url, &fields)
    }
}

impl fmt::Debug for Entra {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Mint for Entra {
    fn kind(&self) -> &'static str {
        match self.proof {
            Proof::TokenFile(_) => "workload-identity",
            Proof::Secret(_) => "client-secret",
        }
    }

    fn describe(&self) -> String {
        let proof = match &self.proof {
            Proof::TokenFile(p) => format!("workload identity (token file {}", p.display()),
            Proof::Secret(s) => format!("client secret ({}", s.fingerprint()),
        };
        format!(
            "{proof}, client id {}, tenant {}, scope {}, at {})",
            self.client_id, self.tenant_id, self.scope, self.token_url
        )
    }

    fn mint<'a>(&'a self, client: &'a Client, _now: SystemTime) -> MintFuture<'a> {
        Box::pin(async move { oauth::exchange(client, self.request().await?).await })
    }
}

/// Azure's instance metadata service (a VM's or node pool's managed identity).
pub(crate) struct ManagedIdentity {
    /// The whole token URL, query included.
    url: String,
    client_id: Option<String>,
}

impl ManagedIdentity {
    /// The identity for `scope`: the system-assigned one, or the
    /// user-assigned `AZURE_CLIENT_ID`. `AZURE_POD_IDENTITY_AUTHORITY_HOST`
    /// moves the endpoint, as Azure's libraries allow.
    ///
    /// # Errors
    ///
    /// When `AZURE_CLIENT_ID` cannot go into a URL.
    pub(crate) fn new(env: &dyn Env, scope: &str) -> Result<Self, String> {
        let host = env
            .var("AZURE_POD_IDENTITY_AUTHORITY_HOST")
            .filter(|h| !h.trim().is_empty())
            .unwrap_or_else(|| IMDS.to_owned());
        let client_id = env
            .var("AZURE_CLIENT_ID")
            .filter(|v| !v.trim().is_empty())
            .map(|v| id("AZURE_CLIENT_ID", &v))
            .transpose()?;
        let resource = scope.strip_suffix("/.default").unwrap_or(scope);
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("api-version", "2018-02-01");
        query.append_pair("resource", resource);
        if let Some(c) = &client_id {
            query.append_pair("client_id", c);
        }
        Ok(Self {
            url: format!(
                "{}{IMDS_PATH}?{}",
                host.trim().trim_end_matches('/'),
                query.finish()
            ),
            client_id,
        })
    }
}

impl fmt::Debug for ManagedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Mint for ManagedIdentity {
    fn kind(&self) -> &'static str {
        "managed-identity"
    }

    fn describe(&self) -> String {
        match &self.client_id {
            Some(c) => format!(
                "managed identity (user-assigned, client id {c}, at {})",
                self.url
            ),
            None => format!("managed identity (system-assigned, at {})", self.url),
        }
    }

    fn mint<'a>(&'a self, client: &'a Client, _now: SystemTime) -> MintFuture<'a> {
        Box::pin(async move {
            let req = Request::get(self.url.as_str())
                .header("metadata", "true")
                .body(UpstreamBody::buffered(bytes::Bytes::new()))
                .map_err(|e| MintError::Request(format!("bad IMDS address: {e}")))?;
            oauth::exchange(client, req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::MapEnv;

    #[test]
    fn workload_identity_reads_the_webhook_variables() {
        let env = MapEnv::new([
            ("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555"),
            ("AZURE_TENANT_ID", "contoso.onmicrosoft.com"),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            ),
            ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us"),
        ]);
        let e = Entra::workload_identity(&env, DEFAULT_SCOPE).unwrap();
        assert_eq!(
            e.token_url,
            "https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(e.kind(), "workload-identity");
        let err = Entra::workload_identity(&MapEnv::default(), DEFAULT_SCOPE).unwrap_err();
        assert!(err.contains("AZURE_CLIENT_ID is not set"), "{err}");
        let bad = MapEnv::new([
            ("AZURE_CLIENT_ID", "x/../y"),
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
        ]);
        assert!(Entra::workload_identity(&bad, DEFAULT_SCOPE).is_err());
    }

    #[test]
    fn managed_identity_asks_for_the_resource_of_the_scope() {
        let m = ManagedIdentity::new(&MapEnv::default(), DEFAULT_SCOPE).unwrap();
        assert_eq!(
            m.url,
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fcognitiveservices.azure.com"
        );
        let env = MapEnv::new([
            ("AZURE_CLIENT_ID", "abc"),
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9/"),
        ]);
        let m = ManagedIdentity::new(&env, DEFAULT_SCOPE).unwrap();
        assert!(
            m.url
                .starts_with("http://127.0.0.1:9/metadata/identity/oauth2/token?"),
            "{}",
            m.url
        );
        assert!(m.url.ends_with("&client_id=abc"), "{}", m.url);
    }

    #[test]
    fn a_client_secret_never_shows() {
        let secret = Secret::new(b"very-secret-value".to_vec()).unwrap();
        let e = Entra::client_secret(
            &MapEnv::default(),
            "tenant",
            "client",
            secret,
            DEFAULT_SCOPE,
        )
        .unwrap();
        let shown = format!("{e:?} {}", e.describe());
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("client secret (sha256:"), "{shown}");
    }
}
