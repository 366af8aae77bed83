//! An https backend on 127.0.0.1:0: TLS with a certificate from a [`TestCa`], and,
//! when given a CA for clients, a required client certificate verified against it.
//! It answers like the plain test backend: its name, `/healthz` with 200, `/sink`
//! and `/big` as described at [`answer`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::tls::{Issued, TestCa};

/// A running https backend and what it has seen.
#[derive(Clone)]
pub struct TlsBackend {
    pub addr: SocketAddr,
    /// Handshakes that completed.
    pub handshakes: Arc<AtomicUsize>,
    /// Handshakes that failed (an untrusting client, a missing client certificate).
    pub refused: Arc<AtomicUsize>,
    /// Completed handshakes in which the client presented a certificate.
    pub with_client_cert: Arc<AtomicUsize>,
    /// Requests answered.
    pub requests: Arc<AtomicUsize>,
    /// The SNI of each completed handshake (`None` where the client sent none).
    pub sni: Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

/// `/sink`: the length of the request body, read after 200 ms; `/big?bytes=N`: N
/// bytes of `x`; else the backend's name.
async fn answer(name: &'static str, req: Request<Incoming>) -> Bytes {
    match req.uri().path() {
        "/sink" => {
            // Reads late, so the sender's socket fills and its writes wait.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            match req.into_body().collect().await {
                Ok(body) => Bytes::from(body.to_bytes().len().to_string()),
                Err(e) => Bytes::from(format!("body failed: {e}")),
            }
        }
        "/big" => {
            let n = (req.uri().query())
                .and_then(|q| q.strip_prefix("bytes="))
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0);
            Bytes::from(vec![b'x'; n])
        }
        _ => Bytes::from_static(name.as_bytes()),
    }
}

impl TlsBackend {
    /// Serves `cert` as `name`; with `clients`, only clients presenting a certificate
    /// it issued get through the handshake.
    pub async fn start(name: &'static str, cert: &Issued, clients: Option<&TestCa>) -> TlsBackend {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match clients {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.cert.clone()).expect("client ca");
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(
                cutover::pem::certificates(&cert.cert).expect("cert"),
                cutover::pem::private_key(&cert.key).expect("key"),
            )
            .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        // A small receive buffer (inherited by accepted sockets), so a large upload
        // fills it and the sender's writes wait.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(8 * 1024).expect("SO_RCVBUF");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener = socket.listen(128).expect("listen");
        let b = TlsBackend {
            addr: listener.local_addr().expect("addr"),
            handshakes: Arc::default(),
            refused: Arc::default(),
            with_client_cert: Arc::default(),
            requests: Arc::default(),
            sni: Arc::default(),
        };
        let state = b.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, s) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        s.refused.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_owned);
                    s.sni.lock().expect("sni lock").push(sni);
                    s.handshakes.fetch_add(1, Ordering::SeqCst);
                    if tls.get_ref().1.peer_certificates().is_some() {
                        s.with_client_cert.fetch_add(1, Ordering::SeqCst);
                    }
                    let service = service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        async move {
                            let body = if req.uri().path() == "/healthz" {
                                Bytes::from_static(b"ok")
                            } else {
                                s.requests.fetch_add(1, Ordering::SeqCst);
                                answer(name, req).await
                            };
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("x-backend", name)
                                    .body(Full::new(body))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        b
    }

    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The SNI each handshake so far carried.
    pub fn sni(&self) -> Vec<Option<String>> {
        self.sni.lock().expect("sni lock").clone()
    }

    /// The address as a pool lists it.
    pub fn https(&self) -> String {
        format!("https://{}", self.addr)
    }
}
