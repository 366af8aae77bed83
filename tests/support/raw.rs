//! A raw recording backend: it parses each request itself (httparse), reads its body by
//! Content-Length or chunked framing, records what it got, and answers with whatever
//! bytes the test scripted, so a test sees exactly what the proxy sent and can make the
//! proxy face any response, well-formed or not.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the backend answers when nothing else was scripted.
pub const DEFAULT_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// Requests to this path are answered with [`DEFAULT_RESPONSE`] whatever was scripted.
pub const WARMUP_PATH: &str = "/warmup";

/// One complete request as the backend got it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Which accepted connection carried it (0, 1, ... in accept order).
    pub conn: usize,
    /// The request line without its CRLF, e.g. `GET / HTTP/1.1`.
    pub line: String,
    /// Every field in order, names as sent.
    pub fields: Vec<(String, String)>,
    /// The body with any chunked framing removed.
    pub body: Vec<u8>,
    /// The bytes of the head and body as they arrived.
    pub raw: Vec<u8>,
}

impl Received {
    pub fn target(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or("")
    }
}

/// A running raw backend; clones share its state.
#[derive(Clone)]
pub struct RawBackend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Received>>>,
    response: Arc<Mutex<Vec<u8>>>,
    accepted: Arc<AtomicUsize>,
}

impl RawBackend {
    /// Starts a backend on 127.0.0.1:0 answering with [`DEFAULT_RESPONSE`].
    pub async fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw backend");
        let backend = RawBackend {
            addr: listener.local_addr().expect("raw backend addr"),
            seen: Arc::default(),
            response: Arc::new(Mutex::new(DEFAULT_RESPONSE.to_vec())),
            accepted: Arc::default(),
        };
        let state = backend.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let conn = state.accepted.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                tokio::spawn(async move { state.serve(&mut stream, conn).await });
            }
        });
        backend
    }

    /// As [`start`](Self::start), with every connection behind TLS by `acceptor`; a
    /// connection it is done with ends with a TLS close_notify, as a TLS server's does.
    pub async fn start_tls(acceptor: tokio_rustls::TlsAcceptor) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw backend");
        let backend = RawBackend {
            addr: listener.local_addr().expect("raw backend addr"),
            seen: Arc::default(),
            response: Arc::new(Mutex::new(DEFAULT_RESPONSE.to_vec())),
            accepted: Arc::default(),
        };
        let state = backend.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (state, acceptor) = (state.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let conn = state.accepted.fetch_add(1, Ordering::SeqCst);
                    state.serve(&mut tls, conn).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        backend
    }

    /// Sets the bytes every later request is answered with.
    pub fn respond_with(&self, response: &[u8]) {
        *self.response.lock().expect("response lock") = response.to_vec();
    }

    /// Every complete request received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    async fn serve<S>(self, stream: &mut S, conn: usize)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match parse_request(&buf) {
                Parse::Complete {
                    used,
                    line,
                    fields,
                    body,
                } => {
                    let raw: Vec<u8> = buf.drain(..used).collect();
                    let warmup = line.split(' ').nth(1) == Some(WARMUP_PATH);
                    self.seen.lock().expect("seen lock").push(Received {
                        conn,
                        line,
                        fields,
                        body,
                        raw,
                    });
                    let response = if warmup {
                        DEFAULT_RESPONSE.to_vec()
                    } else {
                        self.response.lock().expect("response lock").clone()
                    };
                    if stream.write_all(&response).await.is_err() {
                        return;
                    }
                    continue;
                }
                Parse::Invalid(why) => {
                    let raw = std::mem::take(&mut buf);
                    self.seen.lock().expect("seen lock").push(Received {
                        conn,
                        line: format!("<unparsable: {why}>"),
                        fields: Vec::new(),
                        body: Vec::new(),
                        raw,
                    });
                    return;
                }
                Parse::Partial => {}
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// What the bytes at the start of a buffer amount to.
pub enum Parse {
    /// A whole request: `used` bytes of head and body.
    Complete {
        used: usize,
        line: String,
        fields: Vec<(String, String)>,
        body: Vec<u8>,
    },
    Partial,
    Invalid(String),
}

/// A whole request head: its length, its request line, its fields.
pub type Head = (usize, String, Vec<(String, String)>);

/// A request head at the start of `buf`, if it is all there.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let line = format!(
        "{} {} HTTP/1.{}",
        req.method.unwrap_or(""),
        req.path.unwrap_or(""),
        req.version.unwrap_or(1)
    );
    Ok(Some((head_len, line, owned_fields(req.headers))))
}

/// Parsed fields as owned (name, value) pairs, values read lossily as text.
pub fn owned_fields(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// One request at the start of `buf`, if it is all there; its body is framed by
/// Content-Length (plain digits, one value) or, when Transfer-Encoding is exactly
/// `chunked`, chunked and decoded.
pub fn parse_request(buf: &[u8]) -> Parse {
    let (head_len, line, fields) = match parse_head(buf) {
        Ok(Some(head)) => head,
        Ok(None) => return Parse::Partial,
        Err(e) => return Parse::Invalid(e),
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    let rest = &buf[head_len..];
    if field("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        return match dechunk(rest) {
            Dechunk::Done { used, body, .. } => Parse::Complete {
                used: head_len + used,
                line,
                fields,
                body,
            },
            Dechunk::Partial => Parse::Partial,
            Dechunk::Invalid(why) => Parse::Invalid(why),
        };
    }
    let lengths: BTreeSet<&str> = fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim())
        .collect();
    if lengths.len() > 1 {
        return Parse::Invalid(format!("content-length {lengths:?}"));
    }
    let length = match field("content-length") {
        None => 0,
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => match v.parse() {
            Ok(n) => n,
            Err(_) => return Parse::Invalid(format!("content-length {v:?}")),
        },
        Some(v) => return Parse::Invalid(format!("content-length {v:?}")),
    };
    if rest.len() < length {
        return Parse::Partial;
    }
    Parse::Complete {
        used: head_len + length,
        line,
        fields,
        body: rest[..length].to_vec(),
    }
}

pub enum Dechunk {
    /// The body is complete: `used` bytes of framing, data and trailer section.
    Done {
        used: usize,
        body: Vec<u8>,
        trailers: Vec<(String, String)>,
    },
    Partial,
    Invalid(String),
}

/// Decodes a chunked body at the start of `buf` (chunk extensions are skipped).
pub fn dechunk(buf: &[u8]) -> Dechunk {
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = find_crlf(&buf[at..]) else {
            return Dechunk::Partial;
        };
        let line = &buf[at..at + eol];
        let digits = line.split(|b| *b == b';').next().unwrap_or(b"");
        let Some(size) = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| usize::from_str_radix(d.trim(), 16).ok())
        else {
            return Dechunk::Invalid(format!("chunk size {:?}", String::from_utf8_lossy(line)));
        };
        at += eol + 2;
        if size == 0 {
            // Trailer fields, then the empty line.
            loop {
                let Some(eol) = find_crlf(&buf[at..]) else {
                    return Dechunk::Partial;
                };
                let line = String::from_utf8_lossy(&buf[at..at + eol]).into_owned();
                at += eol + 2;
                if eol == 0 {
                    return Dechunk::Done {
                        used: at,
                        body,
                        trailers,
                    };
                }
                let (name, value) = line.split_once(':').unwrap_or((&line, ""));
                trailers.push((name.to_owned(), value.trim().to_owned()));
            }
        }
        if buf.len() < at + size + 2 {
            return Dechunk::Partial;
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Dechunk::Invalid("no CRLF after chunk data".to_owned());
        }
        at += size + 2;
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}
