//! HTTPS for the API (rustls): the certificate and key of `[http.tls]`, read
//! at start and read again when the daemon is told to (SIGHUP), so that a
//! renewed certificate is served without a restart. A reload that fails
//! keeps the certificate in use and says why.

use crate::config::TlsConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// Why the certificate or key of `[http.tls]` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read or holds nothing of the kind asked for.
    #[error("http.tls.{key}: cannot read {what} from {}: {problem}", path.display())]
    Read {
        /// `cert` or `key`.
        key: &'static str,
        /// What was looked for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// The key does not fit the certificate, or rustls refuses it.
    #[error("http.tls: the key in {} cannot serve the certificate in {}: {problem}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        problem: String,
    },
}

/// The certificate the listener serves, replaceable while it runs.
#[derive(Debug)]
pub struct Tls {
    files: TlsConfig,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Tls {
    /// Reads the certificate chain and key that `files` names.
    ///
    /// # Errors
    /// A file cannot be read, holds no certificate or no key, or the key
    /// does not match the certificate.
    pub fn load(files: &TlsConfig) -> Result<Arc<Tls>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = certified_key(files, &provider)?;
        Ok(Arc::new(Tls {
            files: files.clone(),
            provider,
            current: RwLock::new(current),
        }))
    }

    /// Reads the files again and serves what they hold from the next
    /// handshake on; connections already open keep theirs.
    ///
    /// # Errors
    /// As [`Tls::load`]; the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = certified_key(&self.files, &self.provider)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// The rustls server config: TLS 1.2 and 1.3, HTTP/1.1, no client
    /// certificates, the certificate taken from `self` at each handshake.
    ///
    /// # Errors
    /// The provider supports none of the safe protocol versions (not with ring).
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for Tls {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(Arc::clone(&current))
    }
}

fn certified_key(
    files: &TlsConfig,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let read =
        |key: &'static str, what: &'static str, path: &PathBuf, problem: String| TlsError::Read {
            key,
            what,
            path: path.clone(),
            problem,
        };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| read("cert", "a certificate", &files.cert, err.to_string()))?;
    if chain.is_empty() {
        return Err(read(
            "cert",
            "a certificate",
            &files.cert,
            "no CERTIFICATE block in the file".to_owned(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|err| read("key", "a private key", &files.key, err.to_string()))?;
    let mismatch = |err: rustls::Error| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        problem: err.to_string(),
    };
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(mismatch)?;
    Ok(Arc::new(certified))
}
