//! The settings tables: `[limits]`, `[shutdown]`, `[reload]` and `[keys]`,
//! with their defaults.
//!
//! design.md, "Configuration". Each table is validated on its own from its
//! raw mirror: durations and sizes parse, and values that would make no sense
//! at zero are refused. What the settings mean at run time is up to their
//! users (`server`, `reload`, `credentials`).

use std::time::Duration;

use super::cx::Cx;
use super::error::ConfigError;
use super::raw::{KeysToml, LimitsToml, ReloadToml, ShutdownToml};
use super::units;
use toml::Spanned;

/// Timeouts and sizes (`[limits]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Request bodies up to this size are kept for a fallback retry.
    pub(crate) max_replay_body: u64,
    pub(crate) connect_timeout: Duration,
    /// Wait for the upstream's response head, and longest silence between two
    /// response chunks: a stream is not cut while bytes flow.
    pub(crate) request_timeout: Duration,
    pub(crate) header_read_timeout: Duration,
    /// Requests in flight on one upstream connection before another is
    /// opened (HTTP/2 servers cap concurrent streams per connection).
    pub(crate) upstream_streams_per_connection: usize,
    /// A WebSocket with no byte either way for this long is closed. Long:
    /// a realtime voice session can be quiet for many minutes.
    pub(crate) websocket_idle: Duration,
    /// Client connections (and the WebSockets they became) served at once;
    /// beyond it new connections wait in the kernel's accept queue.
    pub(crate) max_connections: usize,
    /// Largest request head: the HTTP/2 header list, the HTTP/1 read
    /// buffer (a head still incomplete when it is full; hyper's last read
    /// may carry one up to twice the size): beyond it the answer is 431.
    pub(crate) max_header_bytes: u64,
    /// Longest time to receive a body sidekey reads itself (the model
    /// allowlist, SigV4 signing): past it the answer is 408.
    pub(crate) body_read_timeout: Duration,
    /// Bytes all replay buffers may hold at once; a request past it streams
    /// without being kept for a fallback.
    pub(crate) max_replay_total: u64,
}

/// hyper refuses an HTTP/1 read buffer smaller than this (it panics).
pub(crate) const MIN_HEADER_BYTES: u64 = 8192;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_replay_body: 32 << 20,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(600),
            header_read_timeout: Duration::from_secs(10),
            upstream_streams_per_connection: 100,
            websocket_idle: Duration::from_secs(3600),
            max_connections: 1024,
            max_header_bytes: 64 << 10,
            body_read_timeout: Duration::from_secs(30),
            max_replay_total: 64 << 20,
        }
    }
}

/// `[shutdown]`: what happens after SIGTERM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShutdownSettings {
    /// Keep accepting for this long after SIGTERM (classic sidecars whose app
    /// is still sending); `/readyz` already answers 503.
    pub(crate) drain_delay: Duration,
    /// Longest wait for requests in flight before exiting anyway.
    pub(crate) grace_period: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_delay: Duration::ZERO,
            grace_period: Duration::from_secs(25),
        }
    }
}

/// `[reload]`: how changes are picked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReloadSettings {
    /// Re-read everything this often even without a file event.
    pub(crate) interval: Duration,
    /// Wait until watched directories have been quiet this long.
    pub(crate) debounce: Duration,
    /// A file changed in place with no write event to tell when its writer
    /// finished is applied once it has not been modified for this long
    /// (the stability rule, `reload::gate`).
    pub(crate) settle: Duration,
    /// Watch the files' directories for changes (off: SIGHUP and the
    /// periodic re-read only, for file systems that deliver no events).
    pub(crate) watch: bool,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            debounce: Duration::from_millis(100),
            settle: Duration::from_secs(2),
            watch: true,
        }
    }
}

/// `[keys]`: how rejected and rate-limited keys are rested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeysSettings {
    /// How long a rejected key is left out before one request probes it.
    pub(crate) rest: Duration,
    /// How long a pool key that answered 429 is left out when the answer
    /// carries no `Retry-After`.
    pub(crate) rate_limit_rest: Duration,
}

impl Default for KeysSettings {
    fn default() -> Self {
        Self {
            rest: Duration::from_secs(60),
            rate_limit_rest: Duration::from_secs(30),
        }
    }
}

// === impl Cx: the settings tables ===

