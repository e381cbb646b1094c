//! The rustls server configuration (client certificate required, signed by the deployment's CA) and the client's
//! identity (the certificate's CN).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::{BrokerError, BrokerSettings};

fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let text = std::fs::read(path).map_err(|source| BrokerError::Read { what, path: path.to_path_buf(), source })?;
    let err = |reason: String| BrokerError::Pem { what, path: path.to_path_buf(), reason };
    let certs = CertificateDer::pem_slice_iter(&text).collect::<Result<Vec<_>, _>>().map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// Builds the TLS server configuration: TLS 1.2 and 1.3 (aws-lc-rs), the broker's certificate and key, and a client
/// certificate verifier that requires a certificate chaining to `settings.ca_cert`.
pub(crate) fn server_config(settings: &BrokerSettings) -> Result<Arc<rustls::ServerConfig>, BrokerError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs("the CA certificate", &settings.ca_cert)? {
        roots.add(cert).map_err(|e| BrokerError::Pem {
            what: "the CA certificate",
            path: settings.ca_cert.clone(),
            reason: e.to_string(),
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| BrokerError::Tls(format!("client certificate verifier: {e}")))?;
    let chain = load_certs("the broker certificate", &settings.cert)?;
    let key_bytes = std::fs::read(&settings.key).map_err(|source| BrokerError::Read {
        what: "the broker key",
        path: settings.key.clone(),
        source,
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| BrokerError::Pem {
        what: "the broker key",
        path: settings.key.clone(),
        reason: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BrokerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| BrokerError::Tls(format!("broker certificate and key: {e}")))?;
    Ok(Arc::new(config))
}

/// The CN of the client's (verified) certificate, like Mosquitto's `use_identity_as_username`.
pub(crate) fn common_name(conn: &rustls::ServerConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}
