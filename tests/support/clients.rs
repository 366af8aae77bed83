//! Clients that control their own connections: HTTP/1.1 over hyper, h2c, raw bytes.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// A client connection we hold on to, so tests can send several requests on it.
pub struct Conn {
    tx: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

/// A response read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect proxy");
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Conn { tx }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Answer, hyper::Error> {
        self.tx.ready().await?;
        let resp = self.tx.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        self.send(request(Method::GET, path, ""))
            .await
            .expect("GET through the proxy")
    }
}

pub fn request(method: Method, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "app.example")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request")
}

/// Opens an h2c (prior knowledge) connection to `addr`; the returned task drives it,
/// and aborting it drops the connection.
pub async fn h2c(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c prior-knowledge handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (h2, task)
}

/// Writes `raw` on a new connection to `addr` and reads until the proxy closes it
/// (at most 5 s).
pub async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(raw).await.expect("write");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply))
        .await
        .expect("the proxy answers and closes")
        .expect("read");
    String::from_utf8_lossy(&reply).into_owned()
}

/// Polls `what` every 20 ms until it holds; fails after 5 s naming `why`.
pub async fn eventually(why: &str, what: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !what() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {why}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    Conn::open(addr).await.get(path).await
}

/// GET on a fresh connection, in the background (for requests in flight across a switch).
pub fn spawn_get(addr: SocketAddr, path: &str) -> tokio::task::JoinHandle<Answer> {
    let path = path.to_owned();
    tokio::spawn(async move { get(addr, &path).await })
}
