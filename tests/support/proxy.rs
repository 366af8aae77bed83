//! A real proxy on 127.0.0.1:0 with its admin socket in a temporary directory, and
//! requests to that socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use cutover::config::Config;
use cutover::server::Server;

/// A running proxy with its admin socket in a temporary directory.
pub struct Proxy {
    /// The first listener, `[listen]`.
    pub addr: SocketAddr,
    /// Every listener in config order (`[listen]`, then each `[[listen.extra]]`).
    pub addrs: Vec<SocketAddr>,
    /// The TCP metrics endpoint, when `[metrics] listen` was set.
    pub metrics: Option<SocketAddr>,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The config text for a proxy on 127.0.0.1:0 with these pools; `extra` is appended.
pub fn config_text(dir: &Path, blue: &[SocketAddr], green: &[SocketAddr], extra: &str) -> String {
    config_text_with(dir, blue, green, "", extra)
}

/// As [`config_text`], with `green_keys` added to the `[pools.green]` table.
pub fn config_text_with(
    dir: &Path,
    blue: &[SocketAddr],
    green: &[SocketAddr],
    green_keys: &str,
    extra: &str,
) -> String {
    let list = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n\n[admin]\nsocket = \"{}\"\n\n\
         [pools.blue]\nbackends = [{}]\n\n[pools.green]\nbackends = [{}]\n{green_keys}\n\n\
         [routing]\nlive = \"blue\"\n{extra}\n",
        dir.join("admin.sock").display(),
        list(blue),
        list(green),
    )
}

impl Proxy {
    pub async fn start(blue: &[SocketAddr], green: &[SocketAddr], extra: &str) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        Proxy::start_in(dir, blue, green, extra).await
    }

    /// Starts a proxy with `green_keys` in the `[pools.green]` table.
    pub async fn start_with(
        blue: &[SocketAddr],
        green: &[SocketAddr],
        green_keys: &str,
        extra: &str,
    ) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = config_text_with(dir.path(), blue, green, green_keys, extra);
        Proxy::from_text(dir, &text).await
    }

    /// Starts a proxy whose files (socket, and a state file if `extra` names one) live
    /// in `dir`.
    pub async fn start_in(
        dir: tempfile::TempDir,
        blue: &[SocketAddr],
        green: &[SocketAddr],
        extra: &str,
    ) -> Proxy {
        let text = config_text(dir.path(), blue, green, extra);
        Proxy::from_text(dir, &text).await
    }

    pub async fn from_text(dir: tempfile::TempDir, text: &str) -> Proxy {
        let config = Config::parse(text, Path::new("test.toml")).expect("test config is valid");
        Proxy::serve(dir, Server::bind(config).await.expect("proxy binds"))
    }

    /// Writes `text` to `cutover.toml` in `dir` and starts a proxy from that file, with
    /// its watcher running: reloads (file change, `POST /reload`) read it again.
    pub async fn from_file(dir: tempfile::TempDir, text: &str) -> Proxy {
        let path = dir.path().join("cutover.toml");
        std::fs::write(&path, text).expect("write config");
        let config = Config::load(&path).expect("test config is valid");
        let server = Server::bind_file(config, Some(path))
            .await
            .expect("proxy binds");
        Proxy::serve(dir, server)
    }

    /// The config file of a proxy started [`from_file`](Proxy::from_file).
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("cutover.toml")
    }

    fn serve(dir: tempfile::TempDir, server: Server) -> Proxy {
        let addr = server.proxy_addr().expect("proxy addr");
        let addrs = server.listener_addrs();
        let metrics = server.metrics_addr();
        let socket = server.admin_socket().to_owned();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Proxy {
            addr,
            addrs,
            metrics,
            socket,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Hands over the temporary directory (for a restart on the same files).
    pub fn take_dir(&mut self) -> tempfile::TempDir {
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    /// Starts graceful shutdown and waits until the server has stopped.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }

    /// Starts graceful shutdown without waiting; returns the server task.
    pub fn begin_stop(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("server running")
    }

    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        admin(&self.socket, method, path, body).await
    }

    pub async fn switch(&self, to: &str) -> serde_json::Value {
        let (status, body) = self
            .admin(Method::POST, "/switch", &format!("{{\"to\":\"{to}\"}}"))
            .await;
        assert_eq!(status, StatusCode::OK, "switch to {to}: {body}");
        body
    }

    /// Polls `/status` until `cond` holds (up to 10 s); returns that status.
    pub async fn wait_until(
        &self,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.status().await;
            if cond(&status) {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn status(&self) -> serde_json::Value {
        let (status, body) = self.admin(Method::GET, "/status", "").await;
        assert_eq!(status, StatusCode::OK);
        body
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One request on the admin socket; the status and the raw body.
async fn admin_raw(socket: &Path, method: Method, path: &str, body: &str) -> (StatusCode, Bytes) {
    let stream = UnixStream::connect(socket)
        .await
        .expect("connect admin socket");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("admin handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "cutover")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let resp = tx.send_request(req).await.expect("admin answer");
    let status = resp.status();
    (
        status,
        resp.into_body()
            .collect()
            .await
            .expect("admin body")
            .to_bytes(),
    )
}

/// `GET path` on the admin socket; the status and the body as text.
pub async fn admin_text(socket: &Path, path: &str) -> (StatusCode, String) {
    let (status, bytes) = admin_raw(socket, Method::GET, path, "").await;
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The value of the sample whose line starts with `series` (e.g.
/// `cutover_requests_total{color="blue",class="2xx"}`), in Prometheus text.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// One admin request over the Unix socket; the status and the parsed JSON body
/// (panics when the body is not JSON: every admin answer must be).
pub async fn admin(
    socket: &Path,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let (status, bytes) = admin_raw(socket, method, path, body).await;
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "admin body is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, value)
}

/// Rewrites `path` in place (truncate, then write), as `echo … > file` does.
pub fn write_in_place(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .expect("open config");
    file.write_all(text.as_bytes()).expect("write config");
    file.sync_all().expect("sync config");
}

/// Saves `text` as `path` the way editors do: a temp file beside it, renamed over it.
pub fn write_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.swp");
    std::fs::write(&tmp, text).expect("write temp config");
    std::fs::rename(&tmp, path).expect("rename config");
}
