//! A service account's private key, from the JSON string to DER, in
//! buffers that are wiped when dropped.
//!
//! serde_json decodes an escaped string (a PEM's `\n`s) through a scratch
//! buffer it frees unwiped, and rustls' PEM reader grows and frees unwiped
//! buffers of base64 text; either would leave copies of the key in freed
//! memory. So the key's field is taken raw (still JSON-escaped, borrowed
//! from the file's bytes, which are wiped themselves), and both decodings
//! happen here, each into one buffer allocated at its final size (no
//! growth leaves a copy behind) and wiped on drop. What remains outside
//! our reach: `ring`'s `RsaKeyPair` keeps its own copy of the key for as
//! long as the account is loaded, and does not wipe it when dropped; and
//! the base64 decoder's few bytes of stack.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// How the DER is framed, from the PEM label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyFormat {
    /// `-----BEGIN PRIVATE KEY-----` (what Google writes).
    Pkcs8,
    /// `-----BEGIN RSA PRIVATE KEY-----`.
    Pkcs1,
}

/// The value of a JSON string, given as its raw JSON text (quotes and
/// escapes included). `None` when it is not a string, or escapes a
/// character outside ASCII (a PEM is ASCII).
pub(crate) fn json_string(raw: &str) -> Option<Zeroizing<Vec<u8>>> {
    let inner = raw.trim().strip_prefix('"')?.strip_suffix('"')?;
    // Unescaping only shortens.
    let mut out = Zeroizing::new(Vec::with_capacity(inner.len()));
    let mut bytes = inner.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let decoded = match bytes.next()? {
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'b' => 0x08,
            b'f' => 0x0c,
            c @ (b'"' | b'\\' | b'/') => c,
            b'u' => {
                let mut code = 0u32;
                for _ in 0..4 {
                    code = code * 16 + char::from(bytes.next()?).to_digit(16)?;
                }
                u8::try_from(code).ok().filter(u8::is_ascii)?
            }
            _ => return None,
        };
        out.push(decoded);
    }
    Some(out)
}

/// The DER inside a PEM private key, and its format. `None` when there is
/// no `PRIVATE KEY` or `RSA PRIVATE KEY` block, or its base64 is invalid.
pub(crate) fn der(pem: &[u8]) -> Option<(KeyFormat, Zeroizing<Vec<u8>>)> {
    let text = std::str::from_utf8(pem).ok()?;
    let (format, label) = [
        (KeyFormat::Pkcs8, "PRIVATE KEY"),
        (KeyFormat::Pkcs1, "RSA PRIVATE KEY"),
    ]
    .into_iter()
    .find(|(_, label)| text.contains(&format!("-----BEGIN {label}-----")))?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let body = text.get(start..)?;
    let body = body.get(..body.find(&end)?)?;
    let mut b64 = Zeroizing::new(Vec::with_capacity(body.len()));
    b64.extend(body.bytes().filter(|b| !b.is_ascii_whitespace()));
    let mut der = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(b64.len())]);
    let len = STANDARD
        .decode_slice(b64.as_slice(), der.as_mut_slice())
        .ok()?;
    der.truncate(len);
    Some((format, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_unescaped() {
        let v = json_string(r#""-----BEGIN\nA\/b\\c\"d\u0041""#).unwrap();
        assert_eq!(v.as_slice(), b"-----BEGIN\nA/b\\c\"dA");
        assert!(json_string("123").is_none());
        assert!(json_string(r#""\u00e9""#).is_none(), "not ASCII");
        assert!(json_string(r#""\x""#).is_none());
        assert!(json_string(r#""\"#).is_none());
    }

    #[test]
    fn pem_blocks_decode_to_der() {
        let pem = b"junk\n-----BEGIN PRIVATE KEY-----\nAAEC\nAwQ=\n-----END PRIVATE KEY-----\n";
        let (format, bytes) = der(pem).unwrap();
        assert_eq!(format, KeyFormat::Pkcs8);
        assert_eq!(bytes.as_slice(), &[0, 1, 2, 3, 4]);
        let pem = b"-----BEGIN RSA PRIVATE KEY-----\nAAEC\n-----END RSA PRIVATE KEY-----";
        assert_eq!(der(pem).unwrap().0, KeyFormat::Pkcs1);
        assert!(der(b"-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----").is_none());
        assert!(der(b"-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----").is_none());
    }

    /// The buffers that hold key material wipe themselves: they are
    /// `Zeroizing` by type (what safe Rust can check; the wipe itself is
    /// zeroize's, on drop).
    #[test]
    fn key_material_lives_in_wiped_buffers() {
        fn wiped(_: &Zeroizing<Vec<u8>>) {}
        wiped(&json_string(r#""k""#).unwrap());
        wiped(
            &der(b"-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----")
                .unwrap()
                .1,
        );
    }
}
