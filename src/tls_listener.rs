//! The TLS listener's rustls server configuration.
//!
//! design.md, "WebSocket: realtime and live APIs": `AzureOpenAI` realtime and
//! google-genai Live insist on `wss://`, so sidekey can also listen over TLS
//! (`tls_listen`, with `tls_cert` and `tls_key`). The pair is read when a
//! snapshot is built (`reload::build`) and turned into a [`ServerTls`] here;
//! each new connection takes the one in the snapshot serving then, so a
//! rotated pair reaches new connections without a restart. rustls with the
//! `ring` provider named explicitly, TLS 1.2 and 1.3, ALPN `h2` and
//! `http/1.1` (WebSocket clients offer only `http/1.1`).
//!
//! A leaf: imports nothing of sidekey. Errors never quote key material.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate chain and key cannot serve.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsListenerError {
    #[error("tls_cert holds no PEM certificate")]
    NoCertificate,
    #[error("tls_cert is not valid PEM: {0}")]
    CertPem(String),
    #[error("tls_key holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey,
    #[error("tls_cert and tls_key do not make a usable pair: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A server configuration ready for new connections, and the digest of the
/// pair it came from (a changed pair is a changed snapshot).
#[derive(Clone)]
pub(crate) struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    digest: [u8; 32],
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key never shows; the digest identifies the pair.
        f.debug_struct("ServerTls")
            .field("digest", &hex(&self.digest[..8]))
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Parses a PEM chain (leaf first) and key and checks that they match.
    ///
    /// # Errors
    ///
    /// [`TlsListenerError`] naming what is wrong, never quoting the key.
    pub(crate) fn new(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsListenerError> {
        let mut chain = Vec::new();
        for cert in CertificateDer::pem_slice_iter(cert_pem) {
            chain.push(cert.map_err(|e| TlsListenerError::CertPem(e.to_string()))?);
        }
        if chain.is_empty() {
            return Err(TlsListenerError::NoCertificate);
        }
        // The error of a key parse is not quoted: it might echo key bytes.
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsListenerError::NoKey)?;

        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        for c in &chain {
            digest.update(&(c.len() as u64).to_be_bytes());
            digest.update(c);
        }
        digest.update(key.secret_der());
        let mut out = [0; 32];
        out.copy_from_slice(digest.finish().as_ref());

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // `with_single_cert` checks that the key matches the leaf.
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            digest: out,
        })
    }

    /// The configuration a new connection is accepted with.
    pub(crate) fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// Identifies the pair (a digest: safe to log and compare).
    pub(crate) fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_serves_and_others_are_refused_without_quoting_the_key() {
        let (cert, key) = pair("localhost");
        let tls = ServerTls::new(cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(
            tls.config().alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let debug = format!("{tls:?}");
        assert!(
            !debug.contains("PRIVATE") && debug.starts_with("ServerTls"),
            "{debug}"
        );

        let (_, other_key) = pair("localhost");
        let e = ServerTls::new(cert.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert!(matches!(e, TlsListenerError::Rustls(_)), "{e}");
        assert!(!e.to_string().contains("PRIVATE"), "{e}");
        assert!(matches!(
            ServerTls::new(b"nothing", key.as_bytes()).unwrap_err(),
            TlsListenerError::NoCertificate
        ));
        assert!(matches!(
            ServerTls::new(cert.as_bytes(), cert.as_bytes()).unwrap_err(),
            TlsListenerError::NoKey
        ));
        // The same pair, the same digest; another, another.
        let again = ServerTls::new(cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(again.digest(), tls.digest());
    }
}
