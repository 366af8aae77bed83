//! The test CA itself: a certificate it issues verifies against it over a real TLS
//! handshake on loopback.

mod support;

use std::sync::Arc;

use support::tls::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_certificate_from_the_test_ca_verifies_in_a_real_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test ca");
    let issued = ca.issue(dir.path(), "site", &["localhost"]);
    let certs = cutover::pem::certificates(&issued.cert).expect("certs");
    let key = cutover::pem::private_key(&issued.key).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = acceptor.accept(tcp).await.expect("server handshake");
        tls.write_all(b"hello").await.expect("write");
        tls.shutdown().await.expect("close");
    });
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(&[]));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("client handshake");
    let mut got = Vec::new();
    tls.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"hello");
    let (_, session) = tls.get_ref();
    let presented = session.peer_certificates().expect("peer certs");
    assert_eq!(presented[0], issued.der);
    served.await.expect("server task");
}
