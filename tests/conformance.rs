//! Conformance: one table of raw requests and scripted backend responses, each row run
//! on every way a request reaches cutover: the relay (the first request on a plain
//! HTTP/1.1 connection), hyper's HTTP/1.1 server (a connection the relay handed over
//! after a chunked upload), h2c with prior knowledge (where the case can be said in
//! HTTP/2), and the same three over TLS (HTTP/1.1 without ALPN, HTTP/2 by ALPN `h2`).
//! Every path must give the row's verdict, or the row must document why it differs
//! there; and the same again with the backend behind TLS (`https://`).
//!
//! A row is data: the bytes the client writes, the bytes the backend answers with, what
//! the client must get and what the backend must have received. One runner does the
//! rest, with a fresh proxy and backend per row and path.

mod support;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::raw::{DEFAULT_RESPONSE, Dechunk, Parse, RawBackend, Received, WARMUP_PATH};
use support::{Proxy, admin_text, h2c, sample};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

// === the config ===

/// The rulebook's limits and policies, with `trusted` as the `[forwarded]` list.
macro_rules! rulebook {
    ($trusted:literal) => {
        concat!(
            "\n[limits]\n",
            "max_request_head = 4096\n",
            "max_headers = 32\n",
            "max_uri = 1024\n",
            "max_response_head = 4096\n",
            "\n[http]\n",
            "headers_with_underscores = \"drop\"\n",
            "\n[forwarded]\n",
            "trusted = ",
            $trusted,
            "\n"
        )
    };
}

/// The proxy config every row runs with: 127.0.0.1, the test's peer, is untrusted.
const EXTRA: &str = rulebook!(r#"["10.0.0.0/8"]"#);

/// As [`EXTRA`], but the test's own peer is trusted.
const TRUSTING_LOOPBACK: &str = rulebook!(r#"["127.0.0.0/8"]"#);

/// Set this variable (to anything) to run every proxy with no extra config, to try the
/// harness on code that does not know the keys above yet.
const WITHOUT_CONFIG: &str = "CONFORMANCE_WITHOUT_RULEBOOK_CONFIG";

fn config(extra: &'static str) -> &'static str {
    if std::env::var_os(WITHOUT_CONFIG).is_some() {
        ""
    } else {
        extra
    }
}

const MAX_REQUEST_HEAD: usize = 4096;
const MAX_HEADERS: usize = 32;
const MAX_URI: usize = 1024;
const MAX_RESPONSE_HEAD: usize = 4096;

/// The first request on a connection for the hyper path: the relay hands a chunked
/// upload to hyper, which then serves the rest of the connection.
const WARMUP: &[u8] =
    b"POST /warmup HTTP/1.1\r\nHost: warmup\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

/// How long the client waits for each answer, and for the close after the last one.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

// === what a row is ===

/// The ways a request reaches cutover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Relay,
    Hyper,
    H2,
    TlsRelay,
    TlsHyper,
    TlsH2,
}

const PATHS: [Path; 6] = [
    Path::Relay,
    Path::Hyper,
    Path::H2,
    Path::TlsRelay,
    Path::TlsHyper,
    Path::TlsH2,
];

impl Path {
    /// The path without TLS: a row's documented differences and what it expects are
    /// the same over TLS.
    fn plain(self) -> Path {
        match self {
            Path::TlsRelay => Path::Relay,
            Path::TlsHyper => Path::Hyper,
            Path::TlsH2 => Path::H2,
            p => p,
        }
    }

    fn tls(self) -> bool {
        self != self.plain()
    }
}

/// Where a row's client connects: the proxy's address, and the TLS settings that trust
/// its test certificate on the TLS paths.
struct Target {
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A client connection, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Target {
    async fn connect(&self, alpn_h2: bool) -> Result<Box<dyn Stream>, String> {
        match &self.tls {
            None => TcpStream::connect(self.addr)
                .await
                .map(|s| Box::new(s) as Box<dyn Stream>)
                .map_err(|e| format!("connect: {e}")),
            Some(config) => {
                let mut config = (**config).clone();
                if alpn_h2 {
                    config.alpn_protocols = vec![b"h2".to_vec()];
                }
                support::tls::connect(self.addr, Arc::new(config), "localhost")
                    .await
                    .map(|s| Box::new(s) as Box<dyn Stream>)
                    .map_err(|e| format!("TLS connect: {e}"))
            }
        }
    }
}

/// How the proxy reaches the row's backend: every row holds on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upstream {
    /// `host:port`: plain TCP.
    Plain,
    /// `https://host:port`, verified against a CA made for the run.
    Tls,
}

/// What a row is about, for running a group of rows on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Request,
    Limit,
    Response,
}

/// Whether a row can be said in HTTP/2.
#[derive(Clone, Copy, Debug)]
enum H2 {
    Applies,
    NotApplicable(&'static str),
}

/// Whether the backend connection that carried the row's request must carry the next
/// one. Checked by running the row twice, each time on a new client connection, and
/// counting the backend connections the two requests arrived on.
#[derive(Clone, Copy, Debug)]
enum Reuse {
    Unchecked,
    Reused,
    NotReused,
}

struct Case {
    /// What the row shows, as a sentence.
    name: &'static str,
    /// The clause that asks for it.
    rfc: &'static str,
    kind: Kind,
    /// What the client writes.
    request: &'static [u8],
    /// What the backend answers every (non-warm-up) request with.
    response: &'static [u8],
    expect: Expect,
    h2: H2,
    reuse: Reuse,
    /// Documented differences: on that path the row expects this instead, because...
    differs: &'static [(Path, Expect, &'static str)],
}

/// What one exchange must show.
#[derive(Clone, Copy, Debug)]
struct Expect {
    /// The answers the client gets, in order (interim 1xx never count: none may come).
    client: &'static [Reply],
    /// Whether the proxy must close (Some(true)) or keep (Some(false)) the client
    /// connection after the answers. Not checked on h2.
    closed: Option<bool>,
    /// h2 only: the stream is reset instead of answered (`client` is then empty).
    stream_reset: bool,
    backend: Backend,
}

#[derive(Clone, Copy, Debug)]
struct Reply {
    status: u16,
    /// Fields the answer must have (names in any case; value `*`: any value).
    has: &'static [(&'static str, &'static str)],
    /// Fields it must not have.
    lacks: &'static [&'static str],
    body: Option<&'static [u8]>,
    /// Trailer fields of a chunked (or h2) body, when checked.
    trailers: Option<&'static [(&'static str, &'static str)]>,
}

impl Reply {
    const fn status(status: u16) -> Reply {
        Reply {
            status,
            has: &[],
            lacks: &[],
            body: None,
            trailers: None,
        }
    }
}

/// The backend's scripted default answer, as the client gets it.
const OK: Reply = Reply {
    status: 200,
    has: &[("via", "1.1 cutover")],
    lacks: &[],
    body: Some(b"ok"),
    trailers: None,
};

#[derive(Clone, Copy, Debug)]
enum Backend {
    /// No complete request reached it (a prefix of a body may have).
    Nothing,
    /// Exactly these requests, in order.
    Got(&'static [Sent]),
}

/// A request as the backend must get it. Its fields are exactly: the five cutover adds
/// (see [`cutover_fields`]) and `fields`, compared as a multiset with names lowercased
/// and values exact; the framing field (Content-Length or Transfer-Encoding) is not
/// compared, the decoded body is.
#[derive(Clone, Copy, Debug)]
struct Sent {
    method: &'static str,
    /// Origin-form; the request line is `{method} {target} HTTP/1.1`.
    target: &'static str,
    host: &'static str,
    forwarded_for: &'static str,
    fields: &'static [(&'static str, &'static str)],
    body: &'static [u8],
}

const GET: Sent = Sent {
    method: "GET",
    target: "/",
    host: "app.example",
    forwarded_for: "127.0.0.1",
    fields: &[],
    body: b"",
};

/// The fields cutover adds to every forwarded request.
fn cutover_fields(sent: &Sent, proto: &str) -> Vec<(String, String)> {
    [
        ("host", sent.host),
        ("x-forwarded-for", sent.forwarded_for),
        ("x-forwarded-proto", proto),
        ("x-forwarded-host", sent.host),
        ("via", "1.1 cutover"),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v.to_owned()))
    .collect()
}

/// Forwarded as `sent`; the client gets the backend's `ok` on a connection kept open.
const fn forwarded(sent: &'static [Sent]) -> Expect {
    Expect {
        client: &[OK],
        closed: Some(false),
        stream_reset: false,
        backend: Backend::Got(sent),
    }
}

/// Refused with `status`: the backend gets nothing and the connection is closed.
const REFUSED_400: Expect = Expect {
    client: &[Reply::status(400)],
    closed: Some(true),
    stream_reset: false,
    backend: Backend::Nothing,
};
const REFUSED_414: Expect = Expect {
    client: &[Reply::status(414)],
    ..REFUSED_400
};
const REFUSED_431: Expect = Expect {
    client: &[Reply::status(431)],
    ..REFUSED_400
};

/// The request of every response row, and what the backend gets of it.
const FETCH: &[u8] = b"GET /r HTTP/1.1\r\nHost: app.example\r\n\r\n";
const FETCHED: Sent = Sent {
    target: "/r",
    ..GET
};

