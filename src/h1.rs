//! HTTP/1.1 message heads and framing for the [`relay`](crate::relay) (RFC 9112): which
//! client requests the relay takes on, how a head is rewritten for the next hop, and
//! where a response body ends.
//!
//! Heads are parsed with `httparse` and forwarded as bytes: the fields a hop keeps are
//! copied as they came, the hop-by-hop ones are left out and ours appended. Nothing here
//! builds a `HeaderMap`. Anything unusual is *declined*: the connection goes to hyper,
//! which answers it (400, 431, 100-continue, upgrades, chunked uploads, HTTP/1.0 and
//! HTTP/2). So the relay never decides a request is malformed on its own.

use std::fmt;

use httparse::{Header, Status};

/// Most fields a head may have (hyper's default limit too).
pub const MAX_HEADERS: usize = 100;
/// A request head not complete within this many bytes is left to hyper (which answers 431).
pub const MAX_HEAD: usize = 64 * 1024;
/// Request bodies up to this size are read whole before the request is forwarded (as
/// nginx's `proxy_request_buffering` does); larger ones are left to hyper, which streams.
pub const MAX_BUFFERED_BODY: u64 = 1024 * 1024;

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
    /// Field names the client listed in `Connection` (RFC 9110 §7.6.1), to leave out.
    connection_named: Names<'b>,
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
#[derive(Debug, Clone, Copy)]
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
    ManyConnectionOptions,
}

/// A few field names, without allocating.
#[derive(Default)]
struct Names<'b> {
    names: [&'b [u8]; 8],
    len: usize,
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
    connection_named: Names<'b>,
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
    #[error("malformed chunked body")]
    Chunked,
}

// === requests ===

