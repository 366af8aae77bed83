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

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::client_io::ClientIo;
use crate::connections::{Activity, Counted, Timeouts, Watch};
use crate::deadline::Deadline;
use crate::dispatch::{Peer, Proxy};
use crate::drain::InFlight;
use crate::h1::{self, Parsed};
use crate::rewind::Rewind;
use crate::rules::request::Reject;
use crate::rules::retry;
use crate::write_timeout::WriteTimeout;

mod body;
mod exchange;

/// Serves one client connection until it closes, times out, or shutdown is signalled
/// (then after its current response).
///
/// Not an `async fn`: the connection's state is built here and moved into the future
/// once. An `async fn` keeps each argument twice (as passed and as its local), and what
/// the connection's task holds while it waits for the next request is what 10,000 idle
/// connections cost.
pub fn serve<C: ClientIo>(
    stream: C,
    peer: Peer,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    timeouts: Timeouts,
    watch: Watch,
) -> impl Future<Output = ()> + Send {
    let mut c = Conn {
        client: stream,
        // Taken from the spares when needed: an idle connection holds no buffer.
        buf: BytesMut::new(),
        up: BytesMut::new(),
        out: Vec::new(),
        peer,
        write_timeout: timeouts.write,
    };
    async move {
        let stopping = watch.stopping();
        tokio::pin!(stopping);
        if requests(&mut c, &proxy, timeouts, &watch, stopping.as_mut()).await {
            // Boxed: hyper's connection is large and most connections never need it.
            return Box::pin(hand_off(c, proxy, &builder, timeouts, stopping)).await;
        }
        c.client.close(WRITE_GRACE).await;
    }
}

/// Relays requests until the connection ends (false) or one is declined and hyper
/// should serve the rest (true).
async fn requests<C: ClientIo>(
    c: &mut Conn<C>,
    proxy: &Proxy,
    timeouts: Timeouts,
    watch: &Watch,
    mut stopping: Pin<&mut WaitForCancellationFutureOwned>,
) -> bool {
    let mut head_deadline = Deadline::new(timeouts.header);
    let mut response_deadline = Deadline::new(proxy.response_timeout);
    // A new connection has the header timeout for its first request; a kept-alive one
    // the idle timeout until the next one begins.
    let mut wait = timeouts.header;
    let mut kept_alive = false;
    loop {
        head_deadline.set(Instant::now() + wait);
        wait = timeouts.idle;
        let next = next_request(
            c,
            proxy,
            &mut head_deadline,
            timeouts,
            stopping.as_mut(),
            kept_alive,
        );
        kept_alive = true;
        let mut ex = match next.await {
            Next::Request(ex) => ex,
            Next::Answered { keep_alive: true } => continue,
            Next::Answered { keep_alive: false } | Next::Close => return false,
            Next::Decline(why) => {
                tracing::trace!(?why, "left to hyper");
                return true;
            }
        };
        // The last response on this connection when the client said so or shutdown began.
        ex.close |= watch.is_stopping();
        let close = ex.close;
        let keep_alive = exchange::exchange(c, proxy, ex, &mut response_deadline).await;
        // Between requests a connection holds no buffer: an idle keep-alive connection
        // costs its task and socket only (HAProxy's and nginx's idle connections hold
        // none either). The next request takes them from the spares again.
        body::spare::put(std::mem::take(&mut c.up));
        body::spare::put_vec(std::mem::take(&mut c.out));
        if c.buf.is_empty() {
            body::spare::put(std::mem::take(&mut c.buf));
        }
        if !keep_alive || close {
            return false;
        }
    }
}

/// How long a new connection's first request may take to begin once shutdown started.
pub(crate) const FIRST_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a short local answer may take to write to a client that is closing anyway.
const WRITE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// A request body up to this size is copied after its head into one buffer, written
/// with one call; a larger one is sent from where it was read, so a connection holds it
/// once, not twice.
const COPIED_BODY: usize = 16 * 1024;

/// Bytes asked of the kernel per read from a backend (the relay's, and hyper's path on
/// raw sockets).
pub(crate) const READ_SIZE: usize = 16 * 1024;
/// Room for a client's request head, grown when one is larger.
const HEAD_SIZE: usize = 4 * 1024;

/// One client connection and its buffers. Between requests it holds none (unless the
/// client already sent part of its next request): they wait in [`body::spare`].
struct Conn<C> {
    /// The client's socket: requests are read from it and answers written to it; hyper
    /// takes it over when a request is declined.
    client: C,
    /// Bytes from the client not yet handled (the next request may already be here).
    buf: BytesMut,
    /// Bytes from the backend not yet relayed; only during a request.
    up: BytesMut,
    /// The next bytes to write: a request for the backend, then a response head.
    out: Vec<u8>,
    /// The client as each request needs it: for log lines and the added `X-Forwarded-*`
    /// fields, and handed to hyper with the connection.
    peer: Peer,
    /// How long one write to the client may take before the connection is given up.
    write_timeout: std::time::Duration,
}

