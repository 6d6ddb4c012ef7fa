//! Azure OpenAI: each deployment has its own endpoint and key.
//!
//! Clients call `/azure/openai/deployments/{name}/chat/completions?api-version=...`
//! (what `AzureOpenAI(azure_endpoint="http://127.0.0.1:8787/azure")` sends).
//! The deployment name picks the target; a route-level `upstream` serves
//! deployments that are not listed, and paths without a deployment (such as
//! `/openai/models` or the `/openai/v1/...` API).

use std::collections::HashMap;

use crate::error::ProxyError;

/// The deployment named in `/openai/deployments/{name}/...`.
pub(crate) fn deployment(rest: &str) -> Option<&str> {
    let rest = rest.strip_prefix("/openai/deployments/")?;
    let name = rest.split('/').next()?;
    (!name.is_empty()).then_some(name)
}

/// The deployment an Azure realtime handshake names in its query
/// (`/openai/realtime?api-version=...&deployment=NAME`): that API puts it
/// there rather than in the path. Parameter names are compared decoded, as
/// the service reads them (`%64eployment` is `deployment`); a query naming
/// two different deployments names none, so neither one's allowlist can be
/// passed with the other's name.
pub(crate) fn realtime_deployment<'q>(rest: &str, query: Option<&'q str>) -> Option<&'q str> {
    if rest.trim_end_matches('/') != "/openai/realtime" {
        return None;
    }
    let mut found = None;
    for param in query?.split('&') {
        let named = form_urlencoded::parse(param.as_bytes())
            .next()
            .is_some_and(|(name, _)| name == "deployment");
        if !named {
            continue;
        }
        let value = param.split_once('=').map_or("", |(_, v)| v);
        if found.is_some_and(|f| f != value) {
            return None;
        }
        found = Some(value);
    }
    found.filter(|name| !name.is_empty())
}

/// The target (of the deployment, or the default) for a request path on
/// the azure route `route`.
///
/// # Errors
///
/// [`ProxyError::UnknownDeployment`] / [`ProxyError::NoDeployment`] when no
/// target serves the path.
pub(crate) fn target<'r, T>(
    route: &str,
    deployments: &'r HashMap<Box<str>, T>,
    default: Option<&'r T>,
    named: Option<&str>,
) -> Result<&'r T, ProxyError> {
    match named {
        Some(name) => deployments.get(name).or(default).ok_or_else(|| {
            let mut known: Vec<_> = deployments.keys().map(|k| &**k).collect();
            known.sort_unstable();
            ProxyError::UnknownDeployment {
                route: route.to_owned(),
                deployment: name.to_owned(),
                known: known.join(", "),
            }
        }),
        None => default.ok_or_else(|| ProxyError::NoDeployment {
            route: route.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_realtime_deployment_is_read_as_the_service_reads_it() {
        let rt = |q| realtime_deployment("/openai/realtime", Some(q));
        assert_eq!(rt("api-version=1&deployment=d1"), Some("d1"));
        assert_eq!(rt("%64eployment=d1&api-version=1"), Some("d1"));
        assert_eq!(rt("deployment=d1&deployment=d1"), Some("d1"));
        assert_eq!(rt("deployment=d1&%64eployment=d2"), None, "two names: none");
        assert_eq!(rt("deployments=d1&xdeployment=d2"), None);
        assert_eq!(
            realtime_deployment("/openai/other", Some("deployment=d1")),
            None
        );
    }

    #[test]
    fn finds_the_deployment() {
        assert_eq!(
            deployment("/openai/deployments/gpt-4o/chat/completions"),
            Some("gpt-4o")
        );
        assert_eq!(deployment("/openai/deployments/gpt-4o"), Some("gpt-4o"));
        assert_eq!(deployment("/openai/deployments/"), None);
        assert_eq!(deployment("/openai/models"), None);
    }
}
