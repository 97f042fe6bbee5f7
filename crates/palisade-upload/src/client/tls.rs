//! The default rustls configuration for `https://` (feature `rustls`).

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

/// The ring provider, safe default protocol versions, and the platform's root certificates.
pub(crate) fn default_client_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "upload: could not load a platform root certificate");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "upload: loaded platform root certificates");
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}
