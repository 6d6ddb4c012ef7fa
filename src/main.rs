//! The `sidekey` binary: parse flags, set up logging and the runtime, then run
//! the proxy or `check`. All logic lives in the library.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use sidekey::cli::{Cli, Command};
use sidekey::{ConfigSource, Env, Options, Overrides, ProcessEnv, Server};

#[allow(
    clippy::print_stderr,
    reason = "the binary reports start-up failures on stderr"
)]
fn main() -> ExitCode {
    // Before any credential is read (by `check` too): no core dumps.
    let hardening = sidekey::hardening::no_core_dumps();
    let cli = Cli::parse();
    let env: Arc<dyn Env> = Arc::new(ProcessEnv);
    let source = cli
        .config
        .clone()
        .map_or(ConfigSource::BuiltIn, ConfigSource::File);

    let overrides = cli.overrides();
    if let Some(Command::Check) = cli.command {
        return check(&source, env.as_ref(), &overrides);
    }

    // Held until `main` returns, so the last log lines are flushed.
    let _log_guard = match sidekey::telemetry::init(cli.log_format, env.as_ref()) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("sidekey: {e}");
            return ExitCode::from(sidekey::check::EXIT_CONFIG);
        }
    };
    for refused in &hardening {
        tracing::debug!(refused = %refused, "core dumps could not be turned off");
    }
    // One worker: a current-thread runtime, without the work-stealing
    // scheduler's cross-thread machinery (the common sidecar with a 1-CPU
    // limit). More: the multi-thread scheduler, one worker per CPU by default.
    let mut runtime = match cli.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all().thread_name("sidekey");
    let runtime = match runtime.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidekey: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = match sidekey::shutdown::signals() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let server = match Server::start(Options {
            config: source,
            env,
            overrides,
        })
        .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "sidekey cannot start");
                return ExitCode::from(e.exit_code());
            }
        };
        server.run(shutdown).await;
        ExitCode::SUCCESS
    })
}

fn check(source: &ConfigSource, env: &dyn Env, overrides: &Overrides) -> ExitCode {
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    match sidekey::check::run(source, env, overrides, &mut out, &mut err) {
        Ok(verdict) => ExitCode::from(verdict.exit_code()),
        Err(_) => ExitCode::FAILURE,
    }
}
