//! Backends and pools. A [`Backend`] is shared (`Arc`) by every snapshot that names it,
//! so its atomics (health, in-flight) survive swaps; a [`Pool`] picks one per request
//! without a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use http::uri::Authority;

use crate::config::PoolConfig;

/// One upstream server.
#[derive(Debug)]
pub struct Backend {
    /// `host:port` as configured; used in logs and status.
    pub address: String,
    /// The same, pre-parsed, so building the upstream URI costs no parsing.
    pub authority: Authority,
    /// Requests sent to this backend whose response has not finished streaming.
    in_flight: AtomicUsize,
    /// Whether health checks let traffic through; true until a checker says otherwise.
    healthy: AtomicBool,
}

/// The backends of one colour.
#[derive(Debug)]
pub struct Pool {
    pub backends: Vec<Arc<Backend>>,
    /// Round-robin cursor; relaxed, a lost increment only skews the rotation.
    cursor: AtomicUsize,
}

/// Held while a request is in flight to a backend; decrements on drop.
#[derive(Debug)]
pub struct BackendGuard(Arc<Backend>);

// === impl Backend ===

impl Backend {
    /// `address` must be a validated `host:port` (see `config`).
    pub fn new(address: &str) -> Result<Backend, http::uri::InvalidUri> {
        Ok(Backend {
            address: address.to_owned(),
            authority: address.parse()?,
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
        })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
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
    /// Builds a pool, reusing a backend from `existing` where the address matches so
    /// its state carries over.
    pub fn build(
        config: &PoolConfig,
        existing: &[Arc<Backend>],
    ) -> Result<Pool, http::uri::InvalidUri> {
        let backends = config
            .backends
            .iter()
            .map(|addr| match existing.iter().find(|b| &b.address == addr) {
                Some(b) => Ok(Arc::clone(b)),
                None => Backend::new(addr).map(Arc::new),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pool {
            backends,
            cursor: AtomicUsize::new(0),
        })
    }

    /// The next healthy backend in round-robin order, or `None` when none is healthy.
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
            .find(|b| b.is_healthy())
    }

    pub fn healthy_count(&self) -> usize {
        self.backends.iter().filter(|b| b.is_healthy()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(addrs: &[&str]) -> Pool {
        let config = PoolConfig {
            backends: addrs.iter().map(|s| s.to_string()).collect(),
        };
        Pool::build(&config, &[]).expect("valid addresses")
    }

    #[test]
    fn pick_rotates_and_skips_unhealthy_backends() {
        let p = pool(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        p.backends[1].set_healthy(false);
        let picked: Vec<&str> = (0..4)
            .map(|_| p.pick().expect("healthy").address.as_str())
            .collect();
        assert!(!picked.contains(&"127.0.0.1:2"));
        assert!(picked.contains(&"127.0.0.1:1") && picked.contains(&"127.0.0.1:3"));
        for b in &p.backends {
            b.set_healthy(false);
        }
        assert!(p.pick().is_none());
    }

    #[test]
    fn a_rebuilt_pool_keeps_the_state_of_known_backends() {
        let old = pool(&["127.0.0.1:1"]);
        let _guard = old.backends[0].track();
        let new = Pool::build(
            &PoolConfig {
                backends: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            },
            &old.backends,
        )
        .expect("valid");
        assert!(Arc::ptr_eq(&old.backends[0], &new.backends[0]));
        assert_eq!(new.backends[0].in_flight(), 1);
    }
}
