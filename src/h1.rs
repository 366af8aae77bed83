//! HTTP/1.1 message heads for the [`relay`](crate::relay) (RFC 9112): which client
//! requests the relay takes on, how a head is rewritten for the next hop, and how a
//! response body is delimited.
//!
//! Heads are parsed with `httparse` and forwarded as bytes: each field is classified
//! once by its name, the runs of fields a hop keeps are copied as they came (when every
//! line ends in CRLF), the hop-by-hop ones are left out and ours appended. Nothing here
//! builds a `HeaderMap`. Anything unusual in a request is *declined*: the connection
//! goes to hyper, which answers it (400, 431, 100-continue, upgrades, chunked uploads,
//! HTTP/1.0 and HTTP/2). So the relay never decides a request is malformed on its own.

use std::mem::MaybeUninit;

use httparse::{Header, ParserConfig, Status};

/// Most fields a head may have (hyper's default limit too); one bit each in a `u128`.
pub const MAX_HEADERS: usize = 100;
/// A request head not complete within this many bytes is left to hyper (which answers 431).
pub const MAX_HEAD: usize = 64 * 1024;
/// Request bodies up to this size are read whole before the request is forwarded (as
/// nginx's `proxy_request_buffering` does); larger ones are left to hyper, which streams.
pub const MAX_BUFFERED_BODY: u64 = 1024 * 1024;

/// Room for a head's fields; httparse fills it without it being initialised first.
pub type Fields<'b> = [MaybeUninit<Header<'b>>; MAX_HEADERS];

/// Empty room for a head's fields.
pub const fn fields<'b>() -> Fields<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// A client request head the relay forwards itself.
pub struct Request<'h, 'b> {
    pub method: &'b str,
    /// Origin-form (starts with `/`).
    pub target: &'b str,
    pub headers: &'h [Header<'b>],
    /// Bytes of the head, including the empty line.
    pub head_len: usize,
    /// From Content-Length; 0 when absent.
    pub body_len: u64,
    /// The client sent `Connection: close`.
    pub close: bool,
    /// The Host value (required: exactly one).
    pub host: &'b [u8],
    /// The first X-Forwarded-For value, which ours extends.
    forwarded_for: Option<&'b [u8]>,
    /// The bytes the head was parsed from, for copying kept fields as they are.
    buf: &'b [u8],
    /// Fields (by index) not forwarded.
    skip: u128,
}

/// What to do with the bytes a connection has sent so far.
pub enum Parsed<T> {
    Complete(T),
    /// More bytes are needed.
    Partial,
    /// Not for the relay; hyper takes the connection from this request on.
    Decline(Decline),
}

/// Why a request is left to hyper (for the debug log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decline {
    Unparsable,
    HeadTooLarge,
    NotHttp11,
    NotOriginForm,
    Connect,
    Upgrade,
    Expect,
    TransferEncoding,
    BadContentLength,
    LargeBody,
    BadHost,
    BareLineFeed,
    ManyConnectionOptions,
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: HEAD, 1xx, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes the connection.
    Close,
}

/// A backend's response head, as the relay needs it.
pub struct Response<'h, 'b> {
    pub code: u16,
    pub reason: &'b str,
    pub headers: &'h [Header<'b>],
    pub head_len: usize,
    pub framing: Framing,
    /// The backend keeps the connection open afterwards (HTTP/1.1 without `close`).
    pub keep_alive: bool,
    buf: &'b [u8],
    /// Fields (by index) not forwarded.
    skip: u128,
    /// The backend's own `x-cutover-color` fields, replaced when ours is on.
    color_fields: u128,
    /// It has a Date field.
    dated: bool,
    /// Every line ends in CRLF, so kept fields can be copied as they are.
    crlf: bool,
}

/// The backend's response cannot be forwarded: RFC 9112 §6.3 says a proxy answers 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    #[error("unparsable response head: {0}")]
    Parse(&'static str),
    #[error("response head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("transfer coding other than chunked")]
    TransferEncoding,
    #[error("unexpected 101 Switching Protocols")]
    Switching,
    #[error(transparent)]
    Chunked(#[from] crate::chunked::Malformed),
}

/// How the relay treats a field, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// End to end: forwarded unless `Connection` names it.
    Other,
    /// RFC 9110 §7.6.1 hop-by-hop (Keep-Alive, Proxy-Connection, TE, Trailer).
    HopByHop,
    Connection,
    Upgrade,
    TransferEncoding,
    ContentLength,
    Host,
    Expect,
    Date,
    ForwardedFor,
    /// X-Forwarded-Proto and X-Forwarded-Host: ours replace them.
    Forwarded,
    CutoverColor,
}

