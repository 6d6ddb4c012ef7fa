//! Reading a [`Location`] into a [`Secret`].
//!
//! Called only while a snapshot is built (at start, on reload, by `check`);
//! never on the request path, and during a reload never on a runtime thread.
//! Files go through [`Files`]: regular files only, 1 MiB at most. Failures become an [`Unavailable`] that names
//! the location and the reason, and never contains the value.

use std::fmt;
use std::path::Path;

use zeroize::Zeroizing;

use super::Location;
use crate::env::Env;
use crate::files::{FileError, Files, Kind};
use crate::secret::{InvalidSecret, Secret};

/// Why a credential could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {reason}")]
pub(crate) struct Unavailable {
    /// The location, as written in the config.
    pub(crate) location: String,
    /// What went wrong, without the value.
    pub(crate) reason: String,
    /// The file is being written: its new content is held, not refused.
    pub(crate) held: bool,
}

impl Unavailable {
    fn new(location: &Location, reason: impl fmt::Display) -> Self {
        Self {
            location: location.to_string(),
            reason: reason.to_string(),
            held: false,
        }
    }

    fn file(location: &Location, e: &FileError) -> Self {
        Self {
            held: *e == FileError::Held,
            ..Self::new(location, e)
        }
    }

    /// The value was read but cannot be used.
    pub(crate) fn invalid(location: &Location, why: InvalidSecret) -> Self {
        Self::new(location, why)
    }

    /// `location` cannot serve, for `reason`.
    pub(crate) fn reason(location: &Location, reason: impl fmt::Display) -> Self {
        Self::new(location, reason)
    }
}

/// What credentials are read with: the environment and a file reader (the
/// reload's gated one, or a direct one for `check`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    pub(crate) env: &'a dyn Env,
    pub(crate) files: &'a dyn Files,
}

impl Reader<'_> {
    /// Reads the secret at `location`.
    ///
    /// # Errors
    ///
    /// [`Unavailable`] when the variable is unset, the file cannot be read,
    /// or the value is empty or not usable in a header.
    pub(crate) fn read(&self, location: &Location) -> Result<Secret, Unavailable> {
        let mut bytes = match location {
            Location::Env(name) => {
                let value = self
                    .env
                    .var(name)
                    .ok_or_else(|| Unavailable::new(location, "environment variable is not set"))?;
                return Secret::new(value.into_bytes()).map_err(|e| Unavailable::new(location, e));
            }
            Location::Path(path) => self.read_raw(location, path)?,
            Location::PathFromEnv(name) => {
                let path = self
                    .env
                    .var(name)
                    .ok_or_else(|| Unavailable::new(location, "environment variable is not set"))?;
                self.read_raw(location, Path::new(&path))?
            }
            Location::Dynamic(_) | Location::None | Location::Metadata | Location::Ambient(_) => {
                return Err(Unavailable::new(location, "is not a stored credential"));
            }
        };
        // Moved, not copied: the secret wipes it on drop.
        Secret::new(std::mem::take(&mut *bytes)).map_err(|e| Unavailable::new(location, e))
    }

    /// Reads a stored credential that is not a header value (a PEM
    /// certificate chain or key: several lines) from any stored location,
    /// into a buffer wiped on drop.
    ///
    /// # Errors
    ///
    /// [`Unavailable`] naming the location and the reason.
    pub(crate) fn read_bytes(
        &self,
        location: &Location,
    ) -> Result<Zeroizing<Vec<u8>>, Unavailable> {
        match location {
            Location::Env(name) => match self.env.var(name) {
                Some(v) if !v.trim().is_empty() => Ok(Zeroizing::new(v.into_bytes())),
                Some(_) => Err(Unavailable::new(location, "is empty")),
                None => Err(Unavailable::new(
                    location,
                    "environment variable is not set",
                )),
            },
            Location::Path(path) => self.read_raw(location, path),
            Location::PathFromEnv(name) => {
                let path = self
                    .env
                    .var(name)
                    .ok_or_else(|| Unavailable::new(location, "environment variable is not set"))?;
                self.read_raw(location, Path::new(&path))
            }
            Location::Dynamic(_) | Location::None | Location::Metadata | Location::Ambient(_) => {
                Err(Unavailable::new(location, "is not a stored credential"))
            }
        }
    }

    /// Reads a whole credential file that is not a header value (a
    /// service-account JSON) into a buffer wiped on drop.
    ///
    /// # Errors
    ///
    /// [`Unavailable`] naming the location and the reason (missing, not a
    /// regular file, over 1 MiB, being written), or an empty file.
    pub(crate) fn read_raw(
        &self,
        location: &Location,
        path: &Path,
    ) -> Result<Zeroizing<Vec<u8>>, Unavailable> {
        let contents = self
            .files
            .read(path, Kind::Credential)
            .map_err(|e| Unavailable::file(location, &e))?;
        if contents.bytes.trim_ascii().is_empty() {
            return Err(Unavailable::new(location, "is empty"));
        }
        Ok(contents.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::MapEnv;
    use crate::files::Direct;

    #[test]
    fn reads_env_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "file-key\n").unwrap();
        let env = MapEnv::new([("K", "env-key"), ("KEY_FILE", file.to_str().unwrap())]);

        let r = Reader {
            env: &env,
            files: &Direct,
        };
        let loc = |s: &str| s.parse::<Location>().unwrap();
        assert_eq!(r.read(&loc("env::K")).unwrap().expose(), b"env-key");
        let path = format!("path::{}", file.display());
        assert_eq!(r.read(&loc(&path)).unwrap().expose(), b"file-key");
        assert_eq!(
            r.read(&loc("path_from_env::KEY_FILE")).unwrap().expose(),
            b"file-key"
        );
    }

    #[test]
    fn failures_name_the_location() {
        let env = MapEnv::default();
        let r = Reader {
            env: &env,
            files: &Direct,
        };
        let err = r
            .read(&"path::/nonexistent/key".parse().unwrap())
            .unwrap_err();
        assert_eq!(err.to_string(), "path::/nonexistent/key: no such file");
        let err = r.read(&"path::/dev/zero".parse().unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "path::/dev/zero: is a device, not a regular file: refused"
        );
        let err = r.read(&"env::UNSET".parse().unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "env::UNSET: environment variable is not set"
        );
    }
}
