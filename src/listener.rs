//! The client-facing accept loop. Each connection is served in its own task: by the
//! [`relay`] while its requests are plain HTTP/1.1, by hyper-util's auto
//! builder (HTTP/1.1, or HTTP/2 with prior knowledge) with every request handed to
//! [`Proxy::forward`](crate::dispatch::Proxy::forward) from the first one that is not. One bad connection never ends
//! the loop; on shutdown the loop stops accepting and every open connection is asked to
//! finish gracefully (HTTP/1 closes after its current response, HTTP/2 sends GOAWAY).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::ListenConfig;
use crate::connections::{Connections, Watch};
use crate::dispatch::Peer;
use crate::redirect;
use crate::relay;
use crate::rules::Limits;
use crate::settings::{self, Settings};
use crate::tls::{HandshakeFailure, Terminator};

/// How often an HTTP/2 connection is pinged, and how long its answer may take.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Builds the connection builder once; cloned into nothing, shared by reference.
/// Hyper's own head limits are set at or above the rulebook's, which judges every head
/// by the same measure on every path; hyper's only catch what it would buffer beyond.
pub fn connection_builder(config: &ListenConfig, limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .writev(false)
        .keep_alive(true)
        .max_headers(limits.max_headers)
        // hyper's minimum is 8 KiB; room for white space the canonical size leaves out.
        .max_buf_size((limits.max_request_head * 2).max(8 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        // RFC 9113 §5.1.2: more are refused with REFUSED_STREAM. hyper's h2 also
        // bounds pending resets (rapid reset) and CONTINUATION frames.
        .max_concurrent_streams(config.max_streams)
        // Pings find a peer that vanished without closing (the idle timeout only
        // closes connections with no stream open).
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        // RFC 9113 §6.5.2 counts 32 bytes per field on top of name and value.
        .max_header_list_size(
            u32::try_from(limits.max_request_head + 32 * limits.max_headers).unwrap_or(u32::MAX),
        );
    builder
}

/// File descriptors kept free of client connections: the admin socket and its
/// clients, health checks, the metrics listener, files.
const RESERVED_FDS: u64 = 128;

/// The default `limits.max_connections`: a third of the file descriptors left after
/// the reserve, since each client connection may hold one to a backend and leave
/// another idle in a backend's pool (HAProxy derives its maxconn the same way).
pub fn default_max_connections() -> usize {
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    let n = soft.saturating_sub(RESERVED_FDS) / 3;
    usize::try_from(n).unwrap_or(usize::MAX).max(16)
}

/// A bound client listener and how its connections are served.
pub struct Bound {
    pub listener: TcpListener,
    pub serves: Serves,
}

/// What a listener's connections get.
#[derive(Clone)]
pub enum Serves {
    /// Plain HTTP: the relay, then hyper.
    Plain,
    /// A TLS handshake in the connection's task, then the same as plain.
    Tls(Arc<Terminator>),
    /// A redirect to https for every request, at this port.
    Redirect { https_port: u16 },
}

/// What every accept loop shares.
struct Shared {
    /// The connection settings in force, loaded once per accepted connection.
    settings: settings::Current,
    /// One place per open connection, across all listeners.
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// Cloned into each connection's [`Watch`]: the count of open connections.
    counted: watch::Receiver<()>,
    /// Cancelled when open connections should finish.
    stop: CancellationToken,
}

/// Accepts and serves connections on every listener until `shutdown` resolves, then
/// returns the watcher of the still-open connections so the caller can wait for them
/// (bounded by its grace). At most `max_connections` are open at once, across all
/// listeners: one more is closed as soon as it is accepted, and counted, so the process
/// keeps the descriptors its health checks and admin socket need.
pub async fn serve(
    listeners: Vec<Bound>,
    settings: settings::Current,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) -> Connections {
    let (tx, counted) = watch::channel(());
    let stop = CancellationToken::new();
    let shared = Arc::new(Shared {
        settings,
        slots: Arc::new(Semaphore::new(max_connections)),
        max_connections,
        counted,
        stop: stop.clone(),
    });
    let stop_accepting = CancellationToken::new();
    let mut loops = tokio::task::JoinSet::new();
    for bound in listeners {
        loops.spawn(accept_loop(
            bound,
            Arc::clone(&shared),
            stop_accepting.clone(),
        ));
    }
    drop(shared);
    shutdown.await;
    stop_accepting.cancel();
    while loops.join_next().await.is_some() {}
    Connections::new(tx, stop)
}

/// Accepts on one listener until `stop` is cancelled; each connection gets its own
/// task.
async fn accept_loop(bound: Bound, shared: Arc<Shared>, stop: CancellationToken) {
    let Bound { listener, serves } = bound;
    let mut pressure = Episode::default();
    let mut full = Episode::default();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => {
                    pressure.end("accepting connections again");
                    conn
                }
                Err(e) => {
                    accept_error(&e, &mut pressure).await;
                    continue;
                }
            },
        };
        // One load per connection: it is served with the settings in force now, and
        // keeps them until it closes.
        let current = shared.settings.load_full();
        let Ok(slot) = Arc::clone(&shared.slots).try_acquire_owned() else {
            // Closed at once: the client sees its connection end, the process keeps
            // its descriptors.
            drop(stream);
            current.proxy.tracker.telemetry().connection_refused();
            full.begin(|| {
                tracing::warn!(
                    max_connections = shared.max_connections,
                    "connection limit reached; closing new connections until some end"
                );
            });
            continue;
        };
        full.end("below the connection limit again");
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(peer = %peer, error = %e, "set TCP_NODELAY failed");
        }
        let watch = Watch::new(shared.counted.clone(), shared.stop.clone(), slot);
        let span = tracing::debug_span!("conn", peer = %peer);
        match &serves {
            Serves::Plain => {
                let conn = relay::serve(
                    stream,
                    Peer::new(peer, &current.proxy.policy, "http"),
                    Arc::clone(&current.proxy),
                    Arc::clone(&current.builder),
                    current.timeouts,
                    watch,
                );
                tokio::spawn(conn.instrument(span));
            }
            Serves::Tls(tls) => {
                let conn = serve_tls(stream, peer, Arc::clone(tls), current, watch);
                tokio::spawn(conn.instrument(span));
            }
            Serves::Redirect { https_port } => {
                let (builder, port) = (Arc::clone(&current.builder), *https_port);
                let conn = async move { redirect::serve(stream, &builder, port, watch).await };
                tokio::spawn(conn.instrument(span));
            }
        }
    }
}