impl<C: ClientIo> Conn<C> {
    /// Writes `bytes` to the client within the write timeout: a client that stops
    /// reading loses its connection instead of holding it. `last`: the connection is
    /// closed after them.
    async fn write(
        client: &mut C,
        bytes: &[u8],
        limit: std::time::Duration,
        last: bool,
    ) -> io::Result<()> {
        // Most answers fit in the socket's buffer: written at once, no timer armed.
        let now = match last {
            true => client.try_write_last(bytes),
            false => client.try_write_now(bytes),
        };
        let rest = match now {
            Ok(n) if n == bytes.len() && client.flushed() => return Ok(()),
            Ok(n) => &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => bytes,
            Err(e) => return Err(e),
        };
        let written = async {
            client.write_all(rest).await?;
            // TLS: what the session still holds goes out now; TCP: nothing to do.
            client.flush().await
        };
        match tokio::time::timeout(limit, written).await {
            Ok(written) => written,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for the write timeout",
            )),
        }
    }
}

/// A routed request, its bytes in `Conn::out`, waiting for its backend.
struct Exchange {
    /// A body larger than [`COPIED_BODY`], sent after the head in `Conn::out` from the
    /// buffer it was read into (kept for a retry).
    body: Bytes,
    /// Counts the request against its colour and backend until its last bytes are
    /// written; names the backend to send to and carries the status and byte count for
    /// the metrics and the access log.
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
        /// The answer was written and the connection stays open: read the next request.
        keep_alive: bool,
    },
    Decline(h1::Decline),
    Close,
}

/// Reads until a whole request is buffered, then routes it, picks a backend and writes
/// the request as the backend gets it into `c.out`. Until the first byte comes the
/// deadline is the caller's (idle, or the header timeout on a new connection); the head
/// must then be whole within the header timeout, and the body come without a pause
/// longer than the body timeout and at a rate that cannot trickle forever
/// ([`Timeouts::body_deadline`]).
async fn next_request<C: ClientIo>(
    c: &mut Conn<C>,
    proxy: &Proxy,
    deadline: &mut Deadline,
    timeouts: Timeouts,
    mut stopping: Pin<&mut WaitForCancellationFutureOwned>,
    kept_alive: bool,
) -> Next {
    // Shutdown was seen while a new connection's first request had not come yet.
    let mut stop_seen = false;
    // When the body began, and how much of it has come.
    let mut body: Option<(Instant, usize)> = None;
    // A head began (its first bytes are here): its header timeout is armed before the
    // next read, so a head that arrives whole costs no clock read.
    let mut head_began = !c.buf.is_empty();
    loop {
        match buffered_request(c, proxy) {
            Buffered::Request(ex) => return Next::Request(ex),
            Buffered::Answered { close } => {
                let written = Conn::write(&mut c.client, &c.out, c.write_timeout, close)
                    .await
                    .is_ok();
                return Next::Answered {
                    keep_alive: written && !close,
                };
            }
            Buffered::Decline(why) => return Next::Decline(why),
            Buffered::Head => {
                if body.is_none() {
                    let now = Instant::now();
                    body = Some((now, c.buf.len()));
                    deadline.set(timeouts.body_deadline(now, now, 0));
                }
            }
            Buffered::Partial => {}
        }
        if head_began && body.is_none() {
            head_began = false;
            deadline.set(Instant::now() + timeouts.header);
        }
        let was_empty = c.buf.is_empty();
        tokio::select! {
            biased;
            read = read_some(&mut c.client, &mut c.buf) => match read {
                Ok(0) | Err(_) => return Next::Close,
                Ok(_) => {
                    if let Some((start, at_head)) = body {
                        let received = c.buf.len().saturating_sub(at_head) as u64;
                        deadline.set(timeouts.body_deadline(start, Instant::now(), received));
                    } else if was_empty {
                        // The head's first byte: it gets the header timeout.
                        head_began = true;
                    }
                }
            },
            () = deadline.reached() => {
                tracing::debug!(peer = %c.peer.addr, "no complete request in time; closing");
                if c.buf.is_empty() {
                    // Idle: nothing to answer.
                    return Next::Close;
                }
                // A head or body that came too slowly: 408, then close.
                proxy.tracker.telemetry().refused(Reject::Timeout);
                c.out.clear();
                h1::write_local(Reject::Timeout.status(), Reject::Timeout.client_message(), true, &mut c.out);
                let _ = Conn::write(&mut c.client, &c.out, WRITE_GRACE, true).await;
                return Next::Close;
            }
            () = stopping.as_mut(), if c.buf.is_empty() && !stop_seen => {
                // Between requests of a kept-alive connection: closed (a client retries
                // a request it sent on a reused connection that closed unanswered).
                if kept_alive {
                    return Next::Close;
                }
                // A new connection: the client connected before the listener closed and
                // its first request may be on the way. It gets a short grace, then the
                // answer closes the connection.
                stop_seen = true;
                deadline.bring_forward(Instant::now() + FIRST_REQUEST_GRACE);
            }
        }
    }
}

