//! One request through the data path: load the snapshot once, route, pick a backend,
//! rewrite headers, forward with the pooled client, stream the response back while an
//! [`InFlight`] guard counts it against its colour.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::config::UpstreamConfig;
use crate::drain::{AccessEntry, InFlight, Tracker};
use crate::error::ProxyError;
use crate::headers;
use crate::metrics::ErrorKind;
use crate::snapshot::{Color, Routable, Snapshot};
use crate::upstream::{Sender, UpstreamError};

/// Everything `forward` needs, shared by all connections.
pub struct Proxy {
    /// The routing pointer; loaded once per request.
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    /// Per-colour in-flight and tunnel counters, for draining and status; owns the
    /// per-colour upstream clients.
    pub(crate) tracker: Arc<Tracker>,
    /// Limit on waiting for a backend's response headers (→ 504).
    pub(crate) response_timeout: Duration,
    /// Whether responses carry `x-cutover-color`.
    pub(crate) color_header: bool,
}

/// The client end of a connection, as each request on it needs it.
pub struct Peer {
    pub addr: SocketAddr,
    /// `addr`'s IP as an X-Forwarded-For entry, formatted once per connection.
    pub forwarded_for: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            forwarded_for: headers::forwarded_for(addr.ip()),
        }
    }
}

/// Names the colour that served a response, when `routing.color_header` is on.
pub static X_CUTOVER_COLOR: http::HeaderName = http::HeaderName::from_static("x-cutover-color");

/// Sorts an upstream failure for `cutover_upstream_errors_total{kind}`.
fn error_kind(e: &UpstreamError) -> ErrorKind {
    match e {
        UpstreamError::Connect(_) | UpstreamError::ConnectTimeout(_) => ErrorKind::Connect,
        UpstreamError::Http(e) => http_error_kind(e),
    }
}

/// A failed exchange with a backend, or its response body failing after the head was
/// sent on: a reset when the connection broke, else a protocol error.
fn http_error_kind(e: &hyper::Error) -> ErrorKind {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return ErrorKind::Reset;
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled() || h.is_closed())
        {
            return ErrorKind::Reset;
        }
        cur = err.source();
    }
    ErrorKind::Protocol
}

/// The body sent back to the client: a backend's streamed body (holding the request's
/// in-flight guard until it ends) or a short local error text.
pub enum ProxyBody {
    Upstream {
        body: Incoming,
        /// Released as soon as the body ends, fails, or the client goes away (drop).
        in_flight: Option<InFlight>,
        /// The backend connection, handed back for reuse once the body has ended.
        conn: Option<Sender>,
    },
    Local(Option<Bytes>),
}

// === impl Proxy ===

