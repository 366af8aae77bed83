//! Backends on 127.0.0.1:0: the named test backend, a WebSocket echo, a scripted raw
//! one, and an address where nothing listens.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Starts a backend named `name` on 127.0.0.1:0. What it does depends on the path:
/// - `/echo`: streams the request body back;
/// - `/drip`: sends one chunk of a body, then nothing, never ending it;
/// - `/sink`: reads the whole request body, then answers its length;
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
/// counts open connections and `accepted` every connection ever accepted. With
/// `fail_every` at N > 0, every Nth request other than `/healthz` is answered 500
/// while health checks still pass: a backend that is up but answers errors.
#[derive(Clone)]
pub struct TestBackend {
    pub addr: SocketAddr,
    pub healthy: Arc<AtomicBool>,
    pub fail_every: Arc<AtomicUsize>,
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
            fail_every: Arc::new(AtomicUsize::new(0)),
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
                        let hit = s.hits.fetch_add(1, Ordering::SeqCst) + 1;
                        let every = s.fail_every.load(Ordering::SeqCst);
                        if every > 0 && hit % every == 0 {
                            let mut r = text("failing".to_owned());
                            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                            return Ok(r);
                        }
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

    /// Answers every `n`th request with a 500 from now on (0: none).
    pub fn fail_every(&self, n: usize) {
        self.fail_every.store(n, Ordering::SeqCst);
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
        "/drip" => Response::new(
            // One chunk, then nothing: a stream that never ends.
            http_body_util::StreamBody::new(Box::pin(futures_util::stream::unfold(
                0u8,
                |n| async move {
                    if n > 0 {
                        std::future::pending::<()>().await;
                    }
                    Some((Ok(Frame::data(Bytes::from_static(b"tick\n"))), n + 1))
                },
            )))
            .boxed(),
        ),
        "/sink" => {
            // Reads the whole body before answering with its length.
            match req.into_body().collect().await {
                Ok(body) => text(body.to_bytes().len().to_string()),
                Err(e) => text(format!("body failed: {e}")),
            }
        }
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