/// A chunked response with a trailer field, and what the client must get of it.
const TRAILED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
    5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 1\r\n\r\n";
const TRAILED_REPLY: Reply = Reply {
    body: Some(b"hello world"),
    trailers: Some(&[("x-sum", "1")]),
    ..OK
};

/// On hyper's HTTP/1.1 path a response's trailer fields are dropped.
const TRAILER_DROPPED: &[(Path, Expect, &str)] = &[(
    Path::Hyper,
    Expect {
        client: &[Reply {
            trailers: Some(&[]),
            ..TRAILED_REPLY
        }],
        closed: Some(false),
        stream_reset: false,
        backend: Backend::Got(&[FETCHED]),
    },
    "hyper's HTTP/1.1 server writes a trailer field only when the request had \
     `TE: trailers` and the response's Trailer field names it (hyper proto/h1/conn.rs \
     write_trailers, encode.rs encode_trailers); cutover removes Trailer as hop-by-hop, \
     so this path sends the body whole and no trailer",
)];

/// What the runner reports when the proxy closes the connection with no answer at all.
const ABORTED: &str = "closed before a whole answer (have \"\")";

/// A response the proxy cannot pass on: 502, and the backend got the request.
const BAD_GATEWAY: Expect = Expect {
    client: &[Reply::status(502)],
    closed: None,
    stream_reset: false,
    backend: Backend::Got(&[FETCHED]),
};

/// The h2 layer below cutover resets the stream (RFC 9113 §8.1.1): no answer, and the
/// backend gets nothing.
const H2_RESET: Expect = Expect {
    client: &[],
    closed: None,
    stream_reset: true,
    backend: Backend::Nothing,
};

/// Why a malformed Content-Length never reaches cutover over h2.
const H2_LENGTH: &str = "the h2 crate below hyper resets a stream whose content-length \
     fields do not parse as one number, or disagree (h2 proto/streams/recv.rs, \
     RFC 9113 §8.1.1), before cutover sees the request";

const REQUEST_ROW: Case = Case {
    name: "",
    rfc: "",
    kind: Kind::Request,
    request: b"",
    response: DEFAULT_RESPONSE,
    expect: REFUSED_400,
    h2: H2::Applies,
    reuse: Reuse::Unchecked,
    differs: &[],
};

const RESPONSE_ROW: Case = Case {
    kind: Kind::Response,
    request: FETCH,
    reuse: Reuse::NotReused,
    ..REQUEST_ROW
};

// Reasons a row cannot be said in HTTP/2.
const CONNECTION_SPECIFIC: &str =
    "connection-specific fields do not exist in HTTP/2 (RFC 9113 §8.2.2)";
const TRANSFER_CODING: &str = "HTTP/2 has no Transfer-Encoding: DATA frames carry the body";
const NO_AUTHORITY: &str = "not an authority: the h2 client cannot send it as :authority";
const ONE_AUTHORITY: &str = "h2 has one :authority; a second Host cannot be sent alongside";
const ABSOLUTE_FORM: &str = "absolute-form is HTTP/1.1 syntax; h2 always sends :authority";
const HTTP_10: &str = "an HTTP/1.0 request has no HTTP/2 form";

// === long heads, built at compile time ===

/// `prefix`, then `fill` repeated, then `suffix`: exactly N bytes.
const fn build<const N: usize>(prefix: &[u8], fill: &[u8], suffix: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let middle = N - prefix.len() - suffix.len();
    assert!(middle % fill.len() == 0, "the fill does not fit whole");
    let mut i = 0;
    while i < N {
        out[i] = if i < prefix.len() {
            prefix[i]
        } else if i < prefix.len() + middle {
            fill[(i - prefix.len()) % fill.len()]
        } else {
            suffix[i - prefix.len() - middle]
        };
        i += 1;
    }
    out
}

const fn ascii(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(_) => panic!("not ASCII"),
    }
}

// A head of exactly MAX_REQUEST_HEAD bytes, written canonically, and one byte more.
const BIG_HEAD: &[u8] = b"GET /big-head HTTP/1.1\r\nHost: app.example\r\nX-Pad: ";
const END: &[u8] = b"\r\n\r\n";
static HEAD_AT_LIMIT: [u8; MAX_REQUEST_HEAD] = build(BIG_HEAD, b"a", END);
static HEAD_PAST_LIMIT: [u8; MAX_REQUEST_HEAD + 1] = build(BIG_HEAD, b"a", END);
const PAD_AT_LIMIT: [u8; MAX_REQUEST_HEAD - BIG_HEAD.len() - END.len()] =
    [b'a'; MAX_REQUEST_HEAD - BIG_HEAD.len() - END.len()];

// Host and then MAX_HEADERS - 1 more fields, and one field more.
const MANY: &[u8] = b"GET /many HTTP/1.1\r\nHost: app.example\r\n";
const ONE_FIELD: &[u8] = b"X-F: 1\r\n";
static FIELDS_AT_LIMIT: [u8; MANY.len() + (MAX_HEADERS - 1) * ONE_FIELD.len() + 2] =
    build(MANY, ONE_FIELD, b"\r\n");
static FIELDS_PAST_LIMIT: [u8; MANY.len() + MAX_HEADERS * ONE_FIELD.len() + 2] =
    build(MANY, ONE_FIELD, b"\r\n");

// A request-target of exactly MAX_URI bytes, and one byte more.
const AFTER_URI: &[u8] = b" HTTP/1.1\r\nHost: app.example\r\n\r\n";
static URI_AT_LIMIT: [u8; 4 + MAX_URI + AFTER_URI.len()] = build(b"GET /", b"u", AFTER_URI);
static URI_PAST_LIMIT: [u8; 5 + MAX_URI + AFTER_URI.len()] = build(b"GET /", b"u", AFTER_URI);
const TARGET_AT_LIMIT: [u8; MAX_URI] = build(b"/", b"u", b"");

// A response head of exactly MAX_RESPONSE_HEAD bytes (then a body of 2), and one more.
const BIG_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-pad: ";
const RESPONSE_END: &[u8] = b"\r\n\r\nok";
static RESPONSE_AT_LIMIT: [u8; MAX_RESPONSE_HEAD + 2] = build(BIG_RESPONSE, b"r", RESPONSE_END);
static RESPONSE_PAST_LIMIT: [u8; MAX_RESPONSE_HEAD + 3] = build(BIG_RESPONSE, b"r", RESPONSE_END);

// === the table ===

const XFF_UNTRUSTED: Case = Case {
    name: "X-Forwarded-For from an untrusted peer is replaced by the peer's address",
    rfc: "RFC 7239 §5.2 (X-Forwarded-For, de facto)",
    request: b"GET /xff HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n",
    expect: forwarded(&[Sent {
        target: "/xff",
        ..GET
    }]),
    ..REQUEST_ROW
};

const XFF_TRUSTED: Case = Case {
    name: "X-Forwarded-For from a trusted peer is appended to",
    expect: forwarded(&[Sent {
        target: "/xff",
        forwarded_for: "203.0.113.9, 127.0.0.1",
        ..GET
    }]),
    ..XFF_UNTRUSTED
};

const MALFORMED_CHUNK_SIZE: Case = Case {
    name: "A chunked upload with a chunk size that is not hex is refused",
    rfc: "RFC 9112 §7.1",
    request: b"POST /upload HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n\
               zz\r\nabc\r\n0\r\n\r\n",
    expect: REFUSED_400,
    h2: H2::NotApplicable(TRANSFER_CODING),
    ..REQUEST_ROW
};

