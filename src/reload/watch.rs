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
//! Every event is also written to the [`Journal`], which the stability rule
//! (`super::gate`) reads: a file with a writer that has not closed it yet is
//! held, and looked at again once the close arrives (or after the time the
//! [`Outcome`] asks for).
//!
//! SIGHUP forces a reload; `reload.interval` re-reads periodically to cover
//! file systems that deliver no events. `reload.watch = false` turns the
//! watches off and leaves those two. After every reload the watch set is
//! brought in line with the files the current snapshot names.
//!
//! Reloads run on a thread of their own ([`Worker`]), never on a runtime
//! thread: reading files can block (a slow or hung file system), and the
//! sidecar's runtime has one thread. While a reload runs or hangs, requests
//! and the admin port go on; events meanwhile make one more reload.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::gate::Journal;
use super::{Outcome, Shared, Trigger};

/// The longest a steady stream of events can postpone a reload, in debounces.
const MAX_SETTLE_DEBOUNCES: u32 = 10;

/// Watches, signals and timer, set up before the proxy serves so that no
/// change made after [`crate::Server::start`] returns goes unseen.
#[derive(Debug)]
pub(crate) struct Reloader {
    shared: Arc<Shared>,
    events: mpsc::Receiver<()>,
    sighup: Option<Signal>,
    worker: Worker,
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
        let mut dirs = Dirs::new(tx, shared.journal.clone());
        dirs.follow(&shared);
        Self {
            worker: Worker::start(shared.clone(), dirs),
            shared,
            events,
            sighup,
        }
    }

    /// Reloads on every trigger until `stop` resolves.
    pub(crate) async fn run(mut self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        // A held file is looked at again by then, as the same trigger.
        let mut recheck: Option<(Instant, Trigger)> = None;
        loop {
            let settings = self.shared.snapshot().config.reload.clone();
            let far = Instant::now() + settings.interval;
            let (recheck_at, recheck_trigger) = recheck.unwrap_or((far, Trigger::Periodic));
            let trigger = tokio::select! {
                Some(()) = self.events.recv() => {
                    settle(&mut self.events, settings.debounce).await;
                    Trigger::FileChange
                }
                () = hangup(&mut self.sighup) => Trigger::Sighup,
                () = tokio::time::sleep_until(recheck_at.min(far)) => {
                    if recheck_at <= far { recheck_trigger } else { Trigger::Periodic }
                }
                () = &mut stop => return,
            };
            let outcome = tokio::select! {
                outcome = self.worker.reload(trigger) => outcome,
                () = &mut stop => return,
            };
            tracing::debug!(
                trigger = trigger.as_str(),
                swapped = outcome.swapped,
                rejected = outcome.rejected.len(),
                recheck_ms = outcome.recheck.map(|d| d.as_millis() as u64),
                "reload done"
            );
            recheck = outcome
                .recheck
                .map(|after| (Instant::now() + after.max(settings.debounce), trigger));
        }
    }
}

/// The thread reloads run on.
#[derive(Debug)]
struct Worker {
    jobs: std::sync::mpsc::Sender<(Trigger, oneshot::Sender<Outcome>)>,
}

impl Worker {
    /// Starts the thread. After each reload it brings the watches in line
    /// with the new snapshot (that too touches the file system). It enters
    /// the runtime, so token caches built during a reload can start their
    /// tasks, and ends when the reloader is dropped; a thread stuck in a
    /// read does not keep the process alive.
    fn start(shared: Arc<Shared>, mut dirs: Dirs) -> Self {
        let (jobs, rx) = std::sync::mpsc::channel::<(Trigger, oneshot::Sender<Outcome>)>();
        let runtime = tokio::runtime::Handle::current();
        let work = move || {
            let _runtime = runtime.enter();
            for (trigger, done) in rx {
                let outcome = shared.reload(trigger);
                dirs.follow(&shared);
                let _ = done.send(outcome);
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("sidekey-reload".to_owned())
            .spawn(work)
        {
            tracing::error!(error = %e, "cannot start the reload thread; reloads are off");
        }
        Self { jobs }
    }

    /// Runs one reload on the thread and waits for it without blocking.
    async fn reload(&self, trigger: Trigger) -> Outcome {
        let (done, outcome) = oneshot::channel();
        if self.jobs.send((trigger, done)).is_err() {
            return Outcome::default();
        }
        outcome.await.unwrap_or_default()
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
    fn new(tx: mpsc::Sender<()>, journal: Arc<Journal>) -> Self {
        // Runs on notify's thread: record and signal; never block it.
        let handler = move |event: notify::Result<notify::Event>| {
            journal.record(&event);
            let relevant = match &event {
                // A writer closing a file: held content may go live now.
                Ok(e) if e.kind == EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
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

    /// Watches the directories of the files the current snapshot names.
    fn follow(&mut self, shared: &Shared) {
        let snap = shared.snapshot();
        let files = if snap.config.reload.watch {
            snap.files(&shared.source, shared.env.as_ref())
        } else {
            Vec::new()
        };
        self.sync(watch_dirs(&files));
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

/// The directories to watch for `files`: each file's parent, or, when that
/// does not exist yet, its nearest existing ancestor (so the directory's
/// creation is seen). Symlinks are not resolved: the kubelet swaps the
/// `..data` link inside the mounted directory, which is where events arrive.
pub(crate) fn watch_dirs(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = files
        .iter()
        // `sidekey.toml` (no directory part) lives in the working directory.
        .map(|f| {
            f.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
        })
        .filter_map(|dir| dir.ancestors().find(|a| a.is_dir()).map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_dirs_are_parents_or_their_nearest_existing_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::create_dir_all(base.join("secrets/openai")).unwrap();
        let files = [
            PathBuf::from("sidekey.toml"),
            base.join("secrets/openai/key"),
            base.join("secrets/openai/fallback"),
            base.join("secrets/not-yet/key"),
        ];
        let dirs = watch_dirs(&files);
        assert_eq!(
            dirs,
            [
                base.join("secrets"),
                base.join("secrets/openai"),
                PathBuf::from(".")
            ]
        );
    }
}
