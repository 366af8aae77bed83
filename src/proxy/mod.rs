//! The hyper path (HTTP/2, and HTTP/1.1 the relay hands over): hyper's parsed heads
//! turned into field lines for the [`rules`](crate::rules), then one request through
//! the data path: load the snapshot once, route, pick a backend, rewrite the head as
//! the rulebook says, forward on a kept-alive connection, stream the response back
//! while an [`InFlight`](crate::drain::InFlight) guard counts it against its colour.

use std::convert::Infallible;
use std::future::Future;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::headers::{self, ClientBody};
use crate::rules::request::{self, Version as RuleVersion};
use crate::rules::retry;

pub use crate::dispatch::{Peer, Proxy, X_CUTOVER_COLOR};

mod body;
mod forward;
mod raw;
mod tunnel;

pub use body::{ProxyBody, local_response};
use forward::{NotSent, Sent, refused_response};
/// The raw-socket exchange's head conversions, for the benches.
pub use raw::{request_head, response_parts};

impl Proxy {
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
        let (limits, read_timeout) = (self.policy.limits, self.read_timeout);
        async move {
            Ok(match sent {
                Ok(sent) if raw::takes(&sent.req, sent.upgrade.is_some()) => {
                    let answer = raw::Answer {
                        timeout,
                        color_header,
                        limits,
                        read_timeout,
                    };
                    raw::respond(sent.in_flight, sent.req, sent.retry, sent.peer, answer).await
                }
                // Boxed: hyper's client future is twice the raw exchange's, and every
                // bodiless request (each HTTP/2 GET) would carry it in its task.
                Ok(sent) => {
                    Box::pin(sent.response(timeout, color_header, limits, read_timeout)).await
                }
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
                raw_len: None,
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
                .start(&parts, client, |parts| {
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
        let retry = retry::may_retry(parts.method.as_str(), http_body::Body::is_end_stream(&body));
        Ok(Sent {
            in_flight,
            req: Request::from_parts(
                parts,
                ClientBody::new(body, self.timeouts, self.policy.limits.max_body),
            ),
            retry,
            upgrade,
            peer,
        })
    }
}
