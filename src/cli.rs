//! Command-line flags. Every flag has a `SIDEKEY_*` environment twin, named
//! by one rule (`--log-format` ↔ `SIDEKEY_LOG_FORMAT`); a flag beats its
//! variable, which beats the config file (for `--listen`/`--admin-listen`),
//! which beats the default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Overrides;
use crate::telemetry::LogFormat;

/// The config file variable (twin of `--config`).
pub const ENV_CONFIG: &str = "SIDEKEY_CONFIG";

/// sidekey: a credential-injecting sidecar proxy for LLM provider APIs.
///
/// Apps send plain HTTP to `127.0.0.1:8787/<route>/...` with any dummy key;
/// sidekey swaps in the real credential and forwards over TLS.
#[derive(Debug, Parser)]
#[command(name = "sidekey", version, about, long_about = None)]
pub struct Cli {
    /// The config file; without one, the built-in default config runs
    /// (one route per provider type, keys from the environment).
    #[arg(long, short = 'c', env = ENV_CONFIG, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Log line format.
    #[arg(long, env = "SIDEKEY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Proxy address, overriding the config's `listen`.
    #[arg(long, env = "SIDEKEY_LISTEN", global = true, value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,

    /// Admin address, overriding the config's `admin_listen`.
    #[arg(
        long,
        env = "SIDEKEY_ADMIN_LISTEN",
        global = true,
        value_name = "IP:PORT"
    )]
    pub admin_listen: Option<SocketAddr>,

    /// Runtime worker threads (default: the CPUs available to the container).
    #[arg(long, env = "SIDEKEY_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<usize>,

    /// What to do; without a command, run the proxy.
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The settings that win over the config file.
    #[must_use]
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            admin_listen: self.admin_listen,
        }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config and read every credential (offline); print what
    /// each route will do, with key fingerprints, never the keys.
    /// Exit status: 0 ok, 64 config invalid, 69 a credential is unavailable.
    Check,
}
