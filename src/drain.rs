//! Per-colour in-flight tracking. Every proxied request holds an [`InFlight`] guard from
//! the moment a backend is picked until its response body has finished streaming (or the
//! client went away), so after a switch the old colour's count falls to zero exactly
//! when its last request is done.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::pool::{Backend, BackendGuard};
use crate::snapshot::Color;

/// Counters per colour, shared by the proxy (writes) and admin (reads).
#[derive(Debug, Default)]
pub struct Tracker {
    /// Requests in flight, indexed by [`Color::index`].
    in_flight: [AtomicUsize; 2],
}

/// One request in flight to one backend of one colour.
#[derive(Debug)]
pub struct InFlight {
    tracker: Arc<Tracker>,
    color: Color,
    backend: BackendGuard,
}

// === impl Tracker ===

impl Tracker {
    pub fn in_flight(&self, color: Color) -> usize {
        self.in_flight[color.index()].load(Ordering::Relaxed)
    }

    /// Starts counting a request to `backend` of `color`.
    #[inline]
    pub fn start(self: &Arc<Self>, color: Color, backend: &Arc<Backend>) -> InFlight {
        self.in_flight[color.index()].fetch_add(1, Ordering::Relaxed);
        InFlight {
            tracker: Arc::clone(self),
            color,
            backend: backend.track(),
        }
    }
}

// === impl InFlight ===

impl InFlight {
    pub fn color(&self) -> Color {
        self.color
    }

    pub fn backend(&self) -> &Arc<Backend> {
        self.backend.backend()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.tracker.in_flight[self.color.index()].fetch_sub(1, Ordering::Relaxed);
    }
}
