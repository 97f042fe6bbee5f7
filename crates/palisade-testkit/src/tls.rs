//! TLS on loopback for tests: a self-signed, test-only certificate and the rustls
//! configurations of a client that trusts it (and nothing else) and of a server that presents
//! it.
//!
//! The certificate (`src/tls/cert.pem`, key `src/tls/key.pem`) is P-256, for `localhost` and
//! `127.0.0.1`, valid until 2126; made with `openssl req -x509 -newkey ec -pkeyopt
//! ec_paramgen_curve:P-256 -nodes -days 36500 -addext
//! "subjectAltName=DNS:localhost,IP:127.0.0.1" -addext "basicConstraints=critical,CA:FALSE"
//! ...`. Both sides use rustls's `ring` provider.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

const CERT: &[u8] = include_bytes!("tls/cert.pem");
const KEY: &[u8] = include_bytes!("tls/key.pem");

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The test certificate.
///
/// # Panics
///
/// If the certificate shipped with the testkit does not parse (it does).
#[must_use]
pub fn certificate() -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(CERT).expect("the test certificate parses")
}

/// A client configuration that trusts the test certificate and nothing else.
///
/// # Panics
///
/// If rustls refuses the certificate or its default protocol versions (it does not).
#[must_use]
pub fn trusting_client() -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(certificate()).expect("a usable root");
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("rustls's default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A server configuration that presents the test certificate, without client authentication.
///
/// # Panics
///
/// If the key shipped with the testkit does not parse or match the certificate (it does).
#[must_use]
pub fn server() -> Arc<ServerConfig> {
    let key = PrivateKeyDer::from_pem_slice(KEY).expect("the test key parses");
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("rustls's default protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![certificate()], key)
        .expect("a valid certificate and key");
    Arc::new(config)
}
