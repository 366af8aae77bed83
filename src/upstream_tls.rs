//! TLS to `https://` backends: the rustls client settings a pool's `[pools.X.tls]`
//! table describes (trusted roots, an optional client certificate), the name each
//! backend is verified as, the handshake, and a failed handshake's reason in words a
//! 502 can carry.
//!
//! The crypto provider is ring, passed explicitly, with TLS 1.2 and 1.3 only. Backends
//! are offered ALPN `http/1.1`, the only protocol cutover speaks to them. Sessions are
//! resumed from rustls' in-memory cache, so a new connection to a known backend is
//! cheaper; kept-alive connections (see [`upstream`](crate::upstream)) are reused like
//! plain ones, so most requests pay no handshake at all.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::pem::{self, PemError};

/// `[pools.X.tls]` as validated: the files it names, kept to say what a pool was built
/// with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file of the CA certificates backends are verified against; `None` trusts the
    /// system's roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain and its key, presented when a backend asks for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name every backend of the pool is verified as (and sent as SNI), instead of
    /// the host each is written with.
    pub server_name: Option<String>,
}

/// What a pool's https backends are connected with, built once per config.
#[derive(Debug, Clone)]
pub struct TlsClient {
    /// The files it was built from.
    pub settings: TlsSettings,
    /// rustls' settings: roots, client certificate, versions, ALPN, session cache.
    pub config: Arc<ClientConfig>,
    /// `settings.server_name`, parsed.
    pub server_name: Option<ServerName<'static>>,
}

/// How one backend is reached over TLS.
#[derive(Debug)]
pub struct BackendTls {
    /// Its pool's rustls settings (shared, so sessions are resumed across backends'
    /// connections).
    pub config: Arc<ClientConfig>,
    /// The name its certificate must hold: a DNS name (also sent as SNI) or an IP
    /// address (verified against the IP SANs, and no SNI is sent, RFC 6066 §3).
    pub name: ServerName<'static>,
    /// The pool settings it was built from: a rebuilt pool reuses the backend only
    /// when they are the same.
    pub settings: TlsSettings,
}

/// Why a pool's TLS settings could not be built; each names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("{0}")]
    Ca(PemError),
    #[error("{0}")]
    Cert(PemError),
    #[error("{0}")]
    Key(PemError),
    #[error("a certificate in {} is not a usable CA certificate: {source}", path.display())]
    BadCa {
        /// The `ca` file.
        path: PathBuf,
        source: rustls::Error,
    },
    #[error(
        "no system root certificates could be loaded ({0}); set ca = \"/path/to/ca.pem\" in this table"
    )]
    NoSystemRoots(String),
    #[error("the client certificate and key do not go together: {0}")]
    ClientCert(rustls::Error),
    #[error("{0:?} is not a DNS name or an IP address")]
    ServerName(String),
    #[error("{0} is an https:// backend, but its pool has no TLS settings")]
    NoSettings(String),
}

impl TlsConfigError {
    /// The `[pools.X.tls]` key at fault; empty for the table itself.
    pub fn key(&self) -> &'static str {
        match self {
            TlsConfigError::Ca(_) | TlsConfigError::BadCa { .. } => "ca",
            TlsConfigError::Cert(_) | TlsConfigError::ClientCert(_) => "cert",
            TlsConfigError::Key(_) => "key",
            TlsConfigError::ServerName(_) => "server_name",
            TlsConfigError::NoSystemRoots(_) | TlsConfigError::NoSettings(_) => "",
        }
    }
}

/// A failed handshake with a backend: the reason, and the 502 body that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsFailure {
    /// The reason in a few words, e.g. `invalid peer certificate: UnknownIssuer`.
    pub reason: &'static str,
    /// The 502 body the client gets: the reason, and no backend address.
    pub answer: &'static str,
}

// === impl TlsClient ===

impl TlsClient {
    /// Loads the files `settings` names and builds the rustls settings.
    pub fn build(settings: TlsSettings) -> Result<TlsClient, TlsConfigError> {
        let roots = match &settings.ca {
            Some(path) => ca_roots(path)?,
            None => system_roots()?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsConfigError::ClientCert)?
            .with_root_certificates(roots);
        let mut config = match &settings.client_cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    pem::certificates(cert).map_err(TlsConfigError::Cert)?,
                    pem::private_key(key).map_err(TlsConfigError::Key)?,
                )
                .map_err(TlsConfigError::ClientCert)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = match &settings.server_name {
            Some(name) => Some(server_name(name)?),
            None => None,
        };
        Ok(TlsClient {
            settings,
            config: Arc::new(config),
            server_name,
        })
    }

    /// How a backend at `host` is reached: the pool's override name, or the host.
    pub fn for_host(&self, host: &str) -> Result<BackendTls, TlsConfigError> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => server_name(host)?,
        };
        Ok(BackendTls {
            config: Arc::clone(&self.config),
            name,
            settings: self.settings.clone(),
        })
    }
}

