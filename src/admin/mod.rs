//! The admin API: HTTP/1.1 + JSON on a Unix socket. It reads the snapshot freely and
//! changes it only through the [`Switchboard`]. Every error is JSON
//! (`{"error": "…"}`) with a 4xx/5xx status, and a refused request changes nothing.

use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;

use crate::color::Color;
use crate::config::Access;
use crate::drain::Tracker;
use crate::error::{AdminError, SwitchError};
use crate::pool::AdminState;
use crate::reload::{ReloadReport, Reloader, Trigger};
use crate::rollout::{RolloutBrief, Rollouts};
use crate::snapshot::{Canary, Snapshot};
use crate::stats::Window;

mod rollout;
use crate::switchboard::{Caller, StateReport, SwitchRequest, Switchboard};

/// What the admin handlers share.
pub struct Admin {
    /// The only way the admin API changes routing; also where it reads the snapshot and
    /// the state file report.
    pub switchboard: Arc<Switchboard>,
    /// The per-colour counts and drains for `/status` and `wait`, and the telemetry
    /// `/metrics` renders.
    pub tracker: Arc<Tracker>,
    /// Who may read and who may change routing (`[admin.read]`, `[admin.control]`);
    /// replaced by a reload.
    pub access: Arc<ArcSwap<Access>>,
    /// Applies the config file again, for `POST /reload`; its last result is on
    /// `/status`.
    pub reloader: Arc<Reloader>,
    /// The staged rollout driver, for `/rollout*`.
    pub rollouts: Arc<Rollouts>,
}

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchBody {
    /// The target colour's name; an unknown one is a 400.
    to: String,
    /// Refuse with 409 unless routing is still at this generation.
    expect_generation: Option<u64>,
    /// Skip the health gate; the switch is logged and counted as forced.
    #[serde(default)]
    force: bool,
    /// Answer with the plan and the status the real switch would get; change nothing.
    #[serde(default)]
    dry_run: bool,
    /// `"drained"`: answer once the old colour has drained or its deadline passed.
    wait: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    /// Refuse with 409 unless routing is still at this generation.
    expect_generation: Option<u64>,
}

