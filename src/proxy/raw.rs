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
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use super::body::BoxError;
use super::forward::{add_ours, added_fields, bad_response, failed};
use super::{ProxyBody, local_response};
use crate::backend_stream::BackendStream;
use crate::chunked::Chunked;
use crate::deadline::Deadline;
use crate::dispatch::{connect_error, retry_elsewhere, upstream_error};
use crate::drain::{CUT_CHECK, InFlight};
use crate::error::ProxyError;
use crate::h1;
use crate::headers::ClientBody;
use crate::metrics::ErrorKind;
use crate::rules::Limits;
use crate::rules::response::{BadResponse, Framing, MAX_RESPONSE_FIELDS};

/// Bytes asked of the kernel per read from a backend.
const READ_SIZE: usize = 16 * 1024;
/// The first read of a response.
const HEAD_SIZE: usize = 4 * 1024;

/// Whether `req` goes to its backend on a raw socket: it has no body, and there is no
/// upgrade to hand over.
pub(super) fn takes(req: &Request<ClientBody>, upgrade: bool) -> bool {
    !upgrade && matches!(req.body(), ClientBody::Empty)
}

/// How one attempt went before any of the response reached the client.
enum Failure {
    Connect(crate::upstream::UpstreamError),
    /// Nothing came back on the connection: on a reused one, it may be retried.
    Unanswered(io::Error),
    Io(io::Error),
    Bad(BadResponse),
    Timeout,
    Drained,
}

/// A backend's final response head, owned, and where its body starts.
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    /// The backend's reason phrase when it is not the canonical one.
    reason: Option<hyper::ext::ReasonPhrase>,
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
    let upstreams = Arc::clone(in_flight.tracker().upstreams());
    let mut backend = Arc::clone(in_flight.backend());
    let mut moved = false;
    // A request sent on a reused connection that closed unanswered goes once more, on
    // a new connection, as on hyper's client.
    let mut retried = false;
    let mut buf = BytesMut::new();
    let mut deadline: Option<Deadline> = None;
    // One response timeout for every attempt.
    let respond_by = Instant::now() + answer.timeout;
    let attempt = loop {
        let idle = if retried {
            None
        } else {
            upstreams.take_raw(&backend)
        };
        let (mut stream, reused) = match idle {
            Some(stream) => (stream, true),
            None => match upstreams.connect_raw(&backend).await {
                Ok(stream) => (stream, false),
                Err(e) if !moved && retry_elsewhere(&mut in_flight, &e) => {
                    moved = true;
                    backend = Arc::clone(in_flight.backend());
                    continue;
                }
                Err(e) => break Err(Failure::Connect(e)),
            },
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
            Err(Failure::Unanswered(_)) if reused && retry => retried = true,
            Err(Failure::Unanswered(e)) => break Err(Failure::Io(e)),
            Err(failure) => break Err(failure),
        }
    };
    let (stream, head) = match attempt {
        Ok(ok) => ok,
        Err(failure) => return failure_response(&mut in_flight, failure, peer, &answer),
    };
    if head.framing == Framing::Chunked && Chunked::default().advance(&buf).is_err() {
        // Nothing has reached the client yet: broken framing in what came with the
        // head is a 502, as a broken head is (the relay judges it the same way).
        return bad_response(&mut in_flight, BadResponse::Chunked, peer);
    }
    in_flight.backend().record(!head.status.is_server_error());
    in_flight.status = head.status.as_u16();
    let mut resp = Response::new(());
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    if let Some(reason) = head.reason {
        resp.extensions_mut().insert(reason);
    }
    let (parts, ()) = resp.into_parts();
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
            upstreams.put_back_raw(&backend, stream);
        }
        in_flight.bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        drop(in_flight);
        return Response::from_parts(parts, ProxyBody::Local(body.filter(|b| !b.is_empty())));
    }
    let remaining = match head.framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    Response::from_parts(
        parts,
        ProxyBody::Raw(Box::new(RawBody {
            stream: Some(stream),
            buf,
            framing: head.framing,
            remaining,
            chunked: Chunked::default(),
            trailers: Vec::new(),
            keep_alive: head.keep_alive,
            in_flight: Some(in_flight),
            waiting: None,
            read_timeout: answer.read_timeout,
            ended: false,
            failed: None,
        })),
    )
}

