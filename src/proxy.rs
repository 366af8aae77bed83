//! One request through the data path: load the snapshot once, route, pick a backend,
//! rewrite headers, forward with the pooled client, stream the response back while an
//! [`InFlight`] guard counts it against its colour.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamConfig;
use crate::drain::{InFlight, Tracker};
use crate::error::ProxyError;
use crate::headers;
use crate::snapshot::Snapshot;

/// Everything `forward` needs, shared by all connections.
pub struct Proxy {
    /// The routing pointer; loaded once per request.
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// Per-colour in-flight counters, for draining and status.
    tracker: Arc<Tracker>,
    /// hyper-util's pooled client: keep-alive connections per backend.
    client: Client<HttpConnector, Incoming>,
    /// Limit on waiting for a backend's response headers (→ 504).
    response_timeout: Duration,
}

/// The body sent back to the client: a backend's streamed body (holding the request's
/// in-flight guard until it ends) or a short local error text.
pub enum ProxyBody {
    Upstream {
        body: Incoming,
        /// Released as soon as the body ends, fails, or the client goes away (drop).
        in_flight: Option<InFlight>,
    },
    Local(Option<Bytes>),
}

// === impl Proxy ===

impl Proxy {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        tracker: Arc<Tracker>,
        upstream: &UpstreamConfig,
    ) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(upstream.connect_timeout));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(upstream.idle_timeout)
            .pool_max_idle_per_host(upstream.max_idle_per_backend)
            .http1_writev(false)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Proxy {
            snapshot,
            tracker,
            client,
            response_timeout: upstream.response_timeout,
        }
    }

    /// Forwards one request and returns the response to send to the client. Never fails:
    /// upstream errors become 502/503/504 responses and a log line.
    pub async fn forward(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        match self.try_forward(req, peer).await {
            Ok(resp) => resp,
            Err(err) => {
                tracing::warn!(peer = %peer, error = %err, "proxy error");
                local_response(err.status(), err.client_message())
            }
        }
    }

    async fn try_forward(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let in_flight = {
            // The guard is dropped before the first await: no snapshot is held across I/O.
            let snap = self.snapshot.load();
            let color = snap.route(&req);
            let backend = snap
                .pool(color)
                .pick()
                .ok_or(ProxyError::NoBackend { color })?;
            self.tracker.start(color, backend)
        };
        prepare_request(&mut req, peer, &in_flight);

        let backend = in_flight.backend();
        let color = in_flight.color();
        let resp = match tokio::time::timeout(self.response_timeout, self.client.request(req)).await
        {
            Err(_) => {
                return Err(ProxyError::Timeout {
                    backend: backend.address.clone(),
                    color,
                    after: self.response_timeout,
                });
            }
            Ok(Err(e)) if e.is_connect() => {
                return Err(ProxyError::Connect {
                    backend: backend.address.clone(),
                    color,
                    cause: error_chain(&e),
                });
            }
            Ok(Err(e)) => {
                return Err(ProxyError::Upstream {
                    backend: backend.address.clone(),
                    color,
                    cause: error_chain(&e),
                });
            }
            Ok(Ok(resp)) => resp,
        };
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .append(header::VIA, headers::VIA_VALUE.clone());
        Ok(Response::from_parts(
            parts,
            ProxyBody::Upstream {
                body,
                in_flight: Some(in_flight),
            },
        ))
    }
}

/// Rewrites a client request for the chosen backend: hop-by-hop headers out,
/// X-Forwarded-* and Via in, HTTP/1.1 to the backend with the client's Host kept, and
/// the URI pointed at the backend (origin-form on the wire).
fn prepare_request(req: &mut Request<Incoming>, peer: SocketAddr, in_flight: &InFlight) {
    // HTTP/2 (and absolute-form HTTP/1) carry the host in the URI; HTTP/1 in Host.
    let host = req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let headers = req.headers_mut();
    headers::strip_hop_by_hop(headers);
    headers::add_forwarded(headers, peer.ip(), "http", host.clone());
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    }
    *req.version_mut() = Version::HTTP_11;

    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(in_flight.backend().authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    // Scheme, authority and path are all set, which is all `from_parts` checks.
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
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
            ProxyBody::Upstream { body, in_flight } => {
                let frame = Pin::new(&mut *body).poll_frame(cx);
                let done = match &frame {
                    Poll::Ready(None | Some(Err(_))) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    Poll::Pending => false,
                };
                if done {
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
