//! What both protocol paths share: the [`Proxy`] context (the routing pointer, the
//! trackers, the rulebook's settings), the client [`Peer`], and the first and last
//! steps of every request: `Proxy::start` (load the snapshot once, route, pick a
//! healthy backend, count the request against its colour) and `book_failure`. The
//! relay and the hyper path ([`proxy`](crate::proxy)) both stand on it; it knows
//! neither.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::backend_stream::BackendStream;
use crate::color::Color;
use crate::config::UpstreamConfig;
use crate::connections::Timeouts;
use crate::drain::{AccessEntry, InFlight, Tracker};
use crate::error::ProxyError;
use crate::headers;
use crate::log_limit::LogLimit;
use crate::metrics::ErrorKind;
use crate::routing::Why;
use crate::rules::Policy;
use crate::rules::forwarded::{self, Client};
use crate::snapshot::{Routable, Snapshot};
use crate::upstream::UpstreamError;
use crate::upstream_tls::TlsFailure;

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
    /// Limit on a backend's pause in the middle of a response body.
    pub(crate) read_timeout: Duration,
    /// How long a client may take over a head, a body or sitting idle; hyper's path
    /// paces request bodies by it.
    pub(crate) timeouts: Timeouts,
    /// The rulebook's settings: limits, `_` in names, trusted forwarders.
    pub(crate) policy: Policy,
}

/// The client end of a connection, as each request on it needs it.
pub struct Peer {
    /// The client's address and port, for log lines and the access log.
    pub addr: SocketAddr,
    /// `addr`'s IP as an X-Forwarded-For entry, formatted once per connection.
    pub forwarded_for: HeaderValue,
    /// `addr` is in `[forwarded] trusted`: its X-Forwarded-For is extended.
    pub trusted: bool,
    /// `"http"` or `"https"`: how the client reached the listener, for
    /// `X-Forwarded-Proto`.
    pub scheme: &'static str,
}

impl Peer {
    pub fn new(addr: SocketAddr, policy: &Policy, scheme: &'static str) -> Peer {
        Peer {
            addr,
            forwarded_for: headers::forwarded_for(addr.ip()),
            trusted: forwarded::trusted(&policy.trusted, addr.ip()),
            scheme,
        }
    }

    /// The client as the rulebook's added fields name it.
    pub fn client(&self) -> Client<'_> {
        Client {
            addr: self.forwarded_for.as_bytes(),
            trusted: self.trusted,
            proto: self.scheme,
        }
    }
}

/// Names the colour that served a response, when `routing.color_header` is on.
pub static X_CUTOVER_COLOR: http::HeaderName = http::HeaderName::from_static("x-cutover-color");

// === impl Proxy ===

impl Proxy {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        tracker: Arc<Tracker>,
        upstream: &UpstreamConfig,
        color_header: bool,
        policy: Policy,
        timeouts: Timeouts,
    ) -> Proxy {
        Proxy {
            snapshot,
            tracker,
            response_timeout: upstream.response_timeout,
            read_timeout: upstream.read_timeout,
            timeouts,
            color_header,
            policy,
        }
    }

    /// The data path's first step on both HTTP/1.1 paths: loads the snapshot once, routes
    /// `req`, picks a backend and starts counting the request against its colour. With
    /// no healthy backend the request is recorded as a 503 and logged, and the error
    /// says what to answer. `access` (method, target) is called only when the access log
    /// is on.
    pub(crate) fn start<R: Routable>(
        &self,
        req: &R,
        peer: &Peer,
        access: impl FnOnce(&R) -> (http::Method, String),
    ) -> Result<InFlight, ProxyError> {
        let mut in_flight = {
            let snap = self.snapshot.load();
            let route = snap.route(req, peer.addr.ip(), peer.scheme == "https");
            let mut color = route.color;
            let mut picked = snap.pool(color).pick();
            if picked.is_none() && matches!(route.why, Why::Canary | Why::Pinned) {
                // A canary or pinned colour with nothing up: the live colour serves rather
                // than the client seeing a 503 (a forced route does not fall back).
                color = snap.live;
                picked = snap.pool(color).pick();
            }
            let Some(backend) = picked else {
                self.tracker
                    .telemetry()
                    .finish(color, 503, false, Duration::ZERO);
                let err = ProxyError::NoBackend { color };
                if let Some(suppressed) = NO_BACKEND_LOG.allow() {
                    tracing::warn!(peer = %peer.addr, error = %err, suppressed, "proxy error");
                }
                return Err(err);
            };
            if route.why != Why::Live {
                self.tracker.telemetry().routed(route.why);
            }
            let mut in_flight = self.tracker.start(color, backend);
            in_flight.cookies = route.cookies;
            in_flight
        };
        if self.tracker.telemetry().access_log.is_some() {
            let (method, target) = access(req);
            in_flight.access = Some(Box::new(AccessEntry {
                method,
                target,
                peer: peer.addr,
            }));
        }
        Ok(in_flight)
    }
}