static CASES: &[Case] = &[
    // --- plain requests ---
    Case {
        name: "A plain GET reaches the backend with the client's fields and cutover's five",
        rfc: "RFC 9110 §7.6",
        request: b"GET /plain?q=1 HTTP/1.1\r\nHost: app.example\r\nAccept: text/plain\r\n\
                   User-Agent: conformance\r\n\r\n",
        expect: forwarded(&[Sent {
            target: "/plain?q=1",
            fields: &[("accept", "text/plain"), ("user-agent", "conformance")],
            ..GET
        }]),
        ..REQUEST_ROW
    },
    Case {
        name: "A POST with a Content-Length body reaches the backend with that body",
        rfc: "RFC 9112 §6.2",
        request: b"POST /submit HTTP/1.1\r\nHost: app.example\r\nContent-Type: text/plain\r\n\
                   Content-Length: 11\r\n\r\nhello world",
        expect: forwarded(&[Sent {
            method: "POST",
            target: "/submit",
            fields: &[("content-type", "text/plain")],
            body: b"hello world",
            ..GET
        }]),
        ..REQUEST_ROW
    },
    Case {
        name: "A chunked upload reaches the backend decoded",
        rfc: "RFC 9112 §7.1",
        request:
            b"POST /upload HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n\
                   5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        expect: forwarded(&[Sent {
            method: "POST",
            target: "/upload",
            body: b"hello world",
            ..GET
        }]),
        h2: H2::NotApplicable(TRANSFER_CODING),
        ..REQUEST_ROW
    },
    Case {
        name: "Transfer-Encoding names are case-insensitive: `Chunked` is chunked",
        rfc: "RFC 9112 §7",
        request:
            b"POST /upload HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: Chunked\r\n\r\n\
                   5\r\nhello\r\n0\r\n\r\n",
        expect: forwarded(&[Sent {
            method: "POST",
            target: "/upload",
            body: b"hello",
            ..GET
        }]),
        h2: H2::NotApplicable(TRANSFER_CODING),
        ..REQUEST_ROW
    },
    Case {
        name: "Two pipelined requests are both forwarded and answered in order",
        rfc: "RFC 9112 §9.3.2",
        request: b"GET /one HTTP/1.1\r\nHost: app.example\r\n\r\n\
                   GET /two HTTP/1.1\r\nHost: app.example\r\n\r\n",
        expect: Expect {
            client: &[OK, OK],
            closed: Some(false),
            stream_reset: false,
            backend: Backend::Got(&[
                Sent {
                    target: "/one",
                    ..GET
                },
                Sent {
                    target: "/two",
                    ..GET
                },
            ]),
        },
        ..REQUEST_ROW
    },
    // --- Host ---
    Case {
        name: "An HTTP/1.1 request without Host is refused",
        rfc: "RFC 9112 §3.2",
        request: b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
        expect: REFUSED_400,
        h2: H2::NotApplicable("there is no Host to send as :authority"),
        ..REQUEST_ROW
    },
    Case {
        name: "A request with two different Host fields is refused",
        rfc: "RFC 9112 §3.2",
        request: b"GET / HTTP/1.1\r\nHost: app.example\r\nHost: other.example\r\n\r\n",
        expect: REFUSED_400,
        h2: H2::NotApplicable(ONE_AUTHORITY),
        ..REQUEST_ROW
    },
    Case {
        name: "A request with two equal Host fields is refused",
        rfc: "RFC 9112 §3.2",
        request: b"GET / HTTP/1.1\r\nHost: app.example\r\nHost: app.example\r\n\r\n",
        expect: REFUSED_400,
        h2: H2::NotApplicable(ONE_AUTHORITY),
        ..REQUEST_ROW
    },
    Case {
        name: "A Host with a space in it is refused",
        rfc: "RFC 9112 §3.2, RFC 3986 §3.2.2",
        request: b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        expect: REFUSED_400,
        h2: H2::NotApplicable(NO_AUTHORITY),
        ..REQUEST_ROW
    },
    Case {
        name: "A Host with a slash in it is refused",
        rfc: "RFC 9112 §3.2, RFC 3986 §3.2.2",
        request: b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        expect: REFUSED_400,
        h2: H2::NotApplicable(NO_AUTHORITY),
        ..REQUEST_ROW
    },
    Case {
        name: "A Host whose port is not a number is refused",
        rfc: "RFC 9112 §3.2, RFC 3986 §3.2.3",
        request: b"GET / HTTP/1.1\r\nHost: a:port\r\n\r\n",
        expect: REFUSED_400,
        h2: H2::NotApplicable(NO_AUTHORITY),
        ..REQUEST_ROW
    },
    Case {
        name: "A Host whose port is past 65535 is refused",
        rfc: "RFC 9112 §3.2, RFC 3986 §3.2.3",
        request: b"GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n",
        expect: REFUSED_400,
        ..REQUEST_ROW
    },
    Case {
        name: "A Host with userinfo is refused",
        rfc: "RFC 9112 §3.2, RFC 9110 §4.2.4",
        request: b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n",
        expect: REFUSED_400,
        ..REQUEST_ROW
    },
    Case {
        name: "An empty Host is refused",
        rfc: "RFC 9112 §3.2, RFC 9110 §4.2.1",
        request: b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
        expect: REFUSED_400,
        h2: H2::NotApplicable(NO_AUTHORITY),
        ..REQUEST_ROW
    },
    Case {
        name: "An absolute-form target's authority replaces Host, and the target becomes origin-form",
        rfc: "RFC 9112 §3.2.2",
        request: b"GET http://origin.example:81/x?y=1 HTTP/1.1\r\nHost: other.example\r\n\r\n",
        expect: forwarded(&[Sent {
            target: "/x?y=1",
            host: "origin.example:81",
            ..GET
        }]),
        h2: H2::NotApplicable(ABSOLUTE_FORM),
        ..REQUEST_ROW
    },
    Case {
        name: "An absolute-form target with userinfo is refused",
        rfc: "RFC 9110 §4.2.4",
        request: b"GET http://user:pw@origin.example/x HTTP/1.1\r\nHost: origin.example\r\n\r\n",
        expect: REFUSED_400,
        h2: H2::NotApplicable(ABSOLUTE_FORM),
        ..REQUEST_ROW
    },
    Case {
        name: "An absolute-form target with a bad port is refused",
        rfc: "RFC 9112 §3.2.2, RFC 3986 §3.2.3",
        request: b"GET http://origin.example:port/x HTTP/1.1\r\nHost: origin.example\r\n\r\n",
        expect: REFUSED_400,
        h2: H2::NotApplicable(ABSOLUTE_FORM),
        ..REQUEST_ROW
    },
    // --- fields cutover sets ---
    XFF_UNTRUSTED,
    Case {
        name: "The client's X-Forwarded-Host and X-Forwarded-Proto are replaced",
        rfc: "RFC 7239 §5.3, §5.4 (X-Forwarded-*, de facto)",
        request: b"GET / HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-Host: evil.example\r\n\
                   X-Forwarded-Proto: https\r\n\r\n",
        expect: forwarded(&[GET]),
        ..REQUEST_ROW
    },
    // --- hop-by-hop fields ---
    Case {
        name: "A field named in Connection is removed",
        rfc: "RFC 9110 §7.6.1",
        request: b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: x-secret\r\nX-Secret: 1\r\n\
                   X-Kept: 2\r\n\r\n",
        expect: forwarded(&[Sent {
            fields: &[("x-kept", "2")],
            ..GET
        }]),
        h2: H2::NotApplicable(CONNECTION_SPECIFIC),
        ..REQUEST_ROW
    },
    Case {
        name: "Ten fields named in Connection are all removed",
        rfc: "RFC 9110 §7.6.1",
        request: b"GET / HTTP/1.1\r\nHost: app.example\r\n\
                   Connection: x-a, x-b, x-c, x-d, x-e, x-f, x-g, x-h, x-i, x-j\r\n\
                   X-A: 1\r\nX-B: 1\r\nX-C: 1\r\nX-D: 1\r\nX-E: 1\r\nX-F: 1\r\nX-G: 1\r\n\
                   X-H: 1\r\nX-I: 1\r\nX-J: 1\r\nX-Kept: 2\r\n\r\n",
        expect: forwarded(&[Sent {
            fields: &[("x-kept", "2")],
            ..GET
        }]),
        h2: H2::NotApplicable(CONNECTION_SPECIFIC),
        ..REQUEST_ROW
    },
    Case {
        name: "Connection cannot remove Host or Content-Length",
        rfc: "RFC 9110 §7.6.1",
        request: b"POST /p HTTP/1.1\r\nHost: app.example\r\nConnection: host, content-length\r\n\
                   Content-Length: 3\r\n\r\nabc",
        expect: forwarded(&[Sent {
            method: "POST",
            target: "/p",
            body: b"abc",
            ..GET
        }]),
        h2: H2::NotApplicable(CONNECTION_SPECIFIC),
        ..REQUEST_ROW
    },
    Case {
        name: "Connection naming X-Forwarded-For removes the client's copy; cutover's stays",
        rfc: "RFC 9110 §7.6.1",
        request: b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: x-forwarded-for\r\n\
                   X-Forwarded-For: 203.0.113.9\r\n\r\n",
        expect: forwarded(&[GET]),
        h2: H2::NotApplicable(CONNECTION_SPECIFIC),
        ..REQUEST_ROW
    },
    Case {
        name: "Keep-Alive is removed",
        rfc: "RFC 9110 §7.6.1, RFC 2068 §19.7.1",
        request:
            b"GET / HTTP/1.1\r\nHost: app.example\r\nKeep-Alive: timeout=5\r\nX-Kept: 2\r\n\r\n",
        expect: forwarded(&[Sent {
            fields: &[("x-kept", "2")],
            ..GET
        }]),
        h2: H2::NotApplicable(CONNECTION_SPECIFIC),
        ..REQUEST_ROW
    },
    Case {
        name: "Proxy-Connection is removed",
        rfc: "RFC 9110 §7.6.1, RFC 9113 §8.2.2",
        request: b"GET / HTTP/1.1\r\nHost: app.example\r\nProxy-Connection: keep-alive\r\n\
                   X-Kept: 2\r\n\r\n",
        expect: forwarded(&[Sent {
            fields: &[("x-kept", "2")],
            ..GET
        }]),
        h2: H2::NotApplicable(CONNECTION_SPECIFIC),
        ..REQUEST_ROW
    },
    Case {
        name: "TE is removed",
        rfc: "RFC 9110 §10.1.4",
        request: b"GET / HTTP/1.1\r\nHost: app.example\r\nTE: trailers\r\nX-Kept: 2\r\n\r\n",
        expect: forwarded(&[Sent {
            fields: &[("x-kept", "2")],
            ..GET
        }]),
        h2: H2::NotApplicable(CONNECTION_SPECIFIC),
        ..REQUEST_ROW
    },
    Case {
        name: "Trailer is removed",
        rfc: "RFC 9110 §6.6.2, §7.6.1",
        request: b"GET / HTTP/1.1\r\nHost: app.example\r\nTrailer: x-sum\r\nX-Kept: 2\r\n\r\n",
        expect: forwarded(&[Sent {
            fields: &[("x-kept", "2")],
            ..GET
        }]),
        ..REQUEST_ROW
    },
    Case {
        name: "A field name with an underscore is dropped",
        rfc: "RFC 9110 §5.1 (policy: headers_with_underscores = drop)",
        request: b"GET / HTTP/1.1\r\nHost: app.example\r\nX_Secret: 1\r\nX-Kept: 2\r\n\r\n",
        expect: forwarded(&[Sent {
            fields: &[("x-kept", "2")],
            ..GET
        }]),
        ..REQUEST_ROW
    },
    // --- request-target ---
    Case {
        name: "A request-target's fragment is cut off before forwarding",
        rfc: "RFC 9112 §3.2, RFC 9110 §4.2.5 (policy: as hyper's URI parser does)",
        request: b"GET /a#frag HTTP/1.1\r\nHost: app.example\r\n\r\n",
        expect: forwarded(&[Sent {
            target: "/a",
            ..GET
        }]),
        h2: H2::NotApplicable("http::Uri drops a fragment: the h2 client cannot send one"),
        ..REQUEST_ROW
    },
    Case {
        name: "A request-target with a byte outside visible ASCII is refused",
        rfc: "RFC 9112 §3.2, RFC 3986 §2",
        request: b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: app.example\r\n\r\n",
        expect: REFUSED_400,
        h2: H2::NotApplicable("http::Uri refuses non-ASCII bytes: the h2 client cannot send them"),
        ..REQUEST_ROW
    },
    // --- Transfer-Encoding ---
    Case {
        name: "Transfer-Encoding gzip alone is refused",
        rfc: "RFC 9112 §6.3",
        request: b"POST /u HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: gzip\r\n\r\n",
        expect: REFUSED_400,
        h2: H2::NotApplicable(TRANSFER_CODING),
        ..REQUEST_ROW
    },
    Case {
        name: "Transfer-Encoding `gzip, chunked` is refused",
        rfc: "RFC 9112 §6.1 (policy: exactly one chunked)",
        request:
            b"POST /u HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                   3\r\nabc\r\n0\r\n\r\n",
        expect: REFUSED_400,
        h2: H2::NotApplicable(TRANSFER_CODING),
        ..REQUEST_ROW
    },
    Case {
        name: "Transfer-Encoding `chunked, chunked` is refused",
        rfc: "RFC 9112 §6.1",
        request:
            b"POST /u HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked, chunked\r\n\r\n\
                   3\r\nabc\r\n0\r\n\r\n",
        expect: REFUSED_400,
        h2: H2::NotApplicable(TRANSFER_CODING),
        ..REQUEST_ROW
    },
    Case {
        name: "Transfer-Encoding chunked in two fields is refused",
        rfc: "RFC 9112 §6.1, RFC 9110 §5.3",
        request: b"POST /u HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\
                   Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        expect: REFUSED_400,
        h2: H2::NotApplicable(TRANSFER_CODING),
        ..REQUEST_ROW
    },
    Case {
        name: "Transfer-Encoding with an empty member is refused",
        rfc: "RFC 9112 §6.1, RFC 9110 §5.6.1",
        request: b"POST /u HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: , chunked\r\n\r\n\
                   3\r\nabc\r\n0\r\n\r\n",
        expect: REFUSED_400,
        h2: H2::NotApplicable(TRANSFER_CODING),
        ..REQUEST_ROW
    },
    Case {
        name: "Transfer-Encoding in an HTTP/1.0 request is refused",
        rfc: "RFC 9112 §6.1",
        request: b"POST /u HTTP/1.0\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n\
                   3\r\nabc\r\n0\r\n\r\n",
        expect: REFUSED_400,
        h2: H2::NotApplicable(HTTP_10),
        ..REQUEST_ROW
    },
    Case {
        name: "Transfer-Encoding together with Content-Length is refused",
        rfc: "RFC 9112 §6.1, §6.3",
        request: b"POST /u HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\
                   Content-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        expect: REFUSED_400,
        h2: H2::NotApplicable(TRANSFER_CODING),
        differs: &[(
            Path::Hyper,
            Expect {
                client: &[OK],
                closed: Some(true),
                stream_reset: false,
                backend: Backend::Got(&[Sent {
                    method: "POST",
                    target: "/u",
                    body: b"abc",
                    ..GET
                }]),
            },
            "hyper's HTTP/1.1 server drops Content-Length when Transfer-Encoding is \
             chunked, reads the chunked body and closes after answering: the request \
             never reaches cutover with both",
        )],
        ..REQUEST_ROW
    },
    MALFORMED_CHUNK_SIZE,
    Case {
        name: "A chunked upload without CRLF after a chunk's data is refused",
        rfc: "RFC 9112 §7.1",
        request:
            b"POST /upload HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n\
                   3\r\nabcX\r\n0\r\n\r\n",
        expect: REFUSED_400,
        h2: H2::NotApplicable(TRANSFER_CODING),
        ..REQUEST_ROW
    },
    // --- Content-Length ---
    Case {
        name: "Content-Length -1 is refused",
        rfc: "RFC 9110 §8.6, RFC 9112 §6.3",
        request: b"POST /u HTTP/1.1\r\nHost: app.example\r\nContent-Length: -1\r\n\r\nhello",
        expect: REFUSED_400,
        differs: &[(Path::H2, H2_RESET, H2_LENGTH)],
        ..REQUEST_ROW
    },
    Case {
        name: "Content-Length +5 is refused",
        rfc: "RFC 9110 §8.6, RFC 9112 §6.3",
        request: b"POST /u HTTP/1.1\r\nHost: app.example\r\nContent-Length: +5\r\n\r\nhello",
        expect: REFUSED_400,
        differs: &[(Path::H2, H2_RESET, H2_LENGTH)],
        ..REQUEST_ROW
    },
    Case {
        name: "Content-Length 0x5 is refused",
        rfc: "RFC 9110 §8.6, RFC 9112 §6.3",
        request: b"POST /u HTTP/1.1\r\nHost: app.example\r\nContent-Length: 0x5\r\n\r\nhello",
        expect: REFUSED_400,
        differs: &[(Path::H2, H2_RESET, H2_LENGTH)],
        ..REQUEST_ROW
    },
    Case {
        name: "Content-Length `5 5` is refused",
        rfc: "RFC 9110 §8.6, RFC 9112 §6.3",
        request: b"POST /u HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5 5\r\n\r\nhello",
        expect: REFUSED_400,
        differs: &[(Path::H2, H2_RESET, H2_LENGTH)],
        ..REQUEST_ROW
    },
    Case {
        name: "Content-Length `5, 5` (a list in one field) is refused",
        rfc: "RFC 9110 §8.6, RFC 9112 §6.3 (policy: no lists)",
        request: b"POST /u HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5, 5\r\n\r\nhello",
        expect: REFUSED_400,
        differs: &[(Path::H2, H2_RESET, H2_LENGTH)],
        ..REQUEST_ROW
    },
    Case {
        name: "An empty Content-Length is refused",
        rfc: "RFC 9110 §8.6, RFC 9112 §6.3",
        request: b"POST /u HTTP/1.1\r\nHost: app.example\r\nContent-Length: \r\n\r\nhello",
        expect: REFUSED_400,
        h2: H2::NotApplicable(
            "the h2 crate reads an empty content-length as 0 and resets the stream when \
             DATA exceeds it, racing cutover's 400: either way nothing is forwarded",
        ),
        ..REQUEST_ROW
    },
    Case {
        name: "Two different Content-Length fields are refused",
        rfc: "RFC 9110 §8.6, RFC 9112 §6.3",
        request: b"POST /u HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\n\
                   Content-Length: 6\r\n\r\nhello!",
        expect: REFUSED_400,
        differs: &[(Path::H2, H2_RESET, H2_LENGTH)],
        ..REQUEST_ROW
    },
    Case {
        name: "Two equal Content-Length fields merge into one",
        rfc: "RFC 9110 §8.6",
        request: b"POST /u HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\n\
                   Content-Length: 5\r\n\r\nhello",
        expect: forwarded(&[Sent {
            method: "POST",
            target: "/u",
            body: b"hello",
            ..GET
        }]),
        ..REQUEST_ROW
    },
    // --- head limits ---
    Case {
        name: "A head of exactly max_request_head bytes is forwarded",
        rfc: "RFC 6585 §5",
        kind: Kind::Limit,
        request: &HEAD_AT_LIMIT,
        expect: forwarded(&[Sent {
            target: "/big-head",
            fields: &[("x-pad", ascii(&PAD_AT_LIMIT))],
            ..GET
        }]),
        ..REQUEST_ROW
    },
    Case {
        name: "A head one byte over max_request_head gets 431",
        rfc: "RFC 6585 §5",
        kind: Kind::Limit,
        request: &HEAD_PAST_LIMIT,
        expect: REFUSED_431,
        ..REQUEST_ROW
    },
    Case {
        name: "A request of exactly max_headers fields is forwarded",
        rfc: "RFC 6585 §5",
        kind: Kind::Limit,
        request: &FIELDS_AT_LIMIT,
        expect: forwarded(&[Sent {
            target: "/many",
            fields: &[("x-f", "1"); MAX_HEADERS - 1],
            ..GET
        }]),
        ..REQUEST_ROW
    },
    Case {
        name: "A request of one field more than max_headers gets 431",
        rfc: "RFC 6585 §5",
        kind: Kind::Limit,
        request: &FIELDS_PAST_LIMIT,
        expect: REFUSED_431,
        ..REQUEST_ROW
    },
    Case {
        name: "A request-target of exactly max_uri bytes is forwarded",
        rfc: "RFC 9110 §15.5.15",
        kind: Kind::Limit,
        request: &URI_AT_LIMIT,
        expect: forwarded(&[Sent {
            target: ascii(&TARGET_AT_LIMIT),
            ..GET
        }]),
        ..REQUEST_ROW
    },
    Case {
        name: "A request-target one byte over max_uri gets 414",
        rfc: "RFC 9110 §15.5.15",
        kind: Kind::Limit,
        request: &URI_PAST_LIMIT,
        expect: REFUSED_414,
        ..REQUEST_ROW
    },
    // --- responses ---
    Case {
        name: "A response loses hop-by-hop fields and those Connection names, gains Via and Date",
        rfc: "RFC 9110 §7.6.1, §7.6.3, §6.6.1",
        response: b"HTTP/1.1 200 OK\r\nConnection: x-backend-secret\r\nX-Backend-Secret: 1\r\n\
                    Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n\
                    X-End-To-End: kept\r\nContent-Length: 5\r\n\r\nhello",
        expect: Expect {
            client: &[Reply {
                status: 200,
                has: &[
                    ("via", "1.1 cutover"),
                    ("x-end-to-end", "kept"),
                    ("date", "*"),
                ],
                lacks: &[
                    "x-backend-secret",
                    "keep-alive",
                    "proxy-connection",
                    "upgrade",
                ],
                body: Some(b"hello"),
                trailers: None,
            }],
            closed: Some(false),
            stream_reset: false,
            backend: Backend::Got(&[FETCHED]),
        },
        reuse: Reuse::Reused,
        ..RESPONSE_ROW
    },
    Case {
        name: "A response with Content-Length and Transfer-Encoding gets 502",
        rfc: "RFC 9112 §6.3",
        response: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5\r\nhello\r\n0\r\n\r\n",
        expect: BAD_GATEWAY,
        ..RESPONSE_ROW
    },
    Case {
        name: "A response with two different Content-Length fields gets 502",
        rfc: "RFC 9112 §6.3",
        response: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        expect: BAD_GATEWAY,
        ..RESPONSE_ROW
    },
    Case {
        name: "A response with two equal Content-Length fields passes as one",
        rfc: "RFC 9110 §8.6",
        response: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        expect: Expect {
            client: &[Reply {
                body: Some(b"hello"),
                ..OK
            }],
            closed: Some(false),
            stream_reset: false,
            backend: Backend::Got(&[FETCHED]),
        },
        reuse: Reuse::Reused,
        ..RESPONSE_ROW
    },
    Case {
        name: "A response with Content-Length `5, 5` gets 502",
        rfc: "RFC 9112 §6.3 (policy: no lists)",
        response: b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
        expect: BAD_GATEWAY,
        ..RESPONSE_ROW
    },
    Case {
        name: "A response with a non-numeric Content-Length gets 502",
        rfc: "RFC 9112 §6.3",
        response: b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\nhello",
        expect: BAD_GATEWAY,
        ..RESPONSE_ROW
    },
    Case {
        name: "A response with Transfer-Encoding `gzip, chunked` gets 502",
        rfc: "RFC 9112 §6.3 (policy: exactly chunked)",
        response: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                    5\r\nhello\r\n0\r\n\r\n",
        expect: BAD_GATEWAY,
        ..RESPONSE_ROW
    },
    Case {
        name: "A response with Transfer-Encoding gzip gets 502",
        rfc: "RFC 9112 §6.3 (policy: exactly chunked)",
        response: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        expect: BAD_GATEWAY,
        ..RESPONSE_ROW
    },
    Case {
        name: "A response whose status code is not three digits gets 502",
        rfc: "RFC 9112 §4",
        response: b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok",
        expect: BAD_GATEWAY,
        ..RESPONSE_ROW
    },
    Case {
        name: "A response in HTTP/9.9 gets 502",
        rfc: "RFC 9112 §2.3",
        response: b"HTTP/9.9 200 OK\r\nContent-Length: 2\r\n\r\nok",
        expect: BAD_GATEWAY,
        ..RESPONSE_ROW
    },
    Case {
        name: "A response that is not HTTP gets 502",
        rfc: "RFC 9112 §4",
        response: b"hello\r\n\r\n",
        expect: BAD_GATEWAY,
        ..RESPONSE_ROW
    },
    Case {
        name: "A response head of exactly max_response_head bytes passes",
        rfc: "RFC 9110 §15.6.3",
        kind: Kind::Limit,
        response: &RESPONSE_AT_LIMIT,
        expect: Expect {
            client: &[Reply {
                has: &[("via", "1.1 cutover"), ("x-pad", "*")],
                ..OK
            }],
            closed: Some(false),
            stream_reset: false,
            backend: Backend::Got(&[FETCHED]),
        },
        reuse: Reuse::Reused,
        ..RESPONSE_ROW
    },
    Case {
        name: "A response head one byte over max_response_head gets 502",
        rfc: "RFC 9110 §15.6.3",
        kind: Kind::Limit,
        response: &RESPONSE_PAST_LIMIT,
        expect: BAD_GATEWAY,
        ..RESPONSE_ROW
    },
    Case {
        name: "A 103 before the final response does not reach the client",
        rfc: "RFC 9110 §15.2, RFC 8297",
        response: b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n\
                    HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        expect: forwarded(&[FETCHED]),
        reuse: Reuse::Reused,
        ..RESPONSE_ROW
    },
    Case {
        name: "An unsolicited 100 before the final response does not reach the client",
        rfc: "RFC 9110 §15.2.1",
        response: b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        expect: forwarded(&[FETCHED]),
        reuse: Reuse::Reused,
        ..RESPONSE_ROW
    },
    Case {
        name: "A chunked response reaches the client whole, with its trailer",
        rfc: "RFC 9112 §7.1.2, RFC 9110 §6.5",
        response: TRAILED,
        expect: Expect {
            client: &[TRAILED_REPLY],
            closed: Some(false),
            stream_reset: false,
            backend: Backend::Got(&[FETCHED]),
        },
        // hyper's client (hyper and h2 paths) opens a new backend connection after a
        // response with trailers; the spec asks nothing about reuse here.
        reuse: Reuse::Unchecked,
        differs: TRAILER_DROPPED,
        ..RESPONSE_ROW
    },
    Case {
        name: "A chunked response's trailer reaches a client that sent TE: trailers",
        rfc: "RFC 9110 §10.1.4, §6.5.1",
        request: b"GET /r HTTP/1.1\r\nHost: app.example\r\nTE: trailers\r\n\r\n",
        response: TRAILED,
        expect: Expect {
            client: &[TRAILED_REPLY],
            closed: Some(false),
            stream_reset: false,
            backend: Backend::Got(&[FETCHED]),
        },
        h2: H2::NotApplicable(CONNECTION_SPECIFIC),
        reuse: Reuse::Unchecked,
        differs: TRAILER_DROPPED,
        ..RESPONSE_ROW
    },
    Case {
        name: "A chunked response whose first chunk size is not hex gets 502",
        rfc: "RFC 9112 §7.1, RFC 9110 §15.6.3",
        response: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        expect: BAD_GATEWAY,
        ..RESPONSE_ROW
    },
    Case {
        name: "A chunked response whose framing breaks after its first chunk, in what came with the head, gets 502",
        rfc: "RFC 9112 §7.1, RFC 9110 §15.6.3",
        response: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n",
        expect: BAD_GATEWAY,
        ..RESPONSE_ROW
    },
];

