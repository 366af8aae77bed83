//! One backend's idle keep-alive connections: what a [`Backend`](crate::pool::Backend)
//! holds between requests, and what [`upstream`](crate::upstream) takes from and gives
//! back to. A leaf below the pools, so a pool never depends on the code that opens
//! connections.

use crate::backend_stream::BackendStream;
use crate::headers::ClientBody;
use crossbeam_queue::SegQueue;
use hyper::client::conn::http1;

/// The sending half of one connection to a backend; its connection task owns the socket.
pub type Sender = http1::SendRequest<ClientBody>;

/// One backend's idle connections, oldest first: hyper's (for requests hyper serves)
/// and bare connections, plain or TLS (for the [`relay`](crate::relay)).
#[derive(Debug, Default)]
pub struct IdleConns {
    /// Hyper's connections, for requests hyper serves.
    pub(crate) queue: SegQueue<Idle<Sender>>,
    /// Bare connections (plain or TLS), for the relay.
    pub(crate) raw: SegQueue<Idle<BackendStream>>,
}

#[derive(Debug)]
pub(crate) struct Idle<C> {
    /// The connection itself; dropping the entry (a stale one, or on `clear`) closes
    /// it.
    pub(crate) conn: C,
    /// The sweep count when it went idle.
    pub(crate) sweep: u64,
}

// === impl IdleConns ===

impl IdleConns {
    pub fn len(&self) -> usize {
        self.queue.len() + self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.raw.is_empty()
    }

    /// Closes every idle connection; returns how many.
    pub(crate) fn clear(&self) -> usize {
        let mut closed = 0;
        while self.queue.pop().is_some() {
            closed += 1;
        }
        while self.raw.pop().is_some() {
            closed += 1;
        }
        closed
    }

    /// Closes the connections idle since before sweep `oldest` and those the backend
    /// closed; keeps the rest in order.
    pub(crate) fn retain_since(&self, oldest: u64) {
        retain(&self.queue, |idle| {
            idle.sweep >= oldest && !idle.conn.is_closed()
        });
        retain(&self.raw, |idle| {
            idle.sweep >= oldest && idle.conn.is_open()
        });
    }
}

/// Keeps the queue's entries that `keep` approves of, in order.
fn retain<C>(queue: &SegQueue<Idle<C>>, keep: impl Fn(&Idle<C>) -> bool) {
    for _ in 0..queue.len() {
        let Some(idle) = queue.pop() else { break };
        if keep(&idle) {
            queue.push(idle);
        }
    }
}
