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
/// there rather than in the path.
pub(crate) fn realtime_deployment<'q>(rest: &str, query: Option<&'q str>) -> Option<&'q str> {
    if rest.trim_end_matches('/') != "/openai/realtime" {
        return None;
    }
    query?
        .split('&')
        .find_map(|p| p.strip_prefix("deployment="))
        .filter(|name| !name.is_empty())
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
