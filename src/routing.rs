//! Per-request routing rules beside the live colour: forced routes (feature-flag
//! style), session pins, and the sticky bucket a canary split compares with its
//! weight. Pure functions over a request's fields; [`Snapshot::route`] applies them in
//! that order. Nothing here allocates unless a cookie is to be set.
//!
//! [`Snapshot::route`]: crate::snapshot::Snapshot::route

use std::net::IpAddr;
use std::time::Duration;

use crate::color::Color;
use crate::rules::forwarded::Cidr;

/// The cookie cutover sets to keep a client in one bucket across requests.
pub const BUCKET_COOKIE: &str = "cutover-bucket";
/// The cookie naming the colour a session started on, with pinning on.
pub const PIN_COOKIE: &str = "cutover-pin";
/// Buckets per hundred percent: a canary weight is in basis points.
pub const BUCKETS: u16 = 10_000;
/// How long the bucket cookie lives: a year, so a user's bucket outlives releases.
const BUCKET_MAX_AGE: u64 = 365 * 24 * 3600;

/// The validated `[routing]` rules other than the live colour; replaced by a reload.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    /// What a request's bucket is computed from.
    pub bucket: BucketKey,
    /// Rules evaluated before the split, first match wins.
    pub force: Vec<ForceRule>,
    /// Session pinning, when on.
    pub pinning: Option<Pinning>,
}

/// Where the sticky bucket (0–9999) comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BucketKey {
    /// cutover's own `cutover-bucket` cookie, set with a random value when absent.
    #[default]
    Cookie,
    /// A request header (lowercase name), e.g. a user id; the client address when the
    /// request has none.
    Header(String),
    /// The client's IP address.
    Address,
}

/// A forced route: requests matching `when` go to `to`, whatever the split says.
#[derive(Debug, Clone)]
pub struct ForceRule {
    /// The colour matching requests go to.
    pub to: Color,
    /// What a request must carry.
    pub when: Match,
}

#[derive(Debug, Clone)]
pub enum Match {
    /// A header (lowercase name), with this exact value when `value` is set.
    Header { name: String, value: Option<String> },
    /// A cookie, with this exact value when `value` is set.
    Cookie { name: String, value: Option<String> },
    /// The client address is in one of these ranges.
    Client(Vec<Cidr>),
}

#[derive(Debug, Clone, Copy)]
pub struct Pinning {
    /// How long a session stays on the colour it started on.
    pub ttl: Duration,
}

/// What routing may read of a request, on either data path (hyper's `Request` or the
/// relay's parsed head).
pub trait Routable {
    /// Every value of the field `name` (lowercase), in order.
    fn fields<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a;

    /// The first value of `name`.
    fn header<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.fields(name).next()
    }

    /// The value of cookie `name`: every `Cookie` field is read, as HTTP/2 may split
    /// them (RFC 9113 §8.2.3).
    fn cookie<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.fields("cookie").find_map(|line| cookie_in(line, name))
    }
}

/// `name`'s value in one `Cookie` field (RFC 6265 §5.4: `a=1; b=2`).
pub fn cookie_in<'a>(line: &'a [u8], name: &str) -> Option<&'a [u8]> {
    line.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
    })
}

/// Why a request went where it went; counted on `status` for all but `Live`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No rule, no canary: the live colour.
    Live,
    /// The sticky bucket fell under the canary weight.
    Canary,
    /// A forced-routing rule matched.
    Forced,
    /// The session's pin was honoured.
    Pinned,
}

/// The cookies a response sets, decided by routing; `Copy` and empty on almost every
/// request, so carrying it costs nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetCookies {
    /// A new bucket value for `cutover-bucket`.
    pub bucket: Option<u64>,
    /// A new pin: the colour, the second it was issued (Unix time) and its lifetime in
    /// seconds.
    pub pin: Option<(Color, u64, u64)>,
    /// Mark them `Secure` (the client came over TLS).
    pub secure: bool,
}

impl SetCookies {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many `Set-Cookie` fields [`values`](Self::values) yields.
    pub fn len(&self) -> usize {
        usize::from(self.bucket.is_some()) + usize::from(self.pin.is_some())
    }

