//! The response body, copied through to the client by its framing, and the per-thread
//! spare buffers that hold backend bytes between requests.

use std::io;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Buf;
use tokio::io::AsyncReadExt;

use super::{Conn, HEAD_SIZE, READ_SIZE};
use crate::backend_stream::BackendStream;
use crate::chunked::Chunked;
use crate::client_io::ClientIo;
use crate::deadline::Deadline;
use crate::drain::{CUT_CHECK, InFlight};
use crate::metrics::ErrorKind;
use crate::rules::response::Framing;

pub(super) async fn relay_body<C: ClientIo>(
    c: &mut Conn<C>,
    upstream: &mut BackendStream,
    framing: Framing,
    in_flight: InFlight,
    read_timeout: Duration,
    last: bool,
) -> io::Result<bool> {
    let mut in_flight = Some(in_flight);
    // Counts body bytes; released before the write that ends the body.
    let count = |in_flight: &mut Option<InFlight>, n: usize, done: bool| {
        if let Some(guard) = in_flight.as_mut() {
            guard.bytes += n as u64;
        }
        if done {
            in_flight.take();
        }
    };
    let broke = |in_flight: &mut Option<InFlight>, kind: ErrorKind, e: io::Error| {
        if let Some(guard) = in_flight.as_mut() {
            guard.broke(kind);
        }
        e
    };
    let mut remaining = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut chunked = Chunked::default();
    // The part of `bytes` that is body; whether the body is complete after it.
    let mut take = |bytes: &[u8]| -> io::Result<(usize, bool)> {
        Ok(match framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let n = bytes
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                remaining -= n as u64;
                (n, remaining == 0)
            }
            Framing::Chunked => {
                let n = chunked
                    .advance(bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                (n, chunked.is_done())
            }
            Framing::Close => (bytes.len(), false),
        })
    };
    let (n, mut done) = take(&c.up).map_err(|e| broke(&mut in_flight, ErrorKind::Protocol, e))?;
    c.out.extend_from_slice(&c.up[..n]);
    c.up.advance(n);
    count(&mut in_flight, n, done);
    Conn::write(&mut c.client, &c.out, c.write_timeout, last && done).await?;
    // Armed only for a body that takes more than one read.
    let mut tick: Option<Deadline> = None;
    while !done {
        c.up.clear();
        c.up.reserve(4 * READ_SIZE);
        let waited = Instant::now();
        let read = loop {
            let tick = tick.get_or_insert_with(|| Deadline::new(CUT_CHECK));
            tick.set(Instant::now() + CUT_CHECK.min(read_timeout));
            tokio::select! {
                biased;
                read = upstream.read_buf(&mut c.up) => break read,
                () = tick.reached() => {
                    if let Some(guard) = in_flight.as_mut().filter(|g| g.is_cut()) {
                        guard.closed_by_drain();
                        return Err(io::Error::other("closed at its colour's drain deadline"));
                    }
                    if waited.elapsed() >= read_timeout {
                        return Err(broke(
                            &mut in_flight,
                            ErrorKind::Timeout,
                            io::Error::new(io::ErrorKind::TimedOut, "the backend's body stalled"),
                        ));
                    }
                }
            }
        };
        let read = read.map_err(|e| broke(&mut in_flight, ErrorKind::Reset, e))?;
        if let Some(guard) = in_flight.as_mut().filter(|g| g.is_cut()) {
            guard.closed_by_drain();
            return Err(io::Error::other("closed at its colour's drain deadline"));
        }
        if read == 0 {
            return match framing {
                Framing::Close => Ok(false),
                _ => Err(broke(
                    &mut in_flight,
                    ErrorKind::Reset,
                    io::ErrorKind::UnexpectedEof.into(),
                )),
            };
        }
        let (n, complete) =
            take(&c.up).map_err(|e| broke(&mut in_flight, ErrorKind::Protocol, e))?;
        done = complete;
        count(&mut in_flight, n, done);
        Conn::write(&mut c.client, &c.up[..n], c.write_timeout, last && done).await?;
        c.up.advance(n);
    }
    Ok(true)
}

/// Buffers between requests, per thread: bounded in number, and only of the usual size
/// (one grown by a large body is freed instead).
pub(super) mod spare {
    use std::cell::RefCell;

    use bytes::BytesMut;

    use super::{HEAD_SIZE, READ_SIZE};

    /// Spares kept per thread.
    const KEEP: usize = 256;

    thread_local! {
        static BYTES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
        static VECS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// A buffer for the heads a request writes (the request for its backend, then the
    /// response head for its client).
    pub fn vec() -> Vec<u8> {
        VECS.with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(HEAD_SIZE))
    }

    /// Takes back a head buffer; one a large body grew is dropped.
    pub fn put_vec(mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > 4 * READ_SIZE {
            return;
        }
        buf.clear();
        VECS.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < KEEP {
                s.push(buf);
            }
        });
    }

    pub fn bytes() -> BytesMut {
        BYTES
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| BytesMut::with_capacity(READ_SIZE))
    }

    pub fn put(mut buf: BytesMut) {
        buf.clear();
        if buf.capacity() == 0 {
            return;
        }
        // Reclaims the room before the read position; allocates nothing when the
        // buffer was READ_SIZE or more to begin with.
        buf.reserve(READ_SIZE);
        if buf.capacity() <= 4 * READ_SIZE {
            keep(buf);
        }
    }

    fn keep(buf: BytesMut) {
        BYTES.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < KEEP {
                s.push(buf);
            }
        });
    }
}
