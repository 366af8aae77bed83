//! The HTTP/1.1 relay: the data path for the plain, common request.
//!
//! Each client connection starts here. A request the relay takes on (see
//! [`h1::parse_request`]) is read whole (head and a body of known, bounded length),
//! routed and counted like any other, and its head rewritten as bytes for a kept-alive
//! socket to the chosen backend; the response head comes back the same way and the body
//! is copied through by its framing. No `HeaderMap` is built and no task is spawned per
//! request: this is how nginx and HAProxy forward, and it is where most of a proxy's
//! per-request cost goes otherwise (see README, Performance).
//!
//! Everything else goes to hyper for the rest of the connection, with the bytes read
//! so far replayed first: HTTP/2, HTTP/1.0, upgrades, `Expect`, chunked or large
//! uploads, absolute-form targets, and any head the relay cannot parse (hyper answers
//! 400 or 431). The routing, the in-flight guard, the metrics and the error answers are
//! the same on both paths.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::chunked::Chunked;
use crate::connections::Watch;
use crate::deadline::Deadline;
use crate::drain::InFlight;
use crate::error::ProxyError;
use crate::h1::{self, Parsed};
use crate::metrics::ErrorKind;
use crate::proxy::{Peer, Proxy, book_failure};
use crate::rewind::Rewind;
use crate::rules::response::{BadResponse, Framing};
use crate::rules::retry;
use crate::upstream::UpstreamError;

/// Serves one client connection until it closes, times out, or shutdown is signalled
/// (then after its current response).
pub async fn serve(
    stream: TcpStream,
    peer: Peer,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    header_timeout: Duration,
    watch: Watch,
) {
    let stopping = watch.stopping();
    tokio::pin!(stopping);
    let mut c = Conn {
        client: stream,
        // Taken from the spares when needed: an idle connection holds no buffer.
        buf: BytesMut::new(),
        up: BytesMut::new(),
        out: Vec::new(),
        peer,
    };
    let mut head_deadline = Deadline::new(header_timeout);
    let mut response_deadline = Deadline::new(proxy.response_timeout);
    loop {
        head_deadline.set(Instant::now() + header_timeout);
        let next = next_request(
            &mut c,
            &proxy,
            &mut head_deadline,
            header_timeout,
            stopping.as_mut(),
        );
        let mut ex = match next.await {
            Next::Request(ex) => ex,
            Next::Answered { keep_alive: true } => continue,
            Next::Answered { keep_alive: false } | Next::Close => return,
            Next::Decline(why) => {
                tracing::trace!(?why, "left to hyper");
                // Boxed: hyper's connection is large and most connections never need it.
                return Box::pin(hand_off(c, proxy, &builder, stopping)).await;
            }
        };
        // The last response on this connection when the client said so or shutdown began.
        ex.close |= watch.is_stopping();
        let close = ex.close;
        let keep_alive = exchange(&mut c, &proxy, ex, &mut response_deadline).await;
        spare::put(std::mem::take(&mut c.up));
        if c.out.capacity() > 4 * READ_SIZE {
            // It held a large request body; the next request starts small again.
            c.out = Vec::new();
        }
        if !keep_alive || close {
            return;
        }
    }
}

/// Bytes asked of the kernel per read from a backend.
const READ_SIZE: usize = 16 * 1024;
/// Room for a client's request head, grown when one is larger.
const HEAD_SIZE: usize = 4 * 1024;

/// One client connection and its buffers. A connection that never sent anything holds
/// none; one kept alive between requests holds its small request buffer and `out`,
/// while the larger buffer for backend bytes waits in [`spare`] until the next request.
struct Conn {
    client: TcpStream,
    /// Bytes from the client not yet handled (the next request may already be here).
    buf: BytesMut,
    /// Bytes from the backend not yet relayed; only during a request.
    up: BytesMut,
    /// The next bytes to write: a request for the backend, then a response head.
    out: Vec<u8>,
    peer: Peer,
}

/// A routed request, its bytes in `Conn::out`, waiting for its backend.
struct Exchange {
    in_flight: InFlight,
    /// May be sent again on a fresh connection if a reused one fails before any answer
    /// (RFC 9112 §9.3.1.1).
    retry: bool,
    /// A HEAD request: no response body whatever the fields say.
    head: bool,
    /// The client asked to close after this response.
    close: bool,
}

