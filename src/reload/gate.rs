//! When a file's new content may go live: the stability rule.
//!
//! design.md, "Hot reload": a file caught mid-write never goes live. A reader
//! cannot tell a finished file from one whose writer paused, so the rule
//! leans on what the kernel says, and falls back to time only where the
//! kernel said nothing:
//!
//! 1. **Open for writing.** inotify reports a write (`IN_MODIFY`) and the
//!    writer's close (`IN_CLOSE_WRITE`); notify passes both on. Between the
//!    two, the file's new content is held, however long the writer pauses
//!    (bounded by [`MAX_OPEN_HOLD`], for a writer that never closes).
//! 2. **Closed after writing.** A close seen since the content now served
//!    was read means the writer is done: apply at once.
//! 3. **Replaced.** A different inode from the one served (the kubelet's
//!    `..data` swap, an editor's rename) was written completely before it
//!    was renamed into place: apply at once. This keeps a kubelet rotation
//!    on the wire within one debounce.
//! 4. **Otherwise** (no event for this file: watches off, a file reached
//!    through a directory not watched, lost events), changed in place: apply
//!    only once its modification time is `reload.settle` old; until then it
//!    is held and re-checked. SIGHUP is the operator saying "done": it skips
//!    this step, not step 1.
//!
//! Held content is not an error: the file keeps its last good value and the
//! reload re-checks it. The [`Journal`] records the events (on notify's
//! thread) and what each path's served content was read from; a [`Gate`] is
//! the reader one reload uses, deciding file by file.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind};
use tokio::time::Instant;

use super::Trigger;
use crate::files::{self, Contents, FileError, Files, Identity, Kind};

/// Longest a file open for writing holds its new content. Past it, the
/// time rule (4) decides: a writer that keeps a credential open for a
/// minute is not writing a credential.
pub(crate) const MAX_OPEN_HOLD: Duration = Duration::from_secs(60);

/// Most paths the journal tracks writes for; past it the journal forgets
/// them and treats events as lost for a while.
const MAX_TRACKED: usize = 4096;

/// A file a reload read and applied: where, which inode, what content.
#[derive(Debug, Clone)]
pub(crate) struct Read {
    path: PathBuf,
    identity: Identity,
    digest: [u8; 32],
}

/// The state of writes to one path, as the kernel reported them.
#[derive(Debug, Clone, Copy)]
enum Write {
    /// Written since its last close.
    Open { since: Instant },
    /// Closed after writing.
    Closed { at: Instant },
}

/// What the content now served from a path was read from.
#[derive(Debug, Clone, Copy)]
struct Applied {
    identity: Identity,
    digest: [u8; 32],
    at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    writes: HashMap<PathBuf, Write>,
    applied: HashMap<PathBuf, Applied>,
    /// Events may have been lost (queue overflow, watch error) until then:
    /// no file is trusted complete by events alone before it.
    untrusted_until: Option<Instant>,
}

/// What the kernel said about the watched files, and what each path's served
/// content came from. Shared by notify's thread and the reloader.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    inner: Mutex<Inner>,
}

/// Paths as events name them (`./sidekey.toml` for a file watched through
/// `.`) and as the config names them (`sidekey.toml`) compare equal.
fn norm(path: &Path) -> &Path {
    path.strip_prefix(".").unwrap_or(path)
}

