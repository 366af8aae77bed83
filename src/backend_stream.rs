//! One connection to a backend as the relay and the idle queues hold it: a plain socket,
//! or TLS over one for an `https://` backend. A leaf below the pools, like
//! [`idle`](crate::idle).
//!
//! Plain sockets stay what they were: the relay's first write is a `try_write` with no
//! wait, its read and write halves borrow the socket (no lock), and an idle one is
//! checked for closure without a system call. A TLS connection takes tokio's split (a
//! small lock: rustls' state is one for both directions) and is written through
//! rustls, which must be flushed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp;
use tokio_rustls::client::TlsStream;

/// A connection to a backend.
#[derive(Debug)]
pub enum BackendStream {
    /// A plain TCP socket.
    Plain(TcpStream),
    /// TLS to an `https://` backend; boxed, as rustls' state is large.
    Tls(Box<TlsStream<TcpStream>>),
}

/// The reading half of a [`BackendStream`] borrowed by [`BackendStream::split`].
pub enum ReadHalf<'a> {
    Plain(tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut TlsStream<TcpStream>>),
}

/// The writing half of a [`BackendStream`] borrowed by [`BackendStream::split`].
pub enum WriteHalf<'a> {
    Plain(tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut TlsStream<TcpStream>>),
}

// === impl BackendStream ===

impl BackendStream {
    /// Whether bytes written must be flushed to reach the backend (rustls holds the
    /// records it could not write yet).
    pub fn needs_flush(&self) -> bool {
        matches!(self, BackendStream::Tls(_))
    }

    /// Writes what the socket takes now without waiting. A TLS connection takes
    /// nothing here (`WouldBlock`): its writes go through rustls on the awaited path.
    pub fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            BackendStream::Plain(s) => s.try_write_vectored(bufs),
            BackendStream::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// See [`try_write_vectored`](Self::try_write_vectored).
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BackendStream::Plain(s) => s.try_write(buf),
            BackendStream::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Both halves, to read and write at once.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            BackendStream::Plain(s) => {
                let (r, w) = s.split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            BackendStream::Tls(s) => {
                let (r, w) = tokio::io::split(s.as_mut());
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }

    /// Whether an idle connection is still open with nothing unread (see [`open`]). On TLS, anything readable (a close_notify,
    /// a late record) retires the connection too.
    pub fn is_open(&self) -> bool {
        match self {
            BackendStream::Plain(s) => open(s),
            BackendStream::Tls(s) => open(s.get_ref().0),
        }
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

// === impl ReadHalf ===

impl AsyncRead for ReadHalf<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

// === impl WriteHalf ===

impl AsyncWrite for WriteHalf<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// Whether an idle socket is still open with nothing unread. Costs no system call
/// unless the socket has become readable since it was last read, which for an idle
/// connection means the backend closed it (or sent something it should not have).
fn open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}
