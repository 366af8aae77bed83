//! One exchange with a backend: send the buffered request on a kept-alive socket (or a
//! new one), read the response head, judge it by the rulebook, and answer with the
//! status that says why when the backend fails.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Buf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::body::{relay_body, spare};
use super::{Conn, Exchange, READ_SIZE};

use crate::backend_stream::{BackendStream, WriteHalf};
use crate::chunked;
use crate::client_io::ClientIo;
use crate::deadline::Deadline;
use crate::dispatch::{Fault, Proxy, book_failure, raw_connection};
use crate::drain::CUT_CHECK;
use crate::error::ProxyError;
use crate::h1;
use crate::metrics::ErrorKind;
use crate::rules::response::{BadResponse, Framing};

/// How one attempt at the backend went, before any of its response reached the client.
enum Failure {
    /// The backend's own failure, booked alike on both raw paths.
    Backend(Fault),
    Bad(BadResponse),
    /// The client closed its connection while waiting.
    ClientGone,
    /// Its colour's drain deadline passed while it waited for the head.
    Drained,
}

/// What the client is sent of a response head.
struct Head {
    /// The backend's status: recorded on the request, and a 5xx counts toward the
    /// backend's passive ejection.
    code: u16,
    /// How the body is delimited: the relay copies it by this, and `Close` ends the
    /// client connection after it.
    framing: Framing,
    /// The backend socket may be reused after the body: the response allows it and all
    /// of the request was sent.
    keep_alive: bool,
}

/// Sends `c.out` to the backend and relays the response. Returns whether the client
/// connection can take another request. The request stops counting as in flight just
/// before its last bytes are written to the client: once the client has them, status
/// and metrics already agree that it is done.
pub(super) async fn exchange<C: ClientIo>(
    c: &mut Conn<C>,
    proxy: &Proxy,
    mut ex: Exchange,
    deadline: &mut Deadline,
) -> bool {
    let now = Instant::now();
    let mut respond_by = now + proxy.response_timeout;
    deadline.set(respond_by.min(now + CUT_CHECK));
    let color = proxy.color_header.then(|| ex.in_flight.color().as_str());
    if c.up.capacity() == 0 {
        c.up = spare::bytes();
    }
    let mut moved = false;
    // A request sent on a reused connection that closed unanswered goes once more, on
    // a new connection: another kept one may have been closed the same way.
    let mut retried = false;
    let (mut upstream, head) = loop {
        let (mut upstream, reused) =
            match raw_connection(&mut ex.in_flight, retried, &mut moved).await {
                Ok(conn) => conn,
                Err(e) => return failed(c, proxy, ex, Failure::Backend(Fault::Connect(e))).await,
            };
        c.up.clear();
        match response_head(
            c,
            proxy,
            &mut upstream,
            &ex,
            color,
            deadline,
            &mut respond_by,
        )
        .await
        {
            Ok(head) => break (upstream, head),
            Err(Failure::Backend(Fault::Unanswered(_))) if reused && ex.retry => retried = true,
            Err(Failure::Backend(Fault::Unanswered(e))) => {
                return failed(c, proxy, ex, Failure::Backend(Fault::Io(e))).await;
            }
            Err(failure) => return failed(c, proxy, ex, failure).await,
        }
    };
    if head.framing == Framing::Chunked && !chunked::start_is_sound(&c.up) {
        // Nothing has reached the client yet: the broken body is a 502 like a broken
        // head (what came after the head is judged before the head is sent on).
        c.out.clear();
        return failed(c, proxy, ex, Failure::Bad(BadResponse::Chunked)).await;
    }
    // Where the socket goes back: the guard moves into the body relay.
    let backend = Arc::clone(ex.in_flight.backend());
    ex.in_flight.backend().record(head.code < 500);
    ex.in_flight.status = head.code;
    // The client connection ends with this response (one framed by the backend's
    // close ends with no write to mark as the last).
    let last = ex.close;
    let reusable = match relay_body(
        c,
        &mut upstream,
        head.framing,
        ex.in_flight,
        proxy.read_timeout,
        last,
    )
    .await
    {
        Ok(complete) => complete && head.keep_alive && c.up.is_empty(),
        Err(e) => {
            tracing::debug!(peer = %c.peer.addr, error = %e, "response relay ended early");
            return false;
        }
    };
    if reusable {
        proxy.tracker.upstreams().put_back_raw(&backend, upstream);
    }
    head.framing != Framing::Close
}

