//! Hyper's path with a request that has no body and asks for no upgrade (every HTTP/2
//! GET, most HTTP/1.1 ones the relay hands over): the exchange with the backend runs in
//! the request's own task on one of the relay's raw kept-alive sockets. The head is
//! written as one buffer, the response head is read and judged by the same
//! [`h1::parse_response`] the relay uses, and the body is decoded from the socket as
//! the client takes it; a whole short body comes with the head and is answered at once.
//!
//! Hyper's client costs a task per backend connection, a channel hop per request and
//! per body frame, and a copy of the request for a retry: perf put a fifth of
//! cutover's samples on h2c in it, and going without it cut the CPU per HTTP/2 request
//! by 12-14% (README, Performance). Requests with a body or an upgrade keep hyper's
//! client, which streams the upload and hands over the upgraded connection.

use std::io;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::body::RawBody;
use super::forward::{add_ours, added_fields, bad_response, failed};
use super::{ProxyBody, local_response};
use crate::backend_stream::BackendStream;
use crate::chunked;
use crate::color::Color;
use crate::deadline::Deadline;
use crate::dispatch::{Fault, raw_connection};
use crate::drain::{CUT_CHECK, InFlight};
use crate::error::ProxyError;
use crate::h1;
use crate::headers::ClientBody;
use crate::relay::READ_SIZE;
use crate::routing::SetCookies;
use crate::rules::Limits;
use crate::rules::response::{BadResponse, Framing};

/// The first read of a response.
const HEAD_SIZE: usize = 4 * 1024;

/// Whether `req` goes to its backend on a raw socket: it has no body, and there is no
/// upgrade to hand over.
pub(super) fn takes(req: &Request<ClientBody>, upgrade: bool) -> bool {
    !upgrade && matches!(req.body(), ClientBody::Empty)
}

/// How one attempt went before any of the response reached the client.
enum Failure {
    /// The backend's own failure, booked alike on both raw paths.
    Backend(Fault),
    Bad(BadResponse),
    Drained,
}

/// A backend's final response head, owned, and where its body starts.
struct Head {
    parts: http::response::Parts,
    framing: Framing,
    keep_alive: bool,
}

/// The limits and switches of one response.
pub(super) struct Answer {
    pub(super) timeout: Duration,
    pub(super) color_header: bool,
    pub(super) limits: Limits,
    pub(super) read_timeout: Duration,
}

