//! Test support: real backends and a real proxy on 127.0.0.1:0, a real admin socket in
//! a temporary directory, and small HTTP clients that control their own connections.
#![allow(dead_code, unused_imports)]

pub mod backends;
pub mod clients;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod rollouts;
pub mod tls;
pub mod tls_backend;

pub use backends::*;
pub use clients::*;
pub use proxy::*;