/// At most one full comparison per field: the length and the first letter (in either
/// case) pick the one name it can be.
fn classify(name: &[u8]) -> Field {
    let Some(&first) = name.first() else {
        return Field::Other;
    };
    let is = |known: &[u8]| eq_lowercase(name, known);
    match (name.len(), first | 0x20) {
        (2, b't') if is(b"te") => Field::HopByHop,
        (4, b'h') if is(b"host") => Field::Host,
        (4, b'd') if is(b"date") => Field::Date,
        (6, b'e') if is(b"expect") => Field::Expect,
        (7, b'u') if is(b"upgrade") => Field::Upgrade,
        (7, b't') if is(b"trailer") => Field::HopByHop,
        (10, b'c') if is(b"connection") => Field::Connection,
        (10, b'k') if is(b"keep-alive") => Field::HopByHop,
        (14, b'c') if is(b"content-length") => Field::ContentLength,
        (15, b'x') if is(b"x-forwarded-for") => Field::ForwardedFor,
        (15, b'x') if is(b"x-cutover-color") => Field::CutoverColor,
        (16, b'p') if is(b"proxy-connection") => Field::HopByHop,
        (16, b'x') if is(b"x-forwarded-host") => Field::Forwarded,
        (17, b't') if is(b"transfer-encoding") => Field::TransferEncoding,
        (17, b'x') if is(b"x-forwarded-proto") => Field::Forwarded,
        _ => Field::Other,
    }
}

// === requests ===

/// Parses a request head at the start of `buf`.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    storage: &'h mut Fields<'b>,
) -> Parsed<Request<'h, 'b>> {
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, storage) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) if buf.len() > MAX_HEAD => {
            return Parsed::Decline(Decline::HeadTooLarge);
        }
        Ok(Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Decline(Decline::Unparsable),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Decline(Decline::Unparsable);
    };
    if version != 1 {
        return Parsed::Decline(Decline::NotHttp11);
    }
    if method == "CONNECT" {
        return Parsed::Decline(Decline::Connect);
    }
    if !target.starts_with('/') {
        return Parsed::Decline(Decline::NotOriginForm);
    }
    let headers: &'h [Header<'b>] = req.headers;
    // Forwarded as they came, so a bare LF that this parser took as a line end cannot
    // reach a backend that does not (RFC 9112 §2.2); hyper rewrites such heads.
    if !lines_end_in_crlf(buf, headers, head_len) {
        return Parsed::Decline(Decline::BareLineFeed);
    }
    let mut out = Request {
        method,
        target,
        headers,
        head_len,
        body_len: 0,
        close: false,
        host: b"",
        forwarded_for: None,
        buf,
        skip: 0,
    };
    let (mut hosts, mut lengths, mut named) = (0, 0, Names::default());
    for (i, h) in headers.iter().enumerate() {
        let field = classify(h.name.as_bytes());
        match field {
            Field::Other | Field::Date | Field::CutoverColor => continue,
            Field::Host => {
                hosts += 1;
                out.host = h.value;
                continue;
            }
            Field::ContentLength => {
                // RFC 9112 §6.3: several or invalid lengths are an error; hyper answers it.
                lengths += 1;
                match parse_length(h.value) {
                    Some(n) => out.body_len = n,
                    None => return Parsed::Decline(Decline::BadContentLength),
                }
                continue;
            }
            Field::TransferEncoding => return Parsed::Decline(Decline::TransferEncoding),
            Field::Upgrade => return Parsed::Decline(Decline::Upgrade),
            Field::Expect => return Parsed::Decline(Decline::Expect),
            Field::Connection => match connection_options(h.value, &mut named) {
                Some(close) => out.close |= close,
                None => return Parsed::Decline(Decline::ManyConnectionOptions),
            },
            Field::ForwardedFor => {
                // The first chain, as the hyper path keeps it; later ones are dropped.
                out.forwarded_for.get_or_insert(h.value);
            }
            Field::HopByHop | Field::Forwarded => {}
        }
        out.skip |= 1 << i;
    }
    if hosts != 1 || out.host.is_empty() {
        return Parsed::Decline(Decline::BadHost);
    }
    if lengths > 1 {
        return Parsed::Decline(Decline::BadContentLength);
    }
    if out.body_len > MAX_BUFFERED_BODY {
        return Parsed::Decline(Decline::LargeBody);
    }
    out.skip |= named.matching(headers);
    Parsed::Complete(out)
}

