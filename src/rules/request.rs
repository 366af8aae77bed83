//! Requests: what is refused (with the status that says why) and what is forwarded
//! (RFC 9112 §3, §6, §7; RFC 9110 §5, §7.2, §7.6).

use httparse::Header;

use super::fields::{self, Field, Options};
use super::{Limits, Policy, Underscores};

/// The protocol a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
    H2,
}

/// A request head as a path parsed it.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// The method: CONNECT is refused (405), and `*` is a target only for OPTIONS; its
    /// length counts in the head's canonical size.
    pub method: &'a str,
    /// The request target as received (HTTP/2: the `:path`).
    pub target: &'a [u8],
    /// Decides the Host rules (one in HTTP/1.1, `:authority` in HTTP/2, optional in
    /// HTTP/1.0), whether the connection closes by default, and whether an upgrade is
    /// possible.
    pub version: Version,
    /// HTTP/2's `:authority`.
    pub authority: Option<&'a [u8]>,
    /// The head's fields in order; the plan's bit masks index into them, which is why a
    /// head may have at most [`MAX_FIELDS`](super::MAX_FIELDS).
    pub fields: &'a [Header<'a>],
    /// The head's size as received, when the path has it: a head of at most half the
    /// limit cannot be over it written canonically (each line grows by at most its
    /// two separators), so it is not measured again.
    pub raw_len: Option<usize>,
}

/// How the request's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
}

impl Body {
    pub fn length(self) -> Option<u64> {
        match self {
            Body::Length(n) => Some(n),
            _ => None,
        }
    }
}

/// The verdict on a request that may be forwarded: what the backend gets.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    /// The host the request is for: the target's authority (absolute-form, HTTP/2),
    /// else the Host field; `None` only for HTTP/1.0 without one.
    pub host: Option<&'a [u8]>,
    /// The Host field is written by cutover (from the target's authority, or a
    /// fallback) instead of copied from the client's.
    pub write_host: bool,
    /// The origin-form target to forward (RFC 9112 §3.2.1); `slash` says a `/` goes
    /// before it (an absolute-form target with an empty path, e.g. `http://a?q`).
    pub path: &'a [u8],
    /// A `/` goes before `path`: the absolute-form target had an empty path.
    pub slash: bool,
    /// The target was absolute-form (the relay leaves those to hyper).
    pub absolute: bool,
    /// A `#fragment` was cut off the target (the relay leaves those to hyper).
    pub fragment: bool,
    /// How the request body is delimited: the relay reads a `Length` body whole and
    /// leaves `Chunked` to hyper, and a merged Content-Length is written from it.
    pub body: Body,
    /// Several equal Content-Length fields: all are left out and one is written.
    pub merge_length: bool,
    /// The client asked to close after this response (or spoke HTTP/1.0 without
    /// keep-alive).
    pub close: bool,
    /// An HTTP/1.1 upgrade: `Upgrade` plus the `upgrade` option (RFC 9110 §7.8).
    pub upgrade: bool,
    /// `Expect` is present.
    pub expect: bool,
    /// Fields (by index) not forwarded.
    pub skip: u128,
    /// The client's X-Forwarded-For fields (by index), extended for a trusted peer.
    pub forwarded_for: u128,
}