/// Sends `req` and turns the backend's answer into the client's response, or into the
/// status that says why there is none. A connection the backend closed before
/// answering is retried on the next one when `retry` allows; one that cannot be opened
/// moves the request to another backend, once.
pub(super) async fn respond(
    mut in_flight: InFlight,
    req: Request<ClientBody>,
    retry: bool,
    peer: std::net::SocketAddr,
    answer: Answer,
) -> Response<ProxyBody> {
    let head_request = req.method() == Method::HEAD;
    let out = request_head(&req);
    drop(req);
    let mut moved = false;
    // A request sent on a reused connection that closed unanswered goes once more, on
    // a new connection, as on hyper's client.
    let mut retried = false;
    let mut buf = BytesMut::new();
    let mut deadline: Option<Deadline> = None;
    // One response timeout for every attempt.
    let respond_by = Instant::now() + answer.timeout;
    let attempt = loop {
        let (mut stream, reused) = match raw_connection(&mut in_flight, retried, &mut moved).await {
            Ok(conn) => conn,
            Err(e) => break Err(Failure::Backend(Fault::Connect(e))),
        };
        buf.clear();
        let exchange = exchange(
            &mut stream,
            &out,
            &mut buf,
            head_request,
            &answer,
            &in_flight,
        );
        match timed(exchange, &in_flight, respond_by, &mut deadline).await {
            Ok(head) => break Ok((stream, head)),
            Err(Failure::Backend(Fault::Unanswered(_))) if reused && retry => retried = true,
            Err(Failure::Backend(Fault::Unanswered(e))) => {
                break Err(Failure::Backend(Fault::Io(e)));
            }
            Err(failure) => break Err(failure),
        }
    };
    let (stream, head) = match attempt {
        Ok(ok) => ok,
        Err(failure) => return failure_response(&mut in_flight, failure, peer, &answer),
    };
    if head.framing == Framing::Chunked && !chunked::start_is_sound(&buf) {
        // Nothing has reached the client yet: broken framing in what came with the
        // head is a 502, as a broken head is (the relay judges it the same way).
        return bad_response(&mut in_flight, BadResponse::Chunked, peer);
    }
    let parts = head.parts;
    in_flight.backend().record(!parts.status.is_server_error());
    in_flight.status = parts.status.as_u16();
    // The usual case: the whole body came with the head. Answered now; the
    // connection goes back before the client has the body, as on the relay.
    let whole = match head.framing {
        Framing::Empty => Some(None),
        Framing::Length(n) if buf.len() as u64 >= n => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            Some(Some(buf.split_to(n).freeze()))
        }
        _ => None,
    };
    if let Some(body) = whole {
        if head.keep_alive && buf.is_empty() {
            let upstreams = in_flight.tracker().upstreams();
            upstreams.put_back_raw(in_flight.backend(), stream);
        }
        in_flight.bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        drop(in_flight);
        return Response::from_parts(parts, ProxyBody::Local(body.filter(|b| !b.is_empty())));
    }
    Response::from_parts(
        parts,
        ProxyBody::Raw(Box::new(RawBody::new(
            stream,
            buf,
            head.framing,
            head.keep_alive,
            in_flight,
            answer.read_timeout,
        ))),
    )
}

