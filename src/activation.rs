//! Socket activation: serving listening sockets that were passed in rather than bound.
//!
//! The protocol is systemd's `sd_listen_fds(3)`: `LISTEN_PID` is our pid, `LISTEN_FDS`
//! says how many descriptors were passed (starting at fd 3), `LISTEN_FDNAMES` optionally
//! names them (colon-separated, `FileDescriptorName=` in a `.socket` unit). Because the
//! socket outlives the process that serves it, the kernel keeps queueing connections
//! while an old process drains and a new one starts: a restart refuses nothing.
//!
//! Each wanted [`Endpoint`] is matched to a passed socket by name when it has one, else
//! by the socket's local address, else (one socket passed, one endpoint wanted) to that
//! socket. A passed socket that matches nothing is logged and closed; an endpoint that
//! gets none is bound as usual.
//!
//! `LISTEN_PID` and `LISTEN_FDS` are removed once read (by `listenfd`), so a child
//! process never takes the sockets for its own; `LISTEN_FDNAMES` stays (removing it
//! here would need unsafe code) and means nothing without the other two.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::listener;

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: usize = 3;

/// A listening socket the configuration asks for.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Its `LISTEN_FDNAMES` name (`FileDescriptorName=`), when the config gives one:
    /// matched before the address, so a unit may listen on another address.
    pub name: Option<String>,
    /// The configured address: matched against a passed socket's local address, and
    /// bound when nothing was passed for it.
    pub address: SocketAddr,
    /// The listen queue when it is bound here (a passed socket keeps its own).
    pub backlog: u32,
}

/// A listening socket that was passed in and is not yet claimed.
#[derive(Debug)]
pub struct Passed {
    /// Its position among the passed descriptors (the fd is 3 + index), for logs.
    index: usize,
    /// Its `LISTEN_FDNAMES` entry, when names were passed.
    name: Option<String>,
    /// Its bound address, to match an endpoint without a name.
    local: SocketAddr,
    /// The socket itself, already checked to be a listening TCP socket.
    listener: std::net::TcpListener,
}

// === impl Passed ===

impl Passed {
    /// Takes the sockets passed to this process and clears `LISTEN_PID` and `LISTEN_FDS`
    /// so a child does not take them for its own. Nothing when `LISTEN_PID` is not ours.
    /// A descriptor that is not a listening TCP socket is logged and skipped.
    pub fn from_env() -> Vec<Passed> {
        let Ok(count) = std::env::var("LISTEN_FDS") else {
            return Vec::new();
        };
        let ours = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|pid| pid.parse::<u32>().ok())
            == Some(std::process::id());
        let names = std::env::var("LISTEN_FDNAMES").ok();
        // Reads LISTEN_FDS and LISTEN_PID, then removes both.
        let mut fds = listenfd::ListenFd::from_env();
        if !ours {
            tracing::warn!(
                listen_fds = %count,
                "LISTEN_FDS is set but LISTEN_PID is not this process: binding as usual"
            );
            return Vec::new();
        }
        let names = names_for(names.as_deref(), fds.len());
        (0..fds.len())
            .filter_map(|index| {
                let fd = FIRST_FD + index;
                match take(&mut fds, index) {
                    Ok(listener) => Some(listener),
                    Err(reason) => {
                        tracing::warn!(fd, %reason, "passed descriptor ignored");
                        None
                    }
                }
                .and_then(|listener| {
                    let local = listener
                        .local_addr()
                        .map_err(|e| tracing::warn!(fd, error = %e, "passed socket ignored"))
                        .ok()?;
                    Some(Passed {
                        index,
                        name: names.get(index).cloned().flatten(),
                        local,
                        listener,
                    })
                })
            })
            .collect()
    }
}

/// One name per descriptor, or none at all when `LISTEN_FDNAMES` is absent or its count
/// is not `LISTEN_FDS` (then only addresses match).
fn names_for(names: Option<&str>, count: usize) -> Vec<Option<String>> {
    let Some(names) = names else {
        return Vec::new();
    };
    let names: Vec<Option<String>> = names
        .split(':')
        .map(|n| (!n.is_empty()).then(|| n.to_owned()))
        .collect();
    if names.len() == count {
        names
    } else {
        tracing::warn!(
            names = names.len(),
            fds = count,
            "LISTEN_FDNAMES does not name every passed descriptor; matching by address"
        );
        Vec::new()
    }
}

/// The descriptor at `index` as a listening TCP socket (`SO_ACCEPTCONN` set), in
/// non-blocking mode for tokio.
fn take(fds: &mut listenfd::ListenFd, index: usize) -> Result<std::net::TcpListener, String> {
    let listener = fds
        .take_tcp_listener(index)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "already taken".to_owned())?;
    match socket2::SockRef::from(&listener).is_listener() {
        Ok(true) => {}
        Ok(false) => return Err("a TCP socket that is not listening".to_owned()),
        Err(e) => return Err(format!("SO_ACCEPTCONN: {e}")),
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot make it non-blocking: {e}"))?;
    Ok(listener)
}

