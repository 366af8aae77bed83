//! Hyper's side of the rulebook: a `HeaderMap` as field lines for the
//! [`rules`](crate::rules), the rulebook's added fields written into a `HeaderMap`, and
//! the client's request body wrapped so that its failure is known as the client's.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::connections::Timeouts;

use crate::rules::forwarded::{self, Client, Sink};
use crate::rules::request::Plan;

/// The `Via` value this proxy adds (RFC 9110 §7.6.3: a proxy MUST send Via).
pub static VIA_VALUE: HeaderValue = HeaderValue::from_static("1.1 cutover");

/// A header map as the rulebook reads it, in the map's iteration order (the order the
/// rulebook's field masks refer to).
pub fn field_lines(headers: &HeaderMap) -> Vec<httparse::Header<'_>> {
    headers
        .iter()
        .map(|(name, value)| httparse::Header {
            name: name.as_str(),
            value: value.as_bytes(),
        })
        .collect()
}

/// The request's header map as the backend gets it: the fields `plan` keeps (`fields`
/// are `headers` as [`field_lines`]), then the rulebook's added ones.
pub fn forwarded(
    headers: &HeaderMap,
    fields: &[httparse::Header<'_>],
    plan: &Plan<'_>,
    client: Client<'_>,
    fallback_host: &[u8],
) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(fields.len() + 5);
    for (i, (name, value)) in headers.iter().enumerate() {
        if plan.skip & (1 << i) == 0 {
            out.append(name.clone(), value.clone());
        }
    }
    forwarded::add(
        plan,
        fields,
        client,
        fallback_host,
        &mut MapSink::new(&mut out),
    );
    out
}

/// Writes the rulebook's added fields into a header map.
pub struct MapSink<'m> {
    /// The forwarded request's headers; each finished field is appended to it.
    map: &'m mut HeaderMap,
    /// The field being written, from `begin`: a lowercase static name, so it becomes a
    /// `HeaderName` without parsing.
    name: &'static str,
    /// The field's value so far, its parts joined; cleared and reused for each field.
    value: Vec<u8>,
    /// The value is one part, `value` not used: it can be taken without copying when
    /// it is one of ours.
    parts: usize,
}

impl<'m> MapSink<'m> {
    pub fn new(map: &'m mut HeaderMap) -> MapSink<'m> {
        MapSink {
            map,
            name: "",
            value: Vec::new(),
            parts: 0,
        }
    }
}

impl Sink for MapSink<'_> {
    fn begin(&mut self, name: &'static str) {
        self.name = name;
        self.value.clear();
        self.parts = 0;
    }

    fn part(&mut self, bytes: &[u8]) {
        self.parts += 1;
        self.value.extend_from_slice(bytes);
    }

    fn end(&mut self) {
        let value = match (self.parts, self.value.as_slice()) {
            (1, forwarded::VIA) => VIA_VALUE.clone(),
            (1, b"http") => HeaderValue::from_static("http"),
            (_, bytes) => match HeaderValue::from_bytes(bytes) {
                Ok(v) => v,
                // The parts are field values already accepted and our own text.
                Err(_) => return,
            },
        };
        self.map.append(HeaderName::from_static(self.name), value);
    }
}

/// A client's IP as an X-Forwarded-For entry. Formatted once per connection, then
/// cloned (a reference count) into each of its requests.
pub fn forwarded_for(peer: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 48];
    let ip = format_ip(peer, &mut buf);
    // An IP address is ASCII digits, dots, colons and hex: always a valid value.
    HeaderValue::from_bytes(ip).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Formats an IP into a stack buffer: no allocation on the hot path.
fn format_ip(ip: IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // An IPv6 address is at most 45 characters, so this cannot run out of room.
    let _ = write!(cursor, "{ip}");
    let n = cursor.position() as usize;
    &buf[..n]
}

/// A client's request body on its way to a backend. Its failure (a malformed chunk, a
/// body cut short) surfaces as a [`ClientBodyError`] in the upstream error's chain, so
/// it is blamed on the client, not on the backend.
pub enum ClientBody {
    Streaming {
        body: Incoming,
        /// Told when the body has been read to its end: the response timer starts then.
        sent: Option<oneshot::Sender<()>>,
        /// The body's deadline: no long pause, no trickle ([`Timeouts::body_deadline`]).
        pace: Pace,
    },
    /// No body (also what a retry sends again).
    Empty,
}

/// Keeps a streamed request body to [`Timeouts::body_deadline`].
pub struct Pace {
    timeouts: Timeouts,
    /// Largest body accepted (`limits.max_body`).
    max_body: u64,
    /// When the body began; set on the first poll.
    start: Option<Instant>,
    received: u64,
    /// Armed on the first poll that has to wait.
    sleep: Option<Pin<Box<Sleep>>>,
}

/// Arms `req`'s body to say when it has been sent on; `None` when it has no body.
pub fn signal_sent(
    mut req: http::Request<ClientBody>,
) -> (http::Request<ClientBody>, Option<oneshot::Receiver<()>>) {
    let rx = match req.body_mut() {
        ClientBody::Streaming { sent, .. } => {
            let (tx, rx) = oneshot::channel();
            *sent = Some(tx);
            Some(rx)
        }
        ClientBody::Empty => None,
    };
    (req, rx)
}

/// The client's request body failed: it broke, or it was too slow.
#[derive(Debug)]
pub enum ClientBodyError {
    Broken(hyper::Error),
    TimedOut,
    TooLarge,
}

impl fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientBodyError::Broken(e) => write!(f, "client request body: {e}"),
            ClientBodyError::TimedOut => f.write_str("client request body: too slow"),
            ClientBodyError::TooLarge => f.write_str("client request body: over the limit"),
        }
    }
}

impl StdError for ClientBodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            ClientBodyError::Broken(e) => Some(e),
            ClientBodyError::TimedOut | ClientBodyError::TooLarge => None,
        }
    }
}

impl ClientBody {
    pub fn new(body: Incoming, timeouts: Timeouts, max_body: u64) -> ClientBody {
        if body.is_end_stream() {
            ClientBody::Empty
        } else {
            ClientBody::Streaming {
                body,
                sent: None,
                pace: Pace {
                    timeouts,
                    max_body,
                    start: None,
                    received: 0,
                    sleep: None,
                },
            }
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ClientBody::Streaming { body, sent, pace } => {
                let now = Instant::now();
                let start = *pace.start.get_or_insert(now);
                let frame = Pin::new(&mut *body).poll_frame(cx);
                let ended = match &frame {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(f))) => {
                        pace.received += f.data_ref().map_or(0, |d| d.len() as u64);
                        if pace.received > pace.max_body {
                            return Poll::Ready(Some(Err(ClientBodyError::TooLarge)));
                        }
                        let at = pace.timeouts.body_deadline(start, now, pace.received);
                        if let Some(sleep) = pace.sleep.as_mut() {
                            sleep.as_mut().reset(at);
                        }
                        body.is_end_stream()
                    }
                    Poll::Ready(Some(Err(_))) => false,
                    Poll::Pending => {
                        let at = pace.timeouts.body_deadline(start, now, pace.received);
                        let sleep = pace
                            .sleep
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                        if sleep.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Some(Err(ClientBodyError::TimedOut)));
                        }
                        false
                    }
                };
                if ended && let Some(sent) = sent.take() {
                    let _ = sent.send(());
                }
                frame.map(|f| f.map(|r| r.map_err(ClientBodyError::Broken)))
            }
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Streaming { body, .. } => body.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Streaming { body, .. } => body.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}
