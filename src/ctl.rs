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
use crate::color::Color;
use crate::health::GateReport;
use crate::reload::{Outcome, ReloadReport};

pub mod rollout;

/// Why a `ctl` command failed; `main` prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{}", connect_text(path, cause))]
    Connect {
        /// The admin socket that could not be reached (`--socket`).
        path: PathBuf,
        /// Why connecting failed: usually nothing listens there, or no permission.
        /// Not a `source`: the message already says it, once.
        cause: std::io::Error,
    },
    #[error("admin connection failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("{message} ({status})")]
    Refused {
        /// The admin API's error status (4xx or 5xx).
        status: StatusCode,
        /// The `error` text of the JSON answer (its API hints given as `ctl` flags), or
        /// the raw body when it has none.
        message: String,
        /// The answer as it came, for `--json`.
        body: Bytes,
    },
    #[error("unexpected answer from the admin socket: {0}")]
    Decode(String),
}

/// Why the admin socket could not be reached, in the terms a `ctl` user can act on.
fn connect_text(path: &Path, cause: &std::io::Error) -> String {
    let at = path.display();
    match cause.kind() {
        std::io::ErrorKind::NotFound => format!(
            "no admin socket at {at}; is cutover running? (pass --socket PATH or set CUTOVER_SOCKET)"
        ),
        std::io::ErrorKind::ConnectionRefused => format!(
            "nothing listens on {at}: cutover is not running (the socket file is left from an              earlier run), or --socket names another file"
        ),
        std::io::ErrorKind::PermissionDenied => {
            let group = socket_group(path)
                .map_or_else(String::new, |g| format!(" (its group is {g}; join it)"));
            format!(
                "permission denied on {at}: run as the user cutover runs as, or as a member                  of the socket's group{group} when [admin] mode lets the group in"
            )
        }
        _ => format!("cannot reach cutover at {at}: {cause}"),
    }
}

/// The name of the group owning `path`, from /etc/group.
fn socket_group(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let gid = std::fs::metadata(path).ok()?.gid();
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?.parse::<u32>().ok()?;
        (id == gid).then(|| name.to_owned())
    })
}

/// The admin API's hints (JSON fields) as the `ctl` flags that set them.
fn as_flags(message: &str) -> String {
    message
        .replace("pass \"force\": true", "pass --force")
        .replace("\"force\": true", "--force")
        .replace("expect_generation", "--expect-generation")
}

/// One admin call: the answer's JSON on 2xx, the server's error message otherwise.
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Bytes, CtlError> {
    let (status, bytes) = call_raw(socket, method, path, body).await?;
    if status.is_success() {
        return Ok(bytes);
    }
    Err(refusal(status, &bytes))
}

/// The error for a non-2xx answer: its JSON `error` text, or the raw body.
pub fn refusal(status: StatusCode, bytes: &[u8]) -> CtlError {
    let message = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(as_flags))
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).trim_end().to_owned());
    CtlError::Refused {
        status,
        message,
        body: Bytes::copy_from_slice(bytes),
    }
}

