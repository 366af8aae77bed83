//! Backends and pools. A [`Backend`] is shared (`Arc`) by every snapshot that names it,
//! so its atomics (health, ejection, in-flight) survive swaps; a [`Pool`] picks one per
//! request without a lock.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::Authority;

use crate::config::{EjectionConfig, PoolConfig};
use crate::idle::IdleConns;
use crate::log_limit::LogLimit;
use crate::upstream_tls::{BackendTls, TlsConfigError};

/// One upstream server.
#[derive(Debug)]
pub struct Backend {
    /// `host:port` as configured (`https://host:port` for a TLS backend); used in logs
    /// and status, and what a rebuilt pool matches backends by.
    pub address: String,
    /// `host:port`, pre-parsed: what is connected to, and the upstream URI's authority
    /// without parsing.
    pub authority: Authority,
    /// How the connection is secured, for an `https://` backend; `None` is plain TCP.
    /// A rebuilt pool whose TLS settings changed gets new backends, so this never
    /// changes under a backend.
    pub tls: Option<BackendTls>,
    /// Requests sent to this backend whose response has not finished streaming.
    in_flight: AtomicUsize,
    /// Whether active health checks let traffic through; true until a check fails.
    healthy: AtomicBool,
    /// True once `rise` consecutive checks passed (or when there are no checks): only
    /// verified backends count for the cutover gate.
    verified: AtomicBool,
    /// When the backend last became healthy, as [`epoch_ms`] time; for `warmup`.
    healthy_since_ms: AtomicU64,
    /// Why the last check failed ("refused", "timeout", "status 500"); for the 409 body.
    last_problem: Mutex<Option<String>>,
    /// Consecutive connect failures / 5xx seen by the proxy, for passive ejection.
    failures: AtomicU32,
    /// Ejected until this [`epoch_ms`] time; 0 = not ejected.
    ejected_until_ms: AtomicU64,
    /// How many times this backend has been ejected (cool-off grows with it).
    ejections: AtomicU32,
    /// The pool-wide ejection count and policy (shared by the pool's backends).
    ejection: Arc<EjectionState>,
    /// Keep-alive connections to this backend waiting for a request.
    pub idle: IdleConns,
    /// Finished requests by status class, errors and time, for the per-backend
    /// metrics (read at scrape).
    pub tally: BackendTally,
    /// The operator's [`AdminState`], as its `u8`: only `Ready` gets new requests.
    admin_state: AtomicU8,
    /// The pool has active health checks.
    probed: bool,
}

/// What an operator set a backend to (`POST /backends/{address}/state`), as in
/// HAProxy's runtime API: `ready` takes traffic as its health allows; `drain` takes
/// no new requests while those in flight finish; `maint` is out and its health checks
/// stop. Persisted with the routing state.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    #[default]
    Ready,
    Drain,
    Maint,
}

impl AdminState {
    pub const ALL: [AdminState; 3] = [AdminState::Ready, AdminState::Drain, AdminState::Maint];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    fn from_u8(v: u8) -> AdminState {
        match v {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }
}

impl std::str::FromStr for AdminState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AdminState::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown backend state {s:?}; use ready, drain or maint"))
    }
}

/// A backend's finished requests, as HAProxy's per-server stats count them: a few
/// relaxed atomic adds per request, on the backend's own counters.
#[derive(Debug, Default)]
pub struct BackendTally {
    /// By status class 1xx to 5xx.
    pub requests: [AtomicU64; 5],
    /// 5xx answers, and answers the backend broke off after their head.
    pub errors: AtomicU64,
    /// The requests' time from routing to the end of the response, in microseconds.
    pub duration_us: AtomicU64,
}