impl Journal {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one event from the watcher. Never blocks for long: it runs
    /// on notify's thread.
    pub(crate) fn record(&self, event: &notify::Result<Event>) {
        let now = Instant::now();
        let mut inner = self.lock();
        let Ok(event) = event else {
            inner.lost(now);
            return;
        };
        if event.need_rescan() {
            inner.lost(now);
        }
        let paths = event.paths.iter().map(|p| norm(p).to_path_buf());
        match event.kind {
            EventKind::Modify(ModifyKind::Data(_)) => {
                for p in paths {
                    inner
                        .writes
                        .entry(p)
                        .and_modify(|w| {
                            if let Write::Closed { .. } = w {
                                *w = Write::Open { since: now };
                            }
                        })
                        .or_insert(Write::Open { since: now });
                }
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                for p in paths {
                    inner.writes.insert(p, Write::Closed { at: now });
                }
            }
            // A path renamed away or removed has no writer any more; a path
            // renamed onto is a new inode (rule 3 applies to it).
            EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Name(
                RenameMode::From | RenameMode::To | RenameMode::Both | RenameMode::Any,
            )) => {
                for p in paths {
                    inner.writes.remove(&p);
                }
            }
            _ => {}
        }
        if inner.writes.len() > MAX_TRACKED {
            inner.writes.retain(|_, w| matches!(w, Write::Open { .. }));
            if inner.writes.len() > MAX_TRACKED {
                inner.lost(now);
            }
        }
    }

    /// Whether `path`'s new content (`c`, with `digest`) may go live now;
    /// `Err(d)`: held, re-check within `d`.
    fn decide(
        &self,
        path: &Path,
        c: &Contents,
        digest: &[u8; 32],
        trigger: Trigger,
        settle: Duration,
    ) -> Result<(), Duration> {
        let now = Instant::now();
        let inner = self.lock();
        let path = norm(path);
        let applied = inner.applied.get(path);
        if applied.is_some_and(|a| &a.digest == digest) || trigger == Trigger::Startup {
            return Ok(());
        }
        let trusted = inner.untrusted_until.is_none_or(|t| now >= t);
        match inner.writes.get(path) {
            Some(Write::Open { since }) if trusted && now < *since + MAX_OPEN_HOLD => {
                return Err(*since + MAX_OPEN_HOLD - now);
            }
            Some(Write::Closed { at }) if trusted && applied.is_none_or(|a| *at >= a.at) => {
                return Ok(());
            }
            _ => {}
        }
        if applied.is_some_and(|a| a.identity != c.identity) || trigger == Trigger::Sighup {
            return Ok(());
        }
        let age = SystemTime::now()
            .duration_since(c.modified)
            .unwrap_or(Duration::ZERO);
        if age >= settle {
            Ok(())
        } else {
            Err(settle - age)
        }
    }

    /// Records what the snapshot now live was read from.
    pub(crate) fn commit(&self, reads: Vec<Read>) {
        let at = Instant::now();
        let mut inner = self.lock();
        for read in reads {
            inner.applied.insert(
                norm(&read.path).to_path_buf(),
                Applied {
                    identity: read.identity,
                    digest: read.digest,
                    at,
                },
            );
        }
    }

    /// Forgets what was served from files no snapshot names any more.
    pub(crate) fn retain(&self, files: &[PathBuf]) {
        let mut inner = self.lock();
        inner
            .applied
            .retain(|p, _| files.iter().any(|f| norm(f) == p.as_path()));
    }
}

impl Inner {
    fn lost(&mut self, now: Instant) {
        self.writes.clear();
        self.untrusted_until = Some(now + MAX_OPEN_HOLD);
    }
}

/// The file reader of one reload: reads with the bounds of
/// [`files::read`], then applies the stability rule.
#[derive(Debug)]
pub(crate) struct Gate<'a> {
    journal: &'a Journal,
    trigger: Trigger,
    settle: Duration,
    /// Files read and applied, for [`Journal::commit`].
    reads: RefCell<Vec<Read>>,
    /// The soonest a held file should be looked at again.
    recheck: RefCell<Option<Duration>>,
}

impl<'a> Gate<'a> {
    /// A reader for one reload started by `trigger`.
    pub(crate) fn new(journal: &'a Journal, trigger: Trigger, settle: Duration) -> Self {
        Self {
            journal,
            trigger,
            settle,
            reads: RefCell::default(),
            recheck: RefCell::default(),
        }
    }

    /// What was read and applied, and when to look again at what was held.
    pub(crate) fn finish(self) -> (Vec<Read>, Option<Duration>) {
        (self.reads.into_inner(), self.recheck.into_inner())
    }
}

impl Files for Gate<'_> {
    fn read(&self, path: &Path, kind: Kind) -> Result<Contents, FileError> {
        let c = files::read(path, kind)?;
        let digest = crate::credentials::Fingerprint::digest_of(&c.bytes);
        match self
            .journal
            .decide(path, &c, &digest, self.trigger, self.settle)
        {
            Ok(()) => {
                self.reads.borrow_mut().push(Read {
                    path: path.to_path_buf(),
                    identity: c.identity,
                    digest,
                });
                Ok(c)
            }
            Err(after) => {
                let mut recheck = self.recheck.borrow_mut();
                *recheck = Some(recheck.map_or(after, |r| r.min(after)));
                Err(FileError::Held)
            }
        }
    }
}

#[cfg(test)]
mod tests;