enum Next {
    Request(Exchange),
    /// Answered locally (no healthy backend).
    Answered {
        keep_alive: bool,
    },
    Decline(h1::Decline),
    Close,
}

/// Reads until a whole request is buffered, then routes it, picks a backend and writes
/// the request as the backend gets it into `c.out`. The head must come within
/// `timeout`; once it has, each read of the body gets `timeout` anew (nginx's
/// `client_body_timeout`).
async fn next_request(
    c: &mut Conn,
    proxy: &Proxy,
    deadline: &mut Deadline,
    timeout: Duration,
    mut stopping: Pin<&mut WaitForCancellationFutureOwned>,
) -> Next {
    let mut reading_body = false;
    loop {
        match buffered_request(c, proxy) {
            Buffered::Request(ex) => return Next::Request(ex),
            Buffered::Answered { close } => {
                let written = c.client.write_all(&c.out).await.is_ok();
                return Next::Answered {
                    keep_alive: written && !close,
                };
            }
            Buffered::Decline(why) => return Next::Decline(why),
            Buffered::Head => reading_body = true,
            Buffered::Partial => {}
        }
        tokio::select! {
            biased;
            read = read_some(&mut c.client, &mut c.buf) => match read {
                Ok(0) | Err(_) => return Next::Close,
                Ok(_) if reading_body => deadline.set(Instant::now() + timeout),
                Ok(_) => {}
            },
            () = deadline.reached() => {
                tracing::debug!(peer = %c.peer.addr, "no complete request in time; closing");
                return Next::Close;
            }
            () = stopping.as_mut(), if c.buf.is_empty() => return Next::Close,
        }
    }
}

/// What the bytes buffered so far amount to.
enum Buffered {
    Request(Exchange),
    /// Answered locally, the answer in `out`.
    Answered {
        close: bool,
    },
    Decline(h1::Decline),
    /// A whole head; its body is still coming.
    Head,
    Partial,
}

/// Parses what the client has sent and, once a whole request is here, starts it. Not
/// async: the parsed fields (a few KiB) never become part of the connection's future.
fn buffered_request(c: &mut Conn, proxy: &Proxy) -> Buffered {
    if c.buf.is_empty() {
        return Buffered::Partial;
    }
    let mut storage = h1::fields();
    let req = match h1::parse_request(&c.buf, &mut storage, &proxy.policy) {
        Parsed::Complete(req) => req,
        Parsed::Partial => return Buffered::Partial,
        Parsed::Decline(why) => return Buffered::Decline(why),
        Parsed::Reject(reject) => {
            // The rest of what the client sent is never read as a request: the
            // connection closes after the answer.
            tracing::debug!(peer = %c.peer.addr, error = %reject, "request refused");
            proxy.tracker.telemetry().refused(reject);
            c.out.clear();
            h1::write_local(reject.status(), reject.client_message(), true, &mut c.out);
            return Buffered::Answered { close: true };
        }
    };
    // A body of at most MAX_BUFFERED_BODY bytes: fits in usize.
    let total = req.head_len + req.body_len() as usize;
    if c.buf.len() < total {
        return Buffered::Head;
    }
    let next = begin(proxy, &req, &c.buf[..total], &c.peer, &mut c.out);
    c.buf.advance(total);
    match next {
        Ok(ex) => Buffered::Request(ex),
        Err(close) => Buffered::Answered { close },
    }
}

/// Reads what the client has sent into `buf`: allocated once there is something to
/// read, grown for a large head or body, and cut back to size once emptied.
async fn read_some(client: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() == 0 {
        client.readable().await?;
    } else if buf.is_empty() && buf.capacity() > 4 * READ_SIZE {
        // What a large body grew it to is not kept for the connection's next request.
        *buf = BytesMut::new();
    }
    if buf.capacity() - buf.len() < HEAD_SIZE / 4 {
        buf.reserve(HEAD_SIZE.max(buf.len()));
    }
    client.read_buf(buf).await
}

