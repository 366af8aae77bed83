//! Per-colour in-flight and tunnel tracking, and draining.
//!
//! Every proxied request holds an [`InFlight`] guard from the moment a backend is picked
//! until its response body has finished streaming; every upgraded connection (WebSocket
//! and any other `Upgrade`) holds a [`Tunnel`] guard. After a switch the old colour is
//! *draining*: a task watches its counts. Its requests finish on it; at the drain
//! deadline its tunnels are cancelled (and counted as closed by drain); once nothing is
//! left, its backends' idle keep-alive connections are closed at once, rather than
//! left to the idle timeout. If the colour becomes live
//! again first (a rollback), the drain is abandoned and its tunnels live on.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::color::Color;
use crate::metrics::{ColorCounts, ErrorKind, Telemetry};
use crate::pool::{Backend, BackendGuard};
use crate::routing::SetCookies;
use crate::upstream::Upstreams;

/// How often a request that waits (for a response head, or on a body) checks whether
/// its colour's drain deadline has passed: every path uses this one interval.
pub const CUT_CHECK: Duration = Duration::from_secs(1);

/// How often a drain task looks at the counts.
const POLL: Duration = Duration::from_millis(25);
/// How long a drained colour keeps its idle backend connections: made live again within
/// it (a rollback, or switches back and forth), it needs no new ones.
const LINGER: Duration = Duration::from_secs(1);

/// Counters and drain state per colour, shared by the proxy, the switchboard and admin.
pub struct Tracker {
    /// Requests in flight, indexed by [`Color::index`].
    in_flight: [AtomicUsize; 2],
    /// Open upgraded connections.
    tunnels: [AtomicUsize; 2],
    /// Tunnels closed because a drain deadline passed.
    closed_by_drain: [AtomicU64; 2],
    /// Bumped when a colour's drain deadline passes with requests still in flight:
    /// each of those requests sees its colour's count differ from the one it started
    /// with and ends at its next chance (a body read, or a one-second check while it
    /// waits).
    cuts: [AtomicU64; 2],
    /// Requests closed that way, per colour.
    requests_closed_by_drain: [AtomicU64; 2],
    /// Drain bookkeeping; touched on switches and tunnel opens, never per request.
    drains: [Mutex<ColorDrain>; 2],
    /// How long tunnels may outlive a switch away from their colour.
    pub timeout: Duration,
    /// The backend connections; a drained colour's idle ones are closed.
    upstreams: Arc<Upstreams>,
    /// Where finished requests are recorded.
    telemetry: Arc<Telemetry>,
}

#[derive(Debug, Default)]
struct ColorDrain {
    /// Bumped on every begin/abort, so a stale drain task knows to stop.
    epoch: u64,
    /// When the current drain began, for status; `None` when the colour is not
    /// draining.
    since: Option<SystemTime>,
    /// When the colour's remaining tunnels are cancelled: monotonic for the drain task
    /// and `wait_drained`, wall clock for status. `None` when not draining.
    deadline: Option<(Instant, SystemTime)>,
    /// Cancelled at the deadline; every tunnel of the colour listens on it.
    cancel: CancellationToken,
}

/// What status shows about one colour.
#[derive(Debug, Clone)]
pub struct DrainView {
    /// Requests of the colour in flight now.
    pub in_flight: usize,
    /// Upgraded connections of the colour open now.
    pub tunnels: usize,
    /// Tunnels of the colour closed because a drain deadline passed, since start.
    pub closed_by_drain: u64,
    /// Requests of the colour closed because a drain deadline passed, since start.
    pub requests_closed_by_drain: u64,
    /// When the current drain began; `None` when the colour is not draining, which is
    /// how admin tells `draining` from `idle`.
    pub draining_since: Option<SystemTime>,
    /// When the current drain cancels the colour's tunnels still open; `None` when not
    /// draining.
    pub deadline: Option<SystemTime>,
}

/// One request in flight to one backend of one colour.
pub struct InFlight {
    /// Its colour's cut count when it started: a different one now means the drain
    /// deadline passed and the request is to end.
    cut: u64,
    /// Where the counts live: dropping the guard takes the request off its colour's
    /// count and records its telemetry and access log line.
    tracker: Arc<Tracker>,
    /// The colour the request was routed to: which counts and metrics series it is in.
    color: Color,
    /// Counts the request against its backend until the guard drops; it is also the
    /// backend the request is sent to.
    backend: BackendGuard,
    /// When routing decided; `None` when nothing records durations.
    started: Option<Instant>,
    /// The status sent to the client; 0 until one is known (and for good when the
    /// client leaves before its answer).
    pub status: u16,
    /// The backend failed after its answer began (reset or malformed mid-body).
    broken: bool,
    /// Response body bytes streamed to the client.
    pub bytes: u64,
    /// What the access log line needs from the request, when the log is on.
    pub access: Option<Box<AccessEntry>>,
    /// The cookies routing decided the response sets (a new bucket or pin); empty on
    /// almost every request.
    pub cookies: SetCookies,
}

