//! Vertex AI: where a request goes, from the route and the client's path.
//!
//! Clients reach Vertex through sidekey in two ways:
//!
//! - the full path, as the Google SDKs send it with `base_url` pointed at
//!   sidekey: `/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent`
//!   (or `v1beta1`). The path goes upstream unchanged; the host follows the
//!   path's location.
//! - a short path, `/publishers/anthropic/models/{model}:rawPredict` or
//!   `/endpoints/openapi/chat/completions`: sidekey prepends
//!   `/v1/projects/{project}/locations/{location}` from the route's settings
//!   (`project` defaults to the service account's `project_id`).
//!
//! The host is `{location}-aiplatform.googleapis.com`, or
//! `aiplatform.googleapis.com` for `global`, unless the route names an
//! `upstream`. A location from the path becomes part of a host name, so only
//! `[a-z0-9-]` is accepted.

use http::Uri;

use crate::credentials::KeySet;
use crate::error::ProxyError;
use crate::url::UpstreamBase;

/// The location used when neither the route nor the path names one.
pub(crate) const DEFAULT_LOCATION: &str = "us-central1";

/// A Vertex route's target.
#[derive(Debug)]
pub(crate) struct VertexTarget {
    pub(crate) keys: KeySet,
    /// For short paths; `None` when neither config nor JSON names one.
    pub(crate) project: Option<String>,
    pub(crate) location: String,
    /// A fixed upstream (tests, private endpoints) instead of the regional host.
    pub(crate) upstream: Option<UpstreamBase>,
}

impl VertexTarget {
    /// The upstream URI and host for a client path remainder and query.
    ///
    /// # Errors
    ///
    /// A 400-class [`ProxyError`] for a location that is not a location, or a
    /// short path on a route that knows no project.
    pub(crate) fn uri(
        &self,
        route: &str,
        rest: &str,
        query: Option<&str>,
    ) -> Result<(Uri, String), ProxyError> {
        let bad = |message: String| ProxyError::BadVertexPath {
            route: route.to_owned(),
            message,
        };
        let full = rest.starts_with("/v1/") || rest.starts_with("/v1beta1/");
        let location = match segment_after(rest, "locations").filter(|_| full) {
            Some(loc) => loc,
            None => self.location.as_str(),
        };
        if location.is_empty()
            || !location
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad(format!("`{location}` is not a Vertex AI location")));
        }
        let path = if full {
            rest.to_owned()
        } else {
            let project = self.project.as_deref().ok_or_else(|| {
                bad("no project: set `project` on the route, or call the full /v1/projects/PROJECT/locations/LOCATION/... path".to_owned())
            })?;
            format!("/v1/projects/{project}/locations/{location}{rest}")
        };
        let base = match &self.upstream {
            Some(u) => u.clone(),
            None => {
                let host = if location == "global" {
                    "https://aiplatform.googleapis.com".to_owned()
                } else {
                    format!("https://{location}-aiplatform.googleapis.com")
                };
                host.parse::<UpstreamBase>().map_err(bad)?
            }
        };
        let uri = base
            .uri(&path, query)
            .map_err(|e| bad(format!("cannot build the upstream URI: {e}")))?;
        Ok((uri, base.host().to_owned()))
    }
}

/// The path segment after `name/`, e.g. the location in `.../locations/us-east5/...`.
fn segment_after<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let mut segments = path.split('/');
    segments.find(|s| *s == name)?;
    segments.next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::pool::HealthRegistry;
    use crate::credentials::{HealthScope, KeySpec};
    use crate::env::MapEnv;

    fn target(project: Option<&str>, location: &str, upstream: Option<&str>) -> VertexTarget {
        let registry = HealthRegistry::default();
        let scope = HealthScope {
            registry: &registry,
            route: "vertex",
            label: "credentials",
        };
        VertexTarget {
            keys: KeySet::resolve(
                &KeySpec::single(crate::credentials::Location::None),
                "",
                crate::credentials::resolve::Reader {
                    env: &MapEnv::default(),
                    files: &crate::files::Direct,
                },
                &scope,
            ),
            project: project.map(str::to_owned),
            location: location.to_owned(),
            upstream: upstream.map(|u| u.parse().unwrap()),
        }
    }

    #[test]
    fn short_paths_get_project_and_location() {
        let t = target(Some("proj"), "us-east5", None);
        let (uri, host) = t
            .uri(
                "vertex",
                "/publishers/anthropic/models/claude-x:streamRawPredict",
                None,
            )
            .unwrap();
        assert_eq!(
            uri.to_string(),
            "https://us-east5-aiplatform.googleapis.com/v1/projects/proj/locations/us-east5/publishers/anthropic/models/claude-x:streamRawPredict"
        );
        assert_eq!(host, "us-east5-aiplatform.googleapis.com");
    }

    #[test]
    fn full_paths_choose_the_host_from_their_location() {
        let t = target(None, "us-central1", None);
        let (uri, _) = t
            .uri(
                "vertex",
                "/v1beta1/projects/p/locations/global/publishers/google/models/g:generateContent",
                Some("alt=sse"),
            )
            .unwrap();
        assert_eq!(
            uri.to_string(),
            "https://aiplatform.googleapis.com/v1beta1/projects/p/locations/global/publishers/google/models/g:generateContent?alt=sse"
        );
    }

    #[test]
    fn hostile_locations_and_missing_projects_are_refused() {
        let t = target(None, "us-central1", None);
        assert!(
            t.uri("vertex", "/v1/projects/p/locations/evil.com%2F/x", None)
                .is_err()
        );
        assert!(
            t.uri("vertex", "/v1/projects/p/locations/a@b/x", None)
                .is_err()
        );
        assert!(
            t.uri(
                "vertex",
                "/publishers/google/models/g:generateContent",
                None
            )
            .is_err()
        );
    }

    #[test]
    fn an_upstream_override_keeps_the_path_mapping() {
        let t = target(Some("proj"), "europe-west4", Some("http://127.0.0.1:9"));
        let (uri, host) = t
            .uri("vertex", "/endpoints/openapi/chat/completions", None)
            .unwrap();
        assert_eq!(
            uri.to_string(),
            "http://127.0.0.1:9/v1/projects/proj/locations/europe-west4/endpoints/openapi/chat/completions"
        );
        assert_eq!(host, "127.0.0.1:9");
    }
}