/// Writes the request and reads the response head, passing 1xx heads through; leaves
/// the client's head for the final response in `c.out` and its first body bytes in
/// `c.up`. The request is written while the response is read, all within the response
/// timeout: a backend that answers as it reads (an echo) never waits on the relay, and
/// one that answers before reading all of it (413) is heard; that connection is then
/// not reused.
async fn response_head<C: ClientIo>(
    c: &mut Conn<C>,
    proxy: &Proxy,
    upstream: &mut BackendStream,
    ex: &Exchange,
    color: Option<&str>,
    deadline: &mut Deadline,
    respond_by: &mut Instant,
) -> Result<Head, Failure> {
    // The request is the head in `c.out` then a large body kept where it was read.
    let total = c.out.len() + ex.body.len();
    // Most requests fit in the socket's buffer: written here, without waiting.
    let first = if ex.body.is_empty() {
        upstream.try_write(&c.out)
    } else {
        upstream.try_write_vectored(&[io::IoSlice::new(&c.out), io::IoSlice::new(&ex.body)])
    };
    let mut written = match first {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(Failure::Backend(Fault::Unanswered(e))),
    };
    // An interim answer came: the request is no longer unanswered (not retried).
    let mut heard = false;
    // TLS holds what the socket has not taken yet: flushed once all of it is written.
    let mut unflushed = upstream.needs_flush();
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
                let cut_short = written < total;
                c.out.clear();
                let head = Head {
                    code: resp.code,
                    framing: resp.plan.framing,
                    keep_alive: resp.plan.keep_alive && !cut_short,
                };
                let close = ex.close || head.framing == Framing::Close;
                resp.write_forwarded(color, &ex.in_flight.cookies, close, &mut c.out);
                c.up.advance(head_len);
                return Ok(head);
            }
        }
        if c.up.capacity() - c.up.len() < READ_SIZE / 4 {
            c.up.reserve(READ_SIZE);
        }
        let unsent = match c.out.get(written..) {
            Some(rest) if !rest.is_empty() => rest,
            _ => ex
                .body
                .get(written.saturating_sub(c.out.len())..)
                .unwrap_or_default(),
        };
        let pending = written < total;
        tokio::select! {
            biased;
            sent = write_or_flush(&mut to, unsent, pending),
                if (pending && !unsent.is_empty()) || (unflushed && !pending) => match sent {
                Ok(None) => unflushed = false,
                Ok(Some(0)) => return Err(Failure::Backend(Fault::Unanswered(io::ErrorKind::WriteZero.into()))),
                Ok(Some(n)) => {
                    written += n;
                    if written == total {
                        // The response timer runs from when the request has been sent.
                        *respond_by = Instant::now() + proxy.response_timeout;
                    }
                }
                Err(e) if c.up.is_empty() => return Err(Failure::Backend(Fault::Unanswered(e))),
                Err(e) => return Err(Failure::Backend(Fault::Io(e))),
            },
            read = from.read_buf(&mut c.up) => match read {
                Ok(0) if c.up.is_empty() && !heard => {
                    return Err(Failure::Backend(Fault::Unanswered(io::ErrorKind::UnexpectedEof.into())));
                }
                Ok(0) => return Err(Failure::Backend(Fault::Io(io::ErrorKind::UnexpectedEof.into()))),
                Err(e) if c.up.is_empty() && !heard => {
                    return Err(Failure::Backend(Fault::Unanswered(e)));
                }
                Err(e) => return Err(Failure::Backend(Fault::Io(e))),
                Ok(_) => {}
            },
            // Reached each second while it waits (the deadline is lazy: a request that
            // is answered sooner moves it and arms nothing): the drain deadline, then
            // the response timeout.
            () = deadline.reached() => {
                if ex.in_flight.is_cut() {
                    return Err(Failure::Drained);
                }
                let now = Instant::now();
                if now >= *respond_by {
                    return Err(Failure::Backend(Fault::Timeout));
                }
                deadline.set((*respond_by).min(now + CUT_CHECK));
            }
            // A client that leaves stops the wait; a pipelining one has its next request
            // kept (up to a head's worth).
            read = c.client.read_buf(&mut c.buf), if c.buf.len() < proxy.policy.limits.max_request_head => match read {
                Ok(0) | Err(_) => return Err(Failure::ClientGone),
                Ok(_) => {}
            },
        }
    }
}

/// Writes some of `unsent` while the request is `pending`, and after it flushes (a TLS
/// connection's last records): `Some(n)` bytes written, or `None` flushed.
async fn write_or_flush(
    to: &mut WriteHalf<'_>,
    unsent: &[u8],
    pending: bool,
) -> io::Result<Option<usize>> {
    if pending {
        to.write(unsent).await.map(Some)
    } else {
        to.flush().await.map(|()| None)
    }
}

/// Books a failed attempt (the backend's run of failures, the error counter, the log)
/// and answers the client with the status that says why. Boxed here, once for every
/// caller: the error path's future would otherwise be part of every exchange's, and
/// of every idle connection's task.
fn failed<'a, C: ClientIo>(
    c: &'a mut Conn<C>,
    proxy: &'a Proxy,
    ex: Exchange,
    failure: Failure,
) -> Pin<Box<impl Future<Output = bool> + Send + 'a>> {
    Box::pin(async move {
        let Exchange {
            mut in_flight,
            close,
            ..
        } = ex;
        let (backend, color) = (in_flight.backend().address.clone(), in_flight.color());
        let (kind, err) = match failure {
            Failure::Drained => {
                // Not the backend's fault: counted as closed by the drain, answered 503,
                // and the connection closed.
                let mut in_flight = in_flight;
                in_flight.closed_by_drain();
                let err = ProxyError::Drained { backend, color };
                in_flight.status = err.status().as_u16();
                drop(in_flight);
                c.out.clear();
                h1::write_local(err.status(), err.client_message(), true, &mut c.out);
                let _ = Conn::write(&mut c.client, &c.out, c.write_timeout, true).await;
                return false;
            }
            Failure::ClientGone => {
                // Nobody to answer, and the backend's answer, if any, is not read: not the
                // backend's failure. The request ends with no status (as on hyper's path).
                tracing::debug!(peer = %c.peer.addr, "client closed before the response");
                return false;
            }
            Failure::Backend(fault) => fault.booked(backend, color, proxy.response_timeout),
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
        Conn::write(&mut c.client, &c.out, c.write_timeout, close)
            .await
            .is_ok()
    })
}
