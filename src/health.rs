//! Active health checks and the cutover gate.
//!
//! Each backend of a pool with a `[pools.X.health]` table gets a task that sends
//! `GET path` on a fresh connection every `interval` (over TLS, verified as requests
//! are, for an `https://` backend). A backend goes down after `fall`
//! consecutive failures (at once if its very first check fails, so a backend that is
//! down at start never gets traffic) and comes back after `rise` consecutive successes.
//! State lives in the shared [`Backend`], so swaps never reset it.
//!
//! The gate: a switch to a pool needs `min_healthy` (default: all) backends that are
//! healthy, verified by `rise` checks, not ejected, and healthy for at least `warmup`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};

use crate::color::Color;
use crate::config::HealthConfig;
use crate::pool::{Backend, Pool};
use crate::upstream::UpstreamError;

/// The gate's verdict on one pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateReport {
    /// `ready >= required`: a switch to the pool may go ahead without `force`.
    pub passed: bool,
    /// Backends that count (healthy, verified, warm).
    pub ready: usize,
    /// Backends needed.
    pub required: usize,
    /// Each backend's verdict in pool order, so a refusal names the ones that are not
    /// ready.
    pub backends: Vec<GateBackend>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateBackend {
    /// The backend's `host:port` as configured.
    pub address: String,
    /// It counts toward `required`: healthy, verified by `rise` checks, not ejected,
    /// and warm.
    pub ready: bool,
    /// Why it does not count, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The first probe of the checkers one [`Checkers::sync`] started: start-up is complete
/// when each backend has been checked once, so the first traffic goes only to backends
/// known to be up.
#[derive(Clone)]
pub struct FirstRound {
    /// A permit per checker that has finished its first probe.
    done: Arc<Semaphore>,
    /// Checkers started; `wait` needs this many permits.
    checkers: u32,
    /// The longest health timeout: no first probe takes longer (each is bounded by it).
    bound: Duration,
}

// === impl FirstRound ===

impl FirstRound {
    /// Resolves when every checker has probed once, or after the longest health
    /// timeout (and a second for scheduling) has passed; at once without checkers.
    pub async fn wait(self) {
        if self.checkers == 0 {
            return;
        }
        let all = self.done.acquire_many(self.checkers);
        if tokio::time::timeout(self.bound + Duration::from_secs(1), all)
            .await
            .is_err()
        {
            tracing::warn!(
                checkers = self.checkers,
                "the first health round did not finish in time"
            );
        }
    }
}

/// The running checkers, one per backend of each pool that has health checks, so a
/// reload can start them for new backends, stop them for removed ones and restart them
/// when a pool's `[health]` changes. A backend's state is in the shared [`Backend`], so
/// a restarted checker keeps it.
#[derive(Default)]
pub struct Checkers {
    /// The checker tasks; aborted on [`shutdown`](Checkers::shutdown).
    tasks: JoinSet<()>,
    /// Each running checker by (pool, address), with the settings it runs with: a
    /// backend whose pool keeps the same settings keeps its checker.
    running: HashMap<(Color, String), (AbortHandle, HealthConfig)>,
}

// === impl Checkers ===

impl Checkers {
    /// Makes the running checkers match `pools`: stops those of backends that are gone
    /// (or whose pool no longer has checks), restarts those whose settings changed,
    /// starts those of new backends. The returned [`FirstRound`] resolves when each
    /// checker started here has probed once.
    pub fn sync(&mut self, pools: &[Arc<Pool>; 2]) -> FirstRound {
        let mut wanted = HashMap::new();
        for color in Color::ALL {
            let pool = &pools[color.index()];
            let Some(config) = &pool.config.health else {
                continue;
            };
            for backend in &pool.backends {
                wanted.insert((color, backend.address.clone()), (backend, config));
            }
        }
        self.running.retain(|key, (task, config)| {
            let keep = wanted.get(key).is_some_and(|(_, c)| *c == config);
            if !keep {
                task.abort();
            }
            keep
        });
        let done = Arc::new(Semaphore::new(0));
        let (mut checkers, mut bound) = (0u32, Duration::ZERO);
        for (key, (backend, config)) in wanted {
            if !self.running.contains_key(&key) {
                let first = Arc::clone(&done);
                let task = self
                    .tasks
                    .spawn(check_loop(Arc::clone(backend), config.clone(), first));
                self.running.insert(key, (task, config.clone()));
                checkers += 1;
                bound = bound.max(config.timeout);
            }
        }
        // Reap the aborted ones so the set does not grow with every reload.
        while self.tasks.try_join_next().is_some() {}
        FirstRound {
            done,
            checkers,
            bound,
        }
    }

    /// Stops every checker.
    pub async fn shutdown(&mut self) {
        self.running.clear();
        self.tasks.shutdown().await;
    }
}

async fn check_loop(backend: Arc<Backend>, config: HealthConfig, first_round: Arc<Semaphore>) {
    let mut interval = tokio::time::interval(config.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut successes, mut failures, mut first) = (0u32, 0u32, true);
    loop {
        interval.tick().await;
        if backend.admin_state() == crate::pool::AdminState::Maint {
            // In maintenance: no checks; counting starts again when it leaves.
            (successes, failures) = (0, 0);
            if first {
                first_round.add_permits(1);
                first = false;
            }
            continue;
        }
        match probe(&backend, &config).await {
            Ok(()) => {
                successes += 1;
                failures = 0;
                if successes >= config.rise && backend.healthy_for().is_none() {
                    backend.set_health(true, true, None);
                    tracing::info!(backend = %backend.address, "health: up");
                }
            }
            Err(reason) => {
                failures += 1;
                successes = 0;
                if backend.is_healthy() && (failures >= config.fall || first) {
                    tracing::warn!(backend = %backend.address, %reason, "health: down");
                    backend.set_health(false, false, Some(reason));
                } else {
                    tracing::debug!(backend = %backend.address, %reason, "health check failed");
                    backend.note_problem(reason);
                }
            }
        }
        if first {
            // Counted once the first verdict is applied.
            first_round.add_permits(1);
        }
        first = false;
    }
}

/// One check: GET on a fresh connection within `timeout`. `Err` says why in a few words.
async fn probe(backend: &Backend, config: &HealthConfig) -> Result<(), String> {
    let attempt = async {
        // The same connect as requests get: TLS (verified) for an https:// backend.
        let stream = crate::upstream::connect(backend, config.timeout)
            .await
            .map_err(|e| match e {
                UpstreamError::Connect(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    "refused".to_owned()
                }
                UpstreamError::Connect(e) => format!("connect failed: {e}"),
                e => e.to_string(),
            })?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake failed: {e}"))?;
        tokio::spawn(conn);
        let req = Request::get(config.path.as_str())
            .header(header::HOST, backend.authority.as_str())
            .header(header::USER_AGENT, "cutover-health")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let code = resp.status().as_u16();
        let (lo, hi) = config.expect_status;
        if (lo..=hi).contains(&code) {
            Ok(())
        } else {
            Err(format!("status {code}"))
        }
    };
    match tokio::time::timeout(config.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("timeout after {:?}", config.timeout)),
    }
}