/// Why a request is refused. Each is the client's fault: it never reaches a backend and
/// never counts against one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("the request head is malformed: {0}")]
    Malformed(&'static str),
    #[error("the request target is longer than the limit")]
    UriTooLong,
    #[error("the request head has more fields than the limit")]
    TooManyFields,
    #[error("the request head is larger than the limit")]
    HeadTooLarge,
    #[error("bad request target: {0}")]
    Target(&'static str),
    #[error("bad Host: {0}")]
    Host(&'static str),
    #[error("bad Transfer-Encoding: {0}")]
    TransferEncoding(&'static str),
    #[error("bad Content-Length: {0}")]
    ContentLength(&'static str),
    #[error("field names with '_' are refused")]
    Underscore,
    #[error("CONNECT is not served: cutover is a reverse proxy")]
    Connect,
    #[error("the request body is malformed")]
    Body,
    #[error("the request did not arrive in time")]
    Timeout,
    #[error("the request body is larger than the limit")]
    BodyTooLarge,
}

/// The `reason` label of `cutover_requests_refused_total`, by [`Reject::index`].
pub const REASONS: [&str; 10] = [
    "malformed",
    "uri_too_long",
    "head_too_large",
    "host",
    "framing",
    "underscore",
    "connect",
    "body",
    "timeout",
    "body_too_large",
];

impl Reject {
    /// Its place in [`REASONS`].
    pub fn index(self) -> usize {
        match self {
            Reject::Malformed(_) | Reject::Target(_) => 0,
            Reject::UriTooLong => 1,
            Reject::TooManyFields | Reject::HeadTooLarge => 2,
            Reject::Host(_) => 3,
            Reject::TransferEncoding(_) | Reject::ContentLength(_) => 4,
            Reject::Underscore => 5,
            Reject::Connect => 6,
            Reject::Body => 7,
            Reject::Timeout => 8,
            Reject::BodyTooLarge => 9,
        }
    }

    pub fn status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Reject::UriTooLong => S::URI_TOO_LONG,
            Reject::TooManyFields | Reject::HeadTooLarge => S::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reject::Connect => S::METHOD_NOT_ALLOWED,
            Reject::Timeout => S::REQUEST_TIMEOUT,
            Reject::BodyTooLarge => S::PAYLOAD_TOO_LARGE,
            _ => S::BAD_REQUEST,
        }
    }

    /// The short body the client sees.
    pub fn client_message(self) -> &'static str {
        match self {
            Reject::UriTooLong => "414 URI Too Long\n",
            Reject::TooManyFields | Reject::HeadTooLarge => "431 Request Header Fields Too Large\n",
            Reject::Connect => "405 Method Not Allowed: CONNECT is not served\n",
            Reject::Host(_) => "400 Bad Request: missing, repeated or invalid Host\n",
            Reject::TransferEncoding(_) | Reject::ContentLength(_) | Reject::Body => {
                "400 Bad Request: invalid message framing\n"
            }
            Reject::Underscore => "400 Bad Request: field names with '_' are refused\n",
            Reject::Malformed(_) | Reject::Target(_) => "400 Bad Request\n",
            Reject::Timeout => "408 Request Timeout\n",
            Reject::BodyTooLarge => "413 Content Too Large\n",
        }
    }
}

/// The canonical size of a head: request line and fields written with single spaces,
/// `": "` and CRLF, plus the empty line. The same measure on every path, whatever
/// white space a client used; a path also caps the raw bytes it buffers.
pub fn head_size(head: &Head<'_>) -> usize {
    let line = head.method.len() + 1 + head.target.len() + 1 + 8 + 2;
    let size = line + 2 + head.fields.iter().map(fields::line_len).sum::<usize>();
    size + implied_host(head).map_or(0, |a| 4 + 2 + a.len() + 2)
}

/// HTTP/2's `:authority` when no `host` field stands for it: counted as the Host field
/// it becomes, so a head measures the same on every path.
fn implied_host<'a>(head: &Head<'a>) -> Option<&'a [u8]> {
    head.authority.filter(|_| {
        !head
            .fields
            .iter()
            .any(|h| fields::classify(h.name.as_bytes()) == Field::Host)
    })
}

