//! When a request may be sent to a backend again.

/// RFC 9110 §9.2.2: methods a proxy may repeat.
pub fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// RFC 9112 §9.3.1.1: a request whose connection closed before any of the answer came
/// may be retried automatically when its method is idempotent. cutover sends it once
/// more, on a fresh connection, only when the failed connection was a reused one (a
/// backend closing an idle keep-alive connection just as it is reused is a race, not a
/// failure; the paths check that and that nothing was answered where they see it) and
/// the body can be sent again (the relay has it buffered; hyper's path only when there
/// is none).
pub fn may_retry(method: &str, body_replayable: bool) -> bool {
    body_replayable && idempotent(method)
}
