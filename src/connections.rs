//! The open client connections, for graceful shutdown: each connection's task holds a
//! [`Watch`], so the count is theirs, and one cancellation token tells them all to
//! finish. A leaf: the accept loop makes them, the protocol paths hold them.

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The open client connections: each holds a [`Watch`], so the count is theirs, and
/// cancelling the token asks them all to finish.
pub struct Connections {
    /// Each [`Watch`] holds a receiver of it: `receiver_count` is the number of open
    /// connections and `closed` resolves once the last one is gone.
    tx: watch::Sender<()>,
    /// Cancelled by `shutdown`; every [`Watch`] holds a clone, so one call tells all
    /// connections to finish.
    stop: CancellationToken,
}

/// What one connection holds: it is counted while this lives and told when to finish.
pub struct Watch {
    /// Held, never read: while it lives, [`Connections`] counts this connection.
    _counted: watch::Receiver<()>,
    /// The shared shutdown token: cancelled when the connection should finish after its
    /// current response.
    stop: CancellationToken,
}

impl Connections {
    pub fn new(tx: watch::Sender<()>, stop: CancellationToken) -> Connections {
        Connections { tx, stop }
    }

    pub fn count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Asks every connection to finish after its current response; resolves once all
    /// have closed.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tx.closed().await;
    }
}

impl Watch {
    pub fn new(counted: watch::Receiver<()>, stop: CancellationToken) -> Watch {
        Watch {
            _counted: counted,
            stop,
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves when shutdown begins. Made once per connection and polled in place:
    /// it registers as a waiter once, not once per request.
    pub fn stopping(&self) -> WaitForCancellationFutureOwned {
        self.stop.clone().cancelled_owned()
    }
}