impl Cx<'_> {
    /// `[limits]`: sizes and counts parse, timeouts are not zero.
    pub(super) fn limits(&self, l: &LimitsToml) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let limits = Limits {
            max_replay_body: match &l.max_replay_body {
                None => d.max_replay_body,
                Some(v) => units::parse_size(v.get_ref())
                    .map_err(|m| self.at(v, "limits.max_replay_body", m))?,
            },
            connect_timeout: self.duration(
                l.connect_timeout.as_ref(),
                "limits.connect_timeout",
                d.connect_timeout,
            )?,
            request_timeout: self.duration(
                l.request_timeout.as_ref(),
                "limits.request_timeout",
                d.request_timeout,
            )?,
            header_read_timeout: self.duration(
                l.header_read_timeout.as_ref(),
                "limits.header_read_timeout",
                d.header_read_timeout,
            )?,
            upstream_streams_per_connection: match &l.upstream_streams_per_connection {
                None => d.upstream_streams_per_connection,
                Some(v) if v.get_ref().0 == 0 => {
                    return Err(self.at(
                        v,
                        "limits.upstream_streams_per_connection",
                        "must be at least 1",
                    ));
                }
                Some(v) => usize::try_from(v.get_ref().0).unwrap_or(usize::MAX),
            },
            websocket_idle: self.duration(
                l.websocket_idle.as_ref(),
                "limits.websocket_idle",
                d.websocket_idle,
            )?,
            max_connections: match &l.max_connections {
                None => d.max_connections,
                Some(v) if v.get_ref().0 == 0 => {
                    return Err(self.at(v, "limits.max_connections", "must be at least 1"));
                }
                Some(v) => usize::try_from(v.get_ref().0).unwrap_or(usize::MAX),
            },
            max_header_bytes: self.size(
                l.max_header_bytes.as_ref(),
                "limits.max_header_bytes",
                d.max_header_bytes,
            )?,
            body_read_timeout: self.duration(
                l.body_read_timeout.as_ref(),
                "limits.body_read_timeout",
                d.body_read_timeout,
            )?,
            max_replay_total: self.size(
                l.max_replay_total.as_ref(),
                "limits.max_replay_total",
                d.max_replay_total,
            )?,
        };
        if let Some(v) = &l.max_header_bytes
            && !(MIN_HEADER_BYTES..=u64::from(u32::MAX)).contains(&limits.max_header_bytes)
        {
            return Err(self.at(v, "limits.max_header_bytes", "must be from 8KiB to 4GiB"));
        }
        self.nonzero_timeouts(l, &limits)?;
        Ok(limits)
    }

    /// A byte size, or `default` when not set.
    fn size(
        &self,
        v: Option<&Spanned<String>>,
        key: &str,
        default: u64,
    ) -> Result<u64, ConfigError> {
        v.map_or(Ok(default), |v| {
            units::parse_size(v.get_ref()).map_err(|m| self.at(v, key, m))
        })
    }

    /// A zero timeout would fail every request: refused where it was set.
    fn nonzero_timeouts(&self, l: &LimitsToml, limits: &Limits) -> Result<(), ConfigError> {
        for (v, key, value) in [
            (
                &l.connect_timeout,
                "limits.connect_timeout",
                limits.connect_timeout,
            ),
            (
                &l.request_timeout,
                "limits.request_timeout",
                limits.request_timeout,
            ),
            (
                &l.header_read_timeout,
                "limits.header_read_timeout",
                limits.header_read_timeout,
            ),
            (
                &l.websocket_idle,
                "limits.websocket_idle",
                limits.websocket_idle,
            ),
            (
                &l.body_read_timeout,
                "limits.body_read_timeout",
                limits.body_read_timeout,
            ),
        ] {
            if let (Some(v), true) = (v, value.is_zero()) {
                return Err(self.at(v, key, "must be greater than zero"));
            }
        }
        Ok(())
    }

    /// `[shutdown]`.
    pub(super) fn shutdown(&self, s: &ShutdownToml) -> Result<ShutdownSettings, ConfigError> {
        let d = ShutdownSettings::default();
        Ok(ShutdownSettings {
            drain_delay: self.duration(
                s.drain_delay.as_ref(),
                "shutdown.drain_delay",
                d.drain_delay,
            )?,
            grace_period: self.duration(
                s.grace_period.as_ref(),
                "shutdown.grace_period",
                d.grace_period,
            )?,
        })
    }

    /// `[reload]`, durations parsed. A zero `interval` is refused by
    /// [`Self::nonzero_reload_interval`], once `[keys]` has been read too.
    pub(super) fn reload(&self, r: &ReloadToml) -> Result<ReloadSettings, ConfigError> {
        let d = ReloadSettings::default();
        Ok(ReloadSettings {
            interval: self.duration(r.interval.as_ref(), "reload.interval", d.interval)?,
            debounce: self.duration(r.debounce.as_ref(), "reload.debounce", d.debounce)?,
            settle: self.duration(r.settle.as_ref(), "reload.settle", d.settle)?,
            watch: r.watch.unwrap_or(d.watch),
        })
    }

    /// A zero `reload.interval` would re-read in a busy loop.
    pub(super) fn nonzero_reload_interval(
        &self,
        r: &ReloadToml,
        reload: &ReloadSettings,
    ) -> Result<(), ConfigError> {
        match (&r.interval, reload.interval.is_zero()) {
            (Some(v), true) => Err(self.at(v, "reload.interval", "must be greater than zero")),
            _ => Ok(()),
        }
    }

    /// `[keys]`.
    pub(super) fn keys(&self, k: &KeysToml) -> Result<KeysSettings, ConfigError> {
        let d = KeysSettings::default();
        Ok(KeysSettings {
            rest: self.duration(k.rest.as_ref(), "keys.rest", d.rest)?,
            rate_limit_rest: self.duration(
                k.rate_limit_rest.as_ref(),
                "keys.rate_limit_rest",
                d.rate_limit_rest,
            )?,
        })
    }
}
