//! Keep-alive HTTP/1.1 connections to backends.
//!
//! Each [`Backend`] keeps its own idle connections
//! ([`IdleConns`](crate::idle::IdleConns), lock-free queues): plain sockets for the
//! [`relay`](crate::relay) and for the requests without a body that hyper serves (HTTP/2
//! GETs), hyper senders for those with a body or an upgrade. An `https://`
//! backend's connections are the same over TLS ([`BackendStream`]); its handshake counts
//! inside `connect_timeout`, and its connections are kept alive and reused the same way.
//! A request takes one, skipping any the backend has closed, or opens a new one; once
//! the response body has been read to its end the connection goes back. A body cut
//! short, an error or an upgrade closes it instead. A sweep closes connections idle
//! for `upstream.idle_timeout`; a drained colour's idle connections close at once.
//!
//! Hyper's side is its `client::conn::http1` with the backend already chosen, rather than
//! hyper-util's pooled client, which looks the pool up per request by (scheme,
//! authority) in a SipHash map under a mutex, boxes each request future and spawns a
//! task per response to hand its connection back. Measured with callgrind on the same
//! load, that bookkeeping was about a sixth of cutover's user-space instructions per
//! request (see README, Performance).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::backend_stream::BackendStream;
use crate::color::Color;
use crate::config::UpstreamConfig;
use crate::headers::ClientBody;
use crate::idle::{Idle, Sender};
use crate::pool::Backend;
use crate::snapshot::Snapshot;
use crate::upstream_tls::TlsFailure;

/// Sweeps per `idle_timeout`: an idle connection is closed after between 1 and 1.25
/// idle timeouts.
const SWEEPS_PER_TIMEOUT: u64 = 4;

/// Opens, hands out and takes back the connections to every backend.
pub struct Upstreams {
    /// Where the pools (and so the backends and their idle connections) are found for
    /// sweeps and resets.
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// The `[upstream]` settings: `connect_timeout` bounds each connect,
    /// `max_idle_per_backend` caps what `put_back` keeps, `idle_timeout` paces the
    /// sweep.
    config: UpstreamConfig,
    /// Hyper's HTTP/1 client settings, used for every new backend connection (vectored
    /// writes off).
    builder: http1::Builder,
    /// Sweeps done so far.
    sweeps: AtomicU64,
}

/// A request that got no response, and the request itself when none of it was sent
/// (the connection could not be opened), so it can go to another backend.
pub struct SendFailure {
    pub error: UpstreamError,
    pub unsent: Option<Request<ClientBody>>,
}

impl From<UpstreamError> for SendFailure {
    fn from(error: UpstreamError) -> SendFailure {
        SendFailure {
            error,
            unsent: None,
        }
    }
}

/// Why no response came from a backend.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The TLS handshake with an `https://` backend failed (nothing was sent).
    #[error("{0}")]
    Tls(TlsFailure),
    #[error(transparent)]
    Http(hyper::Error),
}