/// The handshake, under its timeout, then the connection as on a plain listener: the
/// relay for plain HTTP/1.1 requests (ALPN `http/1.1` or none), hyper for HTTP/2 (ALPN
/// `h2`: the relay hands the preface over at once) and the rest. A failed handshake is
/// counted by reason and logged at debug; it concerns no other connection.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Arc<Terminator>,
    current: Arc<Settings>,
    watch: Watch,
) {
    let handshake = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream));
    let failure = match handshake.await {
        Ok(Ok(stream)) => {
            // A task of its own: this one holds the handshake's state and a copy of
            // the session as it came out of it, and an idle TLS connection should hold
            // neither.
            let conn = relay::serve(
                stream,
                Peer::new(peer, &current.proxy.policy, "https"),
                Arc::clone(&current.proxy),
                Arc::clone(&current.builder),
                current.timeouts,
                watch,
            );
            tokio::spawn(conn.in_current_span());
            return;
        }
        Ok(Err(e)) => {
            let why = HandshakeFailure::of(&e);
            tracing::debug!(error = %e, reason = why.as_str(), "TLS handshake failed");
            why
        }
        Err(_) => {
            tracing::debug!(timeout = ?tls.handshake_timeout, "TLS handshake not finished in time");
            HandshakeFailure::Timeout
        }
    };
    current.proxy.tracker.telemetry().handshake_failed(failure);
}

/// A run of the same trouble, logged when it begins and when it ends (with how many
/// times it happened), not at every occurrence.
#[derive(Default)]
struct Episode {
    /// Occurrences since it began; 0 when there is none.
    count: u64,
}

impl Episode {
    fn begin(&mut self, log: impl FnOnce()) {
        if self.count == 0 {
            log();
        }
        self.count += 1;
    }

    fn end(&mut self, what: &str) {
        if self.count > 0 {
            tracing::info!(occurrences = self.count, "{what}");
            self.count = 0;
        }
    }
}

/// Logs an accept error and waits when retrying at once would spin: out of file
/// descriptors or memory clears only as connections close. Logged once per episode.
async fn accept_error(e: &io::Error, pressure: &mut Episode) {
    let resource = matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    );
    if resource {
        pressure.begin(|| {
            tracing::error!(error = %e, "accept failed: out of resources; pausing accepts 100ms at a time");
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    } else {
        tracing::debug!(error = %e, "accept failed");
    }
}

/// Turns quick ACKs off on a listener, so its connections inherit it: a request's first
/// segment is then acknowledged by the response rather than by an ACK of its own, one
/// packet less per connection for clients that open one per request (HAProxy does the
/// same on its HTTP listeners). A failure only costs that packet.
pub fn delay_first_ack(listener: &TcpListener) {
    if let Err(e) = socket2::SockRef::from(listener).set_tcp_quickack(false) {
        tracing::debug!(error = %e, "clearing TCP_QUICKACK on a listener failed");
    }
}

/// Binds the proxy listener with a listen queue of `backlog`; a clear message when the
/// address is taken.
pub async fn bind(address: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let listen = || {
        let socket = if address.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(address)?;
        socket.listen(backlog)
    };
    listen().map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {address}: {e}")))
}