// === the runner ===

/// What came of one row on one path.
enum Verdict {
    Pass,
    Fail(String),
    NotApplicable(&'static str),
}

/// What the row expects on `path`: its own expectation, or the documented difference.
fn expectation(case: &Case, path: Path) -> Expect {
    case.differs
        .iter()
        .find(|(p, _, _)| *p == path.plain())
        .map_or(case.expect, |(_, e, _)| *e)
}

/// Runs `case` on `path` against a fresh backend and proxy started with `extra`.
async fn run(case: &'static Case, path: Path, extra: &'static str, upstream: Upstream) -> Verdict {
    if let (Path::H2, H2::NotApplicable(why)) = (path.plain(), case.h2) {
        return Verdict::NotApplicable(why);
    }
    let other = RawBackend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (backend, mut text) = match upstream {
        Upstream::Plain => {
            let backend = RawBackend::start().await;
            let text = support::config_text(dir.path(), &[backend.addr], &[other.addr], extra);
            (backend, text)
        }
        Upstream::Tls => https_backend(dir.path(), &other, extra).await,
    };
    let mut tls = None;
    if path.tls() {
        let ca = support::tls::TestCa::new("conformance listener CA");
        let issued = ca.issue(dir.path(), "server", &["localhost"]);
        text.push_str(&format!(
            "\n[listen.tls]\n{}",
            support::tls::cert_keys(&issued)
        ));
        tls = Some(ca.client_config(&[]));
    }
    let proxy = Proxy::from_text(dir, &text).await;
    let target = Target {
        addr: proxy.addr,
        tls,
    };
    check(&target, &backend, case, path).await
}

/// A raw backend behind TLS with a certificate from a CA made here, and the config of a
/// proxy whose blue pool is that backend as `https://`, trusting the CA.
async fn https_backend(
    dir: &std::path::Path,
    green: &RawBackend,
    extra: &str,
) -> (RawBackend, String) {
    let ca = support::tls::TestCa::new("conformance ca");
    let ca_file = ca.write(dir, "ca");
    let issued = ca.issue(dir, "backend", &["127.0.0.1"]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            cutover::pem::certificates(&issued.cert).expect("cert"),
            cutover::pem::private_key(&issued.key).expect("key"),
        )
        .expect("server config");
    let backend = RawBackend::start_tls(tokio_rustls::TlsAcceptor::from(Arc::new(server))).await;
    let plain = format!("\"{}\"", backend.addr);
    let text = support::config_text(dir, &[backend.addr], &[green.addr], extra)
        .replace(&plain, &format!("\"https://{}\"", backend.addr))
        + &format!("\n[pools.blue.tls]\nca = \"{}\"\n", ca_file.display());
    (backend, text)
}

/// Runs `case` on `path` through the proxy at `target`, whose live pool is `backend`.
async fn check(target: &Target, backend: &RawBackend, case: &Case, path: Path) -> Verdict {
    backend.respond_with(case.response);
    let expect = expectation(case, path);
    let before = backend.received().len();
    let client = match exchange(target, case, path, &expect).await {
        Ok(client) => client,
        Err(harness) => return Verdict::Fail(format!("harness: {harness}")),
    };
    let received = case_requests(&backend.received()[before..]);
    let mut problems = Vec::new();
    compare_client(&expect, &client, path, &mut problems);
    let proto = if path.tls() { "https" } else { "http" };
    compare_backend(&expect.backend, &received, proto, &mut problems);
    if !matches!(case.reuse, Reuse::Unchecked) {
        // The same again on a new client connection: did it get the same backend one?
        // (After a moment: hyper's client pools a connection once it has seen its end.)
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut again = Vec::new();
        match exchange(target, case, path, &expect).await {
            Ok(client) => compare_client(&expect, &client, path, &mut again),
            Err(harness) => again.push(format!("harness: {harness}")),
        }
        problems.extend(again.into_iter().map(|p| format!("second run: {p}")));
        let conns: BTreeSet<usize> = case_requests(&backend.received()[before..])
            .iter()
            .map(|r| r.conn)
            .collect();
        let wanted = if matches!(case.reuse, Reuse::Reused) {
            1
        } else {
            2
        };
        if conns.len() != wanted {
            problems.push(format!(
                "the two requests came on {} backend connection(s), expected {wanted}",
                conns.len()
            ));
        }
    }
    if problems.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!(
            "{}\n      client: {}\n      backend: {}",
            problems.join("\n      "),
            client.describe(),
            describe_received(&received)
        ))
    }
}

