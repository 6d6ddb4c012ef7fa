//! Reading the files sidekey is configured with, safely.
//!
//! design.md, "Hot reload": files are read only when they are regular files
//! (symlinks followed, as the kubelet's `..data` link needs) and under a
//! size cap, so a `path::` that names a FIFO, `/dev/zero` or a log file can
//! neither hang a reload nor fill memory. The file is opened non-blocking
//! (opening a FIFO would otherwise wait for a writer) and checked *after*
//! opening, on the descriptor, so a swap between a check and the open cannot
//! slip a FIFO in. What was read comes back with the file's identity and
//! modification time, which the reloader's stability rule needs
//! (`reload::gate`). [`Files`] is how the config and credential readers are
//! handed a reader: directly ([`Direct`]) at `check`, gated during reloads.
//!
//! A leaf module: it knows nothing of config, credentials or requests.

use std::fmt;
use std::io::{self, Read as _};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::time::SystemTime;

use zeroize::Zeroizing;

/// Largest credential file read (an API key, a token, a service-account JSON).
pub(crate) const CREDENTIAL_CAP: u64 = 1 << 20;
/// Largest config file read.
pub(crate) const CONFIG_CAP: u64 = 4 << 20;
/// Largest CA bundle read (a full corporate bundle is a few hundred KiB).
pub(crate) const CA_CAP: u64 = 16 << 20;

/// What a file is read as: decides the size cap and the wording of errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A credential: [`CREDENTIAL_CAP`].
    Credential,
    /// The config file: [`CONFIG_CAP`].
    Config,
    /// A CA bundle: [`CA_CAP`].
    CaBundle,
}

impl Kind {
    /// The most bytes read for this kind of file.
    #[must_use]
    pub(crate) fn cap(self) -> u64 {
        match self {
            Self::Credential => CREDENTIAL_CAP,
            Self::Config => CONFIG_CAP,
            Self::CaBundle => CA_CAP,
        }
    }
}

/// Which inode a read came from: a changed identity means the file was
/// replaced (renamed over, or a symlink now points elsewhere), not written
/// in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Identity {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

/// A file's content and what the kernel said about it when it was read.
pub(crate) struct Contents {
    /// The bytes, wiped on drop (they may be a secret).
    pub(crate) bytes: Zeroizing<Vec<u8>>,
    pub(crate) identity: Identity,
    /// Last modification, from the open descriptor.
    pub(crate) modified: SystemTime,
}

impl fmt::Debug for Contents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Contents")
            .field("len", &self.bytes.len())
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Why a file could not be used. Never holds any of its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// No file at that path (or a dangling symlink).
    #[error("no such file")]
    NotFound,
    /// The process may not read it.
    #[error("permission denied")]
    PermissionDenied,
    /// A directory, FIFO, socket or device: never read.
    #[error("is a {0}, not a regular file: refused")]
    NotRegular(&'static str),
    /// Larger than the cap for its kind.
    #[error("is larger than {cap} bytes: refused (the limit for a {what} file)")]
    TooLarge {
        /// The cap, in bytes.
        cap: u64,
        /// `credential`, `config` or `CA bundle`.
        what: &'static str,
    },
    /// Any other I/O error.
    #[error("{0}")]
    Io(String),
    /// Read, but not applied yet: a writer has it open, or it changed in
    /// place too recently to be trusted complete (see `reload::gate`).
    #[error("is being written: its new content is held until the writer is done")]
    Held,
}

impl FileError {
    fn from_io(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound => Self::NotFound,
            io::ErrorKind::PermissionDenied => Self::PermissionDenied,
            io::ErrorKind::IsADirectory => Self::NotRegular("directory"),
            _ => Self::Io(e.to_string()),
        }
    }
}

/// Something that reads files for a snapshot build.
pub(crate) trait Files: fmt::Debug {
    /// Reads `path` as a file of `kind`.
    ///
    /// # Errors
    ///
    /// [`FileError`] when the file is missing, not regular, too large,
    /// unreadable, or (for a gated reader) not yet complete.
    fn read(&self, path: &Path, kind: Kind) -> Result<Contents, FileError>;
}

/// Reads files as they are, with the bounds of [`read`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Direct;

impl Files for Direct {
    fn read(&self, path: &Path, kind: Kind) -> Result<Contents, FileError> {
        read(path, kind)
    }
}

/// Reads a whole regular file of `kind`, following symlinks, up to its cap.
///
/// # Errors
///
/// [`FileError`] when the file is missing, unreadable, not a regular file
/// or larger than the cap.
pub(crate) fn read(path: &Path, kind: Kind) -> Result<Contents, FileError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        // Without it, opening a FIFO waits for a writer.
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| FileError::from_io(&e))?;
    let meta = file.metadata().map_err(|e| FileError::from_io(&e))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(FileError::NotRegular(if ft.is_dir() {
            "directory"
        } else if ft.is_fifo() {
            "FIFO"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "device"
        } else {
            "special file"
        }));
    }
    let cap = kind.cap();
    let too_large = || FileError::TooLarge {
        cap,
        what: match kind {
            Kind::Credential => "credential",
            Kind::Config => "config",
            Kind::CaBundle => "CA bundle",
        },
    };
    if meta.len() > cap {
        return Err(too_large());
    }
    // The size can grow between the stat and the read: read one byte past
    // the cap to tell.
    let mut bytes = Zeroizing::new(Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0)));
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FileError::from_io(&e))?;
    if bytes.len() as u64 > cap {
        return Err(too_large());
    }
    Ok(Contents {
        bytes,
        identity: Identity {
            dev: meta.dev(),
            ino: meta.ino(),
        },
        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_regular_files_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("real"), "value").unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
        let c = read(&dir.path().join("link"), Kind::Credential).unwrap();
        assert_eq!(&c.bytes[..], b"value");
        let direct = read(&dir.path().join("real"), Kind::Credential).unwrap();
        assert_eq!(c.identity, direct.identity);
    }

    #[test]
    fn refuses_fifos_devices_directories_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            read(&fifo, Kind::Credential).unwrap_err(),
            FileError::NotRegular("FIFO")
        );
        assert_eq!(
            read(Path::new("/dev/zero"), Kind::Credential).unwrap_err(),
            FileError::NotRegular("device")
        );
        assert_eq!(
            read(dir.path(), Kind::Config).unwrap_err(),
            FileError::NotRegular("directory")
        );
        assert_eq!(
            read(&dir.path().join("nope"), Kind::Config).unwrap_err(),
            FileError::NotFound
        );
    }

    #[test]
    fn refuses_files_over_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; (CREDENTIAL_CAP + 1) as usize]).unwrap();
        let err = read(&big, Kind::Credential).unwrap_err();
        assert_eq!(
            err.to_string(),
            "is larger than 1048576 bytes: refused (the limit for a credential file)"
        );
        assert!(read(&big, Kind::Config).is_ok(), "4 MiB for a config");
    }
}
