//! An open-loop HTTP/1.1 load generator for `benches/compare.sh`: requests are scheduled
//! at a fixed rate, and each one's latency is measured from the moment it *should* have
//! been sent, so a stalled server cannot hide its queue (the coordinated-omission
//! correction of wrk2). Loopback only.
//!
//! `loadgen URL RATE SECONDS [CONNECTIONS]` prints one line:
//! `rate=… sent=… errors=… p50_us=… p99_us=… p999_us=… max_us=…`
//!
//! Two choices keep the generator's own noise below what it measures:
//! - Each connection waits for its next due time on its own `timerfd` (nanosecond
//!   resolution, woken through the runtime's epoll), not on tokio's millisecond timer
//!   wheel. With the wheel, every request due within a millisecond went out in one
//!   burst, and the measured tail was mostly the generator's.
//! - Requests and responses are plain bytes: a fixed request head, and a response read
//!   by its Content-Length, so the generator spends little CPU on the core it shares.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// CLOCK_MONOTONIC in nanoseconds: the clock the timerfds count on.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A one-shot timer on CLOCK_MONOTONIC, readable through the runtime when it fires.
struct Timer(AsyncFd<OwnedFd>);

impl Timer {
    fn new() -> io::Result<Self> {
        // SAFETY: plain system call; the fd is owned at once below.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the OwnedFd keeps the descriptor open, unchanged, while registered.
        Ok(Self(unsafe {
            AsyncFd::register_with_interest(fd, Interest::READABLE)
        }?))
    }

    /// Waits until CLOCK_MONOTONIC reaches `due_ns`; returns at once if it has.
    async fn sleep_until(&self, due_ns: u64) -> io::Result<()> {
        if now_ns() >= due_ns {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (due_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (due_ns % 1_000_000_000) as libc::c_long,
            },
        };
        let fd = self.0.get_ref().as_raw_fd();
        // SAFETY: `fd` is a timerfd we own; `spec` is valid for the call.
        let rc = unsafe {
            libc::timerfd_settime(fd, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut())
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut guard = self.0.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a buffer of 8.
            let n = unsafe { libc::read(fd, expirations.as_mut_ptr().cast(), 8) };
            if n == 8 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::WouldBlock {
                return Err(err);
            }
            guard.clear_ready();
        }
    }
}

/// Reads one response: its head, then a body of its Content-Length. Returns the status,
/// and leaves in `buf` whatever followed the body (nothing, with one request in flight).
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<u16> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut fields);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(head)) => {
                let status = resp.code.ok_or_else(|| bad("no status"))?;
                let len = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| {
                        std::str::from_utf8(h.value)
                            .ok()?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    })
                    .ok_or_else(|| bad("the generator reads only Content-Length responses"))?;
                while buf.len() < head + len {
                    if stream.read_buf(buf).await? == 0 {
                        return Err(bad("closed inside a body"));
                    }
                }
                buf.drain(..head + len);
                return Ok(status);
            }
            Ok(httparse::Status::Partial) => {
                if stream.read_buf(buf).await? == 0 {
                    return Err(bad("closed before a response"));
                }
            }
            Err(e) => return Err(bad(&e.to_string())),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.len() < 3 {
        eprintln!("usage: loadgen URL RATE SECONDS [CONNECTIONS]");
        std::process::exit(2);
    }
    let url: http::Uri = args[0].parse().expect("URL");
    let rate: f64 = args[1].parse().expect("RATE (requests/s)");
    let secs: f64 = args[2].parse().expect("SECONDS");
    let conns: usize = args.get(3).map_or(64, |c| c.parse().expect("CONNECTIONS"));
    let host = url.authority().expect("URL has host:port").to_string();
    assert!(
        host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]"),
        "loadgen only targets loopback"
    );
    let request: Arc<[u8]> = format!("GET {} HTTP/1.1\r\nHost: {host}\r\n\r\n", url.path())
        .into_bytes()
        .into();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let total = (rate * secs) as u64;
        let interval_ns = 1e9 / rate;
        let next = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let mut streams = Vec::with_capacity(conns);
        for _ in 0..conns {
            let stream = TcpStream::connect(&host).await.expect("connect");
            stream.set_nodelay(true).ok();
            streams.push(stream);
        }
        let start_ns = now_ns() + Duration::from_millis(50).as_nanos() as u64;
        let mut tasks = Vec::new();
        for mut stream in streams {
            let (next, errors, request) = (next.clone(), errors.clone(), request.clone());
            tasks.push(tokio::spawn(async move {
                let mut hist =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                let timer = Timer::new().expect("timerfd");
                let mut buf = Vec::with_capacity(4096);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = start_ns + (interval_ns * i as f64) as u64;
                    timer.sleep_until(due).await.expect("timerfd");
                    let ok = match stream.write_all(&request).await {
                        Ok(()) => {
                            matches!(read_response(&mut stream, &mut buf).await, Ok(200..=299))
                        }
                        Err(_) => false,
                    };
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    hist.saturating_record((now_ns().saturating_sub(due)) / 1000);
                }
                hist
            }));
        }
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
        for t in tasks {
            all.add(t.await.expect("task")).expect("same bounds");
        }
        let elapsed = (now_ns().saturating_sub(start_ns)) as f64 / 1e9;
        println!(
            "rate={:.0} sent={} errors={} p50_us={} p99_us={} p999_us={} max_us={}",
            all.len() as f64 / elapsed,
            all.len(),
            errors.load(Ordering::Relaxed),
            all.value_at_quantile(0.50),
            all.value_at_quantile(0.99),
            all.value_at_quantile(0.999),
            all.max()
        );
    });
}
