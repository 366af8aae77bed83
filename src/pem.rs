//! PEM files: certificate chains and private keys for TLS listeners and for https
//! backends, each read with an error that names the file and what is wrong with it.
//! Parsing is rustls-pki-types' own ([`PemObject`]); nothing here is TLS policy.

use std::io;
use std::path::{Path, PathBuf};

use rustls::crypto::ring;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Why a PEM file gave no usable certificate or key.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file named in the config.
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} is not valid PEM: {source}", path.display())]
    Parse {
        /// The file named in the config.
        path: PathBuf,
        source: pem::Error,
    },
    #[error("{} holds no certificate", path.display())]
    NoCertificate {
        /// The file named in the config.
        path: PathBuf,
    },
    #[error("{} holds no private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey {
        /// The file named in the config.
        path: PathBuf,
    },
    #[error("{} is not a key rustls can sign with: {source}", path.display())]
    Unsupported {
        /// The key file named in the config.
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{} does not belong to the certificate in {}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file whose public half differs from the certificate's.
        key: PathBuf,
    },
}

/// A certificate chain and its key, checked to belong together, ready to serve: what a
/// TLS listener presents (signing with ring).
pub fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, PemError> {
    let chain = certificates(cert)?;
    let der = private_key(key)?;
    let signer = ring::sign::any_supported_type(&der).map_err(|source| PemError::Unsupported {
        path: key.to_owned(),
        source,
    })?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        // A key whose public half cannot be read is not refused here: rustls cannot
        // compare it, and a handshake with it fails loudly.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(_) => Err(PemError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        }),
    }
}

/// The certificates in `path`, in file order (for a chain: leaf first).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let text = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PemError::Parse {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in `path`.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let text = read(path)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|source| match source {
        pem::Error::NoItemsFound => PemError::NoKey {
            path: path.to_owned(),
        },
        source => PemError::Parse {
            path: path.to_owned(),
            source,
        },
    })
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_a_key_is_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not pem at all\n").expect("write");
        let err = private_key(&path).expect_err("no key");
        assert!(matches!(err, PemError::NoKey { .. }), "{err}");
        assert!(err.to_string().contains("empty.pem"), "{err}");
        let err = certificates(&path).expect_err("no certificate");
        assert!(matches!(err, PemError::NoCertificate { .. }), "{err}");
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let err = certificates(Path::new("/nonexistent/cert.pem")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    }
}