/// The backend's record without warm-up requests.
fn case_requests(all: &[Received]) -> Vec<Received> {
    all.iter()
        .filter(|r| r.target() != WARMUP_PATH)
        .cloned()
        .collect()
}

/// One answer as the client got it.
#[derive(Debug)]
struct Got {
    status: u16,
    fields: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

/// What the client saw of one exchange.
#[derive(Debug, Default)]
struct ClientSide {
    replies: Vec<Got>,
    /// Interim (1xx) answers seen before a final one.
    interim: Vec<u16>,
    /// Whether the proxy closed the connection after the answers (h1 paths, when the
    /// row checks it).
    closed: Option<bool>,
    /// h2: the proxy reset the stream instead of answering (the h2 error).
    reset: Option<String>,
    /// What went wrong on the wire: a timeout, a reset, bytes nobody asked for.
    trouble: Vec<String>,
}

impl ClientSide {
    fn describe(&self) -> String {
        let replies: Vec<String> = self
            .replies
            .iter()
            .map(|g| {
                format!(
                    "{} {:?} body {:?} trailers {:?}",
                    g.status,
                    g.fields,
                    lossy(&g.body, 80),
                    g.trailers
                )
            })
            .collect();
        format!(
            "[{}] interim {:?} closed {:?} reset {:?} trouble {:?}",
            replies.join(", "),
            self.interim,
            self.closed,
            self.reset,
            self.trouble
        )
    }
}

fn describe_received(received: &[Received]) -> String {
    if received.is_empty() {
        return "nothing".to_owned();
    }
    received
        .iter()
        .map(|r| format!("{:?}", lossy(&r.raw, 300)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn lossy(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned();
    if bytes.len() > max {
        format!("{text}...({} bytes)", bytes.len())
    } else {
        text
    }
}

/// Sends the row's request on `path`, reads the answers the row expects. `Err` when the
/// harness itself cannot do it (an h2 request that cannot be built).
async fn exchange(
    target: &Target,
    case: &Case,
    path: Path,
    expect: &Expect,
) -> Result<ClientSide, String> {
    match path.plain() {
        Path::H2 => h2_exchange(target, case).await,
        _ => Ok(h1_exchange(target, case, path, expect).await),
    }
}

async fn h1_exchange(target: &Target, case: &Case, path: Path, expect: &Expect) -> ClientSide {
    let mut out = ClientSide::default();
    let stream = match target.connect(false).await {
        Ok(stream) => stream,
        Err(e) => {
            out.trouble.push(e);
            return out;
        }
    };
    let mut wire = Wire {
        stream,
        buf: Vec::new(),
    };
    if path.plain() == Path::Hyper {
        if let Err(e) = wire.stream.write_all(WARMUP).await {
            out.trouble.push(format!("writing the warm-up: {e}"));
            return out;
        }
        match wire.reply(&mut out.interim, false).await {
            Ok(got) if got.status == 200 => {}
            Ok(got) => {
                out.trouble
                    .push(format!("the warm-up was answered {}", got.status));
                return out;
            }
            Err(e) => {
                out.trouble.push(format!("the warm-up: {e}"));
                return out;
            }
        }
    }
    if let Err(e) = wire.stream.write_all(case.request).await {
        out.trouble.push(format!("writing the request: {e}"));
    }
    let head = case.request.starts_with(b"HEAD ");
    for _ in 0..expect.client.len() {
        match wire.reply(&mut out.interim, head).await {
            Ok(got) => out.replies.push(got),
            Err(e) => {
                out.trouble.push(e);
                break;
            }
        }
    }
    if !wire.buf.is_empty() {
        out.trouble.push(format!(
            "bytes after the answers: {:?}",
            lossy(&wire.buf, 200)
        ));
        wire.buf.clear();
    }
    if expect.closed.is_some() && out.trouble.is_empty() {
        out.closed = Some(wire.closes(&mut out.trouble).await);
    }
    out
}

/// A client connection and what was read on it but not yet taken.
struct Wire {
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
}

impl Wire {
    /// Reads more; Ok(0) at the end of the stream.
    async fn fill(&mut self, deadline: Instant) -> Result<usize, String> {
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(format!(
                "no whole answer within {ANSWER_WITHIN:?} (have {:?})",
                lossy(&self.buf, 200)
            )),
            Ok(Err(e)) => Err(format!("read: {e}")),
            Ok(Ok(n)) => Ok(n),
        }
    }

    /// The next final answer; interim ones are noted in `interim` and skipped.
    async fn reply(&mut self, interim: &mut Vec<u16>, head: bool) -> Result<Got, String> {
        let deadline = Instant::now() + ANSWER_WITHIN;
        loop {
            let Some((len, status, fields)) = response_head(&self.buf)? else {
                if self.fill(deadline).await? == 0 {
                    return Err(format!(
                        "closed before a whole answer (have {:?})",
                        lossy(&self.buf, 200)
                    ));
                }
                continue;
            };
            self.buf.drain(..len);
            if (100..200).contains(&status) {
                interim.push(status);
                continue;
            }
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            };
            let mut got = Got {
                status,
                fields: fields.clone(),
                body: Vec::new(),
                trailers: Vec::new(),
            };
            if head || status == 204 || status == 304 {
                return Ok(got);
            }
            if field("transfer-encoding")
                .is_some_and(|te| te.to_ascii_lowercase().ends_with("chunked"))
            {
                loop {
                    match support::raw::dechunk(&self.buf) {
                        Dechunk::Done {
                            used,
                            body,
                            trailers,
                        } => {
                            self.buf.drain(..used);
                            got.body = body;
                            got.trailers = trailers;
                            return Ok(got);
                        }
                        Dechunk::Partial => {
                            if self.fill(deadline).await? == 0 {
                                return Err(format!(
                                    "{status}: closed mid chunked body (have {:?})",
                                    lossy(&self.buf, 200)
                                ));
                            }
                        }
                        Dechunk::Invalid(why) => {
                            return Err(format!("{status}: bad chunked body: {why}"));
                        }
                    }
                }
            }
            if let Some(length) = field("content-length") {
                let length: usize = length
                    .trim()
                    .parse()
                    .map_err(|_| format!("{status}: Content-Length {length:?}"))?;
                while self.buf.len() < length {
                    if self.fill(deadline).await? == 0 {
                        return Err(format!(
                            "{status}: closed after {} of {length} body bytes",
                            self.buf.len()
                        ));
                    }
                }
                got.body = self.buf.drain(..length).collect();
                return Ok(got);
            }
            // Delimited by the close.
            while self.fill(deadline).await? > 0 {}
            got.body = std::mem::take(&mut self.buf);
            return Ok(got);
        }
    }

    /// Whether the proxy closes the connection within [`CLOSE_WITHIN`]; bytes that come
    /// meanwhile are trouble.
    async fn closes(&mut self, trouble: &mut Vec<String>) -> bool {
        let deadline = Instant::now() + CLOSE_WITHIN;
        let mut extra = Vec::new();
        let closed = loop {
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut extra)).await {
                Err(_) => break false,
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) => {}
            }
        };
        if !extra.is_empty() {
            trouble.push(format!("bytes after the answers: {:?}", lossy(&extra, 200)));
        }
        closed
    }
}

