//! The embedded demo's two backends: tiny in-process HTTP servers that answer with
//! their colour, so `cutover run` without a config shows a switch happen.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::color::Color;

/// Starts a demo backend for `color` on an ephemeral loopback port; it runs until the
/// runtime stops.
pub async fn spawn_backend(color: Color) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let body = Bytes::from(format!("{color}\n"));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let body = body.clone();
            let service = service_fn(move |_req| {
                let mut resp = Response::new(Full::new(body.clone()));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain"),
                );
                async move { Ok::<_, Infallible>(resp) }
            });
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
