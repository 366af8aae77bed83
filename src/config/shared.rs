//! Backends written differently that reach the same server (`127.0.0.1:9101` and
//! `localhost:9101`): a warning, not an error, since names are resolved again at every
//! connect and what they resolve to at check time may not last.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Config, backend_tls};
use crate::color::Color;

/// How long `check` and a start wait for names to resolve; a name slower than this
/// is not compared.
const RESOLVE_BUDGET: Duration = Duration::from_secs(2);

impl Config {
    /// One line per backend whose address, resolved now, is also that of a backend
    /// listed before it under another spelling. Names are resolved in parallel within
    /// [`RESOLVE_BUDGET`]; one that fails or is late is left out.
    pub fn shared_backends(&self) -> Vec<String> {
        let listed: Vec<(String, String)> = Color::ALL
            .iter()
            .flat_map(|&color| {
                let name = color.as_str();
                self.pools[color.index()]
                    .backends
                    .iter()
                    .enumerate()
                    .map(move |(i, b)| (format!("pools.{name}.backends[{i}]"), b.clone()))
            })
            .collect();
        let resolved = resolve_all(listed.iter().map(|(_, b)| backend_tls::endpoint(b)));
        let mut first: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        let mut lines = Vec::new();
        for (i, addrs) in resolved.iter().enumerate() {
            let Some(addrs) = addrs else { continue };
            let shared = addrs
                .iter()
                .find_map(|a| first.get(a).filter(|&&j| j != i).map(|&j| (a, j)));
            if let Some((addr, j)) = shared {
                lines.push(format!(
                    "{} {} reaches {addr}, as {} {} does: both are one server, \
                     counted and switched as two backends",
                    listed[i].0, listed[i].1, listed[j].0, listed[j].1
                ));
            }
            for addr in addrs {
                first.entry(*addr).or_insert(i);
            }
        }
        lines
    }
}

/// Each `host:port` resolved, in order; `None` where it failed or took longer than
/// the budget. Every lookup runs on its own thread so one slow name costs the budget
/// once, not once per name.
fn resolve_all<'a>(endpoints: impl Iterator<Item = &'a str>) -> Vec<Option<Vec<SocketAddr>>> {
    let (tx, rx) = mpsc::channel();
    let mut out = Vec::new();
    for (i, endpoint) in endpoints.enumerate() {
        if let Ok(addr) = endpoint.parse::<SocketAddr>() {
            out.push(Some(vec![addr]));
            continue;
        }
        out.push(None);
        let tx = tx.clone();
        let endpoint = endpoint.to_owned();
        // A thread that cannot be started leaves that name out, as a slow one.
        let _ = std::thread::Builder::new()
            .name("resolve".into())
            .spawn(move || {
                let addrs = endpoint.to_socket_addrs().map(Iterator::collect);
                let _ = tx.send((i, addrs.ok()));
            });
    }
    drop(tx);
    let deadline = Instant::now() + RESOLVE_BUDGET;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((i, addrs)) => out[i] = addrs,
            Err(_) => break,
        }
    }
    out
}