/// Routes a whole buffered request (`bytes`: head and body) and writes it for its
/// backend into `out`. `Err(close)` when it was answered locally instead (503), with
/// that answer in `out`.
fn begin(
    proxy: &Proxy,
    req: &h1::Request<'_, '_>,
    bytes: &[u8],
    peer: &Peer,
    out: &mut Vec<u8>,
) -> Result<Exchange, bool> {
    out.clear();
    let started = proxy.start(req, peer.addr, |req| {
        let method = http::Method::from_bytes(req.method.as_bytes()).unwrap_or_default();
        (method, req.target.to_owned())
    });
    let in_flight = match started {
        Ok(in_flight) => in_flight,
        Err(err) => {
            h1::write_local(err.status(), err.client_message(), req.plan.close, out);
            return Err(req.plan.close);
        }
    };
    req.write_forwarded(peer.client(), out);
    out.extend_from_slice(&bytes[req.head_len..]);
    Ok(Exchange {
        in_flight,
        // The body is buffered: a retry can send all of it again.
        retry: retry::may_retry(req.method, true, false, true),
        head: req.method == "HEAD",
        close: req.plan.close,
    })
}

/// How one attempt at the backend went, before any of its response reached the client.
enum Failure {
    Connect(UpstreamError),
    /// Nothing came back on a reused connection: it may be retried.
    Unanswered(io::Error),
    Io(io::Error),
    Bad(BadResponse),
    Timeout,
    /// The client closed its connection while waiting.
    ClientGone,
}

/// What the client is sent of a response head.
struct Head {
    code: u16,
    framing: Framing,
    keep_alive: bool,
}

/// Sends `c.out` to the backend and relays the response. Returns whether the client
/// connection can take another request. The request stops counting as in flight just
/// before its last bytes are written to the client: once the client has them, status
/// and metrics already agree that it is done.
async fn exchange(c: &mut Conn, proxy: &Proxy, mut ex: Exchange, deadline: &mut Deadline) -> bool {
    let backend = Arc::clone(ex.in_flight.backend());
    let upstreams = proxy.tracker.upstreams();
    deadline.set(Instant::now() + proxy.response_timeout);
    let color = proxy.color_header.then(|| ex.in_flight.color().as_str());
    if c.up.capacity() == 0 {
        c.up = spare::bytes();
    }
    let (mut upstream, head) = loop {
        let (mut upstream, reused) = match upstreams.take_raw(&backend) {
            Some(stream) => (stream, true),
            None => match upstreams.connect_tcp(&backend).await {
                Ok(stream) => (stream, false),
                Err(e) => return failed(c, proxy, ex, Failure::Connect(e)).await,
            },
        };
        c.up.clear();
        match response_head(c, proxy, &mut upstream, &ex, color, deadline).await {
            Ok(head) => break (upstream, head),
            Err(Failure::Unanswered(_)) if reused && ex.retry => continue,
            Err(Failure::Unanswered(e)) => return failed(c, proxy, ex, Failure::Io(e)).await,
            Err(failure) => return failed(c, proxy, ex, failure).await,
        }
    };
    ex.in_flight.backend().record(head.code < 500);
    ex.in_flight.status = head.code;
    let reusable = match relay_body(c, &mut upstream, head.framing, ex.in_flight).await {
        Ok(complete) => complete && head.keep_alive && c.up.is_empty(),
        Err(e) => {
            tracing::debug!(peer = %c.peer.addr, error = %e, "response relay ended early");
            return false;
        }
    };
    if reusable {
        upstreams.put_back_raw(&backend, upstream);
    }
    head.framing != Framing::Close
}

