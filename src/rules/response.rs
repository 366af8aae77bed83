//! Responses: what a backend may send back (RFC 9112 §4, §6; RFC 9110 §7.6). A head
//! that cannot be forwarded as one unambiguous message is a 502 on every path, and the
//! connection it came on is not reused.

use httparse::Header;

use super::Limits;
use super::fields::{self, Field, Options};

/// A response head as a path parsed it.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// The status: 1xx, 204 and 304 have no body, and 1xx is interim.
    pub code: u16,
    /// HTTP/1.1 (else HTTP/1.0).
    pub http11: bool,
    /// The reason phrase; counted in the head's canonical size against
    /// `max_response_head`.
    pub reason: &'a [u8],
    /// The head's fields in order; the plan's bit masks index into them.
    pub fields: &'a [Header<'a>],
    /// The request was HEAD: no body follows, whatever the fields say.
    pub head_request: bool,
    /// The head's size as received, when the path has it (see the request's `raw_len`).
    pub raw_len: Option<usize>,
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

/// The verdict on a response that may be forwarded.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// How the body is delimited: what each path reads and copies the body by.
    pub framing: Framing,
    /// The backend keeps the connection open afterwards.
    pub keep_alive: bool,
    /// An interim (1xx) response: dropped on every path, the final one follows.
    pub interim: bool,
    /// Fields (by index) not forwarded.
    pub skip: u128,
    /// The backend's own `x-cutover-color` fields, replaced when ours is on.
    pub color_fields: u128,
    /// It has a Date field.
    pub dated: bool,
    /// Several equal Content-Length fields: all left out and one written.
    pub merge_length: bool,
    /// Their value, for the one written.
    pub length: Option<u64>,
}

/// The backend's response cannot be forwarded (RFC 9112 §6.3: a proxy answers 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    #[error("unparsable response head: {0}")]
    Parse(&'static str),
    #[error("response head larger than the limit")]
    TooLarge,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("transfer coding other than chunked")]
    TransferEncoding,
    #[error("both Transfer-Encoding and Content-Length")]
    Ambiguous,
    #[error("unexpected 101 Switching Protocols")]
    Switching,
    #[error("malformed chunked body")]
    Chunked,
}

/// Most fields a response may have: hyper's client reads no more, so neither does the
/// relay (and the client gets at most this many plus the few cutover adds).
pub const MAX_RESPONSE_FIELDS: usize = 100;

/// The canonical size of a response head: status line, fields, empty line.
pub fn head_size(head: &Head<'_>) -> usize {
    let line = 9 + 3 + 1 + head.reason.len() + 2;
    line + head.fields.iter().map(fields::line_len).sum::<usize>() + 2
}

/// Judges a response head (not a 101, which only an upgrade expects).
pub fn check(head: &Head<'_>, limits: &Limits) -> Result<Plan, BadResponse> {
    let small = head
        .raw_len
        .is_some_and(|n| n * 2 <= limits.max_response_head);
    if (!small && head_size(head) > limits.max_response_head)
        || head.fields.len() > MAX_RESPONSE_FIELDS
    {
        return Err(BadResponse::TooLarge);
    }
    let mut plan = Plan {
        framing: Framing::Close,
        keep_alive: head.http11,
        interim: (100..200).contains(&head.code),
        skip: 0,
        color_fields: 0,
        dated: false,
        merge_length: false,
        length: None,
    };
    let (mut length, mut lengths, mut codings) = (None, 0u128, 0);
    let (mut options, mut connection) = (Options::default(), 0u128);
    for (i, h) in head.fields.iter().enumerate() {
        let bit = 1u128 << i;
        match fields::classify(h.name.as_bytes()) {
            Field::ContentLength => {
                let n = fields::parse_length(h.value).ok_or(BadResponse::ContentLength)?;
                if length.replace(n).is_some_and(|prev| prev != n) {
                    return Err(BadResponse::ContentLength);
                }
                lengths |= bit;
            }
            Field::TransferEncoding => {
                // Only `chunked` is relayed; another coding would have to be named to
                // the client as well (RFC 9112 §6.1), which cutover does not do.
                codings += 1;
                if codings > 1 || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(BadResponse::TransferEncoding);
                }
                plan.skip |= bit;
            }
            Field::Connection => {
                options.read(h.value);
                connection |= bit;
                plan.skip |= bit;
            }
            Field::HopByHop | Field::Upgrade => plan.skip |= bit,
            Field::CutoverColor => plan.color_fields |= bit,
            _ => {}
        }
    }
    if codings > 0 && lengths != 0 {
        // RFC 9112 §6.3 ¶3: "ought to be handled as an error".
        return Err(BadResponse::Ambiguous);
    }
    if options.names_fields {
        plan.skip |= fields::named_by_connection(head.fields, connection);
    }
    // A Date the backend's Connection named is gone: ours takes its place.
    plan.dated = head.fields.iter().enumerate().any(|(i, h)| {
        plan.skip & (1 << i) == 0 && fields::classify(h.name.as_bytes()) == Field::Date
    });
    plan.length = length;
    if lengths.count_ones() > 1 {
        // Equal values: one is written in their place (also on a HEAD, 204 or 304
        // answer, where the length only describes).
        plan.merge_length = true;
        plan.skip |= lengths;
    }
    plan.keep_alive = if head.http11 {
        !options.close
    } else {
        options.keep_alive && !options.close
    };
    // RFC 9112 §6.3, in its order: no body for HEAD, 1xx, 204 and 304; then chunked;
    // then Content-Length; else until close.
    plan.framing = if head.head_request || plan.interim || head.code == 204 || head.code == 304 {
        Framing::Empty
    } else if codings > 0 {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        plan.keep_alive = false;
        Framing::Close
    };
    Ok(plan)
}
