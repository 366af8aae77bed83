//! The client-facing accept loop. Each connection is served in its own task: by the
//! [`relay`] while its requests are plain HTTP/1.1, by hyper-util's auto
//! builder (HTTP/1.1, or HTTP/2 with prior knowledge) with every request handed to
//! [`Proxy::forward`] from the first one that is not. One bad connection never ends
//! the loop; on shutdown the loop stops accepting and every open connection is asked to
//! finish gracefully (HTTP/1 closes after its current response, HTTP/2 sends GOAWAY).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::ListenConfig;
use crate::connections::{Connections, Watch};
use crate::dispatch::{Peer, Proxy};
use crate::relay;
use crate::rules::Limits;

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
        // RFC 9113 §6.5.2 counts 32 bytes per field on top of name and value.
        .max_header_list_size(
            u32::try_from(limits.max_request_head + 32 * limits.max_headers).unwrap_or(u32::MAX),
        );
    builder
}

/// Accepts and serves connections until `shutdown` resolves, then returns the watcher
/// of the still-open connections so the caller can wait for them (bounded by its grace).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> Connections {
    let (tx, _) = watch::channel(());
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    accept_error(&e).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(peer = %peer, error = %e, "set TCP_NODELAY failed");
        }
        let conn = relay::serve(
            stream,
            Peer::new(peer, &proxy.policy),
            Arc::clone(&proxy),
            Arc::clone(&builder),
            header_timeout,
            Watch::new(tx.subscribe(), stop.clone()),
        );
        tokio::spawn(conn.instrument(tracing::debug_span!("conn", peer = %peer)));
    }
    drop(listener);
    Connections::new(tx, stop)
}

/// Logs an accept error and waits when retrying at once would spin: out of file
/// descriptors or memory clears only as connections close.
async fn accept_error(e: &io::Error) {
    let resource = matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    );
    if resource {
        tracing::error!(error = %e, "accept failed: out of resources; pausing 100ms");
        tokio::time::sleep(Duration::from_millis(100)).await;
    } else {
        tracing::debug!(error = %e, "accept failed");
    }
}

/// Binds the proxy listener; a clear message when the address is taken.
pub async fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {address}: {e}")))
}
