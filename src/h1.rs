//! HTTP/1.1 message heads as bytes, for the [`relay`](crate::relay) (RFC 9112): the
//! relay's adapter over the [`rules`](crate::rules).
//!
//! Heads are parsed with `httparse` and judged by the rulebook; a refused request is
//! answered here with the rulebook's status. A request the relay forwards keeps its
//! bytes: the runs of fields the rulebook keeps are copied as they came (when every line
//! ends in CRLF), the rest left out and the rulebook's own fields appended. Nothing
//! here builds a `HeaderMap`. A valid request the relay does not carry itself is
//! *declined*: the connection goes to hyper (HTTP/2, HTTP/1.0, absolute-form targets,
//! upgrades, `Expect`, chunked or large uploads, bare-LF heads), which applies the same
//! rulebook.

use std::mem::MaybeUninit;

use httparse::{Header, ParserConfig, Status};

use crate::routing::SetCookies;
use crate::rules::forwarded::{self, Client};
use crate::rules::request::{self, Body, Reject, Version};
use crate::rules::response::{self, BadResponse, Framing};
use crate::rules::{Limits, MAX_FIELDS, Policy};

/// Request bodies up to this size are read whole before the request is forwarded (as
/// nginx's `proxy_request_buffering` does); larger ones are left to hyper, which streams.
pub const MAX_BUFFERED_BODY: u64 = 1024 * 1024;

/// Room for a head's fields; httparse fills it without it being initialised first.
pub type Fields<'b> = [MaybeUninit<Header<'b>>; MAX_FIELDS];

/// Empty room for a head's fields.
pub const fn fields<'b>() -> Fields<'b> {
    [const { MaybeUninit::uninit() }; MAX_FIELDS]
}

/// The start of HTTP/2's connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client request head the relay forwards itself.
pub struct Request<'h, 'b> {
    /// The method as sent: decides whether the request may be retried, whether the
    /// answer has a body (HEAD), and the access log's `method`.
    pub method: &'b str,
    /// Origin-form (starts with `/`).
    pub target: &'b str,
    /// The head's fields in order; routing reads them, and the plan's bit masks
    /// (`skip`) index into them.
    pub headers: &'h [Header<'b>],
    /// Bytes of the head, including the empty line.
    pub head_len: usize,
    /// The rulebook's verdict: what the backend gets.
    pub plan: request::Plan<'h>,
    /// The bytes the head was parsed from, for copying kept fields as they are.
    buf: &'b [u8],
}

/// What to do with the bytes a connection has sent so far.
pub enum Parsed<T> {
    Complete(T),
    /// More bytes are needed.
    Partial,
    /// Valid, but not for the relay; hyper takes the connection from this request on.
    Decline(Decline),
    /// Refused by the rulebook: answered with its status, and the connection closed.
    Reject(Reject),
}

/// Why a request is left to hyper (for the debug log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decline {
    Http2,
    NotHttp11,
    NotOriginForm,
    Upgrade,
    Expect,
    TransferEncoding,
    LargeBody,
    BareLineFeed,
}

/// A backend's response head, as the relay needs it.
pub struct Response<'h, 'b> {
    /// The status, written into the client's status line and recorded on the request.
    pub code: u16,
    /// The reason phrase, passed on to the client unchanged.
    pub reason: &'b [u8],
    /// The head's fields in order; the plan's bit masks index into them.
    pub headers: &'h [Header<'b>],
    /// Bytes of the head, including the empty line: where the body starts in the bytes
    /// read from the backend.
    pub head_len: usize,
    /// The rulebook's verdict: framing, reuse, which fields go.
    pub plan: response::Plan,
    /// The bytes the head was parsed from, for copying kept fields as they are.
    buf: &'b [u8],
    /// Every line ends in CRLF, so kept fields can be copied as they are.
    crlf: bool,
}

// === requests ===

