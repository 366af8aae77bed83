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
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::ListenConfig;
use crate::connections::{Connections, Watch};
use crate::dispatch::Peer;
use crate::relay;
use crate::rules::Limits;
use crate::settings::{self, Settings};

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

/// Accepts and serves connections until `shutdown` resolves, then returns the watcher
/// of the still-open connections so the caller can wait for them (bounded by its grace).
/// At most `max_connections` are open at once: one more is closed as soon as it is
/// accepted, and counted, so the process keeps the descriptors its health checks and
/// admin socket need.
pub async fn serve(
    listener: TcpListener,
    settings: settings::Current,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) -> Connections {
    let (tx, _) = watch::channel(());
    let stop = CancellationToken::new();
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut pressure = Episode::default();
    let mut full = Episode::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
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
        let current = settings.load_full();
        let Settings {
            proxy,
            builder,
            timeouts,
        } = &*current;
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Closed at once: the client sees its connection end, the process keeps
            // its descriptors.
            drop(stream);
            proxy.tracker.telemetry().connection_refused();
            full.begin(|| {
                tracing::warn!(
                    max_connections,
                    "connection limit reached; closing new connections until some end"
                );
            });
            continue;
        };
        full.end("below the connection limit again");
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(peer = %peer, error = %e, "set TCP_NODELAY failed");
        }
        let conn = relay::serve(
            stream,
            Peer::new(peer, &proxy.policy),
            Arc::clone(proxy),
            Arc::clone(builder),
            *timeouts,
            Watch::new(tx.subscribe(), stop.clone(), slot),
        );
        tokio::spawn(conn.instrument(tracing::debug_span!("conn", peer = %peer)));
    }
    drop(listener);
    Connections::new(tx, stop)
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