/// Judges a request head: refused, or the plan for forwarding it.
pub fn check<'a>(head: &Head<'a>, policy: &Policy) -> Result<Plan<'a>, Reject> {
    limits(head, &policy.limits)?;
    if head.method.eq_ignore_ascii_case("CONNECT") {
        return Err(Reject::Connect);
    }
    let target = target(head)?;
    let mut plan = Plan {
        host: target.authority,
        write_host: target.authority.is_some(),
        path: target.path,
        slash: target.slash,
        absolute: target.authority.is_some() && head.version != Version::H2,
        fragment: head.target.contains(&b'#'),
        body: Body::None,
        merge_length: false,
        close: false,
        upgrade: false,
        expect: false,
        skip: 0,
        forwarded_for: 0,
    };
    let mut hosts = 0;
    let mut length: Option<u64> = None;
    let mut lengths = 0u128;
    let mut codings = 0;
    let mut connection = 0u128;
    let mut options = Options::default();
    let mut upgrade_field = false;
    for (i, h) in head.fields.iter().enumerate() {
        let bit = 1u128 << i;
        let name = h.name.as_bytes();
        if fields::has_underscore(name) {
            match policy.underscores {
                Underscores::Drop => plan.skip |= bit,
                Underscores::Reject => return Err(Reject::Underscore),
                Underscores::Allow => {}
            }
            continue;
        }
        match fields::classify(name) {
            Field::Other | Field::Date | Field::CutoverColor => {}
            Field::Host => {
                hosts += 1;
                host_value(h.value)?;
                match target.authority {
                    // RFC 9112 §3.2.2: the target's authority wins; the field is ours.
                    Some(_) if head.version != Version::H2 => plan.skip |= bit,
                    // RFC 9113 §8.3.1: a Host that names another authority is malformed.
                    Some(a) if !a.eq_ignore_ascii_case(h.value) => {
                        return Err(Reject::Host("Host differs from :authority"));
                    }
                    Some(_) => plan.skip |= bit,
                    None => plan.host = Some(h.value),
                }
            }
            Field::ContentLength => {
                let n = fields::parse_length(h.value)
                    .ok_or(Reject::ContentLength("not one decimal number"))?;
                if length.replace(n).is_some_and(|prev| prev != n) {
                    return Err(Reject::ContentLength("differing values"));
                }
                lengths |= bit;
            }
            Field::TransferEncoding => {
                // RFC 9112 §6.1: chunked, once, last; cutover knows no other coding.
                codings += 1;
                if !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(Reject::TransferEncoding("only \"chunked\" is accepted"));
                }
                plan.skip |= bit;
            }
            Field::Connection => {
                options.read(h.value);
                connection |= bit;
                plan.skip |= bit;
            }
            Field::Upgrade => {
                upgrade_field = true;
                plan.skip |= bit;
            }
            Field::Expect => plan.expect = true,
            Field::ForwardedFor => {
                plan.forwarded_for |= bit;
                plan.skip |= bit;
            }
            Field::HopByHop | Field::Forwarded => plan.skip |= bit,
        }
    }
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1; HTTP/1.0 may have none.
    match (head.version, hosts) {
        (Version::H2, _) if target.authority.is_none() => {
            return Err(Reject::Host("no :authority"));
        }
        (Version::H2, _) => {}
        (Version::Http11, 0) => return Err(Reject::Host("missing")),
        (_, n) if n > 1 => return Err(Reject::Host("more than one")),
        (Version::Http10, 0) if target.authority.is_none() => plan.write_host = true,
        _ => {}
    }
    if codings > 0 {
        if codings > 1 {
            return Err(Reject::TransferEncoding("more than one field"));
        }
        if head.version == Version::Http10 {
            return Err(Reject::TransferEncoding("not in HTTP/1.0"));
        }
        if lengths != 0 {
            // RFC 9112 §6.1: a smuggling attempt, handled as an error.
            return Err(Reject::TransferEncoding("together with Content-Length"));
        }
        plan.body = Body::Chunked;
    } else if let Some(n) = length {
        if n > policy.limits.max_body {
            return Err(Reject::BodyTooLarge);
        }
        plan.body = Body::Length(n);
        if lengths.count_ones() > 1 {
            plan.merge_length = true;
            plan.skip |= lengths;
        }
    }
    if options.names_fields {
        plan.skip |= fields::named_by_connection(head.fields, connection);
    }
    plan.close = options.close || (head.version == Version::Http10 && !options.keep_alive);
    plan.upgrade = upgrade_field && options.upgrade && head.version == Version::Http11;
    Ok(plan)
}

fn limits(head: &Head<'_>, limits: &Limits) -> Result<(), Reject> {
    if head.target.len() > limits.max_uri {
        return Err(Reject::UriTooLong);
    }
    let count = head.fields.len() + usize::from(implied_host(head).is_some());
    if count > limits.max_headers.min(super::MAX_FIELDS) {
        return Err(Reject::TooManyFields);
    }
    let small = head
        .raw_len
        .is_some_and(|n| n * 2 <= limits.max_request_head);
    if !small && head_size(head) > limits.max_request_head {
        return Err(Reject::HeadTooLarge);
    }
    Ok(())
}

/// A request target split into what is forwarded.
struct Target<'a> {
    /// The authority of an absolute-form target or HTTP/2's `:authority`; it becomes
    /// the request's host.
    authority: Option<&'a [u8]>,
    /// What is forwarded as the origin-form target: path and query, fragment cut off.
    path: &'a [u8],
    /// The path is empty and a `/` must go before it.
    slash: bool,
}

/// RFC 9112 §3.2: origin-form, absolute-form, or `*` for OPTIONS. Visible ASCII only
/// (§3.2 allows no white space or octets above 0x7E). A fragment has no place in a
/// target (RFC 9110 §4.2.5: it is the client's own); it is cut off before forwarding,
/// as hyper's URI parser does on its path.
fn target<'a>(head: &Head<'a>) -> Result<Target<'a>, Reject> {
    let t = head.target;
    if t.iter().any(|b| !(0x21..=0x7e).contains(b)) {
        return Err(Reject::Target("bytes outside visible ASCII"));
    }
    let t = t.split(|&b| b == b'#').next().unwrap_or(t);
    if head.version == Version::H2 {
        let authority = head.authority.filter(|a| !a.is_empty());
        if let Some(a) = authority {
            host_value(a)?;
        }
        if t.first() != Some(&b'/') && !(t == b"*" && head.method == "OPTIONS") {
            return Err(Reject::Target("not a path"));
        }
        return Ok(Target {
            authority,
            path: t,
            slash: false,
        });
    }
    match t.first() {
        Some(b'/') => Ok(Target {
            authority: None,
            path: t,
            slash: false,
        }),
        Some(b'*') if t.len() == 1 && head.method == "OPTIONS" => Ok(Target {
            authority: None,
            path: t,
            slash: false,
        }),
        _ => absolute(t),
    }
}

