//! The stability rule, file by file, on real files with synthetic events.

use std::fs::File;
use std::io::Write as _;

use notify::event::{CreateKind, DataChange, RemoveKind};

use super::*;

const SETTLE: Duration = Duration::from_secs(2);

fn event(kind: EventKind, path: &Path) -> notify::Result<Event> {
    Ok(Event::new(kind).add_path(path.to_path_buf()))
}

fn modified(path: &Path) -> notify::Result<Event> {
    event(EventKind::Modify(ModifyKind::Data(DataChange::Any)), path)
}

fn closed(path: &Path) -> notify::Result<Event> {
    event(
        EventKind::Access(AccessKind::Close(AccessMode::Write)),
        path,
    )
}

/// Writes `value` in place and backdates the file by `age`.
fn write_aged(path: &Path, value: &str, age: Duration) {
    let mut f = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(value.as_bytes()).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

/// Reads `path` through a gate for `trigger`; on success, commits it.
fn read(journal: &Journal, path: &Path, trigger: Trigger) -> Result<String, Option<Duration>> {
    let gate = Gate::new(journal, trigger, SETTLE);
    let got = gate.read(path, Kind::Credential);
    let (reads, recheck) = gate.finish();
    match got {
        Ok(c) => {
            journal.commit(reads);
            Ok(String::from_utf8(c.bytes.to_vec()).unwrap())
        }
        Err(FileError::Held) => Err(recheck),
        Err(e) => panic!("unexpected {e}"),
    }
}

fn setup(value: &str) -> (tempfile::TempDir, PathBuf, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    write_aged(&path, value, Duration::from_secs(60));
    let journal = Journal::default();
    assert_eq!(read(&journal, &path, Trigger::Startup).unwrap(), value);
    (dir, path, journal)
}

#[test]
fn an_open_writer_holds_the_new_content_until_it_closes() {
    let (_dir, path, journal) = setup("old");
    journal.record(&modified(&path));
    // Even old enough by the clock and asked for by SIGHUP: the writer is
    // still there.
    write_aged(&path, "ne", Duration::from_secs(30));
    for trigger in [Trigger::FileChange, Trigger::Periodic, Trigger::Sighup] {
        let recheck = read(&journal, &path, trigger).unwrap_err().unwrap();
        assert!(recheck <= MAX_OPEN_HOLD, "{recheck:?}");
    }
    write_aged(&path, "new", Duration::ZERO);
    journal.record(&closed(&path));
    assert_eq!(read(&journal, &path, Trigger::FileChange).unwrap(), "new");
}

#[test]
fn a_replaced_file_goes_live_at_once() {
    let (dir, path, journal) = setup("old");
    // An editor's rename: a new inode, written a moment ago.
    let tmp = dir.path().join(".key.swp");
    write_aged(&tmp, "new", Duration::ZERO);
    std::fs::rename(&tmp, &path).unwrap();
    journal.record(&event(
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
        &path,
    ));
    assert_eq!(read(&journal, &path, Trigger::FileChange).unwrap(), "new");
}

#[test]
fn without_events_an_in_place_change_waits_until_it_is_settled() {
    let (_dir, path, journal) = setup("old");
    write_aged(&path, "new", Duration::from_millis(500));
    let recheck = read(&journal, &path, Trigger::Periodic)
        .unwrap_err()
        .unwrap();
    assert!(
        recheck <= SETTLE - Duration::from_millis(400),
        "{recheck:?}"
    );
    // SIGHUP: the operator says the write is done.
    assert_eq!(read(&journal, &path, Trigger::Sighup).unwrap(), "new");
    write_aged(&path, "newer", SETTLE);
    assert_eq!(read(&journal, &path, Trigger::Periodic).unwrap(), "newer");
}

#[test]
fn unchanged_content_is_never_held() {
    let (_dir, path, journal) = setup("same");
    journal.record(&modified(&path));
    write_aged(&path, "same", Duration::ZERO);
    assert_eq!(read(&journal, &path, Trigger::FileChange).unwrap(), "same");
}

#[test]
fn lost_events_fall_back_to_the_clock() {
    let (_dir, path, journal) = setup("old");
    journal.record(&modified(&path));
    journal.record(&closed(&path));
    journal.record(&Err(notify::Error::generic("queue overflow")));
    write_aged(&path, "new", Duration::ZERO);
    assert!(read(&journal, &path, Trigger::FileChange).is_err());
}

#[test]
fn a_removed_path_forgets_its_writer_and_relative_paths_match() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::default();
    let rel = Path::new("./sidekey.toml");
    journal.record(&modified(rel));
    assert!(matches!(
        journal.lock().writes.get(Path::new("sidekey.toml")),
        Some(Write::Open { .. })
    ));
    journal.record(&event(EventKind::Remove(RemoveKind::File), rel));
    assert!(journal.lock().writes.is_empty());
    // Creation alone (a symlink, an empty file) starts no write.
    journal.record(&event(EventKind::Create(CreateKind::File), rel));
    assert!(journal.lock().writes.is_empty());
    drop(dir);
}

#[test]
fn the_journal_is_bounded() {
    let journal = Journal::default();
    for i in 0..=MAX_TRACKED {
        journal.record(&modified(Path::new(&format!("/x/{i}"))));
    }
    let inner = journal.lock();
    assert!(inner.writes.is_empty());
    assert!(inner.untrusted_until.is_some());
}
