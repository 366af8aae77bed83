//! The hyper path (HTTP/2, and HTTP/1.1 the relay hands over): hyper's parsed heads
//! turned into field lines for the [`rules`](crate::rules), then one request through
//! the data path: load the snapshot once, route, pick a backend, rewrite the head as
//! the rulebook says, forward on a kept-alive connection, stream the response back
//! while an [`InFlight`] guard counts it against its colour.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::color::Color;
use crate::config::UpstreamConfig;
use crate::drain::{AccessEntry, InFlight, Tracker};
use crate::error::ProxyError;
use crate::headers::{self, ClientBody};
use crate::idle::Sender;
use crate::metrics::ErrorKind;
use crate::rules::forwarded::{self, Client};
use crate::rules::request::{self, Reject, Version as RuleVersion};
use crate::rules::response::{self, BadResponse};
use crate::rules::{Limits, Policy, retry};
use crate::snapshot::{Routable, Snapshot};
use crate::upstream::UpstreamError;

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
    /// The rulebook's settings: limits, `_` in names, trusted forwarders.
    pub(crate) policy: Policy,
}

/// The client end of a connection, as each request on it needs it.
pub struct Peer {
    pub addr: SocketAddr,
    /// `addr`'s IP as an X-Forwarded-For entry, formatted once per connection.
    pub forwarded_for: HeaderValue,
    /// `addr` is in `[forwarded] trusted`: its X-Forwarded-For is extended.
    pub trusted: bool,
}

impl Peer {
    pub fn new(addr: SocketAddr, policy: &Policy) -> Peer {
        Peer {
            addr,
            forwarded_for: headers::forwarded_for(addr.ip()),
            trusted: forwarded::trusted(&policy.trusted, addr.ip()),
        }
    }

    /// The client as the rulebook's added fields name it.
    pub fn client(&self) -> Client<'_> {
        Client {
            addr: self.forwarded_for.as_bytes(),
            trusted: self.trusted,
            proto: "http",
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
        policy: Policy,
    ) -> Proxy {
        Proxy {
            snapshot,
            tracker,
            response_timeout: upstream.response_timeout,
            color_header,
            policy,
        }
    }