type Head = (usize, u16, Vec<(String, String)>);

/// A whole response head at the start of `buf`: its length, status and fields.
fn response_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let fields = support::raw::owned_fields(resp.headers);
            Ok(Some((len, resp.code.unwrap_or(0), fields)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(format!("unparsable answer ({e}): {:?}", lossy(buf, 200))),
    }
}

/// The row's request(s) as h2 requests, one stream each, on one h2c connection.
async fn h2_exchange(target: &Target, case: &Case) -> Result<ClientSide, String> {
    let requests = h2_requests(case.request)?;
    let mut out = ClientSide::default();
    let (mut h2, conn) = match target.tls {
        None => h2c(target.addr).await,
        Some(_) => {
            let io = target.connect(true).await?;
            let (h2, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(io),
            )
            .await
            .map_err(|e| format!("h2 handshake over TLS: {e}"))?;
            let task = tokio::spawn(async move {
                let _ = conn.await;
            });
            (h2, task)
        }
    };
    for req in requests {
        let answer = tokio::time::timeout(ANSWER_WITHIN, async {
            let resp = match h2.send_request(req).await {
                Ok(resp) => resp,
                Err(e) => return Err(remote_reset(&e).ok_or_else(|| format!("h2 request: {e:?}"))),
            };
            let status = resp.status().as_u16();
            let fields = resp
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let collected = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Ok(format!("h2 body: {e:?}")))?;
            let trailers = collected
                .trailers()
                .map(|t| {
                    t.iter()
                        .map(|(n, v)| {
                            (
                                n.as_str().to_owned(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok::<_, Result<String, String>>(Got {
                status,
                fields,
                body: collected.to_bytes().to_vec(),
                trailers,
            })
        })
        .await;
        match answer {
            Ok(Ok(got)) => out.replies.push(got),
            Ok(Err(Ok(reset))) => {
                out.reset = Some(reset);
                break;
            }
            Ok(Err(Err(e))) => {
                out.trouble.push(e);
                break;
            }
            Err(_) => {
                out.trouble
                    .push(format!("no h2 answer within {ANSWER_WITHIN:?}"));
                break;
            }
        }
    }
    conn.abort();
    Ok(out)
}

/// `Ok(description)` when `e` is the proxy resetting the stream (not our client refusing
/// what the proxy sent, nor a broken connection).
fn remote_reset(e: &hyper::Error) -> Option<String> {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        let text = format!("{err:?}");
        if text.contains("Reset(") && text.contains("Remote)") {
            return Some(text);
        }
        source = err.source();
    }
    None
}

/// Fields HTTP/2 has no room for (RFC 9113 §8.2.2).
const NOT_IN_H2: [&str; 6] = [
    "connection",
    "te",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
    "proxy-connection",
];

/// Parses raw HTTP/1.1 requests into h2 ones: `:authority` from Host, the other fields
/// as they are, the decoded body. `Err` when a request cannot be said in h2 exactly.
fn h2_requests(mut raw: &[u8]) -> Result<Vec<http::Request<Full<Bytes>>>, String> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let (used, line, fields, body) = match support::raw::parse_request(raw) {
            Parse::Complete {
                used,
                line,
                fields,
                body,
            } => (used, line, fields, body),
            Parse::Partial => return Err("the raw request is incomplete".to_owned()),
            Parse::Invalid(why) if why.starts_with("content-length") => {
                // A length nobody can frame by: sent as it is, the rest as the body.
                let Ok(Some((len, line, fields))) = support::raw::parse_head(raw) else {
                    return Err(format!("the raw request does not parse: {why}"));
                };
                (raw.len(), line, fields, raw[len..].to_vec())
            }
            Parse::Invalid(why) => return Err(format!("the raw request does not parse: {why}")),
        };
        raw = &raw[used..];
        let mut parts = line.split(' ');
        let (Some(method), Some(target), Some("HTTP/1.1")) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("{line:?} is not an HTTP/1.1 request line"));
        };
        let hosts: Vec<&str> = fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.as_str())
            .collect();
        let [authority] = hosts[..] else {
            return Err(format!("{} Host fields: no one :authority", hosts.len()));
        };
        let uri: http::Uri = format!("http://{authority}{target}")
            .parse()
            .map_err(|e| format!("no h2 URI for {authority:?} {target:?}: {e}"))?;
        if uri.path_and_query().map(|p| p.as_str()) != Some(target)
            || uri.authority().map(|a| a.as_str()) != Some(authority)
        {
            return Err(format!(
                "http::Uri changes {authority:?} {target:?} to {uri}"
            ));
        }
        let mut req = http::Request::builder().method(method).uri(uri);
        for (name, value) in fields
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("host"))
        {
            if NOT_IN_H2.iter().any(|n| name.eq_ignore_ascii_case(n)) {
                return Err(format!("{name} cannot be sent in h2"));
            }
            req = req.header(name.as_str(), value.as_str());
        }
        out.push(
            req.body(Full::new(Bytes::from(body)))
                .map_err(|e| format!("no h2 request: {e}"))?,
        );
    }
    Ok(out)
}

