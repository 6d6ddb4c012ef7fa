//! The rustls client configuration for upstream connections.
//!
//! TLS 1.2 and 1.3 with the `ring` provider named explicitly: a second
//! provider anywhere in the graph would otherwise make rustls panic at start.
//! Trust = the Mozilla roots compiled in (`webpki-roots`, so a scratch image
//! needs no CA files) plus any `ca_file` certificates, for self-hosted
//! endpoints behind a private CA or a TLS-inspecting egress proxy.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A CA file problem.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Reads every certificate in `files` (PEM), in order.
///
/// # Errors
///
/// [`TlsError::CaFile`] when a file is unreadable or holds no certificate.
pub(crate) fn read_cas(files: &[&PathBuf]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for path in files {
        let err = |reason: String| TlsError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        // Regular files only, 16 MiB at most (`files::CA_CAP`).
        let pem = crate::files::read(path, crate::files::Kind::CaBundle)
            .map_err(|e| err(e.to_string()))?
            .bytes;
        let before = out.len();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            out.push(cert.map_err(|e| err(format!("not valid PEM: {e}")))?);
        }
        if out.len() == before {
            return Err(err("holds no PEM certificate".to_owned()));
        }
    }
    Ok(out)
}

/// A digest identifying a set of certificates.
pub(crate) fn digest(certs: &[CertificateDer<'_>]) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for c in certs {
        ctx.update(&(c.len() as u64).to_be_bytes());
        ctx.update(c);
    }
    ctx.finish().as_ref().to_vec()
}

/// The client config trusting webpki roots plus `extra` (ALPN is set by the connector).
///
/// # Errors
///
/// [`TlsError`] when a certificate is not a usable trust anchor.
pub(crate) fn client_config(
    extra: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra {
        roots.add(cert.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
