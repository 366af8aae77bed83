//! `cutover ctl`: the admin client. Speaks HTTP/1.1 over the admin Unix socket and
//! renders the answers as tables (or passes the JSON through with `--json`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::admin::{PoolStatus, Status};
use crate::snapshot::Color;

/// Why a `ctl` command failed; `main` prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach cutover at {path}: {source}; is it running? (pass --socket PATH)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin connection failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("refused ({status}): {message}")]
    Refused { status: StatusCode, message: String },
    #[error("unexpected answer from the admin socket: {0}")]
    Decode(String),
}

/// One admin call: method, path and optional JSON body; the answer's JSON on 2xx.
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Bytes, CtlError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| CtlError::Connect {
            path: socket.to_owned(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "cutover")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| CtlError::Decode(e.to_string()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if status.is_success() {
        return Ok(bytes);
    }
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    Err(CtlError::Refused { status, message })
}

/// Decodes a `/status`-shaped answer.
pub fn parse_status(bytes: &[u8]) -> Result<Status, CtlError> {
    serde_json::from_slice(bytes).map_err(|e| CtlError::Decode(e.to_string()))
}

/// The human view of a status: a header line and one row per backend, under 80 columns.
pub fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let previous = s.previous.map_or("-", Color::as_str);
    let _ = writeln!(
        out,
        "live: {}   generation: {}   previous: {}",
        s.live, s.generation, previous
    );
    if let Some(err) = &s.state.error {
        let _ = writeln!(out, "state file problem: {err}");
    }
    let _ = writeln!(
        out,
        "{:<7} {:<9} {:>7} {:>9}  {:<26} {:<6}",
        "COLOUR", "ROLE", "HEALTHY", "IN-FLIGHT", "BACKEND", "STATE"
    );
    for (color, pool) in [(Color::Blue, &s.pools.blue), (Color::Green, &s.pools.green)] {
        render_pool(&mut out, color, pool);
    }
    out
}

fn render_pool(out: &mut String, color: Color, pool: &PoolStatus) {
    let healthy = format!("{}/{}", pool.healthy, pool.total);
    for (i, b) in pool.backends.iter().enumerate() {
        let state = if b.healthy { "up" } else { "down" };
        if i == 0 {
            let _ = writeln!(
                out,
                "{:<7} {:<9} {:>7} {:>9}  {:<26} {:<6}",
                color.as_str(),
                pool.role,
                healthy,
                pool.in_flight,
                b.address,
                state
            );
        } else {
            let _ = writeln!(
                out,
                "{:<7} {:<9} {:>7} {:>9}  {:<26} {:<6}",
                "", "", "", "", b.address, state
            );
        }
    }
}

/// The one-line summary printed after a switch or rollback.
pub fn render_change(s: &Status) -> String {
    match (s.changed, s.previous) {
        (Some(false), _) => format!("{} is already live (generation {})", s.live, s.generation),
        (_, Some(prev)) => format!("{} → {} (generation {})", prev, s.live, s.generation),
        _ => format!("{} is live (generation {})", s.live, s.generation),
    }
}