/// One admin call; the status and body, whatever the status.
pub async fn call_raw(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(StatusCode, Bytes), CtlError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|cause| CtlError::Connect {
            path: socket.to_owned(),
            cause,
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
    Ok((status, bytes))
}

/// Decodes a `/status`-shaped answer.
pub fn parse_status(bytes: &[u8]) -> Result<Status, CtlError> {
    serde_json::from_slice(bytes).map_err(|e| CtlError::Decode(e.to_string()))
}

/// The human view of a status, under 80 columns: a header line, one row per colour
/// (role, backends healthy/total, then the last 10 s: req/s, error %, p50/p99 ms, and
/// in-flight requests and tunnels now), then one row per backend.
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
    if let Some(why) = &s.state.not_persisted {
        let _ = writeln!(out, "NOT PERSISTED: {why}");
    }
    if let Some(c) = &s.canary {
        let _ = writeln!(out, "canary: {} {}%", c.color, c.percent);
    }
    if let Some(r) = &s.rollout {
        let _ = writeln!(out, "{}", rollout::brief_line(r));
    }
    if let Some(r) = &s.last_reload {
        let message = r.message.lines().collect::<Vec<_>>().join(" ");
        let _ = writeln!(
            out,
            "last reload: {} ({}) {}: {message}",
            r.time,
            r.trigger.as_str(),
            if r.result == Outcome::Ok {
                "ok"
            } else {
                "error"
            },
        );
    }
    let _ = writeln!(
        out,
        "{:<6} {:<8} {:>8} {:>8} {:>6} {:>8} {:>8} {:>9} {:>7}",
        "COLOUR", "ROLE", "BACKENDS", "REQ/S", "ERR%", "P50 ms", "P99 ms", "IN-FLIGHT", "TUNNELS"
    );
    for color in Color::ALL {
        let p = s.pools.of(color);
        let w = &p.window_10s;
        // With nothing finished in the window there is no rate or latency to show.
        let measured = |v: f64| {
            if w.requests == 0 {
                "-".to_owned()
            } else {
                format!("{v:.1}")
            }
        };
        let _ = writeln!(
            out,
            "{:<6} {:<8} {:>8} {:>8.1} {:>6} {:>8} {:>8} {:>9} {:>7}",
            color.as_str(),
            p.role,
            format!("{}/{}", p.healthy, p.total),
            w.requests_per_second,
            measured(w.error_rate * 100.0),
            measured(w.p50_ms),
            measured(w.p99_ms),
            p.in_flight,
            p.tunnels
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<6} {:<28} {:<8} {:>9}  PROBLEM",
        "COLOUR", "BACKEND", "STATE", "IN-FLIGHT"
    );
    for color in Color::ALL {
        render_backends(&mut out, color, s.pools.of(color));
    }
    out
}

/// The answer to `POST /reload`: the result, what changed per pool, and the keys that
/// need a restart.
pub fn render_reload(bytes: &[u8]) -> Result<String, CtlError> {
    let report: ReloadReport =
        serde_json::from_slice(bytes).map_err(|e| CtlError::Decode(e.to_string()))?;
    let mut out = format!("reload: {}", report.message);
    for change in &report.pools {
        let _ = write!(out, "\n  {}", change.summary());
    }
    Ok(out)
}