/// Writes the request and reads the response head, passing 1xx heads through; leaves
/// the client's head for the final response in `c.out` and its first body bytes in
/// `c.up`. The request is written while the response is read, all within the response
/// timeout: a backend that answers as it reads (an echo) never waits on the relay, and
/// one that answers before reading all of it (413) is heard; that connection is then
/// not reused.
async fn response_head(
    c: &mut Conn,
    proxy: &Proxy,
    upstream: &mut TcpStream,
    ex: &Exchange,
    color: Option<&str>,
    deadline: &mut Deadline,
) -> Result<Head, Failure> {
    // Most requests fit in the socket's buffer: written here, without waiting.
    let mut written = match upstream.try_write(&c.out) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(Failure::Unanswered(e)),
    };
    // An interim answer came: the request is no longer unanswered (not retried).
    let mut heard = false;
    let (mut from, mut to) = upstream.split();
    loop {
        if !c.up.is_empty() {
            let mut storage = h1::fields();
            let parsed = h1::parse_response(&c.up, &mut storage, ex.head, &proxy.policy.limits);
            if let Some(resp) = parsed.map_err(Failure::Bad)? {
                let head_len = resp.head_len;
                if resp.plan.interim {
                    // 1xx (RFC 9110 §15.2): dropped on every path (hyper's server cannot
                    // send one); the request goes on being sent, the final answer follows.
                    c.up.advance(head_len);
                    heard = true;
                    continue;
                }
                // The rest of the request is not sent after an early answer.
                let cut_short = written < c.out.len();
                c.out.clear();
                let head = Head {
                    code: resp.code,
                    framing: resp.plan.framing,
                    keep_alive: resp.plan.keep_alive && !cut_short,
                };
                let close = ex.close || head.framing == Framing::Close;
                resp.write_forwarded(color, close, &mut c.out);
                c.up.advance(head_len);
                return Ok(head);
            }
        }
        if c.up.capacity() - c.up.len() < READ_SIZE / 4 {
            c.up.reserve(READ_SIZE);
        }
        let unsent = &c.out[written..];
        tokio::select! {
            biased;
            sent = to.write(unsent), if !unsent.is_empty() => match sent {
                Ok(0) => return Err(Failure::Unanswered(io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) if c.up.is_empty() => return Err(Failure::Unanswered(e)),
                Err(e) => return Err(Failure::Io(e)),
            },
            read = from.read_buf(&mut c.up) => match read {
                Ok(0) if c.up.is_empty() && !heard => {
                    return Err(Failure::Unanswered(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(0) => return Err(Failure::Io(io::ErrorKind::UnexpectedEof.into())),
                Err(e) if c.up.is_empty() && !heard => {
                    return Err(Failure::Unanswered(e));
                }
                Err(e) => return Err(Failure::Io(e)),
                Ok(_) => {}
            },
            () = deadline.reached() => return Err(Failure::Timeout),
            // A client that leaves stops the wait; a pipelining one has its next request
            // kept (up to a head's worth).
            read = c.client.read_buf(&mut c.buf), if c.buf.len() < proxy.policy.limits.max_request_head => match read {
                Ok(0) | Err(_) => return Err(Failure::ClientGone),
                Ok(_) => {}
            },
        }
    }
}

/// Writes `c.out` (the response head) and the body after it to the client. Returns
/// whether the body ended where its framing says (else the backend closed first). A
/// backend that breaks off or garbles the body is booked on the request as an
/// upstream error; a client that stops reading is not.
async fn relay_body(
    c: &mut Conn,
    upstream: &mut TcpStream,
    framing: Framing,
    in_flight: InFlight,
) -> io::Result<bool> {
    let mut in_flight = Some(in_flight);
    // Counts body bytes; released before the write that ends the body.
    let count = |in_flight: &mut Option<InFlight>, n: usize, done: bool| {
        if let Some(guard) = in_flight.as_mut() {
            guard.bytes += n as u64;
        }
        if done {
            in_flight.take();
        }
    };
    let broke = |in_flight: &mut Option<InFlight>, kind: ErrorKind, e: io::Error| {
        if let Some(guard) = in_flight.as_mut() {
            guard.broke(kind);
        }
        e
    };
    let mut remaining = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut chunked = Chunked::default();
    // The part of `bytes` that is body; whether the body is complete after it.
    let mut take = |bytes: &[u8]| -> io::Result<(usize, bool)> {
        Ok(match framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let n = bytes
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                remaining -= n as u64;
                (n, remaining == 0)
            }
            Framing::Chunked => {
                let n = chunked
                    .advance(bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                (n, chunked.is_done())
            }
            Framing::Close => (bytes.len(), false),
        })
    };
    let (n, mut done) = take(&c.up).map_err(|e| broke(&mut in_flight, ErrorKind::Protocol, e))?;
    c.out.extend_from_slice(&c.up[..n]);
    c.up.advance(n);
    count(&mut in_flight, n, done);
    c.client.write_all(&c.out).await?;
    while !done {
        c.up.clear();
        c.up.reserve(4 * READ_SIZE);
        let read = (upstream.read_buf(&mut c.up).await)
            .map_err(|e| broke(&mut in_flight, ErrorKind::Reset, e))?;
        if read == 0 {
            return match framing {
                Framing::Close => Ok(false),
                _ => Err(broke(
                    &mut in_flight,
                    ErrorKind::Reset,
                    io::ErrorKind::UnexpectedEof.into(),
                )),
            };
        }
        let (n, complete) =
            take(&c.up).map_err(|e| broke(&mut in_flight, ErrorKind::Protocol, e))?;
        done = complete;
        count(&mut in_flight, n, done);
        c.client.write_all(&c.up[..n]).await?;
        c.up.advance(n);
    }
    Ok(true)
}

/// Books a failed attempt (the backend's run of failures, the error counter, the log)
/// and answers the client with the status that says why.
async fn failed(c: &mut Conn, proxy: &Proxy, ex: Exchange, failure: Failure) -> bool {
    let Exchange {
        mut in_flight,
        close,
        ..
    } = ex;
    let (backend, color) = (in_flight.backend().address.clone(), in_flight.color());
    let (kind, err) = match failure {
        Failure::Connect(e) => (
            ErrorKind::Connect,
            ProxyError::Connect {
                backend,
                color,
                cause: e.to_string(),
            },
        ),
        Failure::ClientGone => {
            // Nobody to answer, and the backend's answer, if any, is not read: not the
            // backend's failure. The request ends with no status (as on hyper's path).
            tracing::debug!(peer = %c.peer.addr, "client closed before the response");
            return false;
        }
        Failure::Timeout => (
            ErrorKind::Timeout,
            ProxyError::Timeout {
                backend,
                color,
                after: proxy.response_timeout,
            },
        ),
        Failure::Unanswered(e) | Failure::Io(e) => (
            ErrorKind::Reset,
            ProxyError::Upstream {
                backend,
                color,
                cause: e.to_string(),
            },
        ),
        Failure::Bad(e) => (
            ErrorKind::Protocol,
            ProxyError::Upstream {
                backend,
                color,
                cause: e.to_string(),
            },
        ),
    };
    book_failure(&mut in_flight, kind, &err, c.peer.addr);
    // Done before the client has the answer, as on the success path.
    drop(in_flight);
    c.out.clear();
    h1::write_local(err.status(), err.client_message(), close, &mut c.out);
    c.client.write_all(&c.out).await.is_ok()
}

/// Buffers between requests, per thread: bounded in number, and only of the usual size
/// (one grown by a large body is freed instead).
mod spare {
    use std::cell::RefCell;

    use bytes::BytesMut;

    use super::READ_SIZE;

    /// Spares kept per thread.
    const KEEP: usize = 256;

    thread_local! {
        static BYTES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    pub fn bytes() -> BytesMut {
        BYTES
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| BytesMut::with_capacity(READ_SIZE))
    }

    pub fn put(mut buf: BytesMut) {
        buf.clear();
        if buf.capacity() == 0 {
            return;
        }
        // Reclaims the room before the read position; allocates nothing when the
        // buffer was READ_SIZE or more to begin with.
        buf.reserve(READ_SIZE);
        if buf.capacity() <= 4 * READ_SIZE {
            keep(buf);
        }
    }

    fn keep(buf: BytesMut) {
        BYTES.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < KEEP {
                s.push(buf);
            }
        });
    }
}

/// Serves the rest of the connection with hyper, starting with the bytes already read.
async fn hand_off(
    c: Conn,
    proxy: Arc<Proxy>,
    builder: &auto::Builder<TokioExecutor>,
    stopping: Pin<&mut WaitForCancellationFutureOwned>,
) {
    let Conn {
        client, buf, peer, ..
    } = c;
    let io = Rewind {
        read: buf.freeze(),
        inner: client,
    };
    let service = service_fn(move |req| proxy.forward(req, &peer));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = stopping => {
            // HTTP/1 closes after its current response, HTTP/2 sends GOAWAY.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
