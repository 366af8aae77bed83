#![no_main]
//! A request head the relay forwards itself must reach the backend as one complete
//! request that a standard parser (httparse) reads back: the same request line, exactly
//! one Host, an empty line at the end, no hop-by-hop fields and none of the fields the
//! client's `Connection` named.

use libfuzzer_sys::fuzz_target;

/// The only calls into cutover: the relay's verdict on `bytes` and, when it forwards
/// the request itself, the head as the backend gets it (peer 127.0.0.1).
fn forwarded(bytes: &[u8]) -> Option<Vec<u8>> {
    use cutover::h1::{Parsed, fields, parse_request};
    use cutover::rules::Policy;
    use cutover::rules::forwarded::Client;
    let mut storage = fields();
    let Parsed::Complete(req) = parse_request(bytes, &mut storage, &Policy::default()) else {
        return None;
    };
    let mut out = Vec::new();
    let peer = Client {
        addr: b"127.0.0.1",
        trusted: false,
        proto: "http",
    };
    req.write_forwarded(peer, &mut out);
    Some(out)
}

/// Room for the client's fields (at most 100 reach the relay) and the four it adds.
const SLOTS: usize = 128;

/// Fields that are hop-by-hop by definition (RFC 9110 §7.6.1) and never forwarded.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Fields the relay sets itself (once each), whatever the client sent.
const OURS: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

/// Named in `Connection` but kept on purpose: framing and routing fields are never
/// removed that way (`Connection: content-length` must not unframe a message).
const KEPT_WHEN_NAMED: [&str; 3] = ["host", "content-length", "transfer-encoding"];

fn count(headers: &[httparse::Header<'_>], name: &str) -> usize {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .count()
}

fuzz_target!(|data: &[u8]| {
    let Some(out) = forwarded(data) else {
        return;
    };
    let shown = String::from_utf8_lossy(&out);

    // What the client sent, read by the standard parser.
    let mut in_headers = [httparse::EMPTY_HEADER; SLOTS];
    let mut client = httparse::Request::new(&mut in_headers);
    let Ok(httparse::Status::Complete(_)) = client.parse(data) else {
        panic!(
            "the relay forwards a head httparse does not complete: {:?}",
            String::from_utf8_lossy(data)
        );
    };
    let named: Vec<String> = client
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        // `close` is an option, not a field name (RFC 9110 §18.4 reserves `Close`).
        .filter(|t| !t.is_empty() && t != "close")
        .collect();

    // What the backend gets.
    assert!(
        out.ends_with(b"\r\n\r\n"),
        "no empty line at the end: {shown:?}"
    );
    let mut out_headers = [httparse::EMPTY_HEADER; SLOTS];
    let mut backend = httparse::Request::new(&mut out_headers);
    match backend.parse(&out) {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(
                n,
                out.len(),
                "forwarded head has bytes after its end: {shown:?}"
            )
        }
        other => panic!("forwarded head does not parse ({other:?}): {shown:?}"),
    }
    assert_eq!(backend.method, client.method, "method changed");
    assert_eq!(backend.path, client.path, "target changed");
    assert_eq!(backend.version, Some(1), "not HTTP/1.1");
    let headers = &*backend.headers;

    assert_eq!(count(headers, "host"), 1, "not exactly one Host: {shown:?}");
    assert!(
        count(headers, "content-length") <= 1,
        "several Content-Length: {shown:?}"
    );
    for name in HOP_BY_HOP {
        assert_eq!(
            count(headers, name),
            0,
            "hop-by-hop {name} forwarded: {shown:?}"
        );
    }
    for name in OURS {
        assert_eq!(count(headers, name), 1, "not exactly one {name}: {shown:?}");
    }
    // The client's Via entries stay (RFC 9110 §7.6.3); ours comes last.
    let via = headers.iter().rfind(|h| h.name.eq_ignore_ascii_case("via"));
    assert_eq!(via.map(|h| h.value), Some(&b"1.1 cutover"[..]), "{shown:?}");
    for name in &named {
        let name = name.as_str();
        if KEPT_WHEN_NAMED.contains(&name) {
            continue;
        }
        // Ours are added after the client's are removed.
        let allowed = usize::from(OURS.contains(&name) || name == "via");
        assert!(
            count(headers, name) <= allowed,
            "{name} was named in Connection but forwarded: {shown:?}"
        );
    }
});