/// RFC 9110 §9.2.2: requests a proxy may send again after a connection failure
/// (RFC 9112 §9.3.1.1).
pub fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

impl Request<'_, '_> {
    /// Appends the head as the backend gets it: the same request line and fields, minus
    /// hop-by-hop ones (RFC 9110 §7.6.1), with X-Forwarded-For extended by `peer` and
    /// X-Forwarded-Proto, X-Forwarded-Host and Via set by us.
    pub fn write_forwarded(&self, peer: &[u8], out: &mut Vec<u8>) {
        let end = self.head_len - 2;
        let fields = self
            .headers
            .first()
            .map_or(end, |h| offset(self.buf, h.name));
        out.extend_from_slice(&self.buf[..fields]);
        copy_fields(self.buf, self.headers, self.skip, end, out);
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(chain) = self.forwarded_for.filter(|v| !v.is_empty()) {
            out.extend_from_slice(chain);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(peer);
        out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\nx-forwarded-host: ");
        out.extend_from_slice(self.host);
        out.extend_from_slice(b"\r\nvia: 1.1 cutover\r\n\r\n");
    }
}

// === responses ===

/// Parses a response head at the start of `buf`; `head_request` says the request was
/// HEAD (no body follows whatever the fields say).
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    storage: &'h mut Fields<'b>,
    head_request: bool,
) -> Result<Option<Response<'h, 'b>>, BadResponse> {
    let mut resp = httparse::Response::new(&mut []);
    let parsed =
        ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, storage);
    let head_len = match parsed {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) if buf.len() > MAX_HEAD => return Err(BadResponse::TooLarge),
        Ok(Status::Partial) => return Ok(None),
        Err(e) => return Err(BadResponse::Parse(parse_error(e))),
    };
    let (Some(code), Some(version)) = (resp.code, resp.version) else {
        return Err(BadResponse::Parse("no status"));
    };
    if code == 101 {
        return Err(BadResponse::Switching);
    }
    let headers: &'h [Header<'b>] = resp.headers;
    let mut out = Response {
        code,
        reason: resp.reason.unwrap_or(""),
        headers,
        head_len,
        framing: Framing::Close,
        keep_alive: version == 1,
        buf,
        skip: 0,
        color_fields: 0,
        dated: false,
        crlf: lines_end_in_crlf(buf, headers, head_len),
    };
    let (mut length, mut lengths, mut chunked, mut named) = (None, 0u128, false, Names::default());
    for (i, h) in headers.iter().enumerate() {
        match classify(h.name.as_bytes()) {
            Field::ContentLength => {
                // One field, one value: forwarded as it came, it must mean one thing.
                let n = parse_length(h.value).ok_or(BadResponse::ContentLength)?;
                if length.replace(n).is_some() {
                    return Err(BadResponse::ContentLength);
                }
                lengths |= 1 << i;
            }
            Field::TransferEncoding => {
                // Only `chunked` is relayed; another coding would have to be named to
                // the client as well (RFC 9112 §6.1), which the relay does not do.
                if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(BadResponse::TransferEncoding);
                }
                chunked = true;
                out.skip |= 1 << i;
            }
            Field::Connection => {
                match connection_options(h.value, &mut named) {
                    Some(close) => out.keep_alive &= !close,
                    // Too many options: the connection is not kept.
                    None => out.keep_alive = false,
                }
                out.skip |= 1 << i;
            }
            Field::HopByHop | Field::Upgrade => out.skip |= 1 << i,
            Field::CutoverColor => out.color_fields |= 1 << i,
            Field::Date => out.dated = true,
            _ => {}
        }
    }
    out.skip |= named.matching(headers);
    // RFC 9112 §6.3, in its order: no body for HEAD, 1xx, 204 and 304; then chunked;
    // then Content-Length; else until close. A response with both Transfer-Encoding
    // and Content-Length is framed by the former, without the latter, and the
    // connection is not reused.
    out.framing = if head_request || code < 200 || code == 204 || code == 304 {
        Framing::Empty
    } else if chunked {
        if length.is_some() {
            out.keep_alive = false;
            out.skip |= lengths;
        }
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        out.keep_alive = false;
        Framing::Close
    };
    Ok(Some(out))
}

