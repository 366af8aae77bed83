//! cutover: a blue-green traffic-switching L7 reverse proxy.
//!
//! # The data path
//!
//! A client connection is accepted by the [`listener`] and served by the [`relay`]
//! while its requests are plain HTTP/1.1 (heads parsed and rewritten as bytes by
//! [`h1`], bodies copied through by their framing); from the first valid request that
//! is not (HTTP/2 with prior knowledge, HTTP/1.0, absolute-form, upgrades, `Expect`,
//! chunked or large uploads), hyper-util's auto builder serves the rest of the
//! connection and hands each request to the hyper path, [`proxy`].
//!
//! Both paths are adapters over the same layers below them:
//! - the [`rules`]: one rulebook judges every request and response head (Host,
//!   framing, head limits, hop-by-hop and forwarded fields, `_` in names), says which
//!   status a failure gets and whose fault it is, and when a request may be retried;
//!   [`headers`] is its adapter for hyper's header maps;
//! - [`dispatch`]: a request loads the routing [`snapshot::Snapshot`] **once** (one
//!   `ArcSwap` load), asks it which colour the request goes to, picks a healthy backend
//!   of that colour's [`pool::Pool`] (round-robin, lock-free), and starts a
//!   [`drain::InFlight`] guard that counts the request against its colour and backend
//!   until the response body has finished streaming;
//! - [`upstream`]: the backend's keep-alive connections ([`idle`]), plain or TLS
//!   ([`backend_stream`]) to an `https://` backend ([`upstream_tls`]).
//!
//! Errors become 4xx (the client's fault, never counted against a backend) or
//! 502/503/504 in one place ([`error`], [`rules::blame`]). Because routing happens per
//! request, the next request on an old keep-alive connection already follows a switch.
//!
//! # Changing where traffic goes
//!
//! The [`switchboard::Switchboard`] is the only writer of the snapshot. A switch or a
//! rollback is a compare-and-swap on the snapshot's generation, persisted to the state
//! file (temp, fsync, rename, fsync dir) and then applied as one pointer swap, with one
//! audit line naming the caller's uid. Requests already running on the old colour keep
//! their backend and finish there. The [`admin`] API (HTTP/1.1 + JSON on a Unix socket)
//! and the [`ctl`] client drive it; [`server`] wires it all together with shutdown
//! passed in as an argument, and [`config`] turns TOML into a validated
//! [`config::Config`] or an error naming every bad key.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod access_log;
pub mod activation;
pub mod admin;
pub mod backend_stream;
pub mod chunked;
pub mod client_io;
pub mod color;
pub mod config;
pub mod connections;
pub mod ctl;
pub mod deadline;
pub mod demo;
pub mod dispatch;
pub mod drain;
pub mod error;
pub mod h1;
pub mod headers;
pub mod health;
pub mod history;
pub mod idle;
pub mod listener;
pub mod log_limit;
pub mod metrics;
pub mod pem;
pub mod pool;
pub mod proxy;
pub mod redirect;
pub mod relay;
pub mod reload;
pub mod rewind;
pub mod rollout;
pub mod routing;
pub mod rules;
pub mod sd_notify;
pub mod server;
pub mod settings;
pub mod snapshot;
pub mod stats;
pub mod switchboard;
pub mod tls;
pub mod upstream;
pub mod upstream_tls;
pub mod write_timeout;
