//! Test support: real backends and a real proxy on 127.0.0.1:0, a real admin socket in
//! a temporary directory, and small HTTP clients that control their own connections.
#![allow(dead_code)]

pub mod raw;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream, UnixStream};

use cutover::config::Config;
use cutover::server::Server;

// === backends ===

/// Starts a backend named `name` on 127.0.0.1:0. What it does depends on the path:
/// - `/echo`: streams the request body back;
/// - `/headers`: a JSON object of the request headers (values joined with "\n");
/// - `/slow?ms=N`: answers after N ms;
/// - `/hang`: never answers;
/// - `/big?bytes=N`: streams N bytes in 64 KiB chunks;
/// - `/hop`: answers with hop-by-hop headers that must not reach the client;
/// - anything else: its name.
///
/// Every answer carries `x-backend: NAME`.
pub async fn backend(name: &'static str) -> SocketAddr {
    TestBackend::start(name).await.addr
}

/// A backend (see [`backend`]) with handles on its state: `/healthz` answers 200 while
/// `healthy` is set and 500 otherwise; `hits` counts every other request; `conns`
/// counts open connections and `accepted` every connection ever accepted.
#[derive(Clone)]
pub struct TestBackend {
    pub addr: SocketAddr,
    pub healthy: Arc<AtomicBool>,
    pub hits: Arc<AtomicUsize>,
    pub conns: Arc<AtomicUsize>,
    pub accepted: Arc<AtomicUsize>,
}

impl TestBackend {
    pub async fn start(name: &'static str) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let b = TestBackend {
            addr: listener.local_addr().expect("backend addr"),
            healthy: Arc::new(AtomicBool::new(true)),
            hits: Arc::new(AtomicUsize::new(0)),
            conns: Arc::new(AtomicUsize::new(0)),
            accepted: Arc::new(AtomicUsize::new(0)),
        };
        let state = b.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = state.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let s = s.clone();
                    async move {
                        if req.uri().path() == "/healthz" {
                            let ok = s.healthy.load(Ordering::SeqCst);
                            let mut r = text(if ok { "ok" } else { "sick" }.to_owned());
                            *r.status_mut() = if ok {
                                StatusCode::OK
                            } else {
                                StatusCode::INTERNAL_SERVER_ERROR
                            };
                            return Ok::<_, Infallible>(r);
                        }
                        s.hits.fetch_add(1, Ordering::SeqCst);
                        if req.uri().path() == "/flaky" && !s.healthy.load(Ordering::SeqCst) {
                            let mut r = text("failing".to_owned());
                            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                            return Ok(r);
                        }
                        Ok(answer(name, req).await)
                    }
                });
                let conns = state.conns.clone();
                conns.fetch_add(1, Ordering::SeqCst);
                state.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    conns.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        b
    }

    pub fn open_conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }
}

/// A WebSocket echo backend: every text message comes back as `NAME:message`.
pub async fn ws_backend(name: &'static str) -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind ws backend");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                        let reply = format!("{name}:{}", t.as_str());
                        if ws.send(reply.into()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A loopback address where nothing listens.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

async fn answer(name: &'static str, req: Request<Incoming>) -> Response<TestBody> {
    let query_num = |key: &str| -> u64 {
        req.uri()
            .query()
            .and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut resp = match req.uri().path() {
        "/echo" => Response::new(req.into_body().boxed()),
        "/headers" => {
            let mut map = serde_json::Map::new();
            for key in req.headers().keys() {
                let values: Vec<&str> = req
                    .headers()
                    .get_all(key)
                    .iter()
                    .map(|v| v.to_str().unwrap_or("<binary>"))
                    .collect();
                map.insert(key.as_str().to_owned(), values.join("\n").into());
            }
            text(serde_json::Value::Object(map).to_string())
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_num("ms"))).await;
            text(name.to_owned())
        }
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            text(name.to_owned())
        }
        "/big" => Response::new(
            Repeat {
                remaining: query_num("bytes"),
                chunk: Bytes::from(vec![b'x'; 64 * 1024]),
            }
            .boxed(),
        ),
        "/hop" => {
            let mut r = text(name.to_owned());
            let h = r.headers_mut();
            h.insert("connection", "x-backend-secret".parse().expect("hv"));
            h.insert("x-backend-secret", "1".parse().expect("hv"));
            h.insert("keep-alive", "timeout=5".parse().expect("hv"));
            h.insert("proxy-connection", "keep-alive".parse().expect("hv"));
            h.insert("upgrade", "h2c".parse().expect("hv"));
            h.insert("x-end-to-end", "kept".parse().expect("hv"));
            r
        }
        _ => text(name.to_owned()),
    };
    resp.headers_mut()
        .insert("x-backend", name.parse().expect("hv"));
    resp
}

fn text(s: String) -> Response<TestBody> {
    Response::new(
        Full::new(Bytes::from(s))
            .map_err(|e: Infallible| match e {})
            .boxed(),
    )
}

/// A body of `remaining` bytes made of one shared chunk: no allocation per frame.
struct Repeat {
    remaining: u64,
    chunk: Bytes,
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
}

