//! Shutdown signals: SIGTERM (Kubernetes) and SIGINT (Ctrl-C).

use std::future::Future;
use std::io;

use tokio::signal::unix::{SignalKind, signal};

/// A future that resolves on the first SIGTERM or SIGINT. The handlers are
/// installed before it returns, so a signal that arrives early is not lost.
///
/// # Errors
///
/// When a signal handler cannot be installed.
pub fn signals() -> io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