/// The gate for a switch to `pool`.
pub fn gate(pool: &Pool) -> GateReport {
    let warmup = pool.config.warmup;
    let backends: Vec<GateBackend> = pool
        .backends
        .iter()
        .map(|b| {
            let reason = not_ready_reason(b, warmup);
            GateBackend {
                address: b.address.clone(),
                ready: reason.is_none(),
                reason,
            }
        })
        .collect();
    let ready = backends.iter().filter(|b| b.ready).count();
    let required = pool.config.min_healthy.unwrap_or(pool.backends.len());
    GateReport {
        passed: ready >= required,
        ready,
        required,
        backends,
    }
}

fn not_ready_reason(b: &Backend, warmup: Duration) -> Option<String> {
    let state = b.admin_state();
    if state != crate::pool::AdminState::Ready {
        return Some(format!("set to {} by an operator", state.as_str()));
    }
    if b.is_ejected() {
        return Some("ejected after consecutive failures".to_owned());
    }
    match b.healthy_for() {
        None => Some(b.problem().unwrap_or_else(|| "unhealthy".to_owned())),
        Some(up) if up < warmup => Some(format!(
            "not yet warm (healthy for {:.1}s of {:?})",
            up.as_secs_f64(),
            warmup
        )),
        Some(_) => None,
    }
}

impl GateReport {
    /// One line naming each backend that fails and why.
    pub fn summary(&self) -> String {
        let failing: Vec<String> = self
            .backends
            .iter()
            .filter_map(|b| b.reason.as_ref().map(|r| format!("{} ({r})", b.address)))
            .collect();
        format!(
            "{} of {} required backends ready; not ready: {}",
            self.ready,
            self.required,
            failing.join(", ")
        )
    }
}