    /// Each `Set-Cookie` value (RFC 6265 §4.1), at most two.
    pub fn values(&self) -> impl Iterator<Item = String> + '_ {
        let secure = if self.secure { "; Secure" } else { "" };
        let bucket = self.bucket.map(|v| {
            format!(
                "{BUCKET_COOKIE}={}; Path=/; Max-Age={BUCKET_MAX_AGE}; HttpOnly; SameSite=Lax{secure}",
                hex16(v).escape_ascii()
            )
        });
        let pin = self.pin.map(|(color, issued, ttl)| {
            format!("{PIN_COOKIE}={color}.{issued}; Path=/; Max-Age={ttl}; HttpOnly; SameSite=Lax{secure}")
        });
        bucket.into_iter().chain(pin)
    }

    /// Appends the `Set-Cookie` lines of a relayed HTTP/1.1 head.
    pub fn write(&self, out: &mut Vec<u8>) {
        if self.is_empty() {
            return;
        }
        for value in self.values() {
            out.extend_from_slice(b"set-cookie: ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

// === buckets ===

/// The bucket (0–9999) of a key: FNV-1a then a 64-bit finaliser, so keys that differ
/// in one byte land far apart. Stable across restarts and versions: a user's bucket is
/// part of what the rollout promised them.
pub fn bucket_of(key: &[u8]) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (mix(h) % u64::from(BUCKETS)) as u16
}

/// The bucket of a client address.
pub fn bucket_of_ip(ip: IpAddr) -> u16 {
    match ip {
        IpAddr::V4(v4) => bucket_of(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => bucket_of(&v4.octets()),
            None => bucket_of(&v6.octets()),
        },
    }
}

/// A bucket cookie value as its 16 lowercase hex digits.
pub fn hex16(v: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    std::array::from_fn(|i| HEX[((v >> (60 - 4 * i)) & 0xf) as usize])
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random value for a new bucket cookie: a per-thread splitmix64 sequence seeded from
/// the OS-randomised `RandomState`, the time and the thread, so values do not repeat
/// across threads or restarts. Not for secrets: a bucket is not one.
pub fn random_u64() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local!(static STATE: Cell<u64> = const { Cell::new(0) });
    STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            x = h.finish() | 1;
        }
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        mix(x)
    })
}

// === rules ===

impl Routing {
    /// No rule reads the request: only a canary split can send it off the live colour.
    #[inline]
    pub fn is_plain(&self) -> bool {
        self.force.is_empty() && self.pinning.is_none()
    }

    /// The first forced route that `req` (from `client`) matches.
    pub fn forced(&self, req: &impl Routable, client: IpAddr) -> Option<Color> {
        self.force
            .iter()
            .find(|rule| rule.when.matches(req, client))
            .map(|rule| rule.to)
    }

    /// The request's bucket, and the new cookie value when cutover's cookie is the key
    /// and the request has none (the bucket is then that new value's).
    pub fn bucket(&self, req: &impl Routable, client: IpAddr) -> (u16, Option<u64>) {
        match &self.bucket {
            BucketKey::Cookie => match req.cookie(BUCKET_COOKIE) {
                Some(value) if !value.is_empty() => (bucket_of(value), None),
                _ => {
                    let fresh = random_u64();
                    (bucket_of(&hex16(fresh)), Some(fresh))
                }
            },
            BucketKey::Header(name) => match req.header(name) {
                Some(value) if !value.is_empty() => (bucket_of(value), None),
                _ => (bucket_of_ip(client), None),
            },
            BucketKey::Address => (bucket_of_ip(client), None),
        }
    }
}

impl Match {
    fn matches(&self, req: &impl Routable, client: IpAddr) -> bool {
        let equals = |got: Option<&[u8]>, want: &Option<String>| match (got, want) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(got), Some(want)) => got == want.as_bytes(),
        };
        match self {
            Match::Header { name, value } => req.fields(name).any(|v| equals(Some(v), value)),
            Match::Cookie { name, value } => equals(req.cookie(name), value),
            Match::Client(ranges) => ranges.iter().any(|r| r.contains(client)),
        }
    }
}

/// A pin cookie's colour and issue time (`green.1733350000`).
pub fn parse_pin(value: &[u8]) -> Option<(Color, u64)> {
    let dot = value.iter().position(|&b| b == b'.')?;
    let color = std::str::from_utf8(&value[..dot]).ok()?.parse().ok()?;
    let issued = std::str::from_utf8(&value[dot + 1..]).ok()?.parse().ok()?;
    Some((color, issued))
}

// === impl Routable ===

impl<B> Routable for http::Request<B> {
    fn fields<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers()
            .get_all(name)
            .into_iter()
            .map(http::HeaderValue::as_bytes)
    }
}

impl Routable for http::request::Parts {
    fn fields<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .get_all(name)
            .into_iter()
            .map(http::HeaderValue::as_bytes)
    }
}

impl Routable for crate::h1::Request<'_, '_> {
    fn fields<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_found_among_others_with_spaces_around() {
        assert_eq!(cookie_in(b"a=1; beta=1 ;c=x", "beta"), Some(&b"1"[..]));
        assert_eq!(cookie_in(b"a=1; betamax=2", "beta"), None);
        assert_eq!(cookie_in(b"novalue; beta=", "beta"), Some(&b""[..]));
    }

    #[test]
    fn buckets_spread_evenly_and_are_stable() {
        let mut under = 0;
        for i in 0..20_000u32 {
            if bucket_of(format!("user-{i}").as_bytes()) < 1000 {
                under += 1;
            }
        }
        assert!(
            (1800..=2200).contains(&under),
            "{under} of 20000 under 10 %"
        );
        assert_eq!(bucket_of(b"user-1"), bucket_of(b"user-1"));
    }

    #[test]
    fn a_pin_cookie_round_trips() {
        let cookies = SetCookies {
            pin: Some((Color::Green, 1_700_000_000, 60)),
            ..SetCookies::default()
        };
        let line: String = cookies.values().collect();
        let value = line
            .strip_prefix("cutover-pin=")
            .and_then(|v| v.split(';').next())
            .unwrap_or_default();
        assert_eq!(
            parse_pin(value.as_bytes()),
            Some((Color::Green, 1_700_000_000))
        );
        assert_eq!(parse_pin(b"purple.1"), None);
    }
}
