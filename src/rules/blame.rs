//! Whose fault a failed exchange is, and what that costs. A client's fault (a bad
//! request, a malformed body, leaving early) is answered with a 4xx or nothing, and
//! never counts against a backend: not in its run of failures (passive ejection), not in
//! the colour's error rate (rollout gates), not as an upstream error. A backend's fault
//! is a 502 or 504 and counts against all three.

/// Who broke an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client: its request or its body was malformed, or it left.
    Client,
    /// The backend: unreachable, silent, or it sent something that cannot be forwarded.
    Backend,
    /// Nobody's: its colour's drain deadline passed while it still ran.
    Drain,
}

impl Fault {
    /// Whether the failure goes into the backend's run of failures and the colour's
    /// error rate.
    pub fn counts_against_backend(self) -> bool {
        self == Fault::Backend
    }
}