fn compare_client(expect: &Expect, got: &ClientSide, path: Path, problems: &mut Vec<String>) {
    // An expectation of no answer at all (an aborted exchange) is met by a connection
    // that closes before any byte of one.
    let aborted = |t: &&String| expect.client.is_empty() && t.starts_with(ABORTED);
    problems.extend(got.trouble.iter().filter(|t| !aborted(t)).cloned());
    match (&got.reset, expect.stream_reset) {
        (Some(reset), false) => problems.push(format!("the stream was reset: {reset}")),
        (None, true) => problems.push("the stream was not reset".to_owned()),
        _ => {}
    }
    if !got.interim.is_empty() {
        problems.push(format!(
            "interim answers reached the client: {:?}",
            got.interim
        ));
    }
    if got.replies.len() != expect.client.len() && got.trouble.is_empty() && got.reset.is_none() {
        problems.push(format!(
            "{} answers, expected {}",
            got.replies.len(),
            expect.client.len()
        ));
    }
    for (want, got) in expect.client.iter().zip(&got.replies) {
        if got.status != want.status {
            problems.push(format!("status {}, expected {}", got.status, want.status));
        }
        for (name, value) in want.has {
            let found = got
                .fields
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(name) && (*value == "*" || v == value));
            if !found {
                problems.push(format!("the answer lacks {name}: {value}"));
            }
        }
        for name in want.lacks {
            if got.fields.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                problems.push(format!("the answer has {name}"));
            }
        }
        if let Some(body) = want.body {
            if got.body != body {
                problems.push(format!(
                    "body {:?}, expected {:?}",
                    lossy(&got.body, 80),
                    lossy(body, 80)
                ));
            }
        }
        if let Some(trailers) = want.trailers {
            let want: Vec<(String, String)> = trailers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), (*v).to_owned()))
                .collect();
            let got: Vec<(String, String)> = got
                .trailers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                .collect();
            if got != want {
                problems.push(format!("trailers {got:?}, expected {want:?}"));
            }
        }
    }
    if path.plain() != Path::H2 {
        if let (Some(want), Some(got)) = (expect.closed, got.closed) {
            if want != got {
                problems.push(
                    if want {
                        "the connection stayed open after the answer"
                    } else {
                        "the connection was closed after the answer"
                    }
                    .to_owned(),
                );
            }
        }
    }
}

