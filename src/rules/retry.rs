//! When a request may be sent to a backend again.

/// RFC 9110 §9.2.2: methods a proxy may repeat.
pub fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// RFC 9112 §9.3.1.1: a request whose connection closed before any of the answer came
/// may be retried automatically when its method is idempotent. cutover retries once
/// more, on a fresh connection, and only when the failed connection was a reused one
/// (a backend closing an idle keep-alive connection just as it is reused is a race,
/// not a failure) and the body can be sent again (the relay has it buffered; hyper's
/// path only when there is none).
pub fn may_retry(method: &str, reused: bool, answered: bool, body_replayable: bool) -> bool {
    reused && !answered && body_replayable && idempotent(method)
}
