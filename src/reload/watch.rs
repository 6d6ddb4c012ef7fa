//! When to reload: file events, SIGHUP, and a periodic re-read.
//!
//! design.md, "Hot reload". The kubelet never writes a mounted Secret file in
//! place: it writes a new timestamped directory and renames a `..data_tmp`
//! symlink over `..data`, so a watch on the file itself dies with the first
//! update. sidekey therefore watches the *directories* holding the config and
//! every file a location names (non-recursively, paths as given, symlinks not
//! resolved) and treats any event there other than a read as "something
//! changed": it then waits until the directory has been quiet for
//! `reload.debounce` (an in-place write is several events, and a reader woken
//! by the first can see a half-written file), re-reads everything, and lets
//! [`Shared::reload`] decide whether anything really changed.
//!
//! SIGHUP forces a reload; `reload.interval` re-reads periodically to cover
//! file systems that deliver no events. `reload.watch = false` turns the
//! watches off and leaves those two. After every reload the watch set is
//! brought in line with the files the current snapshot names.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use super::Shared;
use super::snapshot::watch_dirs;

/// The longest a steady stream of events can postpone a reload, in debounces.
const MAX_SETTLE_DEBOUNCES: u32 = 10;

/// Watches, signals and timer, set up before the proxy serves so that no
/// change made after [`crate::Server::start`] returns goes unseen.
#[derive(Debug)]
pub(crate) struct Reloader {
    shared: Arc<Shared>,
    dirs: Dirs,
    events: mpsc::Receiver<()>,
    sighup: Option<Signal>,
}

impl Reloader {
    /// Installs the watches for the current snapshot and the SIGHUP handler.
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        // Capacity one: any number of events between two reloads is one wake-up.
        let (tx, events) = mpsc::channel::<()>(1);
        let sighup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes and the timer only");
                None
            }
        };
        let mut reloader = Self {
            dirs: Dirs::new(tx),
            shared,
            events,
            sighup,
        };
        reloader.sync_watches();
        reloader
    }

    /// Watches the directories of the files the current snapshot names.
    fn sync_watches(&mut self) {
        let snap = self.shared.snapshot();
        let files = if snap.config.reload.watch {
            snap.files(&self.shared.source, self.shared.env.as_ref())
        } else {
            Vec::new()
        };
        self.dirs.sync(watch_dirs(&files));
    }

    /// Reloads on every trigger until `stop` resolves.
    pub(crate) async fn run(mut self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let settings = self.shared.snapshot().config.reload.clone();
            let trigger = tokio::select! {
                Some(()) = self.events.recv() => {
                    settle(&mut self.events, settings.debounce).await;
                    "file change"
                }
                () = hangup(&mut self.sighup) => "SIGHUP",
                () = tokio::time::sleep(settings.interval) => "periodic re-read",
                () = &mut stop => return,
            };
            self.shared.reload(trigger);
            self.sync_watches();
        }
    }
}

/// Waits until no event has arrived for `quiet` (bounded), so a burst of
/// events, one kubelet update or one editor save, is one reload that reads
/// the finished files.
async fn settle(events: &mut mpsc::Receiver<()>, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet * MAX_SETTLE_DEBOUNCES;
    while let Ok(Some(())) = tokio::time::timeout(quiet, events.recv()).await {
        if tokio::time::Instant::now() >= deadline {
            return;
        }
    }
}

async fn hangup(sighup: &mut Option<Signal>) {
    match sighup {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// The watched directories.
struct Dirs {
    watcher: Option<RecommendedWatcher>,
    watched: BTreeSet<PathBuf>,
}

impl std::fmt::Debug for Dirs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dirs")
            .field("watched", &self.watched)
            .finish_non_exhaustive()
    }
}

impl Dirs {
    fn new(tx: mpsc::Sender<()>) -> Self {
        // Runs on notify's thread: only signal; never block it.
        let handler = move |event: notify::Result<notify::Event>| {
            let relevant = match &event {
                // sidekey's own reads of the files show up as accesses.
                Ok(e) => !matches!(e.kind, EventKind::Access(_)),
                // Overflow or a lost watch: re-read to be safe.
                Err(_) => true,
            };
            if relevant {
                let _ = tx.try_send(());
            }
        };
        let watcher = match notify::recommended_watcher(handler) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch files; changes are picked up by SIGHUP and the periodic re-read");
                None
            }
        };
        Self {
            watcher,
            watched: BTreeSet::new(),
        }
    }

    /// Watches exactly `dirs`. Every directory is (re-)added each time: a
    /// directory that was deleted and created again has a new inode.
    fn sync(&mut self, dirs: Vec<PathBuf>) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let wanted: BTreeSet<PathBuf> = dirs.into_iter().collect();
        for gone in self.watched.difference(&wanted) {
            let _ = watcher.unwatch(gone);
        }
        for dir in &wanted {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive)
                && !self.watched.contains(dir)
            {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; relying on the periodic re-read");
            }
        }
        self.watched = wanted;
    }
}