/// `http://authority/path?query` (RFC 9112 §3.2.2), with no userinfo (RFC 9110 §4.2.4).
fn absolute(t: &[u8]) -> Result<Target<'_>, Reject> {
    let rest = strip_scheme(t, b"http://")
        .or_else(|| strip_scheme(t, b"https://"))
        .ok_or(Reject::Target("neither origin-form nor absolute-form"))?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains(&b'@') {
        return Err(Reject::Target("userinfo in the target"));
    }
    host_value(authority)?;
    Ok(Target {
        authority: Some(authority),
        slash: path.first() != Some(&b'/'),
        path,
    })
}

fn strip_scheme<'a>(t: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    let (head, rest) = t.split_at_checked(scheme.len())?;
    head.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// RFC 9110 §7.2: `uri-host [ ":" port ]`, the host not empty (§4.2.1), the port at
/// most 65535.
fn host_value(value: &[u8]) -> Result<(), Reject> {
    let value = value.trim_ascii();
    let (host, port) = if value.first() == Some(&b'[') {
        let close = value
            .iter()
            .position(|&b| b == b']')
            .ok_or(Reject::Host("unclosed IP literal"))?;
        let literal = std::str::from_utf8(&value[1..close]).unwrap_or("");
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(Reject::Host("not an IPv6 literal"));
        }
        let port = match &value[close + 1..] {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return Err(Reject::Host("junk after the IP literal")),
        };
        (&value[..=close], port)
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        }
    };
    if host.is_empty() {
        return Err(Reject::Host("empty"));
    }
    if host[0] != b'[' && !host.iter().all(|&b| reg_name(b)) {
        return Err(Reject::Host("not a host name or address"));
    }
    if let Some(port) = port {
        let ok = !port.is_empty()
            && port.len() <= 5
            && port.iter().all(u8::is_ascii_digit)
            && port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65535;
        if !ok {
            return Err(Reject::Host("bad port"));
        }
    }
    Ok(())
}

/// RFC 3986 §3.2.2 reg-name: unreserved, pct-encoded (its `%`) and sub-delims.
fn reg_name(b: u8) -> bool {
    REG_NAME[usize::from(b)]
}

/// [`reg_name`] as a table: one load a byte on the hot path.
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~%!$&'()*+,;=";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(target: &'a str, fields: &'a [Header<'a>]) -> Head<'a> {
        Head {
            method: "GET",
            target: target.as_bytes(),
            version: Version::Http11,
            authority: None,
            fields,
            raw_len: None,
        }
    }

    #[test]
    fn host_values_are_uri_host_and_an_optional_port() {
        for good in ["a", "a.b:80", "[::1]:8080", "10.0.0.1", "x-y.z:65535"] {
            assert!(host_value(good.as_bytes()).is_ok(), "{good}");
        }
        for bad in [
            "", "a b", "a/b", "a:port", "a:99999", "a@b", ":80", "[::1", "[zz]", "a:",
        ] {
            assert!(host_value(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_absolute_target_names_the_host_and_is_forwarded_in_origin_form() {
        let fields = [Header {
            name: "Host",
            value: b"other",
        }];
        let plan = check(&head("http://a:81?q", &fields), &Policy::default()).expect("valid");
        assert_eq!(plan.host, Some(&b"a:81"[..]));
        assert_eq!((plan.path, plan.slash, plan.skip), (&b"?q"[..], true, 1));
        let bad = check(&head("http://u@a/", &fields), &Policy::default());
        assert!(matches!(bad, Err(Reject::Target(_))));
    }

    #[test]
    fn the_head_size_is_counted_canonically() {
        let fields = [Header {
            name: "Host",
            value: b"a",
        }];
        // "GET / HTTP/1.1\r\n" (16) + "Host: a\r\n" (9) + "\r\n" (2)
        assert_eq!(head_size(&head("/", &fields)), 27);
    }
}