/// Parses and judges a request head at the start of `buf`.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    storage: &'h mut Fields<'b>,
    policy: &Policy,
) -> Parsed<Request<'h, 'b>> {
    if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return Parsed::Partial;
    }
    if buf.starts_with(H2_PREFACE) {
        return Parsed::Decline(Decline::Http2);
    }
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, storage) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) if buf.len() > policy.limits.max_request_head => {
            return Parsed::Reject(Reject::HeadTooLarge);
        }
        Ok(Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Reject(Reject::TooManyFields),
        Err(e) => return Parsed::Reject(Reject::Malformed(parse_error(e))),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Reject(Reject::Malformed("incomplete request line"));
    };
    let headers: &'h [Header<'b>] = req.headers;
    let head = request::Head {
        method,
        target: target.as_bytes(),
        version: if version == 1 {
            Version::Http11
        } else {
            Version::Http10
        },
        authority: None,
        fields: headers,
        raw_len: Some(head_len),
    };
    let plan = match request::check(&head, policy) {
        Ok(plan) => plan,
        Err(reject) => return Parsed::Reject(reject),
    };
    let decline = if version != 1 {
        Some(Decline::NotHttp11)
    } else if !target.starts_with('/') || plan.fragment {
        Some(Decline::NotOriginForm)
    } else if plan.upgrade {
        Some(Decline::Upgrade)
    } else if plan.expect {
        Some(Decline::Expect)
    } else if plan.body == Body::Chunked {
        Some(Decline::TransferEncoding)
    } else if plan.body.length().unwrap_or(0) > MAX_BUFFERED_BODY {
        Some(Decline::LargeBody)
    } else if !lines_end_in_crlf(buf, headers, head_len) {
        // Forwarded as they came, so a bare LF that this parser took as a line end
        // cannot reach a backend that does not (RFC 9112 §2.2); hyper rewrites such
        // heads.
        Some(Decline::BareLineFeed)
    } else {
        None
    };
    if let Some(why) = decline {
        return Parsed::Decline(why);
    }
    Parsed::Complete(Request {
        method,
        target,
        headers,
        head_len,
        plan,
        buf,
    })
}

impl Request<'_, '_> {
    /// Bytes of body after the head (the relay takes only bodies of known length).
    pub fn body_len(&self) -> u64 {
        self.plan.body.length().unwrap_or(0)
    }

    /// Appends the head as the backend gets it: the same request line and the fields
    /// the rulebook keeps, then the fields it adds.
    pub fn write_forwarded(&self, client: Client<'_>, out: &mut Vec<u8>) {
        let end = self.head_len - 2;
        let fields = self
            .headers
            .first()
            .map_or(end, |h| offset(self.buf, h.name));
        out.extend_from_slice(&self.buf[..fields]);
        copy_fields(self.buf, self.headers, self.plan.skip, end, out);
        forwarded::add(&self.plan, self.headers, client, b"", out);
        out.extend_from_slice(b"\r\n");
    }
}

// === responses ===

/// Parses and judges a response head at the start of `buf`; `head_request` says the
/// request was HEAD (no body follows whatever the fields say).
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    storage: &'h mut Fields<'b>,
    head_request: bool,
    limits: &Limits,
) -> Result<Option<Response<'h, 'b>>, BadResponse> {
    let mut resp = httparse::Response::new(&mut []);
    let parsed =
        ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, storage);
    let head_len = match parsed {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) if buf.len() > limits.max_response_head => {
            return Err(BadResponse::TooLarge);
        }
        Ok(Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(BadResponse::TooLarge),
        Err(e) => return Err(BadResponse::Parse(parse_error(e))),
    };
    let (Some(code), Some(version)) = (resp.code, resp.version) else {
        return Err(BadResponse::Parse("no status"));
    };
    if code == 101 {
        return Err(BadResponse::Switching);
    }
    let headers: &'h [Header<'b>] = resp.headers;
    let reason = resp.reason.unwrap_or("").as_bytes();
    let head = response::Head {
        code,
        http11: version == 1,
        reason,
        fields: headers,
        head_request,
        raw_len: Some(head_len),
    };
    let plan = response::check(&head, limits)?;
    Ok(Some(Response {
        code,
        reason,
        headers,
        head_len,
        plan,
        buf,
        crlf: lines_end_in_crlf(buf, headers, head_len),
    }))
}

