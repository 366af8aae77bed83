//! A certificate authority made in the test, certificates it issues written as PEM files
//! in a directory, and rustls client settings that trust it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A test CA: its certificate (to trust) and its key (to issue with).
pub struct TestCa {
    /// The CA's certificate, DER.
    pub cert: CertificateDer<'static>,
    /// The CA's certificate as PEM, for configs that take a CA file.
    pub pem: String,
    /// Signs the certificates [`TestCa::issue`] makes.
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The leaf certificate, DER, to compare with what a peer presented.
    pub der: CertificateDer<'static>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        TestCa {
            pem: cert.pem(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes the CA certificate to `dir/<stem>.pem` and returns its path.
    pub fn write(&self, dir: &Path, stem: &str) -> PathBuf {
        let path = dir.join(format!("{stem}.pem"));
        std::fs::write(&path, &self.pem).expect("write ca");
        path
    }

    /// A certificate for `names` (DNS names or IP addresses), written to
    /// `dir/<stem>.crt` and `dir/<stem>.key`.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> Issued {
        let (cert, key) = self.issue_pem(names);
        let issued = Issued {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
            der: first_der(&cert),
        };
        std::fs::write(&issued.cert, cert).expect("write cert");
        std::fs::write(&issued.key, key).expect("write key");
        issued
    }

    /// A certificate for `names` and its key, as PEM text (certificate, key).
    pub fn issue_pem(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = dn;
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    }

    /// rustls client settings trusting only this CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).expect("trust ca");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// `[listen.tls]`-shaped keys (`cert`, `key`) for `issued`, to put under a table.
pub fn cert_keys(issued: &Issued) -> String {
    format!(
        "cert = \"{}\"\nkey = \"{}\"\n",
        issued.cert.display(),
        issued.key.display()
    )
}

/// A TLS connection to `addr` asking for `name` (SNI), with `config`'s trust and ALPN.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).map_err(std::io::Error::other)?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// An HTTP/2 connection over TLS (ALPN `h2`); the task drives it.
pub async fn h2_tls(
    addr: SocketAddr,
    ca: &TestCa,
    name: &str,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let tls = connect(addr, ca.client_config(&[b"h2"]), name)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2");
    let (h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .expect("h2 handshake over TLS");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (h2, task)
}

/// The certificate the server presented on `tls`, DER.
pub fn presented(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a server certificate")
        .clone()
        .into_owned()
}

/// Replaces `path` with `contents` the way deploy tools do: a temporary file beside it,
/// then a rename over it.
pub fn replace_file(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp-replace");
    std::fs::write(&tmp, contents).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename over");
}

fn first_der(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("issued pem parses")
}