/// `GET /status`, also the body of a successful switch or rollback.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    /// The colour that gets traffic now.
    pub live: Color,
    /// The colour a rollback would return to; `None` before the first switch.
    pub previous: Option<Color>,
    /// The routing generation: send it back as `expect_generation` so that a change
    /// made meanwhile is not overwritten.
    pub generation: u64,
    /// Set on switch/rollback: false when the target was already live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    /// Set on a change applied though the state file could not be written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// Both pools: role, counts, recent windows, and backends.
    pub pools: Pools,
    /// What happened to the state file at start-up.
    pub state: StateView,
    /// The last config reload (time, trigger, ok or error, message); `None` before
    /// the first.
    #[serde(default)]
    pub last_reload: Option<ReloadReport>,
    /// The canary split, when one is on.
    #[serde(default)]
    pub canary: Option<CanaryView>,
    /// Requests routed by a canary bucket, a forced rule or a session pin since start.
    #[serde(default)]
    pub routed: Routed,
    /// The active or last rollout in brief; `GET /rollout` has all of it.
    #[serde(default)]
    pub rollout: Option<RolloutBrief>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanaryView {
    /// The colour that gets the share.
    pub color: Color,
    /// The share in percent.
    pub percent: f64,
    /// The share in basis points (what buckets are compared with).
    pub weight: u16,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Routed {
    pub canary: u64,
    pub forced: u64,
    pub pinned: u64,
}

impl From<Canary> for CanaryView {
    fn from(c: Canary) -> CanaryView {
        CanaryView {
            color: c.color,
            percent: f64::from(c.weight) / 100.0,
            weight: c.weight,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Pools {
    /// The blue pool's status; [`Pools::of`] picks one by colour.
    pub blue: PoolStatus,
    /// The green pool's status.
    pub green: PoolStatus,
}

impl Pools {
    pub fn of(&self, color: Color) -> &PoolStatus {
        match color {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PoolStatus {
    /// `live`, `draining` (switched away from, not yet drained) or `idle`.
    pub role: String,
    /// Requests to this pool in flight now: what a drain waits for.
    pub in_flight: usize,
    /// Open upgraded connections (WebSocket, …).
    pub tunnels: usize,
    /// Tunnels closed because a drain deadline passed, since start.
    pub closed_by_drain: u64,
    /// Requests closed because a drain deadline passed, since start.
    pub requests_closed_by_drain: u64,
    /// RFC 3339 times, while draining.
    pub draining_since: Option<String>,
    /// When the drain closes the tunnels still open.
    pub drain_deadline: Option<String>,
    /// Requests/s, error rate and latency over the last 10 s and 60 s.
    pub window_10s: Window,
    /// The same over the last minute (its `seconds` says exactly how long).
    pub window_60s: Window,
    /// Backends getting traffic now: healthy and not ejected.
    pub healthy: usize,
    /// Backends configured in the pool.
    pub total: usize,
    /// One entry per backend, in config order.
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BackendStatus {
    /// The backend's `host:port` as configured.
    pub address: String,
    /// Gets traffic: healthy by checks and not ejected.
    pub healthy: bool,
    /// Out of rotation for a cool-off after consecutive failures.
    pub ejected: bool,
    /// Requests to this backend in flight now.
    pub in_flight: usize,
    /// The operator's state: `ready`, `drain` (no new requests) or `maint` (out, no
    /// health checks).
    #[serde(default)]
    pub state: AdminState,
    /// Passed `rise` checks in a row (always true without checks). Only verified
    /// backends count for the switch gate; one never checked is not verified.
    #[serde(default = "yes")]
    pub verified: bool,
    /// The last failed check, if any.
    pub problem: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StateView {
    /// The state file; `None` when routing is kept in memory only.
    pub file: Option<PathBuf>,
    /// The live colour came from the state file rather than `routing.live`.
    pub restored: bool,
    /// Why an existing state file was ignored at start-up.
    pub error: Option<String>,
    /// False while the routing in effect is not in the state file: a rollback or
    /// forced switch was applied though its write failed (retried every second).
    #[serde(default = "yes")]
    pub persisted: bool,
    /// Why it is not, while it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_persisted: Option<String>,
}

fn yes() -> bool {
    true
}

// === impl Admin ===

impl Admin {
    async fn handle(&self, req: Request<Incoming>, caller: Caller) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        // A future: the body is read only by the endpoints that take one.
        let body = read_body(body);
        self.answer(&parts.method, parts.uri.path(), body, caller)
            .await
    }

    /// Answers one admin request given as its method, path and whole body: what the
    /// socket's handler does once the request has arrived (a body larger than the limit
    /// gets the same 413). Lets the routing and validation run without a connection.
    pub async fn respond(
        &self,
        method: &Method,
        path: &str,
        body: Bytes,
        caller: Caller,
    ) -> Response<Full<Bytes>> {
        let body = std::future::ready(if body.len() > MAX_BODY {
            Err(AdminError::TooLarge(MAX_BODY))
        } else {
            Ok(body)
        });
        self.answer(method, path, body, caller).await
    }

    /// `body` is awaited only by the endpoints that read one.
    async fn answer(
        &self,
        method: &Method,
        path: &str,
        body: impl Future<Output = Result<Bytes, AdminError>>,
        caller: Caller,
    ) -> Response<Full<Bytes>> {
        let result = self.route(method, path, body, caller).await;
        match result {
            Ok(resp) => resp,
            Err(err) => {
                tracing::info!(%method, %path, uid = caller.uid, status = err.status().as_u16(), error = %err, "admin request refused");
                let allow = match &err {
                    AdminError::MethodNotAllowed { allow, .. } => Some(*allow),
                    _ => None,
                };
                let mut body = serde_json::json!({ "error": err.to_string() });
                if let AdminError::Switch(SwitchError::Gate { report, .. }) = &err {
                    body["gate"] = serde_json::to_value(report).unwrap_or_default();
                }
                let mut resp = json(err.status(), &body);
                if let Some(allow) = allow {
                    resp.headers_mut()
                        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
                }
                resp
            }
        }
    }

    async fn route(
        &self,
        method: &Method,
        path: &str,
        body: impl Future<Output = Result<Bytes, AdminError>>,
        caller: Caller,
    ) -> Result<Response<Full<Bytes>>, AdminError> {
        let backend = path
            .strip_prefix("/backends/")
            .and_then(|rest| rest.strip_suffix("/state"))
            .filter(|address| !address.is_empty());
        let allow = match path {
            _ if backend.is_some() => "POST",
            "/status" | "/metrics" | "/history" | "/rollout/report" => "GET",
            "/rollout" => "GET, POST",
            "/switch" | "/rollback" | "/reload" | "/canary" | "/rollout/pause"
            | "/rollout/resume" | "/rollout/abort" | "/rollout/promote" => "POST",
            other => return Err(AdminError::NotFound(other.to_owned())),
        };
        let allowed = allow.split(", ").any(|m| m == method.as_str())
            || (allow.starts_with("GET") && method == Method::HEAD);
        if !allowed {
            return Err(AdminError::MethodNotAllowed {
                method: method.to_string(),
                path: path.to_owned(),
                allow,
            });
        }
        let control = method == Method::POST;
        if !self.access.load().admits(control, caller.uid, caller.gid) {
            let level = if control { "control" } else { "read" };
            tracing::warn!(uid = caller.uid, gid = caller.gid, %path, level, "admin request forbidden");
            return Err(AdminError::Forbidden {
                uid: caller
                    .uid
                    .map_or_else(|| "unknown".to_owned(), |u| u.to_string()),
                level,
            });
        }
        if path.starts_with("/rollout") || path == "/canary" || path == "/history" {
            return self.route_rollout(method, path, body, caller).await;
        }
        if let Some(address) = backend {
            return self.backend_state(address, body.await?, caller).await;
        }
        match path {
            "/status" => Ok(json(StatusCode::OK, &self.status(None))),
            "/metrics" => Ok(self.metrics()),
            "/reload" => {
                tracing::info!(target: "cutover::audit", action = "reload", uid = caller.uid, "config reload requested");
                let report = self.reloader.reload(Trigger::Admin).await?;
                Ok(json(StatusCode::OK, &report))
            }
            "/switch" => {
                let body: SwitchBody = parse_json(body.await?)?.ok_or_else(|| {
                    AdminError::BadRequest(
                        "empty body; send JSON such as {\"to\": \"green\"}".into(),
                    )
                })?;
                let to = body
                    .to
                    .parse::<Color>()
                    .map_err(|e| AdminError::BadRequest(e.to_string()))?;
                let wait = match body.wait.as_deref() {
                    None => false,
                    Some("drained") => true,
                    Some(other) => {
                        return Err(AdminError::BadRequest(format!(
                            "unknown wait {other:?}; the only value is \"drained\""
                        )));
                    }
                };
                let req = SwitchRequest {
                    to,
                    expect_generation: body.expect_generation,
                    force: body.force,
                };
                if body.dry_run {
                    return Ok(self.dry_run(req));
                }
                let change = self.switchboard.switch(req, caller).await?;
                if wait && change.changed {
                    self.tracker.wait_drained(change.from).await;
                }
                Ok(json(StatusCode::OK, &self.status(Some(change.changed))))
            }
            _ => {
                let body: RollbackBody = parse_json(body.await?)?.unwrap_or_default();
                let change = self
                    .switchboard
                    .rollback(body.expect_generation, caller)
                    .await?;
                Ok(json(StatusCode::OK, &self.status(Some(change.changed))))
            }
        }
    }

    /// The answer to a `dry_run` switch: the plan, with the status the real call would get.
    fn dry_run(&self, req: SwitchRequest) -> Response<Full<Bytes>> {
        let (plan, refusal) = self.switchboard.plan(req);
        dry_run_answer(
            serde_json::json!({ "dry_run": true, "plan": plan }),
            refusal,
        )
    }

    pub fn status(&self, changed: Option<bool>) -> Status {
        let snap = self.switchboard.snapshot();
        let report: &StateReport = self.switchboard.report();
        let not_persisted = self.switchboard.unpersisted();
        Status {
            live: snap.live,
            previous: snap.previous,
            generation: snap.generation,
            changed,
            warning: changed.and(not_persisted.clone()),
            pools: Pools {
                blue: self.pool_status(&snap, Color::Blue),
                green: self.pool_status(&snap, Color::Green),
            },
            state: StateView {
                file: report.path.clone(),
                restored: report.restored,
                error: report.error.clone(),
                persisted: not_persisted.is_none(),
                not_persisted,
            },
            last_reload: self.reloader.last(),
            canary: snap.canary.map(CanaryView::from),
            routed: {
                let [canary, forced, pinned] = self.tracker.telemetry().routed_counts();
                Routed {
                    canary,
                    forced,
                    pinned,
                }
            },
            rollout: self.rollouts.brief(),
        }
    }

    fn pool_status(&self, snap: &Snapshot, color: Color) -> PoolStatus {
        let pool = snap.pool(color);
        let drain = self.tracker.view(color);
        let role = if snap.live == color {
            "live"
        } else if drain.draining_since.is_some() {
            "draining"
        } else {
            "idle"
        };
        let rfc3339 = |t: std::time::SystemTime| humantime::format_rfc3339_millis(t).to_string();
        PoolStatus {
            role: role.to_owned(),
            in_flight: drain.in_flight,
            tunnels: drain.tunnels,
            closed_by_drain: drain.closed_by_drain,
            requests_closed_by_drain: drain.requests_closed_by_drain,
            draining_since: drain.draining_since.map(rfc3339),
            drain_deadline: drain.deadline.map(rfc3339),
            window_10s: self.tracker.telemetry().stats.window(color, 10),
            window_60s: self.tracker.telemetry().stats.window(color, 60),
            healthy: pool.healthy_count(),
            total: pool.backends.len(),
            backends: pool
                .backends
                .iter()
                .map(|b| BackendStatus {
                    address: b.address.clone(),
                    healthy: b.is_available(),
                    ejected: b.is_ejected(),
                    in_flight: b.in_flight(),
                    verified: b.is_verified(),
                    state: b.admin_state(),
                    problem: b.problem(),
                })
                .collect(),
        }
    }

    /// `POST /backends/{address}/state {"state": "drain"}`: one backend's operator
    /// state; the answer is the status, with `changed`.
    async fn backend_state(
        &self,
        address: &str,
        body: Bytes,
        caller: Caller,
    ) -> Result<Response<Full<Bytes>>, AdminError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct StateBody {
            state: String,
        }
        let body: StateBody = parse_json(body)?.ok_or_else(|| {
            AdminError::BadRequest(
                "empty body; send JSON such as {\"state\": \"drain\"} (ready, drain or maint)"
                    .into(),
            )
        })?;
        let state = body
            .state
            .parse::<AdminState>()
            .map_err(AdminError::BadRequest)?;
        let (_, before) = self
            .switchboard
            .set_backend_state(address, state, caller)
            .await?;
        Ok(json(StatusCode::OK, &self.status(Some(before != state))))
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let snap = self.switchboard.snapshot();
        let text = self
            .tracker
            .telemetry()
            .render(&snap, self.tracker.counts());
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }
}

/// Serves `GET /metrics` (the same text as on the admin socket) on a TCP listener, for
/// Prometheus. Nothing else is served there.
pub async fn serve_metrics(listener: tokio::net::TcpListener, admin: Arc<Admin>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let admin = Arc::clone(&admin);
        let service = service_fn(move |req: Request<Incoming>| {
            let admin = Arc::clone(&admin);
            async move {
                let resp = if req.uri().path() == "/metrics" && req.method() == Method::GET {
                    admin.metrics()
                } else {
                    json(
                        StatusCode::NOT_FOUND,
                        &serde_json::json!({ "error": "only GET /metrics is served here" }),
                    )
                };
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // At the cap: closed at once, so scrapers cannot pile up.
            continue;
        };
        tokio::spawn(async move {
            let _ = connection_builder()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

/// Admin and metrics connections open at once, at most; more are closed as soon as they
/// are accepted. Each holds at most a request head and a bounded body.
const MAX_ADMIN_CONNECTIONS: usize = 64;
/// How long an admin client may take to send a request head, and sit idle between
/// requests.
const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long an admin client may take to send a request body.
const ADMIN_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// HTTP/1.1 for the admin socket and the metrics listener: a head must come whole
/// within [`ADMIN_HEADER_TIMEOUT`] and fit in hyper's smallest buffer.
fn connection_builder() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT)
        .max_buf_size(8 * 1024);
    builder
}

/// Reads a request body of at most [`MAX_BODY`] bytes within [`ADMIN_BODY_TIMEOUT`],
/// copying each frame into one buffer: memory follows the bytes received, not the
/// number of frames they came in (a body sent a byte at a time costs a byte a byte).
async fn read_body(body: Incoming) -> Result<Bytes, AdminError> {
    let read = async {
        let mut body = body;
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                AdminError::BadRequest(format!("could not read the request body: {e}"))
            })?;
            if let Some(data) = frame.data_ref() {
                if buf.len() + data.len() > MAX_BODY {
                    return Err(AdminError::TooLarge(MAX_BODY));
                }
                buf.extend_from_slice(data);
            }
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(ADMIN_BODY_TIMEOUT, read)
        .await
        .map_err(|_| {
            AdminError::BadRequest(format!(
                "the request body did not arrive within {ADMIN_BODY_TIMEOUT:?}"
            ))
        })?
}

/// The answer to a dry run: `body` with the status the real call would get, and its
/// error when it would be refused.
fn dry_run_answer(
    mut body: serde_json::Value,
    refusal: Option<SwitchError>,
) -> Response<Full<Bytes>> {
    let status = match refusal {
        Some(err) => {
            body["error"] = err.to_string().into();
            AdminError::Switch(err).status()
        }
        None => StatusCode::OK,
    };
    json(status, &body)
}

/// A JSON body; `None` when the body is empty.
fn parse_json<T: serde::de::DeserializeOwned>(bytes: Bytes) -> Result<Option<T>, AdminError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        AdminError::BadRequest(format!(
            "invalid JSON body: {e}; send e.g. {{\"to\": \"green\", \"expect_generation\": 3}}"
        ))
    })
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

// === socket ===

/// Binds the admin socket with `mode`. An existing socket file is replaced only when
/// nothing answers on it (a stale leftover); a live one or a non-socket file is an error.
pub async fn bind(path: &Path, mode: u32, group: Option<u32>) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "admin socket {} is in use by a running process; stop it or choose another admin.socket",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "admin socket path {} exists and is not a socket; remove it or choose another admin.socket",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Bound inside a fresh 0700 directory beside the socket, given its mode there and
    // then renamed into place: it is never reachable with wider permissions, and no
    // process-wide umask changes while other threads create files.
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let private = parent.join(format!(".cutover-{}", std::process::id()));
    let cannot = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot bind admin socket {}: {e}", path.display()),
        )
    };
    if private.exists() {
        // Left by a process with our pid that died mid-bind.
        std::fs::remove_dir_all(&private).map_err(cannot)?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(cannot)?;
    let staged = private.join("s");
    let bound = UnixListener::bind(&staged).and_then(|listener| {
        // No chown when the socket already has the group (the service's own `Group=`),
        // so a unit whose system call filter leaves out @chown works.
        let has = std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(&staged)?);
        if group.is_some_and(|wanted| wanted != has) {
            std::os::unix::fs::chown(&staged, None, group)?;
        }
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_dir_all(&private);
    bound.map_err(cannot)
}

/// Serves admin connections until `shutdown`; returns the open connections' watcher.
pub async fn serve(
    listener: UnixListener,
    admin: Arc<Admin>,
    shutdown: impl Future<Output = ()>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // At the cap: closed at once; the data path is never involved.
            tracing::debug!("admin connection limit reached; closing a new connection");
            continue;
        };
        let cred = stream.peer_cred().ok();
        let caller = Caller {
            uid: cred.map(|c| c.uid()),
            gid: cred.map(|c| c.gid()),
        };
        let admin = Arc::clone(&admin);
        let service = service_fn(move |req| {
            let admin = Arc::clone(&admin);
            async move { Ok::<_, std::convert::Infallible>(admin.handle(req, caller).await) }
        });
        let conn = connection_builder().serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
            drop(slot);
        });
    }
    graceful
}
