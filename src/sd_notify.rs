//! Telling the service manager how the process is doing: `sd_notify(3)`.
//!
//! The protocol: one datagram of newline-separated `KEY=value` lines sent to the
//! `AF_UNIX` socket named by `NOTIFY_SOCKET` (a path, or an abstract name when it
//! starts with `@`). `READY=1` once the listeners serve and the first health round is
//! done, `RELOADING=1` with `MONOTONIC_USEC` and then `READY=1` around a reload,
//! `STOPPING=1` when shutdown starts, `STATUS=` for `systemctl status`, and `WATCHDOG=1`
//! at half of `WATCHDOG_USEC` when the unit sets `WatchdogSec=`.
//!
//! Without `NOTIFY_SOCKET` every call is a no-op. A failed send is logged, never fatal:
//! the proxy serves the same whether or not anyone listens.

use std::future::Future;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Why a notification was not sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {0:?} is neither an absolute path nor an @abstract name")]
    Address(String),
    #[error("cannot send to NOTIFY_SOCKET {socket:?}: {source}")]
    Send {
        /// The socket as `NOTIFY_SOCKET` names it.
        socket: String,
        /// What the send said.
        source: io::Error,
    },
}

/// `READY=1`: start-up (or a reload) is complete.
pub fn ready() {
    log(notify("READY=1"));
}

/// `RELOADING=1` with the `CLOCK_MONOTONIC` time the reload starts, which systemd
/// needs to tell this reload from an earlier one. Send [`ready`] when it is done.
pub fn reloading() {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = now.tv_sec.saturating_mul(1_000_000) + now.tv_nsec / 1_000;
    log(notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}")));
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() {
    log(notify("STOPPING=1"));
}

/// `STATUS=`: one line for `systemctl status`.
pub fn status(text: &str) {
    // A newline would start another assignment; the status is one line.
    log(notify(&format!("STATUS={}", text.replace('\n', " "))));
}

/// Sends `state` to `NOTIFY_SOCKET`; `Ok(false)` when there is none.
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let name = name.to_string_lossy().into_owned();
    let address = address(&name)?;
    let send = || -> io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        // Never wait on a manager that is not reading: a lost status is harmless.
        socket.set_nonblocking(true)?;
        socket.send_to_addr(state.as_bytes(), &address)?;
        Ok(())
    };
    send().map_err(|source| NotifyError::Send {
        socket: name,
        source,
    })?;
    Ok(true)
}

/// The address `NOTIFY_SOCKET` names: `@name` is in the abstract namespace.
fn address(name: &str) -> Result<SocketAddr, NotifyError> {
    use std::os::linux::net::SocketAddrExt;
    let bad = || NotifyError::Address(name.to_owned());
    match name.strip_prefix('@') {
        Some(abstract_name) => {
            SocketAddr::from_abstract_name(abstract_name.as_bytes()).map_err(|_| bad())
        }
        None if name.starts_with('/') => SocketAddr::from_pathname(name).map_err(|_| bad()),
        None => Err(bad()),
    }
}

/// Whether the last notification failed: a run of failures (a manager that stopped
/// reading, say) is logged when it begins and when it ends, not at every watchdog ping.
static FAILING: AtomicBool = AtomicBool::new(false);

fn log(result: Result<bool, NotifyError>) {
    match result {
        Err(e) if !FAILING.swap(true, Ordering::Relaxed) => {
            tracing::warn!(error = %e, "service manager notification failed");
        }
        Err(e) => tracing::debug!(error = %e, "service manager notification failed"),
        Ok(_) => {
            if FAILING.swap(false, Ordering::Relaxed) {
                tracing::info!("service manager notifications are delivered again");
            }
        }
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when it is set and
/// `WATCHDOG_PID` (if set) is this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// The notifications of a running server, as one task: `READY=1` once `started`
/// resolves, then `STATUS=` from `status` whenever it changes (checked every second)
/// and `WATCHDOG=1` at [`watchdog_interval`]. A no-op task without `NOTIFY_SOCKET`.
pub async fn supervise(started: impl Future<Output = ()>, status_line: impl Fn() -> String) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = watchdog_interval();
    // The watchdog runs from the start: a slow first health round is not a hang.
    let keepalive = async {
        let Some(every) = watchdog else {
            return std::future::pending().await;
        };
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            log(notify("WATCHDOG=1"));
        }
    };
    let announce = async {
        started.await;
        let mut last = status_line();
        log(notify(&format!("READY=1\nSTATUS={last}")));
        tracing::info!(status = %last, "service manager told: ready");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = status_line();
            if now != last {
                status(&now);
                last = now;
            }
        }
    };
    tokio::join!(keepalive, announce);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_names_are_absolute_paths_or_abstract() {
        assert!(address("/run/systemd/notify").is_ok());
        assert!(address("@/org/freedesktop/systemd1/notify/123").is_ok());
        assert!(matches!(
            address("run/notify"),
            Err(NotifyError::Address(_))
        ));
    }
}
