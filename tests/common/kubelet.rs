//! Files changed the way they are changed in real life.
//!
//! [`SecretVolume`] reproduces the kubelet's AtomicWriter
//! (kubernetes `pkg/volume/util/atomic_writer.go`): the payload lives in a
//! hidden timestamped directory, `..data` is a relative symlink to it, and each
//! user-visible file is a symlink `key -> ..data/key`. An update writes a new
//! timestamped directory, points `..data_tmp` at it, renames `..data_tmp` over
//! `..data` (the atomic switch), adds links for new keys, removes links for
//! keys that are gone, and deletes the old directory. The other functions
//! are what people and editors do: write in place, truncate then write, write
//! a temporary file and rename it over the original.

use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A directory the kubelet manages for one Secret or ConfigMap volume.
pub struct SecretVolume {
    pub dir: PathBuf,
    current: Option<String>,
    keys: Vec<String>,
    generation: u32,
}

impl SecretVolume {
    /// Creates the volume with `files` (name, content).
    pub fn create(dir: &Path, files: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut v = Self {
            dir: dir.to_path_buf(),
            current: None,
            keys: Vec::new(),
            generation: 0,
        };
        let _ = v.update(files);
        v
    }

    /// The user-visible path of `key` (what a `path::` location names).
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// `path::/...` for `key`.
    pub fn location(&self, key: &str) -> String {
        format!("path::{}", self.path(key).display())
    }

    /// Replaces the whole payload, step by step as the AtomicWriter does.
    /// Returns when the atomic switch (step 3) happened.
    pub fn update(&mut self, files: &[(&str, &str)]) -> tokio::time::Instant {
        self.generation += 1;
        // 1. A new timestamped directory holding the payload.
        let ts = format!("..2026_11_24_21_16_45.{:09}", self.generation);
        let ts_dir = self.dir.join(&ts);
        std::fs::create_dir(&ts_dir).unwrap();
        for (name, content) in files {
            let mut f = std::fs::File::create(ts_dir.join(name)).unwrap();
            f.write_all(content.as_bytes()).unwrap();
            f.sync_all().unwrap();
        }
        // 2. `..data_tmp` -> the new directory (relative, as the kubelet does).
        let tmp = self.dir.join("..data_tmp");
        symlink(&ts, &tmp).unwrap();
        // 3. The atomic switch: rename `..data_tmp` over `..data`.
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        let swapped = tokio::time::Instant::now();
        // 4. Links for keys that have none yet; existing links are not touched.
        for (name, _) in files {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
        // 5. Remove links for keys no longer in the payload, then the old directory.
        let names: Vec<String> = files.iter().map(|(n, _)| (*n).to_owned()).collect();
        for old in self.keys.iter().filter(|k| !names.contains(k)) {
            let _ = std::fs::remove_file(self.dir.join(old));
        }
        self.keys = names;
        if let Some(old) = self.current.replace(ts) {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
        swapped
    }
}

/// `echo value > path`: open with truncation and write, in place.
pub fn write_in_place(path: &Path, value: &str) {
    std::fs::write(path, value).unwrap();
}

/// Truncates the file, pauses (a reader can see it empty), then writes.
pub async fn truncate_then_write(path: &Path, value: &str, pause: Duration) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.flush().unwrap();
    tokio::time::sleep(pause).await;
    f.write_all(value.as_bytes()).unwrap();
}

/// What editors do: write `.name.swp` beside the file and rename it over.
pub fn editor_replace(path: &Path, value: &str) {
    let name = path.file_name().unwrap().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.swp"));
    std::fs::write(&tmp, value).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