impl Proxy {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        tracker: Arc<Tracker>,
        upstream: &UpstreamConfig,
        color_header: bool,
    ) -> Proxy {
        Proxy {
            snapshot,
            tracker,
            response_timeout: upstream.response_timeout,
            color_header,
        }
    }

    /// Forwards one request and returns the response to send to the client. Never fails:
    /// upstream errors become 502/503/504 responses and a log line.
    ///
    /// Routing, the backend pick and the request rewrite run before the returned future
    /// exists, so that future holds only what lives across the wait for the backend: it
    /// is moved a few times per request by the connection machinery, and its size is
    /// what each move copies.
    pub fn forward(
        &self,
        req: Request<Incoming>,
        peer: &Peer,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + use<> {
        let sent = self.send(req, peer);
        let (timeout, color_header) = (self.response_timeout, self.color_header);
        async move {
            Ok(match sent {
                Ok(sent) => sent.response(timeout, color_header).await,
                Err(err) => local_response(err.status(), err.client_message()),
            })
        }
    }

    /// Routes `req`, picks a backend, counts the request against its colour and
    /// rewrites it for the backend; [`Sent::response`] does the I/O.
    fn send(&self, mut req: Request<Incoming>, client: &Peer) -> Result<Sent, ProxyError> {
        let peer = client.addr;
        let in_flight = self.start(&req, peer, |req| {
            let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
            (req.method().clone(), target.to_owned())
        })?;
        // RFC 9110 §7.8: Upgrade is hop-by-hop, so it is re-sent to the backend only when
        // the client asked for it with `Connection: upgrade` (HTTP/1.1 only).
        let upgrade =
            upgrade_request(&req).map(|protocol| (hyper::upgrade::on(&mut req), protocol));
        prepare_request(
            &mut req,
            &client.forwarded_for,
            &in_flight,
            upgrade.as_ref().map(|(_, p)| p.clone()),
        );
        Ok(Sent {
            in_flight,
            req,
            upgrade,
            peer,
        })
    }

    /// The data path's first step on both HTTP/1.1 paths: loads the snapshot once, routes
    /// `req`, picks a backend and starts counting the request against its colour. With
    /// no healthy backend the request is recorded as a 503 and logged, and the error
    /// says what to answer. `access` (method, target) is called only when the access log
    /// is on.
    pub(crate) fn start<R: Routable>(
        &self,
        req: &R,
        peer: SocketAddr,
        access: impl FnOnce(&R) -> (http::Method, String),
    ) -> Result<InFlight, ProxyError> {
        let mut in_flight = {
            let snap = self.snapshot.load();
            let color = snap.route(req);
            let Some(backend) = snap.pool(color).pick() else {
                self.tracker
                    .telemetry()
                    .finish(color, 503, false, Duration::ZERO);
                let err = ProxyError::NoBackend { color };
                tracing::warn!(peer = %peer, error = %err, "proxy error");
                return Err(err);
            };
            self.tracker.start(color, backend)
        };
        if self.tracker.telemetry().access_log.is_some() {
            let (method, target) = access(req);
            in_flight.access = Some(Box::new(AccessEntry {
                method,
                target,
                peer,
            }));
        }
        Ok(in_flight)
    }

    /// A backend's response headers as the client gets them: hop-by-hop fields out,
    /// then our `Via` and (when on) `x-cutover-color` in, so nothing the backend names
    /// in `Connection` can remove what cutover adds.
    fn response_headers(headers: &mut http::HeaderMap, color: Color, color_header: bool) {
        headers::strip_hop_by_hop(headers);
        headers.append(header::VIA, headers::VIA_VALUE.clone());
        if color_header {
            headers.insert(
                X_CUTOVER_COLOR.clone(),
                HeaderValue::from_static(color.as_str()),
            );
        }
    }
}

/// A routed and rewritten request with its in-flight guard, ready for its backend.
struct Sent {
    /// Counts the request against its colour until the response body ends.
    in_flight: InFlight,
    /// The rewritten request, for the backend `in_flight` names.
    req: Request<Incoming>,
    /// The client side of an upgrade and the protocol asked for, when it asked.
    upgrade: Option<(hyper::upgrade::OnUpgrade, HeaderValue)>,
    /// For the log line of a failure.
    peer: SocketAddr,
}

// === impl Sent ===

impl Sent {
    /// Waits (bounded by `timeout`) for the backend's response headers and turns them
    /// into the client's response: streamed body, a tunnel after a 101, or the 502/504
    /// that says why there is none.
    async fn response(self, timeout: Duration, color_header: bool) -> Response<ProxyBody> {
        let Sent {
            mut in_flight,
            req,
            upgrade,
            peer,
        } = self;
        let color = in_flight.color();
        let answer = {
            let sent = in_flight
                .tracker()
                .upstreams()
                .send(in_flight.backend(), req);
            // Pinned where it is: the timeout wraps a reference, not a copy of it.
            tokio::pin!(sent);
            tokio::time::timeout(timeout, sent).await
        };
        let (mut resp, conn) = match answer {
            Ok(Ok(exchange)) => exchange,
            Err(_) => {
                let err = ProxyError::Timeout {
                    backend: in_flight.backend().address.clone(),
                    color,
                    after: timeout,
                };
                return failed(&mut in_flight, ErrorKind::Timeout, err, peer);
            }
            Ok(Err(e)) => {
                let (backend, cause) = (in_flight.backend().address.clone(), error_chain(&e));
                let err = if matches!(
                    e,
                    UpstreamError::Connect(_) | UpstreamError::ConnectTimeout(_)
                ) {
                    ProxyError::Connect {
                        backend,
                        color,
                        cause,
                    }
                } else {
                    ProxyError::Upstream {
                        backend,
                        color,
                        cause,
                    }
                };
                return failed(&mut in_flight, error_kind(&e), err, peer);
            }
        };
        in_flight.backend().record(!resp.status().is_server_error());
        in_flight.status = resp.status().as_u16();

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some((client_upgrade, protocol)) = upgrade
        {
            // The backend connection becomes the tunnel; it is not reused.
            drop(conn);
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            spawn_tunnel(&in_flight, client_upgrade, backend_upgrade);
            let headers = resp.headers_mut();
            let accepted = headers.get(header::UPGRADE).cloned().unwrap_or(protocol);
            Proxy::response_headers(headers, color, color_header);
            // RFC 9110 §7.8: the 101 names the protocol switched to, for this hop too.
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, accepted);
            // The 101 has no body; the request is done, the tunnel is counted on its own.
            return resp.map(|_| ProxyBody::Local(None));
        }
        let (mut parts, body) = resp.into_parts();
        Proxy::response_headers(&mut parts.headers, color, color_header);
        Response::from_parts(
            parts,
            ProxyBody::Upstream {
                body,
                in_flight: Some(in_flight),
                conn: Some(conn),
            },
        )
    }
}