/// The request head as the backend gets it: origin-form target, HTTP/1.1, the fields
/// the rulebook forwarded.
pub fn request_head<B>(req: &Request<B>) -> Vec<u8> {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let fields: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let mut out = Vec::with_capacity(req.method().as_str().len() + target.len() + fields + 13);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `fut` bounded by `respond_by` and, each second, the colour's drain deadline.
async fn timed<T>(
    fut: impl Future<Output = Result<T, Failure>>,
    in_flight: &InFlight,
    respond_by: Instant,
    deadline: &mut Option<Deadline>,
) -> Result<T, Failure> {
    tokio::pin!(fut);
    loop {
        let now = Instant::now();
        let tick = respond_by.min(now + CUT_CHECK);
        let deadline = match deadline {
            Some(d) => {
                d.set(tick);
                d
            }
            None => deadline.insert(Deadline::new(tick.saturating_duration_since(now))),
        };
        tokio::select! {
            biased;
            answer = &mut fut => return answer,
            () = deadline.reached() => {
                if in_flight.is_cut() {
                    return Err(Failure::Drained);
                }
                if Instant::now() >= respond_by {
                    return Err(Failure::Backend(Fault::Timeout));
                }
            }
        }
    }
}

/// Writes the request head and reads the final response head (1xx ones are dropped,
/// as on every path); leaves the first body bytes in `buf`.
async fn exchange(
    stream: &mut BackendStream,
    out: &[u8],
    buf: &mut BytesMut,
    head_request: bool,
    answer: &Answer,
    in_flight: &InFlight,
) -> Result<Head, Failure> {
    match stream.try_write(out) {
        Ok(n) if n == out.len() => {}
        Ok(n) => stream
            .write_all(&out[n..])
            .await
            .map_err(|e| Failure::Backend(Fault::Unanswered(e)))?,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream
            .write_all(out)
            .await
            .map_err(|e| Failure::Backend(Fault::Unanswered(e)))?,
        Err(e) => return Err(Failure::Backend(Fault::Unanswered(e))),
    }
    if stream.needs_flush() {
        stream
            .flush()
            .await
            .map_err(|e| Failure::Backend(Fault::Unanswered(e)))?;
    }
    // An interim answer came: the request is no longer unanswered (not retried).
    let mut heard = false;
    loop {
        if !buf.is_empty() {
            let mut storage = h1::fields();
            let parsed = h1::parse_response(buf, &mut storage, head_request, &answer.limits)
                .map_err(Failure::Bad)?;
            if let Some(resp) = parsed {
                let head_len = resp.head_len;
                if resp.plan.interim {
                    buf.advance(head_len);
                    heard = true;
                    continue;
                }
                let color = answer.color_header.then_some(in_flight.color());
                let head = Head {
                    parts: response_parts(&resp, color, &in_flight.cookies)
                        .map_err(Failure::Bad)?,
                    framing: resp.plan.framing,
                    keep_alive: resp.plan.keep_alive,
                };
                buf.advance(head_len);
                return Ok(head);
            }
        }
        if buf.capacity() == 0 {
            // Most heads, and the short bodies with them, fit in one read of this.
            buf.reserve(HEAD_SIZE);
        } else if buf.capacity() - buf.len() < READ_SIZE / 4 {
            buf.reserve(READ_SIZE);
        }
        match stream.read_buf(buf).await {
            Ok(0) if buf.is_empty() && !heard => {
                return Err(Failure::Backend(Fault::Unanswered(
                    io::ErrorKind::UnexpectedEof.into(),
                )));
            }
            Ok(0) => {
                return Err(Failure::Backend(Fault::Io(
                    io::ErrorKind::UnexpectedEof.into(),
                )));
            }
            Err(e) if buf.is_empty() && !heard => {
                return Err(Failure::Backend(Fault::Unanswered(e)));
            }
            Err(e) => return Err(Failure::Backend(Fault::Io(e))),
            Ok(_) => {}
        }
    }
}

/// The client's response head for `resp` on hyper's path: the status, the fields the
/// rulebook keeps, then what cutover adds (`color` when its header is on), and the
/// backend's reason phrase when it is not the canonical one.
pub fn response_parts(
    resp: &h1::Response<'_, '_>,
    color: Option<Color>,
    cookies: &SetCookies,
) -> Result<http::response::Parts, BadResponse> {
    let plan = &resp.plan;
    let skip = plan.skip
        | if color.is_some() {
            plan.color_fields
        } else {
            0
        };
    let kept = resp.headers.len() - (skip.count_ones() as usize).min(resp.headers.len());
    let mut headers = HeaderMap::with_capacity(kept + added_fields(plan, cookies));
    for (i, field) in resp.headers.iter().enumerate() {
        if skip & (1 << i) != 0 {
            continue;
        }
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| BadResponse::Parse("invalid field name"))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| BadResponse::Parse("invalid field value"))?;
        headers.append(name, value);
    }
    add_ours(&mut headers, plan, color, cookies);
    let status =
        StatusCode::from_u16(resp.code).map_err(|_| BadResponse::Parse("invalid status code"))?;
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.headers = headers;
    if status.canonical_reason().map(str::as_bytes) != Some(resp.reason)
        && let Ok(reason) = hyper::ext::ReasonPhrase::try_from(Bytes::copy_from_slice(resp.reason))
    {
        parts.extensions.insert(reason);
    }
    Ok(parts)
}

/// Books a failed attempt and answers with the status that says why, as hyper's
/// client path does.
fn failure_response(
    in_flight: &mut InFlight,
    failure: Failure,
    peer: std::net::SocketAddr,
    answer: &Answer,
) -> Response<ProxyBody> {
    let (backend, color) = (in_flight.backend().address.clone(), in_flight.color());
    let (kind, err) = match failure {
        Failure::Drained => {
            in_flight.closed_by_drain();
            let err = ProxyError::Drained { backend, color };
            in_flight.status = err.status().as_u16();
            let mut resp = local_response(err.status(), err.client_message());
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        Failure::Backend(fault) => fault.booked(backend, color, answer.timeout),
        Failure::Bad(bad) => return bad_response(in_flight, bad, peer),
    };
    failed(in_flight, kind, err, peer)
}
