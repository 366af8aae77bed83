//! The body sent back to the client on hyper's path: a backend's streamed body, which
//! holds the request's in-flight guard until it ends and hands the connection back for
//! reuse, or a short local text.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::forward::http_error_kind;
use crate::drain::{CUT_CHECK, InFlight};
use crate::idle::Sender;

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
    Raw(Box<super::raw::RawBody>),
    Local(Option<Bytes>),
}

/// What ends a response body on hyper's path besides the backend's own error.
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
pub(super) fn stalled(
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
