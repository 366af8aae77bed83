//! The open client connections, for graceful shutdown: each connection's task holds a
//! [`Watch`], so the count is theirs, and one cancellation token tells them all to
//! finish. A leaf: the accept loop makes them, the protocol paths hold them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The open client connections: each holds a [`Watch`], so the count is theirs, and
/// cancelling the token asks them all to finish.
pub struct Connections {
    /// Each [`Watch`] holds a receiver of it: `receiver_count` is the number of open
    /// connections and `closed` resolves once the last one is gone.
    tx: watch::Sender<()>,
    /// Cancelled by `shutdown`; every [`Watch`] holds a clone, so one call tells all
    /// connections to finish.
    stop: CancellationToken,
}

/// What one connection holds: it is counted while this lives and told when to finish.
pub struct Watch {
    /// Held, never read: while it lives, [`Connections`] counts this connection.
    _counted: watch::Receiver<()>,
    /// The shared shutdown token: cancelled when the connection should finish after its
    /// current response.
    stop: CancellationToken,
    /// This connection's place under `limits.max_connections`, given back when it ends.
    _slot: OwnedSemaphorePermit,
}

/// How long a client connection may take over each thing it does.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A request head, from its first byte (and a new connection's first head from the
    /// accept).
    pub header: Duration,
    /// A keep-alive connection between requests (HTTP/1) or with no stream (HTTP/2).
    pub idle: Duration,
    /// A request body: no pause longer than this, and on average at least
    /// [`MIN_BODY_RATE`] after it, so a trickle cannot hold a connection forever.
    pub body: Duration,
    /// A write to the client that makes no progress (a client that stopped reading).
    pub write: Duration,
}

/// Bytes a second a request body must average once its first `body` timeout has passed.
pub const MIN_BODY_RATE: u64 = 1024;

impl Timeouts {
    /// When a body that began at `start` and has `received` bytes so far, the last at
    /// `last`, times out: a pause longer than the body timeout, or an average below
    /// [`MIN_BODY_RATE`] after the first body timeout.
    pub fn body_deadline(&self, start: Instant, last: Instant, received: u64) -> Instant {
        let paced = start
            + self.body
            + Duration::from_millis(received.saturating_mul(1000) / MIN_BODY_RATE);
        (last + self.body).min(paced)
    }
}

impl Connections {
    pub fn new(tx: watch::Sender<()>, stop: CancellationToken) -> Connections {
        Connections { tx, stop }
    }

    pub fn count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Asks every connection to finish after its current response; resolves once all
    /// have closed.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tx.closed().await;
    }
}

impl Watch {
    pub fn new(
        counted: watch::Receiver<()>,
        stop: CancellationToken,
        slot: OwnedSemaphorePermit,
    ) -> Watch {
        Watch {
            _counted: counted,
            stop,
            _slot: slot,
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves when shutdown begins. Made once per connection and polled in place:
    /// it registers as a waiter once, not once per request.
    pub fn stopping(&self) -> WaitForCancellationFutureOwned {
        self.stop.clone().cancelled_owned()
    }
}

/// What a connection served by hyper is doing, for its idle timeout: how many of its
/// requests are open (until their response body ends) and when the last one ended.
#[derive(Debug, Default)]
pub struct Activity {
    /// Requests whose response has not finished.
    open: AtomicUsize,
    /// When the last one finished, in [`epoch_ms`] milliseconds.
    last: AtomicU64,
}

/// Held by one open request of a connection; its drop marks the connection active now.
pub struct Active(Arc<Activity>);

impl Activity {
    /// A request began.
    pub fn begin(self: &Arc<Self>) -> Active {
        self.open.fetch_add(1, Ordering::Relaxed);
        Active(Arc::clone(self))
    }

    /// Whether any request has begun on the connection.
    pub fn started(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0 || self.last.load(Ordering::Relaxed) != 0
    }

    /// When the connection can be closed as idle: `None` while a request is open.
    pub fn idle_until(&self, idle: Duration, since: Instant) -> Option<Instant> {
        if self.open.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = self.last.load(Ordering::Relaxed);
        let base = if last == 0 {
            since
        } else {
            EPOCH.with_ms(last)
        };
        Some(base + idle)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.last.store(EPOCH.now_ms(), Ordering::Relaxed);
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as open until it ends.
pub struct Counted<B> {
    pub body: B,
    /// Dropped with the body.
    pub _active: Active,
}

impl<B: http_body::Body + Unpin> http_body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A monotonic millisecond clock on tokio's time (so tests can pause it), for atomics.
struct Epoch(std::sync::OnceLock<Instant>);

static EPOCH: Epoch = Epoch(std::sync::OnceLock::new());

impl Epoch {
    fn start(&self) -> Instant {
        *self.0.get_or_init(Instant::now)
    }

    fn now_ms(&self) -> u64 {
        self.start().elapsed().as_millis() as u64 + 1
    }

    fn with_ms(&self, ms: u64) -> Instant {
        self.start() + Duration::from_millis(ms.saturating_sub(1))
    }
}