/// The request head as the backend gets it: origin-form target, HTTP/1.1, the fields
/// the rulebook forwarded.
fn request_head(req: &Request<ClientBody>) -> Vec<u8> {
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
        let tick = respond_by.min(Instant::now() + CUT_CHECK);
        let deadline = match deadline {
            Some(d) => {
                d.set(tick);
                d
            }
            None => deadline.insert(Deadline::new(
                tick.saturating_duration_since(Instant::now()),
            )),
        };
        tokio::select! {
            biased;
            answer = &mut fut => return answer,
            () = deadline.reached() => {
                if in_flight.is_cut() {
                    return Err(Failure::Drained);
                }
                if Instant::now() >= respond_by {
                    return Err(Failure::Timeout);
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
            .map_err(Failure::Unanswered)?,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            stream.write_all(out).await.map_err(Failure::Unanswered)?
        }
        Err(e) => return Err(Failure::Unanswered(e)),
    }
    if stream.needs_flush() {
        stream.flush().await.map_err(Failure::Unanswered)?;
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
                let head = owned_head(&resp, answer.color_header, in_flight)?;
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
                return Err(Failure::Unanswered(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(0) => return Err(Failure::Io(io::ErrorKind::UnexpectedEof.into())),
            Err(e) if buf.is_empty() && !heard => return Err(Failure::Unanswered(e)),
            Err(e) => return Err(Failure::Io(e)),
            Ok(_) => {}
        }
    }
}

/// The client's response head: the fields the rulebook keeps, then what cutover adds.
fn owned_head(
    resp: &h1::Response<'_, '_>,
    color_header: bool,
    in_flight: &InFlight,
) -> Result<Head, Failure> {
    let plan = &resp.plan;
    let skip = plan.skip | if color_header { plan.color_fields } else { 0 };
    let kept = resp.headers.len() - (skip.count_ones() as usize).min(resp.headers.len());
    let mut headers = HeaderMap::with_capacity(kept + added_fields(plan, &in_flight.cookies));
    for (i, field) in resp.headers.iter().enumerate() {
        if skip & (1 << i) != 0 {
            continue;
        }
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Failure::Bad(BadResponse::Parse("invalid field name")))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| Failure::Bad(BadResponse::Parse("invalid field value")))?;
        headers.append(name, value);
    }
    add_ours(
        &mut headers,
        plan,
        color_header.then_some(in_flight.color()),
        &in_flight.cookies,
    );
    let status = StatusCode::from_u16(resp.code)
        .map_err(|_| Failure::Bad(BadResponse::Parse("invalid status code")))?;
    let reason = (status.canonical_reason().map(str::as_bytes) != Some(resp.reason))
        .then(|| hyper::ext::ReasonPhrase::try_from(Bytes::copy_from_slice(resp.reason)).ok())
        .flatten();
    Ok(Head {
        status,
        headers,
        reason,
        framing: plan.framing,
        keep_alive: plan.keep_alive,
    })
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
        Failure::Connect(e) => {
            let cause = e.to_string();
            (ErrorKind::Connect, connect_error(backend, color, &e, cause))
        }
        Failure::Drained => {
            in_flight.closed_by_drain();
            let err = ProxyError::Drained { backend, color };
            in_flight.status = err.status().as_u16();
            let mut resp = local_response(err.status(), err.client_message());
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        Failure::Timeout => (
            ErrorKind::Timeout,
            ProxyError::Timeout {
                backend,
                color,
                after: answer.timeout,
            },
        ),
        Failure::Unanswered(e) | Failure::Io(e) => {
            let cause = e.to_string();
            (ErrorKind::Reset, upstream_error(backend, color, &e, cause))
        }
        Failure::Bad(bad) => return bad_response(in_flight, bad, peer),
    };
    failed(in_flight, kind, err, peer)
}

/// A backend's response body read from its socket as the client takes it: the
/// framing decoded, the in-flight guard held until the end, the socket handed back
/// once the body has been read whole.
pub struct RawBody {
    /// `None` once the body ended (back in the pool, or closed).
    stream: Option<BackendStream>,
    /// Bytes read from the backend and not yet passed on.
    buf: BytesMut,
    framing: Framing,
    /// Body bytes still to come, for a `Length` body.
    remaining: u64,
    chunked: Chunked,
    /// A chunked body's trailer section, raw, until the body ends.
    trailers: Vec<u8>,
    /// The backend keeps the connection open after the body.
    keep_alive: bool,
    in_flight: Option<InFlight>,
    /// While the body waits on its backend: when the wait began, and the timer that
    /// checks each second for the drain deadline and the read timeout.
    waiting: Option<(Instant, Pin<Box<Sleep>>)>,
    read_timeout: Duration,
    /// The last frame has been given.
    ended: bool,
    /// The error that ends the body, given at the next poll.
    failed: Option<BoxError>,
}

enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// More bytes are needed from the backend.
    Read,
}

