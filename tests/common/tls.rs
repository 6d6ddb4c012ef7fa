//! A throwaway PKI: a CA and a server certificate for `127.0.0.1` and
//! `localhost`, generated in the test. sidekey trusts the CA through
//! `ca_file`; the mock provider serves the leaf.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TestPki {
    /// The CA certificate, PEM, written to `ca_file`.
    pub ca_file: PathBuf,
    /// A server config presenting the leaf, with ALPN h2 and http/1.1.
    pub server: Arc<rustls::ServerConfig>,
    /// The same, offering only http/1.1.
    pub server_h1: Arc<rustls::ServerConfig>,
    /// The leaf certificate and its key, PEM (for sidekey's TLS listener).
    pub leaf_cert_pem: String,
    pub leaf_key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestPki {
    /// Generates a CA and a leaf; writes the CA PEM into `dir`.
    pub fn new(dir: &Path) -> Self {
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sidekey test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "mock provider");
        leaf_params.use_authority_key_identifier_extension = true;
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

        let ca_file = dir.join("test-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();

        let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let config = |alpn: Vec<Vec<u8>>| {
            let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .unwrap();
            c.alpn_protocols = alpn;
            Arc::new(c)
        };
        Self {
            ca_file,
            server: config(vec![b"h2".to_vec(), b"http/1.1".to_vec()]),
            server_h1: config(vec![b"http/1.1".to_vec()]),
            leaf_cert_pem: leaf.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
            issuer,
        }
    }

    /// Another leaf for `127.0.0.1` and `localhost` from the same CA:
    /// (certificate PEM, key PEM, certificate DER).
    #[allow(dead_code, reason = "not every test binary rotates")]
    pub fn another_leaf(&self, name: &str) -> (String, String, Vec<u8>) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}