/// The request half of an access log line, captured only when the log is on.
pub struct AccessEntry {
    /// The request method, the log line's `method`.
    pub method: http::Method,
    /// The path and query the client asked for, the log line's `target`.
    pub target: String,
    /// The client's address and port, the log line's `peer`.
    pub peer: std::net::SocketAddr,
}

/// One open tunnel; the token is cancelled at its colour's drain deadline.
pub struct Tunnel {
    /// Whose open-tunnel count this tunnel is in; dropping the guard decrements it.
    tracker: Arc<Tracker>,
    /// The colour the tunnel was routed to: which count it is in and whose drain
    /// deadline ends it.
    color: Color,
    /// Cancelled at the colour's drain deadline, or when shutdown outlasts its grace;
    /// the tunnel's copy loop stops on it.
    pub cancel: CancellationToken,
}

// === impl Tracker ===

impl Tracker {
    pub fn new(timeout: Duration, upstreams: Arc<Upstreams>, telemetry: Arc<Telemetry>) -> Tracker {
        Tracker {
            telemetry,
            in_flight: Default::default(),
            tunnels: Default::default(),
            closed_by_drain: Default::default(),
            cuts: Default::default(),
            requests_closed_by_drain: Default::default(),
            drains: Default::default(),
            timeout,
            upstreams,
        }
    }

    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    pub fn in_flight(&self, color: Color) -> usize {
        self.in_flight[color.index()].load(Ordering::Relaxed)
    }

    pub fn tunnels(&self, color: Color) -> usize {
        self.tunnels[color.index()].load(Ordering::Relaxed)
    }

    /// Starts counting a request to `backend` of `color`.
    #[inline]
    pub fn start(self: &Arc<Self>, color: Color, backend: &Arc<Backend>) -> InFlight {
        self.in_flight[color.index()].fetch_add(1, Ordering::Relaxed);
        let timed = self.telemetry.enabled() || self.telemetry.access_log.is_some();
        InFlight {
            cut: self.cuts[color.index()].load(Ordering::Relaxed),
            tracker: Arc::clone(self),
            color,
            backend: backend.track(),
            started: timed.then(Instant::now),
            status: 0,
            broken: false,
            bytes: 0,
            access: None,
            cookies: SetCookies::default(),
        }
    }

    /// Registers an upgraded connection of `color`.
    pub fn open_tunnel(self: &Arc<Self>, color: Color) -> Tunnel {
        self.tunnels[color.index()].fetch_add(1, Ordering::Relaxed);
        let cancel = self.lock(color).cancel.clone();
        Tunnel {
            tracker: Arc::clone(self),
            color,
            cancel,
        }
    }

    pub fn view(&self, color: Color) -> DrainView {
        let d = self.lock(color);
        DrainView {
            in_flight: self.in_flight(color),
            tunnels: self.tunnels(color),
            closed_by_drain: self.closed_by_drain[color.index()].load(Ordering::Relaxed),
            requests_closed_by_drain: self.requests_closed_by_drain[color.index()]
                .load(Ordering::Relaxed),
            draining_since: d.since,
            deadline: d.deadline.map(|(_, wall)| wall),
        }
    }

    /// Both colours' counts, for `/metrics`.
    pub fn counts(&self) -> [ColorCounts; 2] {
        Color::ALL.map(|color| ColorCounts {
            in_flight: self.in_flight(color),
            tunnels: self.tunnels(color),
            closed_by_drain: self.closed_by_drain[color.index()].load(Ordering::Relaxed),
            requests_closed_by_drain: self.requests_closed_by_drain[color.index()]
                .load(Ordering::Relaxed),
        })
    }

    pub fn is_draining(&self, color: Color) -> bool {
        self.lock(color).since.is_some()
    }

    /// `color` just stopped being live: start draining it.
    pub fn begin_drain(self: &Arc<Self>, color: Color) {
        let (epoch, deadline, cancel) = {
            let mut d = self.lock(color);
            d.epoch += 1;
            let now = SystemTime::now();
            let deadline = Instant::now() + self.timeout;
            d.since = Some(now);
            d.deadline = Some((deadline, now + self.timeout));
            (d.epoch, deadline, d.cancel.clone())
        };
        tokio::spawn(Arc::clone(self).drain(color, epoch, deadline, cancel));
    }

    /// `color` is live again: abandon its drain (and a drained colour's pending close of
    /// its idle connections); its tunnels stay open.
    pub fn abort_drain(&self, color: Color) {
        let mut d = self.lock(color);
        d.epoch += 1;
        d.since = None;
        d.deadline = None;
        if d.cancel.is_cancelled() {
            d.cancel = CancellationToken::new();
        }
    }