/// Pairs `wanted` with `passed`: by name, then by local address, then the last one of
/// each when exactly one socket was passed and one endpoint is wanted. Returns a slot
/// per endpoint; the sockets left over are logged and closed.
pub fn claim(mut passed: Vec<Passed>, wanted: &[Endpoint]) -> Vec<Option<std::net::TcpListener>> {
    let single = passed.len() == 1 && wanted.len() == 1;
    let mut slots: Vec<Option<std::net::TcpListener>> = wanted.iter().map(|_| None).collect();
    let mut pick = |passed: &mut Vec<Passed>, slot: usize, found: Option<usize>| {
        if let Some(i) = found {
            let p = passed.swap_remove(i);
            tracing::info!(fd = FIRST_FD + p.index, name = ?p.name, address = %p.local, "serving a passed socket");
            slots[slot] = Some(p.listener);
        }
    };
    for (slot, endpoint) in wanted.iter().enumerate() {
        let found = match &endpoint.name {
            Some(name) => passed.iter().position(|p| p.name.as_ref() == Some(name)),
            None => None,
        }
        .or_else(|| passed.iter().position(|p| p.local == endpoint.address))
        .or_else(|| single.then_some(0).filter(|_| !passed.is_empty()));
        pick(&mut passed, slot, found);
    }
    for p in passed {
        tracing::warn!(fd = FIRST_FD + p.index, name = ?p.name, address = %p.local,
            "a passed socket matches no configured listener; closing it");
    }
    slots
}

/// A listener for each of `wanted`: the passed socket it claims, or one bound here.
/// Reads the passed sockets once; call it once per process.
pub async fn listeners(wanted: &[Endpoint]) -> io::Result<Vec<TcpListener>> {
    let slots = claim(Passed::from_env(), wanted);
    let mut out = Vec::with_capacity(wanted.len());
    for (endpoint, slot) in wanted.iter().zip(slots) {
        let bound = match slot {
            Some(std) => TcpListener::from_std(std)?,
            None => listener::bind(endpoint.address, endpoint.backlog).await?,
        };
        listener::delay_first_ack(&bound);
        out.push(bound);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passed(index: usize, name: Option<&str>) -> Passed {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Passed {
            index,
            name: name.map(str::to_owned),
            local: listener.local_addr().unwrap(),
            listener,
        }
    }

    fn endpoint(name: Option<&str>, address: SocketAddr) -> Endpoint {
        Endpoint {
            name: name.map(str::to_owned),
            address,
            backlog: 16,
        }
    }

    fn addr(slot: &Option<std::net::TcpListener>) -> Option<SocketAddr> {
        slot.as_ref().map(|l| l.local_addr().unwrap())
    }

    #[test]
    fn a_named_endpoint_takes_the_socket_of_its_name_even_at_another_address() {
        let (http, https) = (passed(0, Some("http")), passed(1, Some("https")));
        let (http_addr, https_addr) = (http.local, https.local);
        let elsewhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let slots = claim(
            vec![http, https],
            &[
                endpoint(Some("https"), elsewhere),
                endpoint(Some("http"), elsewhere),
            ],
        );
        assert_eq!(addr(&slots[0]), Some(https_addr));
        assert_eq!(addr(&slots[1]), Some(http_addr));
    }

    #[test]
    fn an_unnamed_endpoint_takes_the_socket_bound_to_its_address_and_others_get_none() {
        let (a, b) = (passed(0, None), passed(1, Some("metrics")));
        let (a_addr, b_addr) = (a.local, b.local);
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let slots = claim(vec![a, b], &[endpoint(None, b_addr), endpoint(None, other)]);
        assert_eq!(addr(&slots[0]), Some(b_addr));
        assert_eq!(addr(&slots[1]), None, "{a_addr} matches nothing");
    }

    #[test]
    fn one_socket_for_one_endpoint_is_taken_whatever_its_address() {
        let only = passed(0, Some("cutover.socket"));
        let only_addr = only.local;
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let slots = claim(vec![only], &[endpoint(None, other)]);
        assert_eq!(addr(&slots[0]), Some(only_addr));
        let two = claim(
            vec![passed(0, None)],
            &[endpoint(None, other), endpoint(Some("metrics"), other)],
        );
        assert!(two.iter().all(Option::is_none), "no guessing among two");
    }

    #[test]
    fn names_are_used_only_when_there_is_one_per_descriptor() {
        assert_eq!(
            names_for(Some("http::x"), 3),
            vec![Some("http".to_owned()), None, Some("x".to_owned())]
        );
        assert!(names_for(Some("http"), 2).is_empty());
        assert!(names_for(None, 2).is_empty());
    }
}
