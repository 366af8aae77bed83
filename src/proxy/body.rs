//! The body sent back to the client on hyper's path: a backend's streamed body, which
//! holds the request's in-flight guard until it ends and hands the connection back for
//! reuse (from hyper's client, or decoded off a raw socket by [`RawBody`]), or a short
//! local text.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::Response;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::forward::http_error_kind;
use crate::backend_stream::BackendStream;
use crate::chunked::Chunked;
use crate::drain::{CUT_CHECK, InFlight};
use crate::idle::Sender;
use crate::metrics::ErrorKind;
use crate::relay::READ_SIZE;
use crate::rules::response::{Framing, MAX_RESPONSE_FIELDS};

/// The body sent back to the client: a backend's streamed body (holding the request's
/// in-flight guard until it ends) or a short local error text.
pub enum ProxyBody {
    Upstream {
        /// The backend's response body, passed to the client frame by frame.
        body: Incoming,
        /// Released as soon as the body ends, fails, or the client goes away (drop).
        in_flight: Option<InFlight>,
        /// The backend connection, handed back for reuse once the body has ended.
        conn: Option<Sender>,
        /// While the body waits on its backend: when the wait began, and a timer that
        /// checks each second for the drain deadline and the read timeout.
        waiting: Option<(Instant, Pin<Box<Sleep>>)>,
        /// The longest the backend may pause mid-body.
        read_timeout: Duration,
    },
    /// A backend's body read from a raw socket ([`raw`](super::raw)).
    Raw(Box<RawBody>),
    Local(Option<Bytes>),
}

/// What ends a response body on hyper's path besides the backend's own error.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub fn local_response(status: http::StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Local(Some(Bytes::from_static(text.as_bytes()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

// === impl ProxyBody ===

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream {
                body,
                in_flight,
                conn,
                waiting,
                read_timeout,
            } => {
                let frame = Pin::new(&mut *body).poll_frame(cx);
                if let (Poll::Ready(Some(Ok(f))), Some(guard)) = (&frame, in_flight.as_mut())
                    && let Some(data) = f.data_ref()
                {
                    guard.bytes += data.len() as u64;
                }
                let done = match &frame {
                    Poll::Ready(None) => Some(true),
                    Poll::Ready(Some(Err(e))) => {
                        if let Some(guard) = in_flight.as_mut() {
                            guard.broke(http_error_kind(e));
                        }
                        Some(false)
                    }
                    Poll::Ready(Some(Ok(_))) => {
                        *waiting = None;
                        body.is_end_stream().then_some(true)
                    }
                    Poll::Pending => {
                        if let Some(end) = stalled(in_flight, waiting, *read_timeout, cx) {
                            // The connection goes with the body: not reused.
                            conn.take();
                            in_flight.take();
                            return Poll::Ready(Some(Err(end)));
                        }
                        None
                    }
                };
                if let Some(complete) = done {
                    let conn = conn.take();
                    if let (true, Some(conn), Some(guard)) = (complete, conn, &in_flight) {
                        guard.tracker().upstreams().put_back(guard.backend(), conn);
                    }
                    in_flight.take();
                } else if in_flight.as_ref().is_some_and(InFlight::is_cut) {
                    // Streaming on past its colour's drain deadline.
                    if let Some(guard) = in_flight.as_mut() {
                        guard.closed_by_drain();
                    }
                    conn.take();
                    in_flight.take();
                    return Poll::Ready(Some(Err("closed at its colour's drain deadline".into())));
                }
                frame.map(|f| f.map(|r| r.map_err(BoxError::from)))
            }
            ProxyBody::Raw(body) => body.poll_frame(cx),
            ProxyBody::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Raw(body) => body.is_end_stream(),
            ProxyBody::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Raw(body) => body.size_hint(),
            ProxyBody::Local(Some(d)) => SizeHint::with_exact(d.len() as u64),
            ProxyBody::Local(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ProxyBody {
    /// A body that was complete without being polled to its end (empty, or known
    /// length all read) still hands its connection back; any other leaves it to close.
    fn drop(&mut self) {
        if let ProxyBody::Upstream {
            body,
            in_flight: Some(guard),
            conn: conn @ Some(_),
            ..
        } = self
            && body.is_end_stream()
            && let Some(conn) = conn.take()
        {
            guard.tracker().upstreams().put_back(guard.backend(), conn);
        }
    }
}

/// A body waiting on its backend: the error that ends it when its colour's drain
/// deadline has passed or the backend paused past `read_timeout`; else arms the
/// once-a-second check and returns `None`.
fn stalled(
    in_flight: &mut Option<InFlight>,
    waiting: &mut Option<(Instant, Pin<Box<Sleep>>)>,
    read_timeout: Duration,
    cx: &mut Context<'_>,
) -> Option<BoxError> {
    let (since, tick) = waiting.get_or_insert_with(|| {
        let now = Instant::now();
        (
            now,
            Box::pin(tokio::time::sleep_until(now + CUT_CHECK.min(read_timeout))),
        )
    });
    while tick.as_mut().poll(cx).is_ready() {
        if let Some(guard) = in_flight.as_mut() {
            if guard.is_cut() {
                guard.closed_by_drain();
                return Some("closed at its colour's drain deadline".into());
            }
            if since.elapsed() >= read_timeout {
                guard.broke(crate::metrics::ErrorKind::Timeout);
                return Some("the backend's body stalled past the read timeout".into());
            }
        }
        let next = Instant::now() + CUT_CHECK.min(read_timeout);
        tick.as_mut().reset(next);
    }
    None
}

// === a body off a raw socket ===

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
    /// The error that ends the body, and when it is given.
    failed: Option<(BoxError, Pin<Box<Sleep>>)>,
}

/// How long a broken body's error waits after what was given before it. HTTP/2 drops
/// a stream's queued frames when it is reset, so an error given in the same turn as
/// the head can cost the client the head (hyper's client path had a task hop there).
/// The connection's task writes them within this; a rare path, and no one waits on it.
const ERROR_GRACE: Duration = Duration::from_millis(10);

enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// More bytes are needed from the backend.
    Read,
}

impl RawBody {
    pub(super) fn new(
        stream: BackendStream,
        buf: BytesMut,
        framing: Framing,
        keep_alive: bool,
        in_flight: InFlight,
        read_timeout: Duration,
    ) -> RawBody {
        let remaining = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        RawBody {
            stream: Some(stream),
            buf,
            framing,
            remaining,
            chunked: Chunked::default(),
            trailers: Vec::new(),
            keep_alive,
            in_flight: Some(in_flight),
            waiting: None,
            read_timeout,
            ended: false,
            failed: None,
        }
    }

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
    /// given [`ERROR_GRACE`] later, so what was given before it is written first.
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
        self.failed = Some((error, Box::pin(tokio::time::sleep(ERROR_GRACE))));
        self.poll_failed(cx)
    }

    fn poll_failed(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some((_, grace)) = &mut self.failed
            && grace.as_mut().poll(cx).is_pending()
        {
            return Poll::Pending;
        }
        self.ended = true;
        Poll::Ready(self.failed.take().map(|(error, _)| Err(error)))
    }

    pub(super) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.failed.is_some() {
            return self.poll_failed(cx);
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
                    if let Some(end) = stalled(
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
