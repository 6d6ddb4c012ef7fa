//! Reading a [`Location`] into a [`Secret`].
//!
//! Called only while a snapshot is built (at start, on reload, by `check`);
//! never on the request path. Failures become an [`Unavailable`] that names
//! the location and the reason, and never contains the value.

use std::fmt;
use std::io;
use std::path::Path;

use super::Location;
use super::secret::{InvalidSecret, Secret};
use crate::env::Env;

/// Why a credential could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {reason}")]
pub(crate) struct Unavailable {
    /// The location, as written in the config.
    pub(crate) location: String,
    /// What went wrong, without the value.
    pub(crate) reason: String,
}

impl Unavailable {
    fn new(location: &Location, reason: impl fmt::Display) -> Self {
        Self {
            location: location.to_string(),
            reason: reason.to_string(),
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

/// Reads the secret at `location`.
///
/// # Errors
///
/// [`Unavailable`] when the variable is unset, the file cannot be read, or the
/// value is empty or not usable in a header.
pub(crate) fn read(location: &Location, env: &dyn Env) -> Result<Secret, Unavailable> {
    match location {
        Location::Env(name) => {
            let value = env
                .var(name)
                .ok_or_else(|| Unavailable::new(location, "environment variable is not set"))?;
            Secret::new(value.into_bytes()).map_err(|e| Unavailable::new(location, e))
        }
        Location::Path(path) => read_file(location, path),
        Location::PathFromEnv(name) => {
            let path = env
                .var(name)
                .ok_or_else(|| Unavailable::new(location, "environment variable is not set"))?;
            read_file(location, Path::new(&path))
        }
        Location::Dynamic(_) | Location::None | Location::Metadata => {
            Err(Unavailable::new(location, "is not a stored credential"))
        }
    }
}

/// Reads a whole file as secret bytes (also used for inbound tokens and, later,
/// service-account JSON).
///
/// # Errors
///
/// [`Unavailable`] naming the location and the I/O reason.
pub(crate) fn read_file(location: &Location, path: &Path) -> Result<Secret, Unavailable> {
    let bytes = std::fs::read(path).map_err(|e| Unavailable::new(location, io_reason(&e)))?;
    Secret::new(bytes).map_err(|e| Unavailable::new(location, e))
}

/// Reads a whole file that is not a header value (a service-account JSON)
/// into a buffer wiped on drop.
///
/// # Errors
///
/// [`Unavailable`] naming the location and the I/O reason, or an empty file.
pub(crate) fn read_raw(
    location: &Location,
    path: &Path,
) -> Result<zeroize::Zeroizing<Vec<u8>>, Unavailable> {
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(path).map_err(|e| Unavailable::new(location, io_reason(&e)))?,
    );
    if bytes.trim_ascii().is_empty() {
        return Err(Unavailable::new(location, "is empty"));
    }
    Ok(bytes)
}

fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        io::ErrorKind::IsADirectory => "is a directory".to_owned(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::MapEnv;

    #[test]
    fn reads_env_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "file-key\n").unwrap();
        let env = MapEnv::new([("K", "env-key"), ("KEY_FILE", file.to_str().unwrap())]);

        let loc = |s: &str| s.parse::<Location>().unwrap();
        assert_eq!(read(&loc("env::K"), &env).unwrap().expose(), b"env-key");
        let path = format!("path::{}", file.display());
        assert_eq!(read(&loc(&path), &env).unwrap().expose(), b"file-key");
        assert_eq!(
            read(&loc("path_from_env::KEY_FILE"), &env)
                .unwrap()
                .expose(),
            b"file-key"
        );
    }

    #[test]
    fn failures_name_the_location() {
        let env = MapEnv::default();
        let err = read(&"path::/nonexistent/key".parse().unwrap(), &env).unwrap_err();
        assert_eq!(err.to_string(), "path::/nonexistent/key: no such file");
        let err = read(&"env::UNSET".parse().unwrap(), &env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "env::UNSET: environment variable is not set"
        );
    }
}
