//! What a reload changed, for its log lines.
//!
//! design.md, "Hot reload": an operator must be able to see that a rotation
//! reached every pod. [`credential_changes`] gives one entry per credential
//! whose value changed (route, setting, location, old and new fingerprint,
//! never a value), logged one line each; [`describe_changes`] sums up the
//! rest (routes added or removed, settings changed) for the `reloaded` line;
//! [`restart_required`] names settings a reload cannot apply.

use std::collections::BTreeMap;

use super::snapshot::Snapshot;
use crate::config::{Config, RouteConfig};
use crate::credentials::{KeySet, KeyValue};

/// One credential whose value changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CredentialChange {
    pub(crate) route: String,
    /// `key`, `deployments.NAME.key`, `headers.NAME`, `credentials`; with
    /// `[i]` for the i-th key of a fallback pair or a pool.
    pub(crate) credential: String,
    pub(crate) location: String,
    pub(crate) from: String,
    pub(crate) to: String,
}

/// Every credential of a route present in both snapshots whose value changed.
pub(crate) fn credential_changes(old: &Snapshot, new: &Snapshot) -> Vec<CredentialChange> {
    let mut out = Vec::new();
    for route in new.routes.iter_sorted() {
        let Some(prev) = old.routes.get(&route.name) else {
            continue;
        };
        let prev_keys: BTreeMap<String, &KeySet> = prev.key_sets().into_iter().collect();
        for (label, keys) in route.key_sets() {
            let Some(prev_keys) = prev_keys.get(&label) else {
                continue;
            };
            for (i, key) in keys.keys.iter().enumerate() {
                let was = prev_keys.keys.get(i).map(|k| fingerprint_of(&k.value));
                let now = fingerprint_of(&key.value);
                if was.as_deref() == Some(now.as_str()) {
                    continue;
                }
                let credential = if keys.keys.len() > 1 {
                    format!("{label}[{i}]")
                } else {
                    label.clone()
                };
                out.push(CredentialChange {
                    route: route.name.to_string(),
                    credential,
                    location: key.location.to_string(),
                    from: was.unwrap_or_else(|| "none".to_owned()),
                    to: now,
                });
            }
        }
    }
    out
}

/// What else changed between two snapshots, for the `reloaded` line: routes
/// added and removed, route settings and other settings that changed, and
/// how many credentials changed.
pub(crate) fn describe_changes(old: &Snapshot, new: &Snapshot, credentials: usize) -> Vec<String> {
    let mut out = Vec::new();
    fn routes(s: &Snapshot) -> BTreeMap<&str, &RouteConfig> {
        s.config
            .routes
            .iter()
            .map(|r| (r.name.as_str(), r))
            .collect()
    }
    let (before, after) = (routes(old), routes(new));
    for name in after.keys().filter(|n| !before.contains_key(*n)) {
        out.push(format!("route {name} added"));
    }
    for name in before.keys().filter(|n| !after.contains_key(*n)) {
        out.push(format!("route {name} removed"));
    }
    for (name, cfg) in &after {
        if let Some(prev) = before.get(name)
            && prev != cfg
        {
            out.push(format!("route {name} settings changed"));
        }
    }
    if credentials > 0 {
        out.push(format!("{credentials} credential(s) changed"));
    }
    if out.is_empty() {
        out.push("settings changed".to_owned());
    }
    out
}

fn fingerprint_of(value: &KeyValue) -> String {
    match value {
        KeyValue::Static { fingerprint, .. } | KeyValue::Token { fingerprint, .. } => {
            fingerprint.to_string()
        }
        KeyValue::Dynamic(_) => "dynamic".to_owned(),
        KeyValue::None => "none".to_owned(),
        KeyValue::Missing(_) => "missing".to_owned(),
    }
}

/// Settings read once at start: a changed value only takes effect after a
/// restart, which the reloader says in a log line.
pub(crate) fn restart_required(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.listen != new.listen {
        out.push("listen");
    }
    if old.admin_listen != new.admin_listen {
        out.push("admin_listen");
    }
    if old.tls.as_ref().map(|t| t.addr) != new.tls.as_ref().map(|t| t.addr) {
        out.push("tls_listen");
    }
    if old.limits.header_read_timeout != new.limits.header_read_timeout {
        out.push("limits.header_read_timeout");
    }
    if old.limits.max_connections != new.limits.max_connections {
        out.push("limits.max_connections");
    }
    if old.limits.max_header_bytes != new.limits.max_header_bytes {
        out.push("limits.max_header_bytes");
    }
    out
}