    /// Forwards one request and returns the response to send to the client. Never fails:
    /// a refused request gets the rulebook's 4xx, upstream errors become 502/503/504
    /// responses and a log line.
    ///
    /// Judging, routing, the backend pick and the request rewrite run before the
    /// returned future exists, so that future holds only what lives across the wait for
    /// the backend: it is moved a few times per request by the connection machinery, and
    /// its size is what each move copies.
    pub fn forward(
        &self,
        req: Request<Incoming>,
        peer: &Peer,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + use<> {
        let sent = self.send(req, peer);
        let (timeout, color_header) = (self.response_timeout, self.color_header);
        let limits = self.policy.limits;
        async move {
            Ok(match sent {
                Ok(sent) => sent.response(timeout, color_header, limits).await,
                Err(NotSent::Failed(err)) => local_response(err.status(), err.client_message()),
                Err(NotSent::Refused(reject)) => refused_response(reject),
            })
        }
    }

    /// Judges `req` by the rulebook, routes it, picks a backend, counts the request
    /// against its colour and rewrites it for the backend; [`Sent::response`] does the
    /// I/O.
    fn send(&self, req: Request<Incoming>, client: &Peer) -> Result<Sent, NotSent> {
        let peer = client.addr;
        let (mut parts, body) = req.into_parts();
        let (in_flight, headers, upgrade) = {
            let fields = headers::field_lines(&parts.headers);
            let absolute;
            let target = match (parts.version, parts.uri.scheme()) {
                (Version::HTTP_2, _) | (_, None) => {
                    parts.uri.path_and_query().map_or("/", |p| p.as_str())
                }
                (_, Some(_)) => {
                    absolute = parts.uri.to_string();
                    absolute.as_str()
                }
            };
            let head = request::Head {
                method: parts.method.as_str(),
                target: target.as_bytes(),
                version: match parts.version {
                    Version::HTTP_2 => RuleVersion::H2,
                    Version::HTTP_10 | Version::HTTP_09 => RuleVersion::Http10,
                    _ => RuleVersion::Http11,
                },
                authority: (parts.version == Version::HTTP_2)
                    .then(|| parts.uri.authority().map(|a| a.as_str().as_bytes()))
                    .flatten(),
                fields: &fields,
            };
            let plan = match request::check(&head, &self.policy) {
                Ok(plan) => plan,
                Err(reject) => {
                    tracing::debug!(peer = %peer, error = %reject, "request refused");
                    self.tracker.telemetry().refused(reject);
                    return Err(NotSent::Refused(reject));
                }
            };
            let in_flight = self
                .start(&parts, peer, |parts| {
                    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    (parts.method.clone(), target.to_owned())
                })
                .map_err(NotSent::Failed)?;
            let fallback = in_flight.backend().authority.as_str().as_bytes();
            let headers =
                headers::forwarded(&parts.headers, &fields, &plan, client.client(), fallback);
            (in_flight, headers, plan.upgrade)
        };
        // RFC 9110 §7.8: Upgrade is hop-by-hop, so it is re-sent to the backend only when
        // the client asked for it with `Connection: upgrade` (HTTP/1.1 only).
        let protocol = upgrade.then(|| parts.headers.get(header::UPGRADE).cloned());
        parts.headers = headers;
        let mut req = Request::from_parts(parts, body);
        let upgrade = protocol
            .flatten()
            .map(|protocol| (hyper::upgrade::on(&mut req), protocol));
        let (mut parts, body) = req.into_parts();
        if let Some((_, protocol)) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }
        parts.version = Version::HTTP_11;
        // Origin-form to the backend (RFC 9112 §3.2.1), which is what a server that is
        // not a proxy expects.
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            let origin = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            parts.uri = Uri::from(origin);
        }
        let retry = retry::may_retry(
            parts.method.as_str(),
            true,
            false,
            http_body::Body::is_end_stream(&body),
        );
        Ok(Sent {
            in_flight,
            req: Request::from_parts(parts, ClientBody::new(body)),
            retry,
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
}

/// A backend's response head judged by the rulebook and rewritten as the client gets
/// it: the fields the rulebook keeps, one Content-Length where equal ones were merged,
/// then our `Via` and (when on) `x-cutover-color`, so nothing the backend names in
/// `Connection` can remove what cutover adds.
fn response_head(
    parts: &mut http::response::Parts,
    color: Color,
    color_header: bool,
    limits: &Limits,
) -> Result<(), BadResponse> {
    let headers = {
        let fields = headers::field_lines(&parts.headers);
        let reason = match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
            Some(reason) => reason.as_bytes(),
            None => parts.status.canonical_reason().unwrap_or("").as_bytes(),
        };
        let head = response::Head {
            code: parts.status.as_u16(),
            http11: parts.version != Version::HTTP_10,
            reason,
            fields: &fields,
            head_request: false,
        };
        let plan = response::check(&head, limits)?;
        let skip = plan.skip | if color_header { plan.color_fields } else { 0 };
        let mut headers = HeaderMap::with_capacity(fields.len() + 2);
        for (i, (name, value)) in parts.headers.iter().enumerate() {
            if skip & (1 << i) == 0 {
                headers.append(name.clone(), value.clone());
            }
        }
        if let (true, response::Framing::Length(n)) = (plan.merge_length, plan.framing) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        headers.append(header::VIA, headers::VIA_VALUE.clone());
        if color_header {
            headers.insert(
                X_CUTOVER_COLOR.clone(),
                HeaderValue::from_static(color.as_str()),
            );
        }
        headers
    };
    parts.headers = headers;
    Ok(())
}

/// Why a request got no backend: the rulebook refused it, or routing or a backend
/// failed.
enum NotSent {
    Refused(Reject),
    Failed(ProxyError),
}

/// A routed and rewritten request with its in-flight guard, ready for its backend.
struct Sent {
    /// Counts the request against its colour until the response body ends.
    in_flight: InFlight,
    /// The rewritten request, for the backend `in_flight` names.
    req: Request<ClientBody>,
    /// It may be sent again if a reused connection fails before any answer.
    retry: bool,
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
    async fn response(
        self,
        timeout: Duration,
        color_header: bool,
        limits: Limits,
    ) -> Response<ProxyBody> {
        let Sent {
            mut in_flight,
            req,
            retry,
            upgrade,
            peer,
        } = self;
        let color = in_flight.color();
        let answer = {
            let sent = in_flight
                .tracker()
                .upstreams()
                .send(in_flight.backend(), req, retry);
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
                let (err, kind) = if client_body_failed(&e) {
                    let err = ProxyError::ClientBody {
                        backend,
                        color,
                        cause,
                    };
                    return client_failed(&mut in_flight, err, peer);
                } else if matches!(
                    e,
                    UpstreamError::Connect(_) | UpstreamError::ConnectTimeout(_)
                ) {
                    let err = ProxyError::Connect {
                        backend,
                        color,
                        cause,
                    };
                    (err, error_kind(&e))
                } else {
                    let err = ProxyError::Upstream {
                        backend,
                        color,
                        cause,
                    };
                    (err, error_kind(&e))
                };
                return failed(&mut in_flight, kind, err, peer);
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some((client_upgrade, protocol)) = upgrade
        {
            // The backend connection becomes the tunnel; it is not reused.
            drop(conn);
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            let accepted = resp.headers().get(header::UPGRADE).cloned();
            let (mut parts, _) = resp.into_parts();
            if let Err(bad) = response_head(&mut parts, color, color_header, &limits) {
                return bad_response(&mut in_flight, bad, peer);
            }
            in_flight.backend().record(true);
            in_flight.status = 101;
            spawn_tunnel(&in_flight, client_upgrade, backend_upgrade);
            // RFC 9110 §7.8: the 101 names the protocol switched to, for this hop too.
            let headers = &mut parts.headers;
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, accepted.unwrap_or(protocol));
            // The 101 has no body; the request is done, the tunnel is counted on its own.
            return Response::from_parts(parts, ProxyBody::Local(None));
        }
        let (mut parts, body) = resp.into_parts();
        if let Err(bad) = response_head(&mut parts, color, color_header, &limits) {
            // The connection is dropped with the body: not reused.
            return bad_response(&mut in_flight, bad, peer);
        }
        in_flight.backend().record(!parts.status.is_server_error());
        in_flight.status = parts.status.as_u16();
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

/// A response head the rulebook refuses: 502, a protocol error against the backend.
fn bad_response(
    in_flight: &mut InFlight,
    bad: BadResponse,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let err = ProxyError::Upstream {
        backend: in_flight.backend().address.clone(),
        color: in_flight.color(),
        cause: bad.to_string(),
    };
    failed(in_flight, ErrorKind::Protocol, err, peer)
}

/// The client's body broke while it was being sent on: its fault, so a 400 that counts
/// against no backend, and the connection closes after it.
fn client_failed(
    in_flight: &mut InFlight,
    err: ProxyError,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    tracing::debug!(peer = %peer, error = %err, "request body refused");
    in_flight.tracker().telemetry().refused(Reject::Body);
    in_flight.status = err.status().as_u16();
    refused_response(Reject::Body)
}

/// The rulebook's answer to a refused request; the connection closes after it (the
/// rest of what the client sent is never read as a request).
fn refused_response(reject: Reject) -> Response<ProxyBody> {
    let mut resp = local_response(reject.status(), reject.client_message());
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
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

/// Whether an upstream failure was the client's body failing.
pub fn client_body_failed(e: &UpstreamError) -> bool {
    let UpstreamError::Http(e) = e else {
        return false;
    };
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<headers::ClientBodyError>() {
            return true;
        }
        cur = err.source();
    }
    false
}