fn compare_backend(
    expect: &Backend,
    received: &[Received],
    proto: &str,
    problems: &mut Vec<String>,
) {
    let wanted: &[Sent] = match expect {
        Backend::Nothing => &[],
        Backend::Got(sent) => sent,
    };
    if received.len() != wanted.len() {
        problems.push(format!(
            "the backend got {} request(s), expected {}",
            received.len(),
            wanted.len()
        ));
        return;
    }
    for (want, got) in wanted.iter().zip(received) {
        let line = format!("{} {} HTTP/1.1", want.method, want.target);
        if got.line != line {
            problems.push(format!("backend line {:?}, expected {line:?}", got.line));
        }
        let framing = |n: &str| n == "content-length" || n == "transfer-encoding";
        let mut fields: Vec<(String, String)> = got
            .fields
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect();
        let frames: Vec<(String, String)> =
            fields.iter().filter(|(n, _)| framing(n)).cloned().collect();
        fields.retain(|(n, _)| !framing(n));
        fields.sort();
        let mut expected = cutover_fields(want, proto);
        expected.extend(
            want.fields
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), (*v).to_owned())),
        );
        expected.sort();
        if fields != expected {
            let extra: Vec<_> = fields.iter().filter(|f| !expected.contains(f)).collect();
            let missing: Vec<_> = expected.iter().filter(|f| !fields.contains(f)).collect();
            problems.push(format!(
                "backend fields: unexpected {extra:?}, missing {missing:?}"
            ));
        }
        // One framing field that agrees with the body (or none for no body).
        let length = got.body.len().to_string();
        let framed = match &frames[..] {
            [] => got.body.is_empty(),
            [(n, v)] if n == "content-length" => *v == length,
            [(n, v)] => v.eq_ignore_ascii_case("chunked") && n == "transfer-encoding",
            _ => false,
        };
        if !framed {
            problems.push(format!(
                "backend framing {frames:?} for a body of {length} bytes"
            ));
        }
        if got.body != want.body {
            problems.push(format!(
                "backend body {:?}, expected {:?}",
                lossy(&got.body, 80),
                lossy(want.body, 80)
            ));
        }
    }
}

/// Runs every row in `cases` on every path, many at once; the verdicts in row order.
async fn run_all(
    cases: &[&'static Case],
    extra: &'static str,
    upstream: Upstream,
) -> Vec<[Verdict; PATHS.len()]> {
    let limit = Arc::new(tokio::sync::Semaphore::new(48));
    let mut tasks = tokio::task::JoinSet::new();
    for (row, case) in cases.iter().enumerate() {
        for (col, path) in PATHS.into_iter().enumerate() {
            let limit = Arc::clone(&limit);
            let case: &'static Case = case;
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await.expect("semaphore");
                (row, col, run(case, path, extra, upstream).await)
            });
        }
    }
    let mut verdicts: Vec<[Option<Verdict>; PATHS.len()]> =
        cases.iter().map(|_| PATHS.map(|_| None)).collect();
    while let Some(done) = tasks.join_next().await {
        let (row, col, verdict) = done.expect("a row's task panicked");
        verdicts[row][col] = Some(verdict);
    }
    verdicts
        .into_iter()
        .map(|v| v.map(|v| v.expect("every row ran on every path")))
        .collect()
}

/// The matrix of verdicts, and every failure in full; panics when any row failed.
fn report(cases: &[&'static Case], verdicts: &[[Verdict; PATHS.len()]]) {
    let mut matrix = String::new();
    let mut failures = String::new();
    let mut failed = 0;
    let _ = writeln!(
        matrix,
        "{:>3}  relay  hyper  h2     tls-r  tls-hy tls-h2 row",
        "#"
    );
    for (i, (case, row)) in cases.iter().zip(verdicts).enumerate() {
        let cells: Vec<&str> = row
            .iter()
            .map(|v| match v {
                Verdict::Pass => "pass",
                Verdict::Fail(_) => "FAIL",
                Verdict::NotApplicable(_) => "n/a",
            })
            .collect();
        let _ = write!(matrix, "{i:>3}  ");
        for cell in &cells {
            let _ = write!(matrix, "{cell:<6} ");
        }
        let _ = writeln!(matrix, "{} ({})", case.name, case.rfc);
        for (path, v) in PATHS.iter().zip(row) {
            if let Verdict::NotApplicable(why) = v {
                let _ = writeln!(matrix, "                          {path:?} n/a: {why}");
            }
            if let Verdict::Fail(why) = v {
                failed += 1;
                let _ = writeln!(failures, "#{i} {path:?}: {}\n    {why}", case.name);
            }
        }
    }
    if failed == 0 {
        eprintln!("{matrix}");
    }
    assert!(
        failed == 0,
        "{failed} row/path failures\n\n{matrix}\n{failures}"
    );
}

/// Panics early, with one clear message, when the proxy cannot take `extra`.
fn config_parses(extra: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let blue: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let green: SocketAddr = "127.0.0.1:10".parse().expect("addr");
    let text = support::config_text(dir.path(), &[blue], &[green], extra);
    if let Err(e) = cutover::config::Config::parse(&text, std::path::Path::new("test.toml")) {
        panic!(
            "the conformance config does not parse ({e}); set {WITHOUT_CONFIG}=1 to run \
             without it"
        );
    }
}

// === the tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_case_gets_the_same_verdict_on_every_path() {
    assert!(CASES.len() >= 45, "{} rows", CASES.len());
    let mut names = BTreeSet::new();
    for case in CASES {
        assert!(names.insert(case.name), "two rows named {:?}", case.name);
        assert!(!case.rfc.is_empty(), "{:?} names no clause", case.name);
    }
    for (key, value) in [
        ("max_request_head", MAX_REQUEST_HEAD),
        ("max_headers", MAX_HEADERS),
        ("max_uri", MAX_URI),
        ("max_response_head", MAX_RESPONSE_HEAD),
    ] {
        let line = format!("\n{key} = {value}\n");
        assert!(EXTRA.contains(&line), "the rows are built for{line}");
    }
    config_parses(config(EXTRA));
    let cases: Vec<&'static Case> = CASES.iter().collect();
    let verdicts = run_all(&cases, config(EXTRA), Upstream::Plain).await;
    report(&cases, &verdicts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_case_gets_the_same_verdict_on_every_path_to_an_https_backend() {
    config_parses(config(EXTRA));
    let cases: Vec<&'static Case> = CASES.iter().collect();
    let verdicts = run_all(&cases, config(EXTRA), Upstream::Tls).await;
    report(&cases, &verdicts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn head_limits_answer_at_the_bound_and_one_byte_past_it_on_every_path() {
    config_parses(config(EXTRA));
    let cases: Vec<&'static Case> = CASES.iter().filter(|c| c.kind == Kind::Limit).collect();
    assert_eq!(cases.len(), 8, "four limits, at and past each");
    let verdicts = run_all(&cases, config(EXTRA), Upstream::Plain).await;
    report(&cases, &verdicts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn x_forwarded_for_is_replaced_for_an_untrusted_peer_and_appended_for_a_trusted_one() {
    config_parses(config(EXTRA));
    config_parses(config(TRUSTING_LOOPBACK));
    static UNTRUSTED: Case = XFF_UNTRUSTED;
    static TRUSTED: Case = XFF_TRUSTED;
    let mut verdicts = run_all(&[&UNTRUSTED], config(EXTRA), Upstream::Plain).await;
    verdicts.extend(run_all(&[&TRUSTED], config(TRUSTING_LOOPBACK), Upstream::Plain).await);
    report(&[&UNTRUSTED, &TRUSTED], &verdicts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_chunked_upload_gets_400_and_costs_the_backend_nothing() {
    config_parses(config(EXTRA));
    let backend = RawBackend::start().await;
    let other = RawBackend::start().await;
    let proxy = Proxy::start(&[backend.addr], &[other.addr], config(EXTRA)).await;
    let target = Target {
        addr: proxy.addr,
        tls: None,
    };
    let mut failures = Vec::new();
    for path in [Path::Relay, Path::Hyper] {
        let mut failed = Vec::new();
        for i in 0..20 {
            if let Verdict::Fail(why) = check(&target, &backend, &MALFORMED_CHUNK_SIZE, path).await
            {
                failed.push((i, why));
            }
        }
        if let Some((i, why)) = failed.first() {
            failures.push(format!(
                "{} of 20 uploads on {path:?} failed; upload {i}: {why}",
                failed.len()
            ));
        }
    }

    let status = proxy.status().await;
    let backends = status["pools"]["blue"]["backends"]
        .as_array()
        .expect("blue's backends in /status");
    for b in backends {
        if b["healthy"] != true || b["ejected"] != false {
            failures.push(format!("a backend is no longer healthy: {b}"));
        }
    }
    let (_, metrics) = admin_text(&proxy.socket, "/metrics").await;
    let mut series = vec![r#"cutover_requests_total{color="blue",class="5xx"}"#.to_owned()];
    for kind in ["connect", "timeout", "reset", "protocol"] {
        series.push(format!(
            r#"cutover_upstream_errors_total{{color="blue",kind="{kind}"}}"#
        ));
    }
    for s in series {
        let value = sample(&metrics, &s);
        if value != 0.0 {
            failures.push(format!("{s} is {value}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