/// After a connect to the request's backend failed (refused, unreachable, timed out:
/// nothing of the request was sent), moves it to another healthy backend of the same
/// colour. The failed backend is booked a failure (passive ejection); the request is
/// not, and the client sees nothing of it. False when the colour has no other healthy
/// backend. Each path calls it at most once per request.
pub(crate) fn retry_elsewhere(in_flight: &mut InFlight, cause: &dyn std::fmt::Display) -> bool {
    in_flight.backend().record(false);
    let next = in_flight
        .tracker()
        .upstreams()
        .pick_other(in_flight.color(), in_flight.backend());
    let Some(next) = next else {
        return false;
    };
    tracing::debug!(
        failed = %in_flight.backend().address,
        next = %next.address,
        error = %cause,
        "connect failed; trying another backend"
    );
    in_flight.move_to(&next);
    true
}

/// A raw socket to the request's backend: a kept one unless `fresh`, else a new one,
/// and whether it was kept. A backend that cannot be connected moves the request to
/// another ([`retry_elsewhere`]) unless `moved` says it already moved once.
pub(crate) async fn raw_connection(
    in_flight: &mut InFlight,
    fresh: bool,
    moved: &mut bool,
) -> Result<(BackendStream, bool), UpstreamError> {
    loop {
        let backend = Arc::clone(in_flight.backend());
        let upstreams = Arc::clone(in_flight.tracker().upstreams());
        if !fresh && let Some(stream) = upstreams.take_raw(&backend) {
            return Ok((stream, true));
        }
        // Boxed: opening a connection (TLS included) is a large future that a request
        // on a kept socket would otherwise carry too.
        match Box::pin(upstreams.connect_raw(&backend)).await {
            Ok(stream) => return Ok((stream, false)),
            Err(e) if !*moved && retry_elsewhere(in_flight, &e) => *moved = true,
            Err(e) => return Err(e),
        }
    }
}

/// How an attempt on a raw path (the relay, or hyper's path for a request without a
/// body) failed that is the backend's fault alone. Both book it the same way.
pub(crate) enum Fault {
    Connect(UpstreamError),
    /// Nothing came back on the connection: on a reused one, it may be retried.
    Unanswered(io::Error),
    Io(io::Error),
    /// No response head within `after`.
    Timeout,
}

impl Fault {
    /// The kind counted and the error answered for it.
    pub(crate) fn booked(
        self,
        backend: String,
        color: Color,
        after: Duration,
    ) -> (ErrorKind, ProxyError) {
        match self {
            Fault::Connect(e) => {
                let cause = e.to_string();
                (ErrorKind::Connect, connect_error(backend, color, &e, cause))
            }
            Fault::Timeout => (
                ErrorKind::Timeout,
                ProxyError::Timeout {
                    backend,
                    color,
                    after,
                },
            ),
            Fault::Unanswered(e) | Fault::Io(e) => {
                let cause = e.to_string();
                (ErrorKind::Reset, upstream_error(backend, color, &e, cause))
            }
        }
    }
}

/// A connection to the backend that could not be opened, on either path: unreachable
/// (`cause` says how), or its TLS handshake failed (the 502 names the reason). The
/// backend's fault either way.
pub(crate) fn connect_error(
    backend: String,
    color: Color,
    e: &UpstreamError,
    cause: String,
) -> ProxyError {
    match e {
        UpstreamError::Tls(failure) => ProxyError::BackendTls {
            backend,
            color,
            failure: *failure,
        },
        _ => ProxyError::Connect {
            backend,
            color,
            cause,
        },
    }
}

/// A backend connection that failed after it was opened, on either path: a TLS
/// alert or error (named in the 502), or any other break (`cause`).
pub(crate) fn upstream_error(
    backend: String,
    color: Color,
    source: &(dyn std::error::Error + 'static),
    cause: String,
) -> ProxyError {
    match TlsFailure::in_chain(source) {
        Some(failure) => ProxyError::BackendTls {
            backend,
            color,
            failure,
        },
        None => ProxyError::Upstream {
            backend,
            color,
            cause,
        },
    }
}

/// Budgets for the per-request failure lines: `suppressed` on a line counts those not
/// logged since the last one.
static NO_BACKEND_LOG: LogLimit = LogLimit::new();
static FAILURE_LOG: LogLimit = LogLimit::new();

/// What every failure of a routed request costs, on either path: the request's status
/// and a log line; when it is the backend's fault (the rulebook's blame), also a
/// failure in the backend's run (passive ejection) and the upstream error counter.
pub(crate) fn book_failure(
    in_flight: &mut InFlight,
    kind: ErrorKind,
    err: &ProxyError,
    peer: SocketAddr,
) {
    if err.fault().counts_against_backend() {
        in_flight.backend().record(false);
        in_flight
            .tracker()
            .telemetry()
            .upstream_error(in_flight.color(), kind);
    }
    in_flight.status = err.status().as_u16();
    if let Some(suppressed) = FAILURE_LOG.allow() {
        tracing::warn!(peer = %peer, error = %err, suppressed, "proxy error");
    }
}