/// What the bytes buffered so far amount to.
enum Buffered {
    Request(Exchange),
    /// Answered locally, the answer in `out`.
    Answered {
        /// The connection closes after the answer: the request was refused, or the
        /// client asked to close.
        close: bool,
    },
    Decline(h1::Decline),
    /// A whole head; its body is still coming.
    Head,
    Partial,
}

/// Parses what the client has sent and, once a whole request is here, starts it. Not
/// async: the parsed fields (a few KiB) never become part of the connection's future.
fn buffered_request<C: ClientIo>(c: &mut Conn<C>, proxy: &Proxy) -> Buffered {
    if c.buf.is_empty() {
        return Buffered::Partial;
    }
    if c.out.capacity() == 0 {
        c.out = body::spare::vec();
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
    let head_len = req.head_len;
    let copy = total - head_len <= COPIED_BODY;
    let next = begin(proxy, &req, &c.buf[..total], copy, &c.peer, &mut c.out);
    // A large body is sent from where it was read, not copied: a connection holds it
    // once.
    let body = if copy {
        c.buf.advance(total);
        Bytes::new()
    } else {
        c.buf.advance(head_len);
        c.buf.split_to(total - head_len).freeze()
    };
    match next {
        Ok(mut ex) => {
            ex.body = body;
            Buffered::Request(ex)
        }
        Err(close) => Buffered::Answered { close },
    }
}

/// Reads what the client has sent into `buf`: taken from the spares once there is
/// something to read, grown for a large head or body, and cut back to size once emptied.
async fn read_some<C: ClientIo>(client: &mut C, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() == 0 {
        client.readable().await?;
        *buf = body::spare::bytes();
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
    copy_body: bool,
    peer: &Peer,
    out: &mut Vec<u8>,
) -> Result<Exchange, bool> {
    out.clear();
    let started = proxy.start(req, peer, |req| {
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
    if copy_body {
        out.extend_from_slice(&bytes[req.head_len..]);
    }
    Ok(Exchange {
        in_flight,
        body: Bytes::new(),
        // The body is buffered: a retry can send all of it again.
        retry: retry::may_retry(req.method, true),
        head: req.method == "HEAD",
        close: req.plan.close,
    })
}

/// Serves the rest of the connection with hyper, starting with the bytes already read.
async fn hand_off<C: ClientIo>(
    c: Conn<C>,
    proxy: Arc<Proxy>,
    builder: &auto::Builder<TokioExecutor>,
    timeouts: Timeouts,
    mut stopping: Pin<&mut WaitForCancellationFutureOwned>,
) {
    let Conn {
        client, buf, peer, ..
    } = c;
    let io = WriteTimeout::new(
        Rewind {
            read: buf.freeze(),
            inner: client,
        },
        timeouts.write,
    );
    let activity = Arc::new(Activity::default());
    let counted = Arc::clone(&activity);
    let service = service_fn(move |req| {
        let active = counted.begin();
        // Boxed: the request's state (a few KiB) is then moved as a pointer each time
        // hyper moves the stream's future (into its task, and in HTTP/2 between its
        // stream states), not copied whole.
        let answer = Box::pin(proxy.forward(req, &peer));
        async move {
            let resp = answer.await?;
            Ok::<_, std::convert::Infallible>(resp.map(|body| Counted {
                body,
                _active: active,
            }))
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let since = Instant::now();
    let mut check = Box::pin(tokio::time::sleep(timeouts.idle));
    let mut stop_seen = false;
    let ended = loop {
        tokio::select! {
            ended = conn.as_mut() => break ended,
            () = &mut stopping, if !stop_seen => {
                stop_seen = true;
                if activity.started() {
                    // HTTP/1 closes after its current response, HTTP/2 sends GOAWAY.
                    conn.as_mut().graceful_shutdown();
                    break conn.await;
                }
                // hyper has not begun the request it was handed yet: asked to shut
                // down now, it would close without reading it.
                check.as_mut().reset(Instant::now() + FIRST_REQUEST_GRACE);
            }
            () = check.as_mut() => {
                if stop_seen {
                    conn.as_mut().graceful_shutdown();
                    break conn.await;
                }
                // Idle: no request open for the idle timeout (HTTP/2 with no stream,
                // HTTP/1 between requests). Closed the way shutdown closes it.
                match activity.idle_until(timeouts.idle, since) {
                    Some(at) if at <= Instant::now() => {
                        tracing::debug!("idle connection closed");
                        conn.as_mut().graceful_shutdown();
                        break conn.await;
                    }
                    Some(at) => check.as_mut().reset(at),
                    None => check.as_mut().reset(Instant::now() + timeouts.idle),
                }
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
