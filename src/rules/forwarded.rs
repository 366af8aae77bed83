//! The fields cutover adds to a forwarded request (RFC 9110 §7.6.3 `Via`, and the
//! de-facto `X-Forwarded-For`, `-Proto` and `-Host`), built once for both paths.
//!
//! `X-Forwarded-For` from a peer in `[forwarded] trusted` (another proxy or a load
//! balancer in front of cutover) is extended with the peer's address; from any other
//! peer it is replaced by it, so a client cannot put an address of its choice at the
//! start of the chain. `-Proto` and `-Host` are always cutover's own.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use httparse::Header;

use super::request::Plan;

/// An address range, `10.0.0.0/8` or `2001:db8::/32`; a bare address is one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The range's address as written; only its first `prefix` bits are compared.
    net: IpAddr,
    /// How many leading bits must match: at most 32 for IPv4, 128 for IPv6.
    prefix: u8,
}

/// The text is not an address range.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an address range; write e.g. \"10.0.0.0/8\" or \"2001:db8::/32\"")]
pub struct BadCidr(String);

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(s: &str) -> Result<Cidr, BadCidr> {
        let bad = || BadCidr(s.chars().take(64).collect());
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Whether `peer` is in one of the `trusted` ranges.
pub fn trusted(ranges: &[Cidr], peer: IpAddr) -> bool {
    ranges.iter().any(|r| r.contains(peer))
}

/// Where the added fields go: bytes on the relay, a `HeaderMap` on hyper's path. A
/// field is `begin`, one or more `part`s, `end`.
pub trait Sink {
    fn begin(&mut self, name: &'static str);
    fn part(&mut self, bytes: &[u8]);
    fn end(&mut self);
}

/// The client end of a connection as the added fields name it.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The peer's IP, formatted once per connection.
    pub addr: &'a [u8],
    /// The peer is in `[forwarded] trusted`.
    pub trusted: bool,
    /// `http` or `https`.
    pub proto: &'static str,
}

/// Writes the fields cutover adds to a request that `plan` allows: `host` when the
/// Host comes from the target (or, for an HTTP/1.0 request without one, is
/// `fallback_host`), one `content-length` when equal ones were merged, then
/// `x-forwarded-for`, `x-forwarded-proto`, `x-forwarded-host` and `via`.
pub fn add(
    plan: &Plan<'_>,
    fields: &[Header<'_>],
    client: Client<'_>,
    fallback_host: &[u8],
    sink: &mut impl Sink,
) {
    let host = plan.host.unwrap_or(fallback_host);
    if plan.write_host {
        one(sink, "host", host);
    }
    if let (true, Some(n)) = (plan.merge_length, plan.body.length()) {
        let mut digits = [0u8; 20];
        one(sink, "content-length", format_u64(n, &mut digits));
    }
    sink.begin("x-forwarded-for");
    if client.trusted {
        for (i, h) in fields.iter().enumerate() {
            if plan.forwarded_for & (1 << i) != 0 && !h.value.trim_ascii().is_empty() {
                sink.part(h.value.trim_ascii());
                sink.part(b", ");
            }
        }
    }
    sink.part(client.addr);
    sink.end();
    one(sink, "x-forwarded-proto", client.proto.as_bytes());
    if let Some(host) = plan.host {
        one(sink, "x-forwarded-host", host);
    }
    one(sink, "via", VIA);
}

/// The `Via` entry this proxy adds (RFC 9110 §7.6.3: a proxy MUST send Via).
pub const VIA: &[u8] = b"1.1 cutover";

fn one(sink: &mut impl Sink, name: &'static str, value: &[u8]) {
    sink.begin(name);
    sink.part(value);
    sink.end();
}

fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Writes fields as HTTP/1.1 lines.
impl Sink for Vec<u8> {
    fn begin(&mut self, name: &'static str) {
        self.extend_from_slice(name.as_bytes());
        self.extend_from_slice(b": ");
    }
    fn part(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn end(&mut self) {
        self.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_ranges_contain_what_their_prefix_covers() {
        let r: Cidr = "10.0.0.0/8".parse().expect("range");
        assert!(r.contains("10.200.1.2".parse().expect("ip")));
        assert!(r.contains("::ffff:10.0.0.1".parse().expect("ip")));
        assert!(!r.contains("11.0.0.1".parse().expect("ip")));
        let one: Cidr = "192.0.2.7".parse().expect("host");
        assert!(one.contains("192.0.2.7".parse().expect("ip")));
        assert!(!one.contains("192.0.2.8".parse().expect("ip")));
        let all: Cidr = "::/0".parse().expect("all v6");
        assert!(all.contains("2001:db8::1".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "10.0.0/8", "x", "::/129", "10.0.0.0/"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(format_u64(0, &mut [0; 20]), b"0");
        assert_eq!(format_u64(u64::MAX, &mut [0; 20]), b"18446744073709551615");
    }
}
