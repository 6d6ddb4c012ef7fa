//! [`Secret`]: a credential value that cannot be printed and is wiped on drop.
//!
//! A secret is read once (from a file or the environment) when a snapshot is
//! built. From then on the request path only clones a prepared
//! [`HeaderValue`] whose buffer shares the same wipe-on-drop guarantee, so no
//! credential is formatted per request. `Debug` shows the fingerprint only;
//! there is deliberately no `Display` and no `Serialize`.

use std::fmt;

use bytes::Bytes;
use http::HeaderValue;
use zeroize::Zeroize;

/// A short, non-reversible identifier of a secret: `sha256:` and the first
/// four bytes of its SHA-256, in hex. Enough to tell keys apart in logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 4]);

impl Fingerprint {
    /// The fingerprint of `bytes`.
    #[must_use]
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_digest(&sha256(bytes))
    }

    /// The four bytes.
    pub(crate) fn bytes(self) -> [u8; 4] {
        self.0
    }

    /// The full SHA-256 of `bytes` (identities that are not secrets).
    pub(crate) fn digest_of(bytes: &[u8]) -> [u8; 32] {
        sha256(bytes)
    }

    fn from_digest(digest: &[u8; 32]) -> Self {
        let [a, b, c, d, ..] = *digest;
        Self([a, b, c, d])
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written out by hand: it is on every access-log line.
        let hex = |n: u8| if n < 10 { b'0' + n } else { b'a' + n - 10 };
        let mut text = *b"sha256:00000000";
        for (i, byte) in self.0.iter().enumerate() {
            let at = 7 + 2 * i;
            if let Some(pair) = text.get_mut(at..at + 2) {
                pair.copy_from_slice(&[hex(byte >> 4), hex(byte & 0xf)]);
            }
        }
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A byte buffer that is zeroed when dropped. It is the owner behind every
/// [`Bytes`] that holds secret material, so the memory is wiped when the last
/// clone (a snapshot, a prepared header value in flight) goes away.
struct Wiped(Vec<u8>);

impl AsRef<[u8]> for Wiped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Wiped {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Wraps `bytes` so that they are wiped when the last reference drops: for
/// secret material that travels as [`Bytes`] (prepared header values, the
/// body of a token request).
pub(crate) fn wiped_bytes(bytes: Vec<u8>) -> Bytes {
    Bytes::from_owner(Wiped(bytes))
}

/// Why a value cannot be used as a credential. Never carries the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSecret {
    /// Nothing left after trimming whitespace.
    #[error("is empty")]
    Empty,
    /// Contains a byte that an HTTP header value cannot carry.
    #[error("contains characters that are not allowed in an HTTP header (value not shown)")]
    NotHeaderSafe,
}

/// A credential value: redacted in `Debug`, wiped on drop, never `Display`ed.
#[derive(Clone)]
pub struct Secret {
    bytes: Bytes,
    /// SHA-256 of the value: tells keys apart (health, reload) without
    /// keeping a second copy of the value.
    digest: [u8; 32],
}

impl Secret {
    /// Takes ownership of `raw`, trims surrounding ASCII whitespace (a trailing
    /// newline is the norm in Secret files) and wipes the untrimmed original.
    ///
    /// # Errors
    ///
    /// `InvalidSecret` when nothing is left after trimming, or when the value
    /// could not travel in a header.
    pub fn new(raw: Vec<u8>) -> Result<Self, InvalidSecret> {
        let mut raw = Wiped(raw);
        let trimmed = raw.0.trim_ascii();
        if trimmed.is_empty() {
            return Err(InvalidSecret::Empty);
        }
        if !trimmed
            .iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            return Err(InvalidSecret::NotHeaderSafe);
        }
        let kept = if trimmed.len() == raw.0.len() {
            std::mem::take(&mut raw.0)
        } else {
            trimmed.to_vec()
        };
        Ok(Self {
            digest: sha256(&kept),
            bytes: wiped_bytes(kept),
        })
    }

    /// The fingerprint, safe to log.
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::from_digest(&self.digest)
    }

    /// The full SHA-256 of the value.
    pub(crate) fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The raw bytes. Callers must not log or format them.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }

    /// A header value `prefix` + secret, marked sensitive (so `Debug` of a
    /// header map and HTTP/2 HPACK indexing skip it) and backed by a buffer
    /// that is wiped when the last clone drops. Built once per snapshot.
    ///
    /// # Errors
    ///
    /// `InvalidSecret::NotHeaderSafe` if the result is not a valid header value.
    pub fn header_value(&self, prefix: &str) -> Result<HeaderValue, InvalidSecret> {
        let bytes = if prefix.is_empty() {
            self.bytes.clone()
        } else {
            let mut v = Vec::with_capacity(prefix.len() + self.bytes.len());
            v.extend_from_slice(prefix.as_bytes());
            v.extend_from_slice(&self.bytes);
            wiped_bytes(v)
        };
        let mut value =
            HeaderValue::from_maybe_shared(bytes).map_err(|_| InvalidSecret::NotHeaderSafe)?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Compares with `other` in time independent of where they differ.
    #[must_use]
    pub fn constant_time_eq(&self, other: &[u8]) -> bool {
        constant_time_eq(&self.bytes, other)
    }
}

/// Equality whose running time depends only on the lengths, not on the
/// position of the first difference (inbound token checks).
#[must_use]
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_fingerprints() {
        let s = Secret::new(b"  sk-test-123\n".to_vec()).unwrap();
        assert_eq!(s.expose(), b"sk-test-123");
        assert_eq!(s.fingerprint(), Fingerprint::of(b"sk-test-123"));
        assert!(s.fingerprint().to_string().starts_with("sha256:"));
        assert_eq!(
            Fingerprint([0x00, 0x9f, 0xa0, 0xff]).to_string(),
            "sha256:009fa0ff"
        );
        assert_eq!(s.fingerprint().to_string().len(), "sha256:".len() + 8);
    }

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new(b"sk-very-secret".to_vec()).unwrap();
        let shown = format!("{s:?} {:?}", s.header_value("Bearer ").unwrap());
        assert!(!shown.contains("very-secret"), "{shown}");
    }

    #[test]
    fn rejects_empty_and_control_bytes() {
        assert_eq!(
            Secret::new(b" \n".to_vec()).unwrap_err(),
            InvalidSecret::Empty
        );
        assert_eq!(
            Secret::new(b"a\nb".to_vec()).unwrap_err(),
            InvalidSecret::NotHeaderSafe
        );
    }

    #[test]
    fn header_value_has_prefix_and_is_sensitive() {
        let s = Secret::new(b"k".to_vec()).unwrap();
        let v = s.header_value("Bearer ").unwrap();
        assert_eq!(v.as_bytes(), b"Bearer k");
        assert!(v.is_sensitive());
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