    /// Closes every tunnel of both colours now (process shutdown past its deadline).
    pub fn close_all_tunnels(&self) {
        for color in Color::ALL {
            self.lock(color).cancel.cancel();
        }
    }

    /// Resolves once `color` is no longer draining or its deadline has passed.
    pub async fn wait_drained(&self, color: Color) {
        loop {
            let deadline_passed = {
                let d = self.lock(color);
                match d.deadline {
                    None => return,
                    Some((at, _)) => Instant::now() >= at,
                }
            };
            if deadline_passed {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn drain(
        self: Arc<Self>,
        color: Color,
        epoch: u64,
        deadline: Instant,
        cancel: CancellationToken,
    ) {
        let mut deadline_passed = false;
        loop {
            if self.lock(color).epoch != epoch {
                return;
            }
            let (requests, tunnels) = (self.in_flight(color), self.tunnels(color));
            if requests == 0 && tunnels == 0 {
                break;
            }
            if !deadline_passed && Instant::now() >= deadline {
                deadline_passed = true;
                if tunnels > 0 || requests > 0 {
                    tracing::info!(%color, tunnels, requests, "drain deadline: closing the remaining requests and tunnels");
                    cancel.cancel();
                    self.cuts[color.index()].fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(POLL).await;
        }
        {
            let mut d = self.lock(color);
            if d.epoch != epoch {
                return;
            }
            d.since = None;
            d.deadline = None;
            if d.cancel.is_cancelled() {
                d.cancel = CancellationToken::new();
            }
        }
        tracing::info!(%color, "drained");
        // Its idle backend connections close a moment later, unless the colour is live
        // again by then (switches back and forth keep their pools warm). The wait also
        // covers a request's connection going back to the pool just after it stopped
        // counting.
        tokio::time::sleep(LINGER).await;
        if self.lock(color).epoch == epoch {
            self.upstreams.reset(color);
            tracing::info!(%color, "idle upstream connections of the drained colour closed");
        }
    }

    fn lock(&self, color: Color) -> std::sync::MutexGuard<'_, ColorDrain> {
        // A panic while holding this lock cannot leave the counters inconsistent.
        self.drains[color.index()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

// === impl InFlight ===

impl InFlight {
    pub fn color(&self) -> Color {
        self.color
    }

    pub fn backend(&self) -> &Arc<Backend> {
        self.backend.backend()
    }

    /// Its colour's drain deadline passed while it ran: it is to end now.
    pub fn is_cut(&self) -> bool {
        self.tracker.cuts[self.color.index()].load(Ordering::Relaxed) != self.cut
    }

    /// It was ended at its colour's drain deadline: counted as such, never against
    /// the backend.
    pub fn closed_by_drain(&mut self) {
        self.tracker.requests_closed_by_drain[self.color.index()].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(color = %self.color, backend = %self.backend().address, "request closed at the drain deadline");
    }

    /// The request goes to `backend` instead (its first one could not be reached): it
    /// now counts against that one.
    pub fn move_to(&mut self, backend: &Arc<Backend>) {
        self.backend = backend.track();
    }

    pub fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }

    /// The backend failed after its answer's head went to the client (a reset or a
    /// malformed body): the status stays what the client saw, but the request counts
    /// as an upstream error of `kind` and as an error in the windowed stats.
    pub fn broke(&mut self, kind: ErrorKind) {
        if !self.broken {
            self.broken = true;
            self.tracker.telemetry.upstream_error(self.color, kind);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.tracker.in_flight[self.color.index()].fetch_sub(1, Ordering::Relaxed);
        let Some(started) = self.started else { return };
        let elapsed = started.elapsed();
        let telemetry = &self.tracker.telemetry;
        telemetry.finish(self.color, self.status, self.broken, elapsed);
        if telemetry.enabled() {
            let backend = self.backend.backend();
            backend.tally.finish(self.status, self.broken, elapsed);
        }
        if let (Some(log), Some(entry)) = (&telemetry.access_log, self.access.take()) {
            let line = serde_json::json!({
                "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                "peer": entry.peer.to_string(),
                "method": entry.method.as_str(),
                "target": entry.target,
                "color": self.color,
                "backend": self.backend.backend().address,
                "status": self.status,
                "duration_ms": elapsed.as_secs_f64() * 1000.0,
                "bytes": self.bytes,
            });
            if !log.log(line.to_string()) {
                telemetry.access_dropped();
            }
        }
    }
}

// === impl Tunnel ===

impl Tunnel {
    /// Counts this tunnel as closed by a drain deadline.
    pub fn closed_by_drain(&self) {
        self.tracker.closed_by_drain[self.color.index()].fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.tracker.tunnels[self.color.index()].fetch_sub(1, Ordering::Relaxed);
    }
}