impl Response<'_, '_> {
    /// Appends the head as the client gets it: the fields the rulebook keeps, `Via` and
    /// (when on) `x-cutover-color` in, `Transfer-Encoding: chunked` when the body is
    /// relayed chunked, and `Connection: close` when this is the connection's last
    /// response.
    pub fn write_forwarded(
        &self,
        color: Option<&str>,
        cookies: &SetCookies,
        close: bool,
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(b"HTTP/1.1 ");
        // httparse reads exactly three digits.
        let code = self.code;
        out.extend_from_slice(&[
            b'0' + (code / 100 % 10) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
            b' ',
        ]);
        out.extend_from_slice(self.reason);
        out.extend_from_slice(b"\r\n");
        let plan = &self.plan;
        let skip = plan.skip
            | if color.is_some() {
                plan.color_fields
            } else {
                0
            };
        if self.crlf {
            copy_fields(self.buf, self.headers, skip, self.head_len - 2, out);
        } else {
            for (i, h) in self.headers.iter().enumerate() {
                if skip & (1 << i) == 0 {
                    push_field(out, h.name.as_bytes(), h.value);
                }
            }
        }
        if !plan.dated {
            // RFC 9110 §6.6.1: a recipient with a clock adds Date when forwarding a
            // response without one.
            push_field(out, b"date", &http_date());
        }
        if plan.framing == Framing::Chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if let (true, Some(n)) = (plan.merge_length, plan.length) {
            push_field(out, b"content-length", n.to_string().as_bytes());
        }
        push_field(out, b"via", forwarded::VIA);
        if let Some(color) = color {
            push_field(out, b"x-cutover-color", color.as_bytes());
        }
        cookies.write(out);
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// A short local answer (400, 414, 431, 502, 503, 504) with a text body.
pub fn write_local(status: http::StatusCode, text: &str, close: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
    out.extend_from_slice(text.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(&http_date());
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(text.as_bytes());
}

// === shared pieces ===

/// Where `part` (a slice of `buf`) starts in `buf`.
fn offset(buf: &[u8], part: &str) -> usize {
    part.as_ptr() as usize - buf.as_ptr() as usize
}

/// Whether the start line and every field line of the head end in CRLF (httparse also
/// takes a bare LF). Each field line ends where the next one starts.
fn lines_end_in_crlf(buf: &[u8], headers: &[Header<'_>], head_len: usize) -> bool {
    let end = head_len - 2;
    if buf[end..head_len] != *b"\r\n" {
        return false;
    }
    let starts = headers.iter().map(|h| offset(buf, h.name));
    starts
        .chain([end])
        .all(|line_end| buf[line_end - 2] == b'\r')
}

/// Copies the fields not in `skip` as they are in `buf`, in runs; `end` is where the
/// empty line after the last field starts.
fn copy_fields(buf: &[u8], headers: &[Header<'_>], skip: u128, end: usize, out: &mut Vec<u8>) {
    let mut run: Option<usize> = None;
    for (i, h) in headers.iter().enumerate() {
        let skipped = skip & (1 << i) != 0;
        match (run, skipped) {
            (None, false) => run = Some(offset(buf, h.name)),
            (Some(from), true) => {
                out.extend_from_slice(&buf[from..offset(buf, h.name)]);
                run = None;
            }
            _ => {}
        }
    }
    if let Some(from) = run {
        out.extend_from_slice(&buf[from..end]);
    }
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "invalid version",
    }
}

/// The current time as an IMF-fixdate, formatted at most once a second per thread.
fn http_date() -> [u8; 29] {
    use std::cell::Cell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let (at, text) = c.get();
        if at == second {
            return text;
        }
        let mut text = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        let n = formatted.len().min(29);
        text[..n].copy_from_slice(&formatted.as_bytes()[..n]);
        c.set((second, text));
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: Client<'static> = Client {
        addr: b"127.0.0.1",
        trusted: false,
        proto: "http",
    };

    fn parse<'h, 'b>(raw: &'b [u8], storage: &'h mut Fields<'b>) -> Parsed<Request<'h, 'b>> {
        parse_request(raw, storage, &Policy::default())
    }

    #[test]
    fn valid_requests_outside_the_relay_are_declined_and_bad_ones_refused() {
        for (raw, why) in [
            (&b"GET / HTTP/1.0\r\n\r\n"[..], "NotHttp11"),
            (
                b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
                "NotOriginForm",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                "TransferEncoding",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                "Upgrade",
            ),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "Http2"),
        ] {
            let mut storage = fields();
            match parse(raw, &mut storage) {
                Parsed::Decline(d) => assert_eq!(format!("{d:?}"), why),
                _ => panic!("not declined: {}", String::from_utf8_lossy(raw)),
            }
        }
        for raw in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ] {
            let mut storage = fields();
            assert!(
                matches!(parse(raw, &mut storage), Parsed::Reject(_)),
                "not refused: {}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut storage = fields();
        assert!(matches!(
            parse(b"PRI * HTTP", &mut storage),
            Parsed::Partial
        ));
    }

    #[test]
    fn a_plain_request_loses_hop_by_hop_and_named_fields_and_gains_ours() {
        let raw = b"GET /a?b HTTP/1.1\r\nHost: app\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 10.0.0.1\r\nAccept: */*\r\n\r\n";
        let mut storage = fields();
        let Parsed::Complete(req) = parse(raw, &mut storage) else {
            panic!("not parsed");
        };
        let mut out = Vec::new();
        req.write_forwarded(PEER, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET /a?b HTTP/1.1\r\nHost: app\r\nAccept: */*\r\nx-forwarded-for: 127.0.0.1\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: app\r\nvia: 1.1 cutover\r\n\r\n"
        );
        let mut out = Vec::new();
        req.write_forwarded(
            Client {
                trusted: true,
                ..PEER
            },
            &mut out,
        );
        assert!(String::from_utf8_lossy(&out).contains("x-forwarded-for: 10.0.0.1, 127.0.0.1\r\n"));
    }

    #[test]
    fn connection_cannot_remove_framing_or_routing_fields_and_bare_lf_is_declined() {
        let mut storage = fields();
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length, host, x-a\r\n\
                    X-A: 1\r\nContent-Length: 2\r\nX-B: 2\r\n\r\nhi";
        let Parsed::Complete(req) = parse(raw, &mut storage) else {
            panic!("not parsed");
        };
        let mut out = Vec::new();
        req.write_forwarded(PEER, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX-B: 2\r\nx-forwarded-for: 127.0.0.1\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: a\r\nvia: 1.1 cutover\r\n\r\n"
        );
        let mut storage = fields();
        let lf = parse(b"GET / HTTP/1.1\r\nHost: a\nX-A: 1\r\n\r\n", &mut storage);
        assert!(matches!(lf, Parsed::Decline(Decline::BareLineFeed)));
    }

    #[test]
    fn a_response_head_loses_hop_by_hop_fields_and_gains_ours_even_with_bare_lf() {
        for raw in [
            &b"HTTP/1.0 200 OK\r\nDate: x\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Cutover-Color: no\r\nContent-Length: 2\r\n\r\nok"[..],
            b"HTTP/1.0 200 OK\nDate: x\nConnection: keep-alive, X-Hop\nX-Hop: 1\nX-Cutover-Color: no\nContent-Length: 2\n\nok",
        ] {
            let mut storage = fields();
            let resp = parse_response(raw, &mut storage, false, &Limits::default())
                .expect("valid")
                .expect("complete");
            assert_eq!((resp.plan.framing, resp.plan.keep_alive), (Framing::Length(2), true));
            let mut out = Vec::new();
            resp.write_forwarded(Some("green"), &SetCookies::default(), false, &mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                "HTTP/1.1 200 OK\r\nDate: x\r\nContent-Length: 2\r\nvia: 1.1 cutover\r\n\
                 x-cutover-color: green\r\n\r\n"
            );
        }
        for both in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        ] {
            let mut storage = fields();
            assert!(parse_response(both, &mut storage, false, &Limits::default()).is_err());
        }
    }

    #[test]
    fn equal_content_lengths_are_written_once_even_where_no_body_follows() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nContent-Length: 5\r\n\r\n";
        for head_request in [false, true] {
            let mut storage = fields();
            let resp = parse_response(raw, &mut storage, head_request, &Limits::default())
                .expect("valid")
                .expect("complete");
            let mut out = Vec::new();
            resp.write_forwarded(None, &SetCookies::default(), false, &mut out);
            let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
            assert_eq!(text.matches("content-length: 5").count(), 1, "{text}");
        }
    }
}