fn render_backends(out: &mut String, color: Color, pool: &PoolStatus) {
    for b in &pool.backends {
        let state = match (b.healthy, b.ejected, b.verified) {
            // The operator's state first: it is why the backend takes no traffic.
            _ if b.state != crate::pool::AdminState::Ready => b.state.as_str(),
            (true, _, true) => "up",
            // Not yet through `rise` passing checks, or never checked: the gate does
            // not count it.
            (true, _, false) => "pending",
            (false, true, _) => "ejected",
            (false, false, _) => "down",
        };
        // The last column: the whole cause, however long (a terminal wraps it).
        let problem = b.problem.as_deref().unwrap_or_default();
        let line = format!(
            "{:<6} {:<28} {:<8} {:>9}  {problem}",
            color.as_str(),
            b.address,
            state,
            b.in_flight
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// `ctl top`: the status table redrawn every second in place until interrupted; with
/// `json`, one compact status object per line.
pub async fn top(socket: &Path, json: bool) -> Result<(), CtlError> {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stdout().is_terminal();
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        every.tick().await;
        let bytes = call(socket, Method::GET, "/status", None).await?;
        let frame = if json {
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| CtlError::Decode(e.to_string()))?;
            format!("{v}\n")
        } else if terminal {
            // Home the cursor and clear the screen, then draw.
            format!("\x1b[H\x1b[2J{}", render_status(&parse_status(&bytes)?))
        } else {
            // To a file or a pipe: one table after another, a blank line between.
            format!("{}\n", render_status(&parse_status(&bytes)?))
        };
        let mut stdout = std::io::stdout().lock();
        if stdout
            .write_all(frame.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // The reader went away (`ctl top | head`): that is the end, not an error.
            return Ok(());
        }
    }
}

/// The one-line summary printed after a switch or rollback.
pub fn render_change(s: &Status) -> String {
    let line = match (s.changed, s.previous) {
        (Some(false), _) => format!("{} is already live (generation {})", s.live, s.generation),
        (_, Some(prev)) => format!("{} → {} (generation {})", prev, s.live, s.generation),
        _ => format!("{} is live (generation {})", s.live, s.generation),
    };
    match &s.warning {
        Some(w) => format!("{line}\nWARNING: NOT PERSISTED: {w}"),
        None => line,
    }
}

/// Polls `/status` and prints a line whenever `old`'s drain progress changes, until it
/// is no longer draining. With `json`, one JSON object per line.
pub async fn watch_drain(socket: &Path, old: Color, json: bool) -> Result<(), CtlError> {
    let mut last = None;
    loop {
        let status = parse_status(&call(socket, Method::GET, "/status", None).await?)?;
        let pool = status.pools.of(old);
        let now = (pool.role.clone(), pool.in_flight, pool.tunnels);
        if last.as_ref() != Some(&now) {
            if json {
                let line = serde_json::json!({
                    "color": old, "role": pool.role, "in_flight": pool.in_flight, "tunnels": pool.tunnels,
                });
                println!("{line}");
            } else if pool.role == "draining" {
                let deadline = pool.drain_deadline.as_deref().unwrap_or("-");
                println!(
                    "draining {old}: {} in flight, {} tunnels (deadline {deadline})",
                    pool.in_flight, pool.tunnels
                );
            }
            last = Some(now);
        }
        if pool.role != "draining" {
            if !json {
                println!(
                    "{old} drained: {} in flight, {} tunnels, {} closed at the deadline",
                    pool.in_flight, pool.tunnels, pool.closed_by_drain
                );
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The human view of a dry-run answer.
pub fn render_plan(code: StatusCode, bytes: &[u8]) -> Result<String, CtlError> {
    let decode = |e: serde_json::Error| CtlError::Decode(e.to_string());
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(decode)?;
    let plan = &v["plan"];
    let gate: GateReport = serde_json::from_value(plan["gate"].clone()).map_err(decode)?;
    let (from, to) = (
        plan["from"].as_str().unwrap_or("?"),
        plan["to"].as_str().unwrap_or("?"),
    );
    let mut out = String::new();
    if code.is_success() && plan["changed"] == false {
        // What the real call would answer, so a dry run never promises a drain.
        let _ = writeln!(
            out,
            "dry run: {to} is already live (generation {}); the switch would change nothing",
            plan["generation"]
        );
        return Ok(out);
    }
    let verdict = if code.is_success() {
        "would be accepted".to_owned()
    } else {
        format!("would be REFUSED ({code})")
    };
    let _ = writeln!(out, "dry run: {from} → {to} {verdict}");
    if let Some(err) = v["error"].as_str() {
        let _ = writeln!(out, "  {err}");
    }
    let _ = writeln!(
        out,
        "gate: {} of {} required backends ready",
        gate.ready, gate.required
    );
    for b in &gate.backends {
        let state = b
            .reason
            .as_deref()
            .map_or("ready".to_owned(), |r| format!("not ready: {r}"));
        let _ = writeln!(out, "  {:<26} {state}", b.address);
    }
    let _ = writeln!(
        out,
        "would drain from {from}: {} requests in flight, {} tunnels",
        plan["drain_in_flight"], plan["drain_tunnels"]
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_row_keeps_a_multibyte_problem_whole() {
        // "é" is two bytes: byte 20 falls inside one of them.
        let problem = "connect failed: éééééé — refusé";
        let pool: PoolStatus = serde_json::from_value(serde_json::json!({
            "role": "idle", "in_flight": 0, "tunnels": 0, "closed_by_drain": 0,
            "requests_closed_by_drain": 0, "draining_since": null, "drain_deadline": null,
            "window_10s": crate::stats::Window::default(),
            "window_60s": crate::stats::Window::default(),
            "healthy": 0, "total": 1,
            "backends": [{"address": "127.0.0.1:9", "healthy": false, "ejected": false,
                          "in_flight": 0, "problem": problem}],
        }))
        .expect("a pool status");
        let mut out = String::new();
        render_backends(&mut out, Color::Green, &pool);
        assert!(out.trim_end().ends_with(problem), "{out}");
        assert!(out.contains(" down "), "{out}");
    }
}
