//! One routed request's exchange with its backend on hyper's client: wait for the
//! response head (bounded), judge it by the rulebook, and turn every failure into the
//! status that says why, booked against whoever is at fault.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};

use super::tunnel::spawn_tunnel;
use super::{ProxyBody, X_CUTOVER_COLOR, local_response};
use crate::color::Color;
use crate::dispatch::{book_failure, connect_error, retry_elsewhere, upstream_error};
use crate::drain::{CUT_CHECK, InFlight};
use crate::error::ProxyError;
use crate::headers::{self, ClientBody};
use crate::metrics::ErrorKind;
use crate::routing::SetCookies;
use crate::rules::Limits;
use crate::rules::request::Reject;
use crate::rules::response::{self, BadResponse};
use crate::upstream::{SendFailure, UpstreamError};

/// Sorts an upstream failure for `cutover_upstream_errors_total{kind}`.
fn error_kind(e: &UpstreamError) -> ErrorKind {
    match e {
        UpstreamError::Connect(_) | UpstreamError::ConnectTimeout(_) | UpstreamError::Tls(_) => {
            ErrorKind::Connect
        }
        UpstreamError::Http(e) => http_error_kind(e),
    }
}

/// A failed exchange with a backend, or its response body failing after the head was
/// sent on: a reset when the connection broke, else a protocol error.
pub(super) fn http_error_kind(e: &hyper::Error) -> ErrorKind {
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

/// A backend's response head judged by the rulebook and rewritten as the client gets
/// it: the fields the rulebook keeps, one Content-Length where equal ones were merged,
/// then our `Via` and (when on) `x-cutover-color`, so nothing the backend names in
/// `Connection` can remove what cutover adds.
fn response_head(
    parts: &mut http::response::Parts,
    color: Color,
    color_header: bool,
    cookies: SetCookies,
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
            raw_len: None,
        };
        let plan = response::check(&head, limits)?;
        let skip = plan.skip | if color_header { plan.color_fields } else { 0 };
        // Sized for what is kept and added, not for what came: a map of more than six
        // fields is over a KiB, and glibc serves those off its slow path.
        let added = added_fields(&plan, &cookies);
        let kept = fields.len().saturating_sub(skip.count_ones() as usize);
        let mut headers = HeaderMap::with_capacity(kept + added);
        for (i, (name, value)) in parts.headers.iter().enumerate() {
            if skip & (1 << i) == 0 {
                headers.append(name.clone(), value.clone());
            }
        }
        add_ours(&mut headers, &plan, color_header.then_some(color), &cookies);
        headers
    };
    parts.headers = headers;
    Ok(())
}

/// Room a response head's map needs for what cutover adds to the fields it keeps.
pub(super) fn added_fields(plan: &response::Plan, cookies: &SetCookies) -> usize {
    2 + usize::from(plan.merge_length) + cookies.len()
}

/// What cutover adds to a response head it forwards on hyper's path: one
/// Content-Length where equal ones were merged, `Via`, `x-cutover-color` (when on) and
/// the routing's cookies. Added after the backend's fields, so nothing the backend names
/// in `Connection` can remove them.
pub(super) fn add_ours(
    headers: &mut HeaderMap,
    plan: &response::Plan,
    color: Option<Color>,
    cookies: &SetCookies,
) {
    if let (true, Some(n)) = (plan.merge_length, plan.length) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    headers.append(header::VIA, headers::VIA_VALUE.clone());
    if let Some(color) = color {
        headers.insert(
            X_CUTOVER_COLOR.clone(),
            HeaderValue::from_static(color.as_str()),
        );
    }
    if !cookies.is_empty() {
        for value in cookies.values() {
            if let Ok(value) = HeaderValue::try_from(value) {
                headers.append(header::SET_COOKIE, value);
            }
        }
    }
}

/// Why a request got no backend: the rulebook refused it, or routing or a backend
/// failed.
pub(super) enum NotSent {
    Refused(Reject),
    Failed(ProxyError),
}

/// A routed and rewritten request with its in-flight guard, ready for its backend.
pub(super) struct Sent {
    /// Counts the request against its colour until the response body ends.
    pub(super) in_flight: InFlight,
    /// The rewritten request, for the backend `in_flight` names.
    pub(super) req: Request<ClientBody>,
    /// It may be sent again if a reused connection fails before any answer.
    pub(super) retry: bool,
    /// The client side of an upgrade and the protocol asked for, when it asked.
    pub(super) upgrade: Option<(hyper::upgrade::OnUpgrade, HeaderValue)>,
    /// For the log line of a failure.
    pub(super) peer: SocketAddr,
}

// === impl Sent ===