impl Response<'_, '_> {
    /// Appends the head as the client gets it: hop-by-hop fields out, `Via` and (when
    /// on) `x-cutover-color` in, `Transfer-Encoding: chunked` when the body is relayed
    /// chunked, and `Connection: close` when this is the connection's last response.
    pub fn write_forwarded(&self, color: Option<&str>, close: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(b"HTTP/1.1 ");
        // httparse reads exactly three digits.
        let code = self.code;
        out.extend_from_slice(&[
            b'0' + (code / 100 % 10) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
            b' ',
        ]);
        out.extend_from_slice(self.reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        let skip = self.skip
            | if color.is_some() {
                self.color_fields
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
        if !self.dated {
            // RFC 9110 §6.6.1: a recipient with a clock adds Date when forwarding a
            // response without one.
            out.extend_from_slice(b"date: ");
            out.extend_from_slice(&http_date());
            out.extend_from_slice(b"\r\n");
        }
        if self.framing == Framing::Chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        out.extend_from_slice(b"via: 1.1 cutover\r\n");
        if let Some(color) = color {
            out.extend_from_slice(b"x-cutover-color: ");
            out.extend_from_slice(color.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// A short local answer (502, 503, 504) with a text body.
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

/// Field names listed in `Connection` (RFC 9110 §7.6.1), without allocating.
#[derive(Default)]
struct Names<'b> {
    names: [&'b [u8]; 8],
    len: usize,
}

impl<'b> Names<'b> {
    fn push(&mut self, name: &'b [u8]) -> Option<()> {
        *self.names.get_mut(self.len)? = name;
        self.len += 1;
        Some(())
    }

    /// The end-to-end fields these names remove. Framing and routing fields are never
    /// removed this way: `Connection: content-length` must not unframe a message.
    fn matching(&self, headers: &[Header<'_>]) -> u128 {
        if self.len == 0 {
            return 0;
        }
        let mut mask = 0;
        for (i, h) in headers.iter().enumerate() {
            let name = h.name.as_bytes();
            if classify(name) == Field::Other
                && self.names[..self.len]
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(name))
            {
                mask |= 1 << i;
            }
        }
        mask
    }
}

/// Reads one Connection value: records the field names it lists in `named`; returns
/// whether it says `close`, or `None` when it lists more names than `named` holds.
fn connection_options<'b>(value: &'b [u8], named: &mut Names<'b>) -> Option<bool> {
    // The usual values, without splitting.
    if eq_lowercase(value, b"keep-alive") {
        return Some(false);
    }
    if eq_lowercase(value, b"close") {
        return Some(true);
    }
    let mut close = false;
    for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if token.is_empty() || token.eq_ignore_ascii_case(b"keep-alive") {
            continue;
        }
        if token.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if classify(token) == Field::Other {
            named.push(token)?;
        }
    }
    Some(close)
}

/// `bytes` equals `lower` (lowercase letters and `-`) in any case, eight bytes at a
/// time. Setting bit 5 lowercases a letter; no byte that can occur in a field name or
/// value (httparse refuses CR and LF in either) becomes a letter or `-` that way unless
/// it already is one in either case.
fn eq_lowercase(bytes: &[u8], lower: &[u8]) -> bool {
    if bytes.len() != lower.len() {
        return false;
    }
    let (mut a, mut b) = (bytes.chunks_exact(8), lower.chunks_exact(8));
    for (x, y) in (&mut a).zip(&mut b) {
        let x = u64::from_ne_bytes(<[u8; 8]>::try_from(x).unwrap_or_default());
        let y = u64::from_ne_bytes(<[u8; 8]>::try_from(y).unwrap_or_default());
        if x | 0x2020_2020_2020_2020 != y {
            return false;
        }
    }
    (a.remainder().iter().zip(b.remainder())).all(|(x, y)| x | 0x20 == *y)
}

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

/// RFC 9110 §8.6: `1*DIGIT`, one value. RFC 9110 lets a recipient take a list of equal
/// values as one; the relay forwards the field as it came, and a next hop that reads
/// such a list otherwise (as no length) would take the body for a second message, so
/// a list is refused here (a request then goes to hyper, which sends its own length).
fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
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

    #[test]
    fn content_length_must_be_one_run_of_digits() {
        assert_eq!(parse_length(b"42"), Some(42));
        assert_eq!(parse_length(b" 007 "), Some(7));
        for bad in [
            &b""[..],
            b"42, 42",
            b"-1",
            b"4 2",
            b"+4",
            b"42, 43",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn requests_outside_the_relay_are_declined_and_plain_ones_rewritten() {
        let mut storage = fields();
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
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "BadContentLength",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                "Upgrade",
            ),
            (b"GET / HTTP/1.1\r\n\r\n", "BadHost"),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
                "Unparsable",
            ),
        ] {
            match parse_request(raw, &mut storage) {
                Parsed::Decline(d) => assert_eq!(format!("{d:?}"), why),
                _ => panic!("not declined: {}", String::from_utf8_lossy(raw)),
            }
        }
        let raw = b"GET /a?b HTTP/1.1\r\nHost: app\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 10.0.0.1\r\nAccept: */*\r\n\r\n";
        let Parsed::Complete(req) = parse_request(raw, &mut storage) else {
            panic!("not parsed");
        };
        let mut out = Vec::new();
        req.write_forwarded(b"127.0.0.1", &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET /a?b HTTP/1.1\r\nHost: app\r\nAccept: */*\r\nx-forwarded-for: 10.0.0.1, 127.0.0.1\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: app\r\nvia: 1.1 cutover\r\n\r\n"
        );
    }

    #[test]
    fn connection_cannot_remove_framing_or_routing_fields_and_bare_lf_is_declined() {
        let mut storage = fields();
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length, host, x-a\r\n\
                    X-A: 1\r\nContent-Length: 2\r\nX-B: 2\r\n\r\nhi";
        let Parsed::Complete(req) = parse_request(raw, &mut storage) else {
            panic!("not parsed");
        };
        let mut out = Vec::new();
        req.write_forwarded(b"::1", &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX-B: 2\r\nx-forwarded-for: ::1\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: a\r\nvia: 1.1 cutover\r\n\r\n"
        );
        let mut storage = fields();
        let lf = parse_request(b"GET / HTTP/1.1\r\nHost: a\nX-A: 1\r\n\r\n", &mut storage);
        assert!(matches!(lf, Parsed::Decline(Decline::BareLineFeed)));
    }

    #[test]
    fn a_response_head_loses_hop_by_hop_fields_and_gains_ours_even_with_bare_lf() {
        for raw in [
            &b"HTTP/1.0 200 OK\r\nDate: x\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Cutover-Color: no\r\nContent-Length: 2\r\n\r\nok"[..],
            b"HTTP/1.0 200 OK\nDate: x\nConnection: keep-alive, X-Hop\nX-Hop: 1\nX-Cutover-Color: no\nContent-Length: 2\n\nok",
        ] {
            let mut storage = fields();
            let resp = parse_response(raw, &mut storage, false)
                .expect("valid")
                .expect("complete");
            assert_eq!((resp.framing, resp.keep_alive), (Framing::Length(2), false));
            let mut out = Vec::new();
            resp.write_forwarded(Some("green"), false, &mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                "HTTP/1.1 200 OK\r\nDate: x\r\nContent-Length: 2\r\nvia: 1.1 cutover\r\n\
                 x-cutover-color: green\r\n\r\n"
            );
        }
        let mut storage = fields();
        let both = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n";
        let resp = parse_response(both, &mut storage, false)
            .expect("valid")
            .expect("complete");
        assert_eq!((resp.framing, resp.keep_alive), (Framing::Chunked, false));
        let mut out = Vec::new();
        resp.write_forwarded(None, true, &mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("Content-Length"), "{text}");
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(text.ends_with("connection: close\r\n\r\n"), "{text}");
    }

    #[test]
    fn field_names_match_in_any_case_and_only_exactly() {
        assert_eq!(classify(b"Content-Length"), Field::ContentLength);
        assert_eq!(classify(b"X-FORWARDED-FOR"), Field::ForwardedFor);
        assert_eq!(classify(b"x-cutover-color"), Field::CutoverColor);
        assert_eq!(classify(b"Content-Lengti"), Field::Other);
        assert_eq!(classify(b"content_length"), Field::Other);
        assert_eq!(classify(b"Hos"), Field::Other);
        assert!(eq_lowercase(b"KEEP-alive", b"keep-alive"));
        assert!(!eq_lowercase(b"keep_alive", b"keep-alive"));
        assert!(!eq_lowercase(b"keep-alivf", b"keep-alive"));
    }
}
