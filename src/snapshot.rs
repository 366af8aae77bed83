//! The routing state: one immutable [`Snapshot`] behind one `ArcSwap`. A cutover or a
//! rollback builds a new snapshot and swaps the pointer; a request loads it once and
//! routes by what it loaded, so it never sees half of a change.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crate::color::Color;
use crate::pool::{Pool, epoch_ms};
pub use crate::routing::Routable;
use crate::routing::{BUCKETS, PIN_COOKIE, Routing, SetCookies, Why, parse_pin};

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
    /// A share of traffic sent to the other colour, when a canary is on.
    pub canary: Option<Canary>,
    /// Forced routes, the bucket key and pinning, from the config (a reload replaces
    /// them; shared across snapshots).
    pub routing: Arc<Routing>,
    /// Pins issued before this Unix second are ignored: a rollback sets it, so that it
    /// overrides every pin.
    pub pins_from: u64,
    /// Until this Unix time in ms, pins to `previous` are still honoured: the drain
    /// deadline of the last switch.
    pub pin_drain_until_ms: u64,
}

/// A share of traffic for the colour that is not live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The colour that gets the share; never the live one.
    pub color: Color,
    /// The share in basis points, 1 to 10000: buckets below it go to `color`.
    pub weight: u16,
}

/// Where one request goes, why, and the cookies its response sets.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub color: Color,
    pub why: Why,
    pub cookies: SetCookies,
}

// === impl Snapshot ===

impl Snapshot {
    /// A first snapshot: `live` at generation 1, no canary, no pins.
    pub fn new(live: Color, pools: [Arc<Pool>; 2], routing: Routing) -> Snapshot {
        Snapshot {
            generation: 1,
            live,
            previous: None,
            pools,
            canary: None,
            routing: Arc::new(routing),
            pins_from: 0,
            pin_drain_until_ms: 0,
        }
    }

    /// Where `req` from `client` goes: a forced route first, then the session's pin
    /// (with pinning on), then the sticky bucket against the canary weight, else the
    /// live colour. With no canary and no rules this is one branch. `secure` marks the
    /// cookies it sets as TLS-only.
    #[inline]
    pub fn route(&self, req: &impl Routable, client: IpAddr, secure: bool) -> Route {
        if self.canary.is_none() && self.routing.is_plain() {
            return Route {
                color: self.live,
                why: Why::Live,
                cookies: SetCookies::default(),
            };
        }
        self.route_by_rules(req, client, secure)
    }

    #[inline(never)]
    fn route_by_rules(&self, req: &impl Routable, client: IpAddr, secure: bool) -> Route {
        let mut cookies = SetCookies {
            secure,
            ..SetCookies::default()
        };
        if let Some(color) = self.routing.forced(req, client) {
            return Route {
                color,
                why: Why::Forced,
                cookies,
            };
        }
        let now = self.routing.pinning.map(|_| epoch_ms());
        if let (Some(now), Some(pin)) = (now, req.cookie(PIN_COOKIE).and_then(parse_pin))
            && self.honours(pin, now)
        {
            return Route {
                color: pin.0,
                why: Why::Pinned,
                cookies,
            };
        }
        let (color, why) = match self.canary {
            Some(canary) => {
                let (bucket, fresh) = self.routing.bucket(req, client);
                cookies.bucket = fresh;
                if bucket < canary.weight.min(BUCKETS) {
                    (canary.color, Why::Canary)
                } else {
                    (self.live, Why::Live)
                }
            }
            None => (self.live, Why::Live),
        };
        if let (Some(now), Some(pinning)) = (now, self.routing.pinning) {
            cookies.pin = Some((color, now / 1000, pinning.ttl.as_secs().max(1)));
        }
        Route {
            color,
            why,
            cookies,
        }
    }

    /// A pin (colour, issue second) holds while it is younger than the TTL, issued after
    /// the last rollback, and its colour still serves: live, the canary, or the colour
    /// switched away from until its drain deadline; and the colour has a backend up.
    fn honours(&self, (color, issued): (Color, u64), now_ms: u64) -> bool {
        let Some(pinning) = self.routing.pinning else {
            return false;
        };
        let now = now_ms / 1000;
        let young = issued >= self.pins_from
            && issued <= now
            && now - issued < pinning.ttl.as_secs().max(1);
        let serves = color == self.live
            || self.canary.is_some_and(|c| c.color == color)
            || (Some(color) == self.previous && now_ms < self.pin_drain_until_ms);
        young && serves && self.pool(color).healthy_count() > 0
    }

    #[inline]
    pub fn pool(&self, color: Color) -> &Pool {
        &self.pools[color.index()]
    }

    /// The snapshot after making `to` live: same pools, next generation, no canary;
    /// pins to the old colour hold until `drain_until_ms`.
    pub fn switched(&self, to: Color, drain_until_ms: u64) -> Snapshot {
        Snapshot {
            generation: self.generation + 1,
            live: to,
            previous: Some(self.live),
            canary: None,
            pin_drain_until_ms: drain_until_ms,
            ..self.clone_routing()
        }
    }

    /// The snapshot with `canary` instead of the current split, next generation.
    pub fn with_canary(&self, canary: Option<Canary>) -> Snapshot {
        Snapshot {
            generation: self.generation + 1,
            canary,
            ..self.clone_routing()
        }
    }

    /// A copy sharing pools and rules.
    pub fn clone_routing(&self) -> Snapshot {
        Snapshot {
            generation: self.generation,
            live: self.live,
            previous: self.previous,
            pools: self.pools.clone(),
            canary: self.canary,
            routing: Arc::clone(&self.routing),
            pins_from: self.pins_from,
            pin_drain_until_ms: self.pin_drain_until_ms,
        }
    }
}