impl Sent {
    /// Waits (bounded by `timeout`) for the backend's response headers and turns them
    /// into the client's response: streamed body, a tunnel after a 101, or the 502/504
    /// that says why there is none.
    pub(super) async fn response(
        self,
        timeout: Duration,
        color_header: bool,
        limits: Limits,
        read_timeout: Duration,
    ) -> Response<ProxyBody> {
        let Sent {
            mut in_flight,
            req,
            retry,
            upgrade,
            peer,
        } = self;
        let color = in_flight.color();
        let (req, body_sent) = headers::signal_sent(req);
        let mut answer = send(&in_flight, req, retry, timeout, body_sent).await;
        if let Ok(Err(SendFailure {
            error,
            unsent: Some(req),
        })) = answer
        {
            answer = if retry_elsewhere(&mut in_flight, &error) {
                send(&in_flight, req, retry, timeout, None).await
            } else {
                Ok(Err(error.into()))
            };
        }
        let answer = answer.map(|sent| sent.map_err(|failure| failure.error));
        let (mut resp, conn) = match answer {
            Ok(Ok(exchange)) => exchange,
            Err(Waited::Drained) => {
                // Not the backend's fault: counted as closed by the drain, answered 503.
                in_flight.closed_by_drain();
                let err = ProxyError::Drained {
                    backend: in_flight.backend().address.clone(),
                    color,
                };
                in_flight.status = err.status().as_u16();
                let mut resp = local_response(err.status(), err.client_message());
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return resp;
            }
            Err(Waited::Timeout) => {
                let err = ProxyError::Timeout {
                    backend: in_flight.backend().address.clone(),
                    color,
                    after: timeout,
                };
                return failed(&mut in_flight, ErrorKind::Timeout, err, peer);
            }
            Ok(Err(e)) => {
                let (backend, cause) = (in_flight.backend().address.clone(), error_chain(&e));
                let (err, kind) = if let Some(reject) = client_body_failed(&e) {
                    let err = ProxyError::ClientBody {
                        backend,
                        color,
                        cause,
                    };
                    return client_failed(&mut in_flight, reject, err, peer);
                } else if matches!(
                    e,
                    UpstreamError::Connect(_)
                        | UpstreamError::ConnectTimeout(_)
                        | UpstreamError::Tls(_)
                ) {
                    (connect_error(backend, color, &e, cause), error_kind(&e))
                } else {
                    (upstream_error(backend, color, &e, cause), error_kind(&e))
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
            if let Err(bad) =
                response_head(&mut parts, color, color_header, in_flight.cookies, &limits)
            {
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
        if let Err(bad) = response_head(&mut parts, color, color_header, in_flight.cookies, &limits)
        {
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
                waiting: None,
                read_timeout,
            },
        )
    }
}

/// Why no response head came in time.
enum Waited {
    /// `upstream.response_timeout` passed after the request was sent.
    Timeout,
    /// Its colour's drain deadline passed while it waited.
    Drained,
}

/// Sends `req` to the request's backend and waits for the response head: bounded by
/// `timeout` from when the request's body has been sent on (`body_sent` resolves then;
/// `None` when it has no body), so a slow upload is the client's pace, not the
/// backend's delay; and by the colour's drain deadline, checked each second.
async fn send(
    in_flight: &InFlight,
    req: Request<ClientBody>,
    retry: bool,
    timeout: Duration,
    body_sent: Option<tokio::sync::oneshot::Receiver<()>>,
) -> Result<Result<(Response<hyper::body::Incoming>, crate::idle::Sender), SendFailure>, Waited> {
    let upstreams = in_flight.tracker().upstreams();
    let sent = upstreams.send(in_flight.backend(), req, retry);
    // Pinned where it is: the waits below hold a reference, not a copy of it.
    tokio::pin!(sent);
    if let Some(body_sent) = body_sent {
        tokio::select! {
            biased;
            answer = &mut sent => return Ok(answer),
            // Sent, or the body failed (the exchange then ends with its error).
            _ = body_sent => {}
        }
    }
    let respond_by = tokio::time::Instant::now() + timeout;
    loop {
        let tick = respond_by.min(tokio::time::Instant::now() + CUT_CHECK);
        tokio::select! {
            biased;
            answer = &mut sent => return Ok(answer),
            () = tokio::time::sleep_until(tick) => {
                if in_flight.is_cut() {
                    return Err(Waited::Drained);
                }
                if tokio::time::Instant::now() >= respond_by {
                    return Err(Waited::Timeout);
                }
            }
        }
    }
}

/// A response head the rulebook refuses: 502, a protocol error against the backend.
pub(super) fn bad_response(
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
    reject: Reject,
    err: ProxyError,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    tracing::debug!(peer = %peer, error = %err, "request body refused");
    in_flight.tracker().telemetry().refused(reject);
    in_flight.status = reject.status().as_u16();
    refused_response(reject)
}

/// The rulebook's answer to a refused request; the connection closes after it (the
/// rest of what the client sent is never read as a request).
pub(super) fn refused_response(reject: Reject) -> Response<ProxyBody> {
    let mut resp = local_response(reject.status(), reject.client_message());
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Books an upstream failure on the request (the backend's run of failures for passive
/// ejection, the error counter, the status), logs it, and answers the client.
pub(super) fn failed(
    in_flight: &mut InFlight,
    kind: ErrorKind,
    err: ProxyError,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    book_failure(in_flight, kind, &err, peer);
    local_response(err.status(), err.client_message())
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

/// Whether an upstream failure was the client's body failing, and how.
fn client_body_failed(e: &UpstreamError) -> Option<Reject> {
    let UpstreamError::Http(e) = e else {
        return None;
    };
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(body) = err.downcast_ref::<headers::ClientBodyError>() {
            return Some(match body {
                headers::ClientBodyError::TimedOut => Reject::Timeout,
                headers::ClientBodyError::TooLarge => Reject::BodyTooLarge,
                headers::ClientBodyError::Broken(_) => Reject::Body,
            });
        }
        cur = err.source();
    }
    None
}
