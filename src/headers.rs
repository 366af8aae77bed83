//! Header rewriting at the proxy boundary: hop-by-hop removal, `X-Forwarded-*`, `Via`.

use std::io::Write;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// RFC 9110 §7.6.1: "a proxy or gateway MUST parse a received Connection header field
/// before a message is forwarded and, for each connection-option in this field, remove
/// any header or trailer field(s) from the message with the same name as the
/// connection-option, and then remove the Connection header field itself (or replace it
/// with the intermediary's own control options for the forwarded message)."
/// Then the fields that are hop-by-hop by definition (§7.6.1 lists Proxy-Connection,
/// Keep-Alive, TE, Transfer-Encoding and Upgrade; Trailer is per-hop framing too).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) names present, instead of a hashed lookup per
    // hop-by-hop name: most messages carry none, many only `Connection`.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str().as_bytes()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // Options that name a fixed hop-by-hop field (`keep-alive`, `close` is none)
        // are covered below; only other names need a lookup of their own.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"close"))
            .filter(|t| hop_by_hop_index(t).is_none())
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// The position in [`HOP_BY_HOP`] of a field name (any case), if it is one.
fn hop_by_hop_index(name: &[u8]) -> Option<usize> {
    HOP_BY_HOP
        .iter()
        .position(|h| h.as_str().as_bytes().eq_ignore_ascii_case(name))
}

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The `Via` value this proxy adds (RFC 9110 §7.6.3: a proxy MUST send Via).
pub static VIA_VALUE: HeaderValue = HeaderValue::from_static("1.1 cutover");

/// A client's IP as an X-Forwarded-For entry. Formatted once per connection, then
/// cloned (a reference count) into each of its requests.
pub fn forwarded_for(peer: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 48];
    let ip = format_ip(peer, &mut buf);
    // An IP address is ASCII digits, dots, colons and hex: always a valid value.
    HeaderValue::from_bytes(ip).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Appends `peer` (from [`forwarded_for`]) to X-Forwarded-For, sets X-Forwarded-Proto
/// to `proto` and X-Forwarded-Host to the host the client asked for, and appends our
/// `Via` entry.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    proto: &'static str,
    host: Option<HeaderValue>,
) {
    // Room for the four fields added below at once, instead of growing (and rehashing)
    // a map sized for what the client sent once per insert.
    headers.reserve(4);
    let xff = match headers.get(&X_FORWARDED_FOR) {
        // RFC 7239 §5.2 style list: the existing chain, then the peer we saw.
        Some(prev) if !prev.is_empty() => {
            let mut v = Vec::with_capacity(prev.len() + 2 + peer.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
        _ => Some(peer.clone()),
    };
    if let Some(xff) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), xff);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    headers.append(header::VIA, VIA_VALUE.clone());
}

/// Formats an IP into a stack buffer: no allocation on the hot path.
fn format_ip(ip: IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // An IPv6 address is at most 45 characters, so this cannot run out of room.
    let _ = write!(cursor, "{ip}");
    let n = cursor.position() as usize;
    &buf[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_and_fixed_hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret, Keep-Alive"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn forwarded_for_appends_the_peer_to_an_existing_chain() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        let peer = forwarded_for("2001:db8::1".parse().expect("ip"));
        add_forwarded(&mut h, &peer, "http", None);
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.9, 2001:db8::1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[header::VIA], "1.1 cutover");
    }
}