/// `host` as a name to verify: an IP address (with or without IPv6 brackets) or a
/// DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsConfigError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(bare.to_owned()).map_err(|_| TlsConfigError::ServerName(host.to_owned()))
}

fn ca_roots(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in pem::certificates(path).map_err(TlsConfigError::Ca)? {
        roots.add(cert).map_err(|source| TlsConfigError::BadCa {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = match found.errors.first() {
            Some(e) => e.to_string(),
            None => "none found".to_owned(),
        };
        return Err(TlsConfigError::NoSystemRoots(why));
    }
    Ok(roots)
}

// === impl BackendTls ===

impl BackendTls {
    /// The handshake over a connected socket.
    pub async fn handshake(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, TlsFailure> {
        TlsConnector::from(Arc::clone(&self.config))
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| TlsFailure::from_io(&e))
    }
}

// === impl TlsFailure ===

/// A [`TlsFailure`] whose answer is the reason in a 502 line.
macro_rules! failure {
    ($reason:literal) => {
        TlsFailure {
            reason: $reason,
            answer: concat!(
                "502 Bad Gateway: backend TLS handshake failed: ",
                $reason,
                "\n"
            ),
        }
    };
}

impl TlsFailure {
    /// The reason in a handshake's error (tokio-rustls wraps rustls' error in an
    /// `io::Error`; anything else is the connection breaking during the handshake).
    pub fn from_io(e: &io::Error) -> TlsFailure {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(e) => TlsFailure::from_rustls(e),
            None => failure!("the connection closed during the handshake"),
        }
    }

    /// The TLS reason in an error from a connection already open, if it has one. With
    /// TLS 1.3 the client finishes its handshake first, so a backend that refuses the
    /// client certificate says so on the first read (RFC 8446 §4.4.2.4).
    pub fn in_chain(e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(tls) = err.downcast_ref::<rustls::Error>() {
                return Some(TlsFailure::from_rustls(tls));
            }
            // An io::Error's `source` skips the error it wraps: look inside.
            if let Some(tls) = (err.downcast_ref::<io::Error>())
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return Some(TlsFailure::from_rustls(tls));
            }
            cur = err.source();
        }
        None
    }

    fn from_rustls(e: &rustls::Error) -> TlsFailure {
        match e {
            rustls::Error::InvalidCertificate(c) => TlsFailure::certificate(c),
            rustls::Error::NoCertificatesPresented => failure!("the backend sent no certificate"),
            rustls::Error::AlertReceived(alert) => match alert {
                rustls::AlertDescription::CertificateRequired
                | rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::UnknownCA => {
                    failure!("the backend refused our client certificate")
                }
                rustls::AlertDescription::ProtocolVersion => {
                    failure!("the backend speaks neither TLS 1.2 nor 1.3")
                }
                rustls::AlertDescription::HandshakeFailure => {
                    failure!("the backend sent a handshake_failure alert")
                }
                _ => failure!("the backend sent an alert"),
            },
            rustls::Error::PeerIncompatible(_) => failure!("the backend's TLS is incompatible"),
            rustls::Error::NoApplicationProtocol => {
                failure!("the backend does not offer ALPN http/1.1")
            }
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                failure!("the backend sent something that is not TLS")
            }
            _ => failure!("TLS error"),
        }
    }

    fn certificate(e: &CertificateError) -> TlsFailure {
        match e {
            CertificateError::UnknownIssuer => {
                failure!("invalid peer certificate: UnknownIssuer")
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                failure!("invalid peer certificate: NotValidForName")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                failure!("invalid peer certificate: Expired")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                failure!("invalid peer certificate: NotValidYet")
            }
            CertificateError::Revoked => failure!("invalid peer certificate: Revoked"),
            CertificateError::BadSignature => failure!("invalid peer certificate: BadSignature"),
            CertificateError::BadEncoding => failure!("invalid peer certificate: BadEncoding"),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                failure!("invalid peer certificate: InvalidPurpose")
            }
            _ => failure!("invalid peer certificate"),
        }
    }
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS handshake failed: {}", self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_becomes_a_dns_name_or_an_ip_address_to_verify() {
        assert!(matches!(
            server_name("app.internal"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("10.0.0.5"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(server_name("not a name!").is_err());
    }

    #[test]
    fn a_handshake_error_names_its_reason_in_the_502() {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let failure = TlsFailure::from_io(&e);
        assert_eq!(failure.reason, "invalid peer certificate: UnknownIssuer");
        assert!(
            failure
                .answer
                .starts_with("502 Bad Gateway: backend TLS handshake failed: ")
        );
        assert_eq!(TlsFailure::in_chain(&e), Some(failure));
        let plain = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(TlsFailure::in_chain(&plain), None);
    }
}
