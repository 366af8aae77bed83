//! What a client connection is served with, as one value a reload can replace: the
//! data path's [`Proxy`] context (rulebook policy, upstream timeouts, colour header),
//! hyper's connection builder (head limits, header timeout, HTTP/2 streams) and the
//! client timeouts. The accept loop loads it once per connection, so the hot path
//! gains no load per request and takes no lock; a connection keeps the settings it was
//! accepted with until it closes.

use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;

use crate::config::Config;
use crate::connections::Timeouts;
use crate::dispatch::Proxy;
use crate::drain::Tracker;
use crate::listener;
use crate::snapshot::Snapshot;

/// The connection settings now in force; the accept loop loads it per connection.
pub type Current = Arc<ArcSwap<Settings>>;

/// Everything a new client connection is served with.
pub struct Settings {
    /// The data path's shared context: the routing pointer, the trackers, and the
    /// rulebook's and upstream timeouts' settings from this config.
    pub proxy: Arc<Proxy>,
    /// hyper's connection settings (HTTP/1 header timeout and head limits, HTTP/2
    /// streams), for connections the relay hands over.
    pub builder: Arc<auto::Builder<TokioExecutor>>,
    /// How long a client connection may take over a head, a body, or sitting idle.
    pub timeouts: Timeouts,
}

// === impl Settings ===

impl Settings {
    /// The settings `config` asks for, over the shared routing pointer and trackers.
    pub fn build(
        config: &Config,
        snapshot: Arc<ArcSwap<Snapshot>>,
        tracker: Arc<Tracker>,
    ) -> Settings {
        let timeouts = Timeouts {
            header: config.listen.header_timeout,
            idle: config.listen.idle_timeout,
            body: config.listen.body_timeout,
            write: config.listen.write_timeout,
        };
        let proxy = Arc::new(Proxy::new(
            snapshot,
            tracker,
            &config.upstream,
            config.color_header,
            config.policy.clone(),
            timeouts,
        ));
        Settings {
            proxy,
            builder: Arc::new(listener::connection_builder(
                &config.listen,
                &config.policy.limits,
            )),
            timeouts,
        }
    }
}
