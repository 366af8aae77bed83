//! The routing state: one immutable [`Snapshot`] behind one `ArcSwap`. A cutover or a
//! rollback builds a new snapshot and swaps the pointer; a request loads it once and
//! routes by what it loaded, so it never sees half of a change.

use std::sync::Arc;

pub use crate::color::Color;
use crate::pool::Pool;

/// The immutable routing state; replaced whole, never mutated.
#[derive(Debug)]
pub struct Snapshot {
    /// Bumped by every change; admin callers compare-and-swap on it.
    pub generation: u64,
    /// The colour that gets all traffic.
    pub live: Color,
    /// The colour that was live before the last change; what `rollback` returns to.
    pub previous: Option<Color>,
    /// The pools, indexed by [`Color::index`]. Shared (`Arc`) across snapshots so a swap
    /// keeps each backend's health and in-flight counts.
    pub pools: [Arc<Pool>; 2],
}

/// What routing may read of a request, on either data path (hyper's `Request` or the
/// relay's parsed head).
pub trait Routable {
    /// The first value of the field `name` (lowercase).
    fn header(&self, name: &str) -> Option<&[u8]>;
}

impl<B> Routable for http::Request<B> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().get(name).map(http::HeaderValue::as_bytes)
    }
}

impl Routable for http::request::Parts {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name).map(http::HeaderValue::as_bytes)
    }
}

impl Routable for crate::h1::Request<'_, '_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

// === impl Snapshot ===

impl Snapshot {
    /// The colour this request goes to. Today: the live colour. The signature takes the
    /// request so per-request rules (force header, sticky canary bucket) slot in here.
    #[inline]
    pub fn route(&self, _req: &impl Routable) -> Color {
        self.live
    }

    #[inline]
    pub fn pool(&self, color: Color) -> &Pool {
        &self.pools[color.index()]
    }

    /// The snapshot after making `to` live: same pools, next generation.
    pub fn switched(&self, to: Color) -> Snapshot {
        Snapshot {
            generation: self.generation + 1,
            live: to,
            previous: Some(self.live),
            pools: self.pools.clone(),
        }
    }
}