impl BackendTally {
    #[inline]
    pub fn finish(&self, status: u16, broken: bool, elapsed: Duration) {
        if let Some(class) = (status / 100).checked_sub(1).filter(|c| *c < 5) {
            self.requests[usize::from(class)].fetch_add(1, Ordering::Relaxed);
        }
        if status >= 500 || broken {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.duration_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// Pool-wide ejection bookkeeping.
#[derive(Debug)]
pub struct EjectionState {
    /// The pool's `[ejection]` settings: the failure run that ejects, the base
    /// cool-off, and the cap on how much of the pool may be out.
    policy: EjectionConfig,
    /// Backends of the pool ejected right now.
    ejected: AtomicUsize,
    /// The pool's size, for the `max_percent` cap.
    size: usize,
}

/// The backends of one colour.
#[derive(Debug)]
pub struct Pool {
    /// In config order; `pick` rotates over them. Each is an `Arc`, so a pool rebuilt
    /// with the same address keeps that backend's health and counts.
    pub backends: Vec<Arc<Backend>>,
    /// Round-robin cursor; relaxed, a lost increment only skews the rotation.
    cursor: AtomicUsize,
    /// The gate and probe settings this pool was built with.
    pub config: PoolConfig,
}

/// Why a pool could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("{0}")]
    Address(#[from] http::uri::InvalidUri),
    #[error("{0}")]
    Tls(#[from] TlsConfigError),
}

/// Held while a request is in flight to a backend; decrements on drop.
#[derive(Debug)]
pub struct BackendGuard(Arc<Backend>);

/// Milliseconds since the first call: a cheap monotonic clock for atomics.
pub fn epoch_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

// === impl Backend ===

impl Backend {
    /// `address` must be a validated `host:port` or `https://host:port` (see
    /// `config`).
    fn new(
        address: &str,
        ejection: Arc<EjectionState>,
        config: &PoolConfig,
    ) -> Result<Backend, PoolError> {
        let probed = config.health.is_some();
        let authority: Authority = address
            .strip_prefix("https://")
            .unwrap_or(address)
            .parse()?;
        Ok(Backend {
            address: address.to_owned(),
            tls: backend_tls(address, &authority, config)?,
            authority,
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            verified: AtomicBool::new(!probed),
            healthy_since_ms: AtomicU64::new(epoch_ms()),
            last_problem: Mutex::new(probed.then(|| "not checked yet".to_owned())),
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            ejection,
            idle: IdleConns::default(),
            tally: BackendTally::default(),
            admin_state: AtomicU8::new(0),
            probed,
        })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Healthy by active checks (ejection aside).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Passed `rise` checks in a row (true without checks).
    pub fn is_verified(&self) -> bool {
        self.verified.load(Ordering::Relaxed)
    }

    /// Gets new requests: ready by the operator, healthy and not ejected. Reads the
    /// clock only while ejected.
    #[inline]
    pub fn is_available(&self) -> bool {
        self.admin_state.load(Ordering::Relaxed) == 0 && self.is_healthy() && !self.is_ejected()
    }

    pub fn admin_state(&self) -> AdminState {
        AdminState::from_u8(self.admin_state.load(Ordering::Relaxed))
    }

    /// Sets the operator's state; returns the one before. Out of `maint`, a backend
    /// with health checks must pass `rise` of them again before it gets traffic.
    pub fn set_admin_state(&self, state: AdminState) -> AdminState {
        let before = AdminState::from_u8(self.admin_state.swap(state as u8, Ordering::Relaxed));
        if before == AdminState::Maint && state != AdminState::Maint && self.probed {
            self.set_health(
                false,
                false,
                Some("not checked yet (back from maint)".to_owned()),
            );
        }
        before
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if epoch_ms() < until {
            return true;
        }
        // Cool-off over: the one thread that clears it gives the slot back.
        if self
            .ejected_until_ms
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.failures.store(0, Ordering::Relaxed);
            self.ejection.ejected.fetch_sub(1, Ordering::AcqRel);
            tracing::info!(backend = %self.address, "ejection over; backend back in rotation");
        }
        false
    }

    /// How long the backend has been healthy and verified; `None` when it is not.
    pub fn healthy_for(&self) -> Option<Duration> {
        (self.is_healthy() && self.verified.load(Ordering::Relaxed)).then(|| {
            let since = self.healthy_since_ms.load(Ordering::Relaxed);
            Duration::from_millis(epoch_ms().saturating_sub(since))
        })
    }

    /// The last check failure, if the backend is not verified healthy.
    pub fn problem(&self) -> Option<String> {
        self.last_problem.lock().map(|p| p.clone()).unwrap_or(None)
    }

    /// Applies a health state change decided by the checker.
    pub fn set_health(&self, healthy: bool, verified: bool, problem: Option<String>) {
        if healthy && !self.is_healthy() || verified && !self.verified.load(Ordering::Relaxed) {
            self.healthy_since_ms.store(epoch_ms(), Ordering::Relaxed);
        }
        self.healthy.store(healthy, Ordering::Relaxed);
        self.verified.store(verified, Ordering::Relaxed);
        if let Ok(mut p) = self.last_problem.lock() {
            *p = problem;
        }
    }

    /// Records a failed check that did not change the state (still within `fall`).
    pub fn note_problem(&self, problem: String) {
        if let Ok(mut p) = self.last_problem.lock() {
            *p = Some(problem);
        }
    }

    /// Records the outcome of a proxied request for passive ejection. Cheap on success.
    #[inline]
    pub fn record(&self, ok: bool) {
        if ok {
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let threshold = self.ejection.policy.consecutive_failures;
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold > 0 && n == threshold {
            self.try_eject();
        }
    }

    fn try_eject(&self) {
        let state = &self.ejection;
        let max = state.size * state.policy.max_percent as usize / 100;
        let reserved = state
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if reserved.is_err() {
            static CAPPED: LogLimit = LogLimit::new();
            if let Some(suppressed) = CAPPED.allow() {
                tracing::warn!(backend = %self.address, max, suppressed, "would eject, but the pool's ejection cap is reached");
            }
            return;
        }
        let times = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let cool_off = state.policy.base_time * times.min(10);
        self.ejected_until_ms
            .store(epoch_ms() + cool_off.as_millis() as u64, Ordering::Relaxed);
        tracing::warn!(backend = %self.address, ?cool_off, times, "ejected after consecutive failures");
    }

    /// How many times this backend has been ejected since start.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Counts a request against this backend until the guard drops.
    pub fn track(self: &Arc<Self>) -> BackendGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        BackendGuard(Arc::clone(self))
    }
}

impl Drop for BackendGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl BackendGuard {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

// === impl Pool ===

impl Pool {
    /// Builds a pool, reusing a backend from `existing` where the address (and, for an
    /// https one, the pool's TLS settings) match so its state carries over.
    pub fn build(config: &PoolConfig, existing: &[Arc<Backend>]) -> Result<Pool, PoolError> {
        let ejection = Arc::new(EjectionState {
            policy: config.ejection.clone(),
            ejected: AtomicUsize::new(0),
            size: config.backends.len(),
        });
        let backends = config
            .backends
            .iter()
            .map(|addr| {
                let same = |b: &&Arc<Backend>| &b.address == addr && same_tls(b, config);
                match existing.iter().find(same) {
                    Some(b) => Ok(Arc::clone(b)),
                    None => Backend::new(addr, Arc::clone(&ejection), config).map(Arc::new),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pool {
            backends,
            cursor: AtomicUsize::new(0),
            config: config.clone(),
        })
    }

    /// As [`build`](Pool::build), for a reload: a backend new to a pool with health
    /// checks starts out of rotation ("not checked yet") and gets traffic only once
    /// `rise` checks have passed. (At start-up backends start in rotation so the proxy
    /// serves at once; the first failed check takes one out.)
    pub fn rebuild(config: &PoolConfig, existing: &[Arc<Backend>]) -> Result<Pool, PoolError> {
        let pool = Pool::build(config, existing)?;
        if config.health.is_some() {
            let new = |b: &&Arc<Backend>| !existing.iter().any(|e| Arc::ptr_eq(e, b));
            for backend in pool.backends.iter().filter(new) {
                backend.set_health(false, false, Some("not checked yet".to_owned()));
            }
        }
        Ok(pool)
    }

    /// The next available backend in round-robin order, or `None` when none is.
    /// Lock-free and allocation-free.
    #[inline]
    pub fn pick(&self) -> Option<&Arc<Backend>> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.backends[(start.wrapping_add(i)) % n])
            .find(|b| b.is_available())
    }

    /// A healthy backend other than `not`, for a second attempt after `not` refused a
    /// connection.
    pub fn pick_other(&self, not: &Backend) -> Option<&Arc<Backend>> {
        let n = self.backends.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.backends[(start.wrapping_add(i)) % n])
            .find(|b| !std::ptr::eq(b.as_ref(), not) && b.is_available())
    }

    pub fn healthy_count(&self) -> usize {
        self.backends.iter().filter(|b| b.is_available()).count()
    }
}

/// Whether `b` was built with the TLS settings `config` has for it (none for a plain
/// backend).
fn same_tls(b: &Backend, config: &PoolConfig) -> bool {
    match (&b.tls, &config.tls) {
        (None, _) => true,
        (Some(tls), Some(client)) => tls.settings == client.settings,
        (Some(_), None) => false,
    }
}

/// How an `https://` backend is reached with its pool's TLS settings; `None` for a
/// plain one.
fn backend_tls(
    address: &str,
    authority: &Authority,
    config: &PoolConfig,
) -> Result<Option<BackendTls>, TlsConfigError> {
    if !address.starts_with("https://") {
        return Ok(None);
    }
    match &config.tls {
        Some(client) => client.for_host(authority.host()).map(Some),
        // Validation builds the settings for every pool with an https backend.
        None => Err(TlsConfigError::NoSettings(address.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(addrs: &[&str], ejection: EjectionConfig) -> Pool {
        let config = PoolConfig {
            backends: addrs.iter().map(|s| s.to_string()).collect(),
            ejection,
            ..PoolConfig::default()
        };
        Pool::build(&config, &[]).expect("valid addresses")
    }

    #[test]
    fn pick_rotates_and_skips_unhealthy_backends() {
        let p = pool(
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
            EjectionConfig::default(),
        );
        p.backends[1].set_health(false, false, Some("refused".into()));
        let picked: Vec<&str> = (0..4)
            .map(|_| p.pick().expect("healthy").address.as_str())
            .collect();
        assert!(!picked.contains(&"127.0.0.1:2"));
        assert!(picked.contains(&"127.0.0.1:1") && picked.contains(&"127.0.0.1:3"));
        for b in &p.backends {
            b.set_health(false, false, None);
        }
        assert!(p.pick().is_none());
    }

    #[test]
    fn consecutive_failures_eject_but_never_more_than_the_cap() {
        let policy = EjectionConfig {
            consecutive_failures: 3,
            base_time: Duration::from_secs(60),
            max_percent: 50,
        };
        let p = pool(&["127.0.0.1:1", "127.0.0.1:2"], policy);
        for b in &p.backends {
            b.record(false);
            b.record(false);
            b.record(true); // a success resets the run
            for _ in 0..3 {
                b.record(false);
            }
        }
        // Both failed three times in a row, but half of a pool of two is one backend.
        assert!(p.backends[0].is_ejected());
        assert!(!p.backends[1].is_ejected());
        assert_eq!(p.healthy_count(), 1);
    }

    #[test]
    fn a_rebuilt_pool_keeps_the_state_of_known_backends() {
        let old = pool(&["127.0.0.1:1"], EjectionConfig::default());
        let _guard = old.backends[0].track();
        let new = Pool::build(
            &PoolConfig {
                backends: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
                ..PoolConfig::default()
            },
            &old.backends,
        )
        .expect("valid");
        assert!(Arc::ptr_eq(&old.backends[0], &new.backends[0]));
        assert_eq!(new.backends[0].in_flight(), 1);
    }

    fn tls_client(ca: &str) -> crate::upstream_tls::TlsClient {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        crate::upstream_tls::TlsClient {
            settings: crate::upstream_tls::TlsSettings {
                ca: Some(ca.into()),
                ..Default::default()
            },
            config: Arc::new(config),
            server_name: None,
        }
    }

    #[test]
    fn a_rebuilt_pool_keeps_an_https_backend_only_while_its_tls_settings_stay() {
        let with = |ca: &str| PoolConfig {
            backends: vec!["https://127.0.0.1:1".into(), "127.0.0.1:2".into()],
            tls: Some(tls_client(ca)),
            ..PoolConfig::default()
        };
        let old = Pool::build(&with("/a.pem"), &[]).expect("valid");
        let tls = old.backends[0].tls.as_ref().expect("https backend has TLS");
        assert_eq!(
            tls.name,
            rustls::pki_types::ServerName::try_from("127.0.0.1").expect("ip")
        );
        assert_eq!(old.backends[0].authority.as_str(), "127.0.0.1:1");
        assert!(old.backends[1].tls.is_none());

        let same = Pool::build(&with("/a.pem"), &old.backends).expect("valid");
        assert!(Arc::ptr_eq(&old.backends[0], &same.backends[0]));
        let changed = Pool::build(&with("/b.pem"), &old.backends).expect("valid");
        assert!(!Arc::ptr_eq(&old.backends[0], &changed.backends[0]));
        // The plain backend is not touched by TLS settings.
        assert!(Arc::ptr_eq(&old.backends[1], &changed.backends[1]));
    }
}
