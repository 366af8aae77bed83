//! A client connection's byte stream, plain TCP or TLS: what the relay and hyper read
//! requests from and write answers to. Generic, not boxed: the plain path is compiled
//! for `TcpStream` and keeps its `try_write` fast path; TLS gets its own copy.

use std::future::Future;
use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A client's stream as the protocol paths use it.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// `"http"` or `"https"`: the scheme the client used, for `X-Forwarded-Proto`.
    const SCHEME: &'static str;

    /// Writes what can be written now without waiting: the bytes taken, or
    /// `WouldBlock`. When it returns all of `bytes`, nothing is left buffered in this
    /// process ([`flushed`](ClientIo::flushed) is true).
    fn try_write_now(&mut self, bytes: &[u8]) -> io::Result<usize>;

    /// [`try_write_now`](ClientIo::try_write_now) for a connection's last bytes, when
    /// [`close`](ClientIo::close) follows: TCP holds back a tail shorter than a segment
    /// (`MSG_MORE`) so that the FIN leaves with it, and the client's ACK of the answer
    /// comes with its own FIN: two packets fewer per connection.
    fn try_write_last(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.try_write_now(bytes)
    }

    /// Nothing written is still waiting in this process to reach the kernel.
    fn flushed(&self) -> bool;

    /// Resolves when a read may find bytes: a connection with nothing to read holds no
    /// read buffer until then.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;

    /// Ends a connection the relay closes: TLS says so first (`close_notify`, RFC 8446
    /// §6.1), within `limit`; TCP sends its FIN.
    fn close(&mut self, limit: Duration) -> impl Future<Output = ()> + Send;
}

impl ClientIo for TcpStream {
    const SCHEME: &'static str = "http";

    #[inline]
    fn try_write_now(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.try_write(bytes)
    }

    fn try_write_last(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.try_io(Interest::WRITABLE, || {
            HeldBack(SockRef::from(&*self)).write(bytes)
        })
    }

    #[inline]
    fn flushed(&self) -> bool {
        true
    }

    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::readable(self)
    }

    /// Sends the FIN now, with what [`try_write_last`](ClientIo::try_write_last) held
    /// back: the socket's close would send a reset instead when the client sent bytes
    /// not read, and drop them.
    #[inline]
    fn close(&mut self, _limit: Duration) -> impl Future<Output = ()> + Send {
        // A peer already gone answers ENOTCONN: nothing to send then.
        let _ = SockRef::from(&*self).shutdown(std::net::Shutdown::Write);
        std::future::ready(())
    }
}

impl ClientIo for TlsStream<TcpStream> {
    const SCHEME: &'static str = "https";

    /// Encrypts into the session and writes what the socket takes, without waiting.
    /// Bytes the session took are taken: what did not reach the socket yet is written
    /// by the next flush, which the caller owes when [`flushed`](ClientIo::flushed)
    /// says so.
    fn try_write_now(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut cx = Context::from_waker(Waker::noop());
        let n = match Pin::new(&mut *self).poll_write(&mut cx, bytes) {
            Poll::Ready(written) => written?,
            Poll::Pending => return Err(io::ErrorKind::WouldBlock.into()),
        };
        match Pin::new(&mut *self).poll_flush(&mut cx) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(n),
        }
    }

    /// The last answer, its `close_notify` and the FIN in one segment: the records go
    /// to the socket with `MSG_MORE`, and [`close`](ClientIo::close) (whose own
    /// `close_notify` is then a no-op) sends the FIN with them.
    fn try_write_last(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.get_ref().1.wants_write() {
            // Records from before still wait: they go first, the usual way.
            return self.try_write_now(bytes);
        }
        let (tcp, session) = self.get_mut();
        let n = session.writer().write(bytes)?;
        if n == bytes.len() {
            session.send_close_notify();
        }
        while session.wants_write() {
            let held = &mut HeldBack(SockRef::from(&*tcp));
            match tcp.try_io(Interest::WRITABLE, || session.write_tls(held)) {
                Ok(_) => {}
                // The rest is written by the flush the caller owes.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    fn flushed(&self) -> bool {
        !self.get_ref().1.wants_write()
    }

    async fn readable(&self) -> io::Result<()> {
        // The session may hold decrypted bytes already (they came with the end of the
        // handshake, or with the record before): then they are there to read now.
        // Otherwise only new bytes on the socket can make a read find something.
        let (tcp, session) = self.get_ref();
        if session.wants_read() {
            tcp.readable().await?;
        }
        Ok(())
    }

    async fn close(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.shutdown()).await;
    }
}

/// Writes to a TCP socket with `MSG_MORE`: a tail shorter than a segment waits for the
/// FIN (or the next write) instead of leaving alone.
struct HeldBack<'a>(SockRef<'a>);

impl io::Write for HeldBack<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send_with_flags(buf, libc::MSG_MORE)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.send_vectored_with_flags(bufs, libc::MSG_MORE)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