/// Books an upstream failure on the request (the backend's run of failures for passive
/// ejection, the error counter, the status), logs it, and answers the client.
fn failed(
    in_flight: &mut InFlight,
    kind: ErrorKind,
    err: ProxyError,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    book_failure(in_flight, kind, &err, peer);
    local_response(err.status(), err.client_message())
}

/// What every upstream failure costs, on either path: a failure in the backend's run
/// (passive ejection), the error counter, the request's status, a log line.
pub(crate) fn book_failure(
    in_flight: &mut InFlight,
    kind: ErrorKind,
    err: &ProxyError,
    peer: SocketAddr,
) {
    in_flight.backend().record(false);
    in_flight
        .tracker()
        .telemetry()
        .upstream_error(in_flight.color(), kind);
    in_flight.status = err.status().as_u16();
    tracing::warn!(peer = %peer, error = %err, "proxy error");
}

/// The `Upgrade` value of an HTTP/1.1 request that asks to upgrade (RFC 9110 §7.8:
/// `Upgrade` plus the `upgrade` option in `Connection`).
fn upgrade_request<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let upgrade = req.headers().get(header::UPGRADE)?;
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| upgrade.clone())
}

/// Joins the client's and the backend's upgraded connections into a byte tunnel that
/// is counted against the colour and closed at that colour's drain deadline.
fn spawn_tunnel(
    in_flight: &InFlight,
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
) {
    let tunnel = in_flight.tracker().open_tunnel(in_flight.color());
    let address = in_flight.backend().address.clone();
    tokio::spawn(async move {
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(backend = %address, error = %e, "upgrade did not complete");
                return;
            }
        };
        let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
                if let Err(e) = copied {
                    tracing::debug!(backend = %address, error = %e, "tunnel ended with an error");
                }
            }
            () = tunnel.cancel.cancelled() => {
                tunnel.closed_by_drain();
                tracing::debug!(backend = %address, "tunnel closed at the drain deadline");
            }
        }
        drop(tunnel);
    });
}

/// Rewrites a client request for the chosen backend: hop-by-hop headers out,
/// X-Forwarded-* and Via in, HTTP/1.1 to the backend with the client's Host kept (the
/// backend's address when the client sent none), and the target in origin-form
/// (RFC 9112 §3.2.1), which is what a server that is not a proxy expects.
fn prepare_request(
    req: &mut Request<Incoming>,
    forwarded_for: &HeaderValue,
    in_flight: &InFlight,
    upgrade: Option<HeaderValue>,
) {
    // HTTP/2 (and absolute-form HTTP/1) carry the host in the URI; HTTP/1 in Host.
    let host = req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let headers = req.headers_mut();
    headers::strip_hop_by_hop(headers);
    headers::add_forwarded(headers, forwarded_for, "http", host.clone());
    match host {
        Some(host) => {
            headers.insert(header::HOST, host);
        }
        None => {
            // RFC 9112 §3.2: an HTTP/1.1 request must carry Host (HTTP/1.0 clients may
            // not send one).
            if let Ok(host) = HeaderValue::from_str(in_flight.backend().authority.as_str()) {
                headers.insert(header::HOST, host);
            }
        }
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    *req.version_mut() = Version::HTTP_11;

    // Origin-form already (the usual HTTP/1.1 request): sent as it came.
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let origin = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(origin);
    }
}

/// "a: b: c" from an error and its sources, for the log.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
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
