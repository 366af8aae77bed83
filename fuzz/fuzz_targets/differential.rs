#![no_main]
//! The relay's request parser against plain httparse (default configuration, 100
//! fields, as hyper uses it). The relay must never forward what a standard parser
//! rejects, and when both take a head they must read it the same way.
//!
//! Allowed asymmetries:
//! - The rulebook refuses a head httparse reads (a missing Host, bad framing, a limit):
//!   each refusal is a documented rule, applied the same on hyper's path.
//! - The relay declines, whatever httparse says: a declined request goes to hyper,
//!   which parses it with httparse and answers it (400, 431, 100-continue, upgrades…),
//!   so the client gets what a standard server would send.
//! - The relay waits for more bytes (partial) where httparse already rejects the
//!   head: nothing is forwarded; once the head ends or passes its size limit the
//!   relay declines and hyper answers 400. A delay, not a smuggled request.
//!
//! Failures:
//! - The relay completes a head httparse rejects or sees as partial: it would
//!   forward a request a standard parser (the backend's, maybe) does not read as one.
//! - The relay waits for more bytes where httparse has a complete head: a client that
//!   sent its whole request would wait for the header timeout.
//! - Both complete but disagree on the head's length, request line or fields: the
//!   relay and the backend would see different requests.

use libfuzzer_sys::fuzz_target;

/// hyper's default limit on request fields.
const SLOTS: usize = 100;

/// The relay's reading of a head.
#[derive(Debug)]
enum Relay {
    Complete {
        head_len: usize,
        method: String,
        target: String,
        fields: Vec<(String, Vec<u8>)>,
    },
    Partial,
    Decline,
    /// Refused by the rulebook; `malformed` when the head did not parse at all.
    Reject {
        malformed: bool,
    },
}

/// The only call into cutover.
fn relay(bytes: &[u8]) -> Relay {
    use cutover::h1::{Parsed, fields, parse_request};
    use cutover::rules::Policy;
    use cutover::rules::request::Reject;
    let mut storage = fields();
    match parse_request(bytes, &mut storage, &Policy::default()) {
        Parsed::Complete(req) => Relay::Complete {
            head_len: req.head_len,
            method: req.method.to_owned(),
            target: req.target.to_owned(),
            fields: req
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), h.value.to_owned()))
                .collect(),
        },
        Parsed::Partial => Relay::Partial,
        Parsed::Decline(_) => Relay::Decline,
        Parsed::Reject(r) => Relay::Reject {
            malformed: matches!(r, Reject::Malformed(_)),
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let relay = relay(data);
    let mut slots = [httparse::EMPTY_HEADER; SLOTS];
    let mut standard = httparse::Request::new(&mut slots);
    let parsed = standard.parse(data);
    match (relay, parsed) {
        (Relay::Decline, _) => {}
        // A rule of the rulebook (Host, framing, limits, …): documented, and the same
        // verdict on hyper's path, which applies the same rulebook.
        (Relay::Reject { malformed: false }, _) => {}
        (Relay::Reject { malformed: true }, Ok(httparse::Status::Complete(n))) => {
            panic!("relay calls malformed a {n}-byte head httparse reads: {data:?}")
        }
        (Relay::Reject { malformed: true }, _) => {}
        (Relay::Partial, Ok(httparse::Status::Partial) | Err(_)) => {}
        (Relay::Partial, Ok(httparse::Status::Complete(n))) => {
            panic!("relay waits for more, httparse has a {n}-byte head: {data:?}")
        }
        (Relay::Complete { .. }, Err(e)) => {
            panic!("relay forwards a head httparse rejects ({e}): {data:?}")
        }
        (Relay::Complete { .. }, Ok(httparse::Status::Partial)) => {
            panic!("relay forwards a head httparse sees as partial: {data:?}")
        }
        (
            Relay::Complete {
                head_len,
                method,
                target,
                fields,
            },
            Ok(httparse::Status::Complete(n)),
        ) => {
            assert_eq!(head_len, n, "head lengths differ: {data:?}");
            assert_eq!(Some(method.as_str()), standard.method, "{data:?}");
            assert_eq!(Some(target.as_str()), standard.path, "{data:?}");
            assert_eq!(
                standard.version,
                Some(1),
                "relay took a non-1.1 head: {data:?}"
            );
            let theirs: Vec<(String, Vec<u8>)> = standard
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), h.value.to_owned()))
                .collect();
            assert_eq!(fields, theirs, "fields differ: {data:?}");
        }
    }
});