// === the proxy ===

/// A running proxy with its admin socket in a temporary directory.
pub struct Proxy {
    pub addr: SocketAddr,
    /// The TCP metrics endpoint, when `[metrics] listen` was set.
    pub metrics: Option<SocketAddr>,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The config text for a proxy on 127.0.0.1:0 with these pools; `extra` is appended.
pub fn config_text(dir: &Path, blue: &[SocketAddr], green: &[SocketAddr], extra: &str) -> String {
    config_text_with(dir, blue, green, "", extra)
}

/// As [`config_text`], with `green_keys` added to the `[pools.green]` table.
pub fn config_text_with(
    dir: &Path,
    blue: &[SocketAddr],
    green: &[SocketAddr],
    green_keys: &str,
    extra: &str,
) -> String {
    let list = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n\n[admin]\nsocket = \"{}\"\n\n\
         [pools.blue]\nbackends = [{}]\n\n[pools.green]\nbackends = [{}]\n{green_keys}\n\n\
         [routing]\nlive = \"blue\"\n{extra}\n",
        dir.join("admin.sock").display(),
        list(blue),
        list(green),
    )
}

impl Proxy {
    pub async fn start(blue: &[SocketAddr], green: &[SocketAddr], extra: &str) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        Proxy::start_in(dir, blue, green, extra).await
    }

    /// Starts a proxy with `green_keys` in the `[pools.green]` table.
    pub async fn start_with(
        blue: &[SocketAddr],
        green: &[SocketAddr],
        green_keys: &str,
        extra: &str,
    ) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = config_text_with(dir.path(), blue, green, green_keys, extra);
        Proxy::from_text(dir, &text).await
    }

    /// Starts a proxy whose files (socket, and a state file if `extra` names one) live
    /// in `dir`.
    pub async fn start_in(
        dir: tempfile::TempDir,
        blue: &[SocketAddr],
        green: &[SocketAddr],
        extra: &str,
    ) -> Proxy {
        let text = config_text(dir.path(), blue, green, extra);
        Proxy::from_text(dir, &text).await
    }

    async fn from_text(dir: tempfile::TempDir, text: &str) -> Proxy {
        let config = Config::parse(text, Path::new("test.toml")).expect("test config is valid");
        let server = Server::bind(config).await.expect("proxy binds");
        let addr = server.proxy_addr().expect("proxy addr");
        let metrics = server.metrics_addr();
        let socket = server.admin_socket().to_owned();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Proxy {
            addr,
            metrics,
            socket,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Hands over the temporary directory (for a restart on the same files).
    pub fn take_dir(&mut self) -> tempfile::TempDir {
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    /// Starts graceful shutdown and waits until the server has stopped.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }

    /// Starts graceful shutdown without waiting; returns the server task.
    pub fn begin_stop(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("server running")
    }

    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        admin(&self.socket, method, path, body).await
    }

    pub async fn switch(&self, to: &str) -> serde_json::Value {
        let (status, body) = self
            .admin(Method::POST, "/switch", &format!("{{\"to\":\"{to}\"}}"))
            .await;
        assert_eq!(status, StatusCode::OK, "switch to {to}: {body}");
        body
    }

    /// Polls `/status` until `cond` holds (up to 10 s); returns that status.
    pub async fn wait_until(
        &self,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.status().await;
            if cond(&status) {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn status(&self) -> serde_json::Value {
        let (status, body) = self.admin(Method::GET, "/status", "").await;
        assert_eq!(status, StatusCode::OK);
        body
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One request on the admin socket; the status and the raw body.
async fn admin_raw(socket: &Path, method: Method, path: &str, body: &str) -> (StatusCode, Bytes) {
    let stream = UnixStream::connect(socket)
        .await
        .expect("connect admin socket");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("admin handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "cutover")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let resp = tx.send_request(req).await.expect("admin answer");
    let status = resp.status();
    (
        status,
        resp.into_body()
            .collect()
            .await
            .expect("admin body")
            .to_bytes(),
    )
}

/// `GET path` on the admin socket; the status and the body as text.
pub async fn admin_text(socket: &Path, path: &str) -> (StatusCode, String) {
    let (status, bytes) = admin_raw(socket, Method::GET, path, "").await;
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The value of the sample whose line starts with `series` (e.g.
/// `cutover_requests_total{color="blue",class="2xx"}`), in Prometheus text.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// One admin request over the Unix socket; the status and the parsed JSON body
/// (panics when the body is not JSON: every admin answer must be).
pub async fn admin(
    socket: &Path,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let (status, bytes) = admin_raw(socket, method, path, body).await;
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "admin body is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, value)
}

// === clients ===

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

/// A backend that answers every request with `response` (bytes as given) and keeps the
/// connection open, or closes it after answering when `close`. Returns its address and
/// its count of accepted connections.
pub async fn scripted_backend(
    response: &'static [u8],
    close: bool,
) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // The test requests carry no body: a head is a request.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if stream.write_all(response).await.is_err() || close {
                            return;
                        }
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, accepted)
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
