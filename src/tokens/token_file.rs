//! Token files: projected service-account tokens and federated
//! credentials that the kubelet rotates. Read at every mint, never cached.

use std::path::Path;

use zeroize::Zeroizing;

use super::MintError;
use crate::files::Kind;

/// Reads a token file (a projected service-account token the kubelet
/// rotates) off the runtime threads, bounded like every credential file.
///
/// # Errors
///
/// [`MintError::Request`] naming the file and the reason.
pub(crate) async fn read(path: &Path) -> Result<Zeroizing<String>, MintError> {
    let owned = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || crate::files::read(&owned, Kind::Credential))
        .await
        .map_err(|e| MintError::Request(format!("reading {}: {e}", path.display())))?;
    let contents =
        read.map_err(|e| MintError::Request(format!("token file {}: {e}", path.display())))?;
    let text = std::str::from_utf8(&contents.bytes)
        .map_err(|_| MintError::Request(format!("token file {}: not UTF-8", path.display())))?
        .trim();
    if text.is_empty() {
        return Err(MintError::Request(format!(
            "token file {}: empty",
            path.display()
        )));
    }
    Ok(Zeroizing::new(text.to_owned()))
}
