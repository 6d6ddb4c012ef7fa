//! An echo provider and the probes the reload tests use: which key reached
//! the provider through a route, and what a metric says.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::client;
use super::kubelet::SecretVolume;
use super::mock::{Mock, Recorded, Reply, Transport};
use super::sidekey::{Running, start_in};

/// Every wait for a reload to show is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// A provider that answers with the credential it received.
pub async fn mock() -> Mock {
    Mock::start(Transport::Plain, |r: &Recorded| {
        let auth = r.header("authorization").unwrap_or("");
        Reply::json(200, serde_json::json!({ "auth": auth }).to_string())
    })
    .await
}

/// A bearer route `name` to `upstream` with its key at `location`.
pub fn route(name: &str, upstream: &str, location: &str) -> String {
    format!(
        "[routes.{name}]\ntype = \"openai-compatible\"\nupstream = \"{upstream}\"\nkey = \"{location}\"\n"
    )
}

/// One GET, bounded: a stalled sidekey fails the test instead of hanging it.
pub async fn get(url: &str) -> client::Resp {
    tokio::time::timeout(Duration::from_secs(3), client::get(url))
        .await
        .unwrap_or_else(|_| panic!("no answer within 3 s from {url}: sidekey is stalled"))
}

/// The credential the provider saw for one request to `base/{route}/...`,
/// or sidekey's error when the request did not reach the provider.
pub async fn try_key_seen(base: &str, route: &str) -> Result<String, String> {
    let resp = get(&format!("{base}/{route}/v1/models")).await;
    if resp.status != 200 {
        return Err(resp.text());
    }
    Ok(resp.json()["auth"].as_str().unwrap().to_owned())
}

/// Like [`try_key_seen`], for a request that must succeed.
pub async fn key_seen(base: &str, route: &str) -> String {
    try_key_seen(base, route)
        .await
        .unwrap_or_else(|e| panic!("request through {route} failed: {e}"))
}

/// Waits until requests through `route` carry `Bearer {want}`.
pub async fn wait_for_key(base: &str, route: &str, want: &str) {
    let want = format!("Bearer {want}");
    super::eventually(&format!("{route} to send {want}"), WAIT, || async {
        (try_key_seen(base, route).await.as_deref() == Ok(want.as_str())).then_some(())
    })
    .await;
}

/// The value of the first metric line on `admin` starting with `prefix`.
pub async fn metric(admin: &str, prefix: &str) -> Option<f64> {
    let text = get(&format!("{admin}/metrics")).await.text();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Writes `value` to `dir/rel`, creating its directory; returns the path.
pub fn key_file(dir: &Path, rel: &str, value: &str) -> PathBuf {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, value).unwrap();
    path
}

/// An echo provider, a Secret volume under `dir/secrets` holding `key`, and
/// sidekey in `dir` with one route `name` reading it.
pub async fn volume_route(dir: &Path, name: &str, key: &str) -> (Mock, SecretVolume, Running) {
    let mock = mock().await;
    let vol = SecretVolume::create(&dir.join("secrets"), &[("key", key)]);
    let config = route(name, &mock.url, &vol.location("key"));
    let sidekey = start_in(dir, &config, sidekey::MapEnv::default()).await;
    (mock, vol, sidekey)
}