impl RawBody {
    /// What the bytes already read give next.
    fn step(&mut self) -> Result<Step, BoxError> {
        match self.framing {
            Framing::Empty => Ok(Step::End),
            Framing::Length(_) if self.remaining == 0 => Ok(Step::End),
            Framing::Length(_) if self.buf.is_empty() => Ok(Step::Read),
            Framing::Length(_) => {
                let n = (self.buf.len() as u64).min(self.remaining);
                self.remaining -= n;
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                Ok(Step::Data(self.buf.split_to(n).freeze()))
            }
            Framing::Close if self.buf.is_empty() => Ok(Step::Read),
            Framing::Close => Ok(Step::Data(self.buf.split().freeze())),
            Framing::Chunked => loop {
                if self.chunked.is_done() {
                    if self.trailers.len() > 2 {
                        return Ok(Step::Trailers(parse_trailers(&self.trailers)?));
                    }
                    return Ok(Step::End);
                }
                if self.buf.is_empty() {
                    return Ok(Step::Read);
                }
                let (n, span) = self.chunked.decode(&self.buf, Some(&mut self.trailers))?;
                if span.is_empty() {
                    self.buf.advance(n);
                    continue;
                }
                let mut data = self.buf.split_to(n);
                data.advance(span.start);
                return Ok(Step::Data(data.freeze()));
            },
        }
    }

    /// The body is done: the socket goes back when all of it was read and nothing
    /// followed, the request stops counting.
    fn finish(&mut self, complete: bool) {
        self.ended = true;
        if let (Some(stream), Some(guard)) = (self.stream.take(), self.in_flight.as_ref())
            && complete
            && self.keep_alive
            && self.buf.is_empty()
            && self.framing != Framing::Close
        {
            guard
                .tracker()
                .upstreams()
                .put_back_raw(guard.backend(), stream);
        }
        self.in_flight.take();
    }

    /// Ends the body with `error`, booked as `kind`; the socket closes. The error is
    /// given at the next poll, after a yield, so the connection's task gets a turn to
    /// write what was given before it: an HTTP/2 reset in the same turn would drop the
    /// head still queued (hyper's client path had that turn between its tasks). A
    /// best effort: what is still queued when the reset comes is dropped.
    fn broke(
        &mut self,
        kind: Option<ErrorKind>,
        error: BoxError,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let (Some(kind), Some(guard)) = (kind, self.in_flight.as_mut()) {
            guard.broke(kind);
        }
        self.stream.take();
        self.in_flight.take();
        self.failed = Some(error);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    pub(super) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(error) = self.failed.take() {
            self.ended = true;
            return Poll::Ready(Some(Err(error)));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(guard) = self.in_flight.as_mut().filter(|g| g.is_cut()) {
            guard.closed_by_drain();
            let e = "closed at its colour's drain deadline".into();
            return self.broke(None, e, cx);
        }
        loop {
            let step = match self.step() {
                Ok(step) => step,
                Err(e) => {
                    return self.broke(Some(ErrorKind::Protocol), e, cx);
                }
            };
            match step {
                Step::Data(data) => {
                    self.waiting = None;
                    if let Some(guard) = self.in_flight.as_mut() {
                        guard.bytes += data.len() as u64;
                    }
                    if self.is_complete() {
                        self.finish(true);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::Trailers(map) => {
                    self.finish(true);
                    return Poll::Ready(Some(Ok(Frame::trailers(map))));
                }
                Step::End => {
                    self.finish(true);
                    return Poll::Ready(None);
                }
                Step::Read => {}
            }
            let Some(stream) = self.stream.as_mut() else {
                return Poll::Ready(None);
            };
            if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
                self.buf.reserve(READ_SIZE);
            }
            match poll_read_buf(stream, cx, &mut self.buf) {
                Poll::Ready(Ok(0)) if self.framing == Framing::Close => {
                    self.finish(false);
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    let e = "the backend closed the connection mid-body".into();
                    return self.broke(Some(ErrorKind::Reset), e, cx);
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    return self.broke(Some(ErrorKind::Reset), e.into(), cx);
                }
                Poll::Pending => {
                    if let Some(end) = super::body::stalled(
                        &mut self.in_flight,
                        &mut self.waiting,
                        self.read_timeout,
                        cx,
                    ) {
                        return self.broke(None, end, cx);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// All of the body has been read (nothing is left to give but the end).
    fn is_complete(&self) -> bool {
        match self.framing {
            Framing::Empty => true,
            Framing::Length(_) => self.remaining == 0,
            Framing::Chunked => self.chunked.is_done() && self.trailers.len() <= 2,
            Framing::Close => false,
        }
    }

    pub(super) fn is_end_stream(&self) -> bool {
        self.ended
    }

    pub(super) fn size_hint(&self) -> http_body::SizeHint {
        match self.framing {
            Framing::Length(_) => {
                let left = self.remaining;
                http_body::SizeHint::with_exact(left)
            }
            _ => http_body::SizeHint::default(),
        }
    }
}

/// A chunked body's trailer section (its final empty line included) as fields.
fn parse_trailers(raw: &[u8]) -> Result<HeaderMap, BoxError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
    let parsed = httparse::parse_headers(raw, &mut fields)?;
    let httparse::Status::Complete((_, fields)) = parsed else {
        return Err("incomplete trailer section".into());
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        map.append(
            HeaderName::from_bytes(field.name.as_bytes())?,
            HeaderValue::from_bytes(field.value)?,
        );
    }
    Ok(map)
}

fn poll_read_buf(
    stream: &mut BackendStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
}
