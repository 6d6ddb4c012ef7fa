//! Who may call: no web page can spend the keys.
//!
//! design.md, "WebSocket: realtime and live APIs". Browsers open WebSockets
//! (and send simple cross-site POSTs) to any port on `127.0.0.1`, and a
//! DNS-rebinding page reaches it under its own host name. So, for every
//! request (not only upgrades): one carrying an `Origin` header is refused
//! unless that origin is in `allowed_origins` (SDKs and servers send none);
//! and on a loopback listener, one whose host is neither `localhost`, a
//! loopback address nor in `allowed_hosts` is refused. A listener beyond
//! loopback has the inbound token for that.

use http::header::{self, HeaderMap};
use http::request;

use crate::config::Config;
use crate::error::ProxyError;

/// The longest host or origin quoted back in an error.
const QUOTE_MAX: usize = 100;

/// Refuses web pages' requests and, when the listener the request came in
/// on is a loopback address (`loopback`: the plain or the TLS listener),
/// rebound host names.
///
/// # Errors
///
/// [`ProxyError::OriginNotAllowed`], [`ProxyError::HostNotAllowed`].
pub(crate) fn check(
    config: &Config,
    parts: &request::Parts,
    loopback: bool,
) -> Result<(), ProxyError> {
    check_origin(&config.allowed_origins, &parts.headers)?;
    if loopback {
        // HTTP/2 carries the host in `:authority`; HTTP/1.1 in `Host`
        // (absolute-form targets are refused before this).
        let host = parts
            .uri
            .authority()
            .map(http::uri::Authority::as_str)
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
            });
        if let Some(host) = host
            && !host_allowed(&config.allowed_hosts, host)
        {
            return Err(ProxyError::HostNotAllowed { host: quote(host) });
        }
    }
    Ok(())
}

fn check_origin(allowed: &[String], headers: &HeaderMap) -> Result<(), ProxyError> {
    for value in headers.get_all(header::ORIGIN) {
        let origin = String::from_utf8_lossy(value.as_bytes());
        let normal = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if !allowed.contains(&normal) {
            return Err(ProxyError::OriginNotAllowed {
                origin: quote(&origin),
            });
        }
    }
    Ok(())
}

/// Whether `host` (with or without port) names this machine's loopback
/// listener: `localhost`, a loopback address, or a listed name. Runs on
/// every request: no allocation, and the usual `127.0.0.1` and `localhost`
/// are settled by one comparison.
fn host_allowed(allowed: &[String], host: &str) -> bool {
    let name = without_port(host.trim_ascii());
    let name = name.strip_suffix('.').unwrap_or(name);
    if name == "127.0.0.1" || name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    // Listed names are kept lowercase (config).
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
        return true;
    }
    let ip = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    ip.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// `host` without its `:port` (IPv6 literals keep their brackets).
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => host.get(..=end).unwrap_or(host),
            None => host,
        };
    }
    // `memrchr` rather than `rsplit_once`: one SIMD scan.
    let colon = memchr::memrchr(b':', host.as_bytes());
    match colon.and_then(|i| host.split_at_checked(i)) {
        Some((name, port)) if port.bytes().skip(1).all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn quote(text: &str) -> String {
    text.chars().take(QUOTE_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_pass_and_others_do_not() {
        let allowed = ["sidekey.internal".to_owned()];
        for ok in [
            "localhost",
            "localhost:8787",
            "LOCALHOST.",
            "127.0.0.1",
            "127.0.0.1:8787",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:8787",
            "sidekey.internal:8787",
        ] {
            assert!(host_allowed(&allowed, ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8787",
            "localhost.evil.example",
            "10.0.0.1",
            "[::2]:80",
            "0.0.0.0",
            "127.0.0.1.evil.example",
            "",
        ] {
            assert!(!host_allowed(&allowed, bad), "{bad}");
        }
    }

    #[test]
    fn origins_must_be_listed() {
        let mut h = HeaderMap::new();
        assert!(check_origin(&[], &h).is_ok(), "no Origin: an SDK");
        h.insert(header::ORIGIN, "http://localhost:3000".parse().unwrap());
        assert!(check_origin(&[], &h).is_err());
        assert!(check_origin(&["http://localhost:3000".to_owned()], &h).is_ok());
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(check_origin(&["http://localhost:3000".to_owned()], &h).is_err());
    }
}
