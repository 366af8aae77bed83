//! The client-facing accept loop. Each connection is served in its own task by
//! hyper-util's auto builder (HTTP/1.1, or HTTP/2 with prior knowledge), with every
//! request handed to [`Proxy::forward`]. One bad connection never ends the loop; on
//! shutdown the loop stops accepting and every open connection is asked to finish
//! gracefully (HTTP/1 closes after its current response, HTTP/2 sends GOAWAY).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::config::ListenConfig;
use crate::proxy::{Peer, Proxy};

/// Builds the connection builder once; cloned into nothing, shared by reference.
pub fn connection_builder(config: &ListenConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .writev(false)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Accepts and serves connections until `shutdown` resolves, then returns the watcher
/// of the still-open connections so the caller can wait for them (bounded by its grace).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    shutdown: impl Future<Output = ()>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
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
        let proxy = Arc::clone(&proxy);
        let client = Peer::new(peer);
        let service = service_fn(move |req| proxy.forward(req, &client));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(
            async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(tracing::debug_span!("conn", peer = %peer)),
        );
    }
    drop(listener);
    graceful
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
