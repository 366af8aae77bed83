//! The body sent back to the client on hyper's path: a backend's streamed body, which
//! holds the request's in-flight guard until it ends and hands the connection back for
//! reuse, or a short local text.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::forward::http_error_kind;
use crate::drain::InFlight;
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
    },
    Local(Option<Bytes>),
}

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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream {
                body,
                in_flight,
                conn,
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
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream().then_some(true),
                    Poll::Pending => None,
                };
                if let Some(complete) = done {
                    let conn = conn.take();
                    if let (true, Some(conn), Some(guard)) = (complete, conn, &in_flight) {
                        guard.tracker().upstreams().put_back(guard.backend(), conn);
                    }
                    in_flight.take();
                }
                frame
            }
            ProxyBody::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
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
        } = self
            && body.is_end_stream()
            && let Some(conn) = conn.take()
        {
            guard.tracker().upstreams().put_back(guard.backend(), conn);
        }
    }
}
