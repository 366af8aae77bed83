//! The rulebook: every forwarding rule, written once, for every path that carries
//! requests.
//!
//! The [`relay`](crate::relay) (plain HTTP/1.1 as bytes) and the hyper path
//! ([`proxy`](crate::proxy): HTTP/2, and HTTP/1.1 the relay hands over) are thin
//! adapters: each turns what it parsed into a list of field lines
//! ([`httparse::Header`]) and asks the rulebook for a verdict.
//!
//! - [`request::check`]: refuse (with the status that says why) or plan the forwarded
//!   request: its Host, its framing, which fields go (hop-by-hop, named in
//!   `Connection`, names with `_`, the client's own `X-Forwarded-*`).
//! - [`forwarded`]: the fields cutover adds (`Host` when it comes from the target,
//!   `X-Forwarded-For/-Proto/-Host`, `Via`), one builder for both paths.
//! - [`response::check`]: the backend's response head, validated the same way; broken
//!   framing is a 502 and the connection is not reused.
//! - [`blame`]: whose fault a failure is, which status the client gets, and whether it
//!   counts against the backend.
//! - [`retry`]: when a request may be sent again.
//!
//! Pure functions over heads: no I/O, no allocation. Differences between the paths that
//! the rulebook cannot remove are listed in [`DIFFERENCES`] and tested by the
//! conformance table (`tests/conformance.rs`).

pub mod blame;
pub mod fields;
pub mod forwarded;
pub mod request;
pub mod response;
pub mod retry;

use forwarded::Cidr;

/// What the rulebook is configured with (`[limits]`, `[http]`, `[forwarded]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Size and count limits on heads, the same on every path: a request over one is
    /// refused (414, 431), a response over one is a 502.
    pub limits: Limits,
    /// What happens to a request field whose name has `_`.
    pub underscores: Underscores,
    /// Peers whose `X-Forwarded-For` is extended; any other peer's is replaced.
    pub trusted: Vec<Cidr>,
}

/// Head limits, the same on every path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and fields, written canonically) → 431.
    pub max_request_head: usize,
    /// Most fields in a request head → 431.
    pub max_headers: usize,
    /// Longest request target → 414.
    pub max_uri: usize,
    /// Largest response head → 502.
    pub max_response_head: usize,
    /// Largest request body → 413 (a declared length at once; a chunked body when it
    /// passes the limit).
    pub max_body: u64,
}

/// `[http] headers_with_underscores`: Envoy's choices, with its edge default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underscores {
    Drop,
    Reject,
    Allow,
}

/// Fields a head may have at most, whatever the config: one bit each in a `u128`.
pub const MAX_FIELDS: usize = 128;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request_head: 32 * 1024,
            max_headers: 100,
            max_uri: 8 * 1024,
            max_response_head: 64 * 1024,
            max_body: 100 * 1024 * 1024,
        }
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            limits: Limits::default(),
            underscores: Underscores::Drop,
            trusted: Vec::new(),
        }
    }
}

/// Where the paths still differ, and why; each is a marked row of the conformance table
/// (`tests/conformance.rs`), so a new difference fails a test until it is listed.
pub const DIFFERENCES: &[(&str, &str)] = &[
    (
        "Transfer-Encoding with Content-Length on hyper's HTTP/1.1 path",
        "hyper drops the Content-Length before cutover sees the head, reads the body as \
         chunked and closes the connection after the answer (RFC 9112 §6.1 allows this); \
         the backend gets the decoded body, re-framed. The relay refuses it with 400.",
    ),
    (
        "Trailers of a chunked response",
        "the relay passes a chunked body through as bytes, trailers included; hyper's \
         HTTP/1.1 server writes trailers only for a request with `TE: trailers` whose \
         response names them in `Trailer`, which is hop-by-hop, so that path drops them.",
    ),
    (
        "A malformed chunk at the start of a response body",
        "the relay judges the body bytes that came with the head before sending the head \
         on, and answers 502; hyper's paths stream the body, so the head is already \
         handed over: HTTP/1.1 closes the connection, HTTP/2 resets the stream.",
    ),
    (
        "A malformed Content-Length over HTTP/2",
        "the h2 crate resets the stream (RFC 9113 §8.1.1) before cutover sees the \
         request; nothing is forwarded, as on the other paths' 400.",
    ),
];
