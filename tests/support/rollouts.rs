//! Rollout test helpers: load through the proxy, and waits on `GET /rollout`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use super::{Conn, Proxy};

/// Clients sending GET / in a loop on kept-alive connections (no cookie, so each
/// request draws a new bucket), keeping every answer's colour and status.
pub struct Load {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    seen: Arc<Mutex<Seen>>,
}

#[derive(Default)]
pub struct Seen {
    /// Answers by body: `blue`, `green`, or anything else.
    pub blue: u64,
    pub green: u64,
    /// Answers other than 200 `blue` / 200 `green`: status, body.
    pub bad: Vec<(StatusCode, String)>,
    /// When the first answer other than a 200 came.
    pub first_bad: Option<Instant>,
}

impl Load {
    pub fn start(addr: std::net::SocketAddr, clients: usize) -> Load {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let tasks = (0..clients)
            .map(|_| {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut conn = Conn::open(addr).await;
                    loop {
                        let a = conn.get("/").await;
                        let mut s = seen.lock().expect("seen");
                        match (a.status, a.text()) {
                            (StatusCode::OK, "blue") => s.blue += 1,
                            (StatusCode::OK, "green") => s.green += 1,
                            (status, text) => {
                                s.first_bad.get_or_insert_with(Instant::now);
                                s.bad.push((status, text.to_owned()));
                            }
                        }
                    }
                })
            })
            .collect();
        Load { tasks, seen }
    }

    /// Stops the clients; what they saw.
    pub fn stop(self) -> Seen {
        std::mem::take(&mut *self.seen.lock().expect("seen"))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts a rollout with `body`; asserts it was accepted.
pub async fn start_rollout(proxy: &Proxy, body: &str) -> serde_json::Value {
    let (status, answer) = proxy.admin(Method::POST, "/rollout", body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

/// Polls `GET /rollout` (every 10 ms, up to `within`) until `cond` holds.
pub async fn wait_rollout(
    proxy: &Proxy,
    what: &str,
    within: Duration,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, r) = proxy.admin(Method::GET, "/rollout", "").await;
        if cond(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {r}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The actions in `/history`, oldest first.
pub async fn history_actions(proxy: &Proxy) -> Vec<String> {
    let (_, history) = proxy.admin(Method::GET, "/history", "").await;
    history["events"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|e| e["action"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