/// The same request again, without a body (only requests without one are retried).
fn copy_empty(req: &Request<ClientBody>) -> Request<ClientBody> {
    let mut copy = Request::new(ClientBody::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Opens a connection to `backend`: TCP (TCP_NODELAY), then TLS for an `https://` one,
/// the two together bounded by `timeout`. Health checks connect the same way.
pub async fn connect(backend: &Backend, timeout: Duration) -> Result<BackendStream, UpstreamError> {
    let attempt = async {
        let stream = TcpStream::connect(backend.authority.as_str())
            .await
            .map_err(UpstreamError::Connect)?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(backend = %backend.address, error = %e, "set TCP_NODELAY failed");
        }
        match &backend.tls {
            None => Ok(BackendStream::Plain(stream)),
            Some(tls) => match tls.handshake(stream).await {
                Ok(stream) => Ok(BackendStream::Tls(Box::new(stream))),
                Err(failure) => {
                    tracing::debug!(backend = %backend.address, reason = failure.reason, "backend TLS handshake failed");
                    Err(UpstreamError::Tls(failure))
                }
            },
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(UpstreamError::ConnectTimeout(timeout)),
    }
}

/// The connection closed before any of the answer came.
fn unanswered(e: &hyper::Error) -> bool {
    e.is_canceled() || e.is_closed() || e.is_incomplete_message()
}

// === impl Upstreams ===

impl Upstreams {
    pub fn new(config: &UpstreamConfig, snapshot: Arc<ArcSwap<Snapshot>>) -> Upstreams {
        let mut builder = http1::Builder::new();
        // One flattened buffer per write: fewer, larger segments for small messages.
        builder.writev(false);
        Upstreams {
            snapshot,
            config: config.clone(),
            builder,
            sweeps: AtomicU64::new(0),
        }
    }

    /// Sends `req` to `backend` on an idle connection, or on a new one when none is
    /// left. A request an idle connection could not take (the backend closed it just
    /// before) was never written, so it goes to the next one. One that was written on a
    /// reused connection that then closed with no answer is sent once more on a new
    /// connection when `retry` says it may be (the rulebook's
    /// [`retry`](crate::rules::retry)). Returns the response and the connection, for
    /// [`put_back`](Self::put_back) once the body has been read.
    pub async fn send(
        &self,
        backend: &Backend,
        mut req: Request<ClientBody>,
        retry: bool,
    ) -> Result<(Response<Incoming>, Sender), SendFailure> {
        while let Some(Idle {
            conn: mut sender, ..
        }) = backend.idle.queue.pop()
        {
            if sender.is_closed() || (!sender.is_ready() && sender.ready().await.is_err()) {
                continue;
            }
            let again = retry.then(|| copy_empty(&req));
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, sender)),
                Err(mut e) => match (e.take_message(), again) {
                    (Some(unsent), _) => req = unsent,
                    (None, Some(again)) if unanswered(e.error()) => {
                        req = again;
                        break;
                    }
                    (None, _) => return Err(UpstreamError::Http(e.into_error()).into()),
                },
            }
        }
        let mut sender = match Box::pin(self.connect(backend)).await {
            Ok(sender) => sender,
            // Nothing was written: the request can go elsewhere.
            Err(error) => {
                return Err(SendFailure {
                    error,
                    unsent: Some(req),
                });
            }
        };
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, sender)),
            Err(e) => Err(UpstreamError::Http(e).into()),
        }
    }

    /// Opens a connection to `backend` (TCP_NODELAY, and TLS for an `https://` one),
    /// bounded by `connect_timeout`.
    pub async fn connect_raw(&self, backend: &Backend) -> Result<BackendStream, UpstreamError> {
        connect(backend, self.config.connect_timeout).await
    }

    /// An idle connection to `backend` that is still open, if there is one.
    pub fn take_raw(&self, backend: &Backend) -> Option<BackendStream> {
        while let Some(idle) = backend.idle.raw.pop() {
            if idle.conn.is_open() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Takes back a socket whose response was read to its end and that the backend
    /// keeps open, unless the backend already has `max_idle_per_backend` idle ones.
    /// At the cap, it takes the place of the oldest idle connection hyper's path left,
    /// if any: the two paths share the cap, and one path's burst must not leave the
    /// other opening a connection per request until the idle timeout.
    pub fn put_back_raw(&self, backend: &Backend, stream: BackendStream) {
        if backend.idle.len() >= self.config.max_idle_per_backend
            && backend.idle.queue.pop().is_none()
        {
            return;
        }
        let sweep = self.sweeps.load(Ordering::Relaxed);
        backend.idle.raw.push(Idle {
            conn: stream,
            sweep,
        });
    }

    /// Opens a connection to `backend` and starts the task that drives it.
    async fn connect(&self, backend: &Backend) -> Result<Sender, UpstreamError> {
        match self.connect_raw(backend).await? {
            BackendStream::Plain(stream) => self.drive(backend, stream).await,
            BackendStream::Tls(stream) => self.drive(backend, stream).await,
        }
    }

    /// Hyper's handshake over `io`, and the task that drives the connection.
    async fn drive<I>(&self, backend: &Backend, io: I) -> Result<Sender, UpstreamError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) = self
            .builder
            .handshake(TokioIo::new(io))
            .await
            .map_err(UpstreamError::Http)?;
        let address = backend.address.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(backend = %address, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Takes back a connection whose response was read to its end, unless the backend
    /// already has `max_idle_per_backend` idle ones of hyper's path (then it closes); at
    /// the cap it takes the place of the relay's oldest idle one, if any.
    pub fn put_back(&self, backend: &Backend, sender: Sender) {
        if sender.is_closed()
            || (backend.idle.len() >= self.config.max_idle_per_backend
                && backend.idle.raw.pop().is_none())
        {
            return;
        }
        let sweep = self.sweeps.load(Ordering::Relaxed);
        backend.idle.queue.push(Idle {
            conn: sender,
            sweep,
        });
    }

    /// A healthy backend of `color` other than `not`, in the current snapshot.
    pub fn pick_other(&self, color: Color, not: &Backend) -> Option<Arc<Backend>> {
        self.snapshot.load().pool(color).pick_other(not).cloned()
    }

    /// Closes `color`'s idle connections now (the colour has drained).
    pub fn reset(&self, color: Color) {
        let snapshot = self.snapshot.load();
        let closed: usize = (snapshot.pool(color).backends.iter())
            .map(|b| b.idle.clear())
            .sum();
        tracing::debug!(%color, closed, "idle upstream connections closed");
    }

    /// Closes connections idle for `idle_timeout`, sweeping a few times per timeout so
    /// none outlives it by more than a quarter. Runs until its task is dropped.
    pub async fn sweep(self: Arc<Self>) {
        let every =
            (self.config.idle_timeout / SWEEPS_PER_TIMEOUT as u32).max(Duration::from_millis(10));
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let now = self.sweeps.fetch_add(1, Ordering::Relaxed) + 1;
            // Pooled while the count was `s`: idle for at least `now - s - 1` whole
            // intervals, so one pooled before `now - SWEEPS_PER_TIMEOUT` has been idle
            // for a whole timeout (and less than a quarter more).
            let oldest = now.saturating_sub(SWEEPS_PER_TIMEOUT);
            let snapshot = self.snapshot.load_full();
            for pool in &snapshot.pools {
                for backend in &pool.backends {
                    backend.idle.retain_since(oldest);
                }
            }
        }
    }
}