/// Parses a request head at the start of `buf`.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    storage: &'h mut [Header<'b>; MAX_HEADERS],
) -> Parsed<Request<'h, 'b>> {
    let mut req = httparse::Request::new(storage);
    let head_len = match req.parse(buf) {
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
    let mut out = Request {
        method,
        target,
        headers,
        head_len,
        body_len: 0,
        close: false,
        host: b"",
        connection_named: Names::default(),
    };
    let (mut hosts, mut lengths) = (0, 0);
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            out.host = h.value;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // RFC 9112 §6.3: several or invalid lengths are an error; hyper answers it.
            lengths += 1;
            match parse_length(h.value) {
                Some(n) => out.body_len = n,
                None => return Parsed::Decline(Decline::BadContentLength),
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Parsed::Decline(Decline::TransferEncoding);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            return Parsed::Decline(Decline::Upgrade);
        } else if name.eq_ignore_ascii_case(b"expect") {
            return Parsed::Decline(Decline::Expect);
        } else if name.eq_ignore_ascii_case(b"connection") {
            match connection_options(h.value, &mut out.connection_named) {
                Some(close) => out.close |= close,
                None => return Parsed::Decline(Decline::ManyConnectionOptions),
            }
        }
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
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut forwarded_for: Option<&[u8]> = None;
        for h in self.headers {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                // The first chain, as the hyper path keeps it; later ones are dropped.
                forwarded_for.get_or_insert(h.value);
                continue;
            }
            if is_hop_by_hop(name)
                || self.connection_named.contains(name)
                || name.eq_ignore_ascii_case(b"x-forwarded-proto")
                || name.eq_ignore_ascii_case(b"x-forwarded-host")
            {
                continue;
            }
            push_field(out, name, h.value);
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(chain) = forwarded_for.filter(|v| !v.is_empty()) {
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
    storage: &'h mut [Header<'b>; MAX_HEADERS],
    head_request: bool,
) -> Result<Option<Response<'h, 'b>>, BadResponse> {
    let mut resp = httparse::Response::new(storage);
    let head_len = match resp.parse(buf) {
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
        connection_named: Names::default(),
    };
    let (mut length, mut chunked) = (None, false);
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(h.value).ok_or(BadResponse::ContentLength)?;
            if length.is_some_and(|m| m != n) {
                return Err(BadResponse::ContentLength);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only `chunked` is relayed; another coding would have to be named to the
            // client as well (RFC 9112 §6.1), which the relay does not do.
            if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(BadResponse::TransferEncoding);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            // Too many options: keep none of the connection, drop none of the fields
            // beyond the fixed hop-by-hop ones.
            match connection_options(h.value, &mut out.connection_named) {
                Some(close) => out.keep_alive &= !close,
                None => out.keep_alive = false,
            }
        }
    }
    // RFC 9112 §6.3, in its order: no body for HEAD, 1xx, 204 and 304; then chunked;
    // then Content-Length; else until close. A response with both Transfer-Encoding
    // and Content-Length is framed by the former, and the connection is not reused.
    out.framing = if head_request || code < 200 || code == 204 || code == 304 {
        Framing::Empty
    } else if chunked {
        if length.is_some() {
            out.keep_alive = false;
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
        let mut dated = false;
        for h in self.headers {
            let name = h.name.as_bytes();
            if is_hop_by_hop(name)
                || self.connection_named.contains(name)
                || (color.is_some() && name.eq_ignore_ascii_case(b"x-cutover-color"))
                || (self.framing == Framing::Chunked
                    && name.eq_ignore_ascii_case(b"content-length"))
            {
                continue;
            }
            dated |= name.eq_ignore_ascii_case(b"date");
            push_field(out, name, h.value);
        }
        if !dated {
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

// === chunked bodies ===

/// Finds the end of a chunked body (RFC 9112 §7.1) in the bytes relayed through it,
/// strictly: CRLF line ends, hex sizes that fit in 64 bits, trailers bounded. What it
/// accepts a lenient recipient reads the same way, so the client and the relay agree
/// on where the body ends.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    /// Bytes of the current chunk's data still to come; digits while reading a size.
    size: u64,
    digits: u8,
    /// Trailer bytes so far.
    trailer: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Reads `bytes` (the next ones of the body); returns how many belong to it. Fewer
    /// than `bytes.len()` only when the body ended.
    pub fn advance(&mut self, bytes: &[u8]) -> Result<usize, BadResponse> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() && self.state != Done {
            if self.state == Data {
                let take = (bytes.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits == 16 {
                        return Err(BadResponse::Chunked);
                    }
                    self.digits += 1;
                    self.size = self.size << 4 | u64::from(hex_value(b));
                    Size
                }
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => Extension,
                (Extension, b'\r') => SizeLf,
                (Extension, b) if b != b'\n' => Extension,
                (SizeLf, b'\n') if self.size == 0 => TrailerStart,
                (SizeLf, b'\n') => Data,
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => {
                    self.digits = 0;
                    Size
                }
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart | TrailerLine, b) if b != b'\n' && b != b'\r' => TrailerLine,
                (TrailerLine, b'\r') => TrailerLf,
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => Done,
                _ => return Err(BadResponse::Chunked),
            };
            if matches!(self.state, TrailerLine) {
                self.trailer += 1;
                if self.trailer > MAX_HEAD {
                    return Err(BadResponse::Chunked);
                }
            }
        }
        Ok(i)
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

// === shared pieces ===

/// RFC 9110 §7.6.1 names these hop-by-hop (with `Trailer`, per-hop framing too).
fn is_hop_by_hop(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 7] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Reads one Connection value: records the field names it lists in `named`; returns
/// whether it says `close`, or `None` when it lists more names than `named` holds.
fn connection_options<'b>(value: &'b [u8], named: &mut Names<'b>) -> Option<bool> {
    let mut close = false;
    for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if token.is_empty() || token.eq_ignore_ascii_case(b"keep-alive") {
            continue;
        }
        if token.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !is_hop_by_hop(token) {
            named.push(token)?;
        }
    }
    Some(close)
}

impl<'b> Names<'b> {
    fn push(&mut self, name: &'b [u8]) -> Option<()> {
        *self.names.get_mut(self.len)? = name;
        self.len += 1;
        Some(())
    }

    fn contains(&self, name: &[u8]) -> bool {
        self.names[..self.len]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// RFC 9110 §8.6: `1*DIGIT`; a list of equal values (from folded duplicates) is the
/// same length.
fn parse_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for part in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|m| m != n) {
            return None;
        }
        length = Some(n);
    }
    length
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

impl fmt::Debug for Request<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("body_len", &self.body_len)
            .finish_non_exhaustive()
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

    fn chunked(body: &[u8]) -> Result<(usize, bool), BadResponse> {
        let mut c = Chunked::default();
        // Byte by byte and whole must agree.
        let mut one = Chunked::default();
        let mut used = 0;
        for b in body {
            if one.is_done() {
                break;
            }
            used += one.advance(std::slice::from_ref(b))?;
        }
        let n = c.advance(body)?;
        assert_eq!((n, c.is_done()), (used, one.is_done()));
        Ok((n, c.is_done()))
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers_and_not_before() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nx-sum: 1\r\n\r\nNEXT";
        assert_eq!(chunked(body), Ok((body.len() - 4, true)));
        assert_eq!(chunked(b"5\r\nhel"), Ok((6, false)));
        assert_eq!(chunked(b"0\r\n\r\n"), Ok((5, true)));
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"11111111111111111\r\n",
            b"\r\n",
            b"0\r\nx-sum: 1\n\r\n",
        ] {
            assert_eq!(chunked(bad), Err(BadResponse::Chunked), "{bad:?}");
        }
    }

    #[test]
    fn content_length_must_be_digits_and_agree() {
        assert_eq!(parse_length(b"42"), Some(42));
        assert_eq!(parse_length(b"42, 42"), Some(42));
        for bad in [
            &b""[..],
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
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
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
}
