//! `[pools.X.tls]` and `https://` backend addresses: checked, and the rustls client
//! settings built, so a missing file or a bad pair is named at validate time and never
//! at the first request.

use super::Excerpt;
use super::Problem;
use super::raw::RawBackendTls;
use super::validate::problem;
use crate::upstream_tls::{TlsClient, TlsSettings};

/// The scheme that makes a backend a TLS one.
const HTTPS: &str = "https://";

/// A backend as written, normalised: `https://host:port` for TLS, `host:port` for
/// plain (`http://` is accepted and dropped). `Err` says what to write instead.
pub(super) fn backend(
    text: &str,
    host_port: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    if let Some(rest) = text.strip_prefix(HTTPS) {
        return host_port(rest).map(|a| format!("{HTTPS}{a}")).ok_or_else(|| {
            format!(
                "{:?} is not an https://host:port address; write e.g. \"https://app.internal:8443\"",
                Excerpt(text)
            )
        });
    }
    let plain = text.strip_prefix("http://").unwrap_or(text);
    host_port(plain).ok_or_else(|| {
        format!(
            "{:?} is not a host:port address; write e.g. \"10.0.0.5:8080\" or \"https://app.internal:8443\"",
            Excerpt(text)
        )
    })
}

/// The `host:port` a normalised backend connects to, whatever its scheme: two
/// backends with the same one are the same backend.
pub(super) fn endpoint(address: &str) -> &str {
    address.strip_prefix(HTTPS).unwrap_or(address)
}

/// The pool's TLS client settings: built when it has an `https://` backend (from its
/// `[pools.X.tls]` table, or the system's roots without one). A table on a pool with
/// no https backend is a mistake, and named.
pub(super) fn pool_tls(
    raw: Option<RawBackendTls>,
    backends: &[String],
    pool: &str,
    problems: &mut Vec<Problem>,
) -> Option<TlsClient> {
    let key = |k: &str| format!("{pool}.tls{k}");
    if !backends.iter().any(|b| b.starts_with(HTTPS)) {
        if raw.is_some() {
            problem(
                problems,
                &key(""),
                "applies to https:// backends, and the pool has none; write the backends as \"https://host:port\" or remove the table".into(),
            );
        }
        return None;
    }
    let raw = raw.unwrap_or_default();
    let client_cert = match (raw.cert, raw.key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            let why =
                "needs key = \"/path/to/client.key\" beside it (the certificate's private key)";
            problem(problems, &key(".cert"), why.into());
            return None;
        }
        (None, Some(_)) => {
            let why =
                "needs cert = \"/path/to/client.crt\" beside it (the certificate it belongs to)";
            problem(problems, &key(".key"), why.into());
            return None;
        }
    };
    if let Some(name) = &raw.server_name
        && crate::upstream_tls::server_name(name).is_err()
    {
        problem(
            problems,
            &key(".server_name"),
            format!("{:?} is not a DNS name or an IP address", Excerpt(name)),
        );
        return None;
    }
    let (cert, key_file) = match &client_cert {
        Some((cert, key)) => (Some(cert.as_path()), Some(key.as_path())),
        None => (None, None),
    };
    let files = [("ca", raw.ca.as_deref()), ("cert", cert), ("key", key_file)];
    for (name, path) in files {
        if let Some(path) = path
            && let Some(why) = not_a_file(path)
        {
            problem(problems, &key(&format!(".{name}")), why);
            return None;
        }
    }
    let settings = TlsSettings {
        ca: raw.ca,
        client_cert,
        server_name: raw.server_name,
    };
    match TlsClient::build(settings) {
        Ok(client) => Some(client),
        Err(e) => {
            let which = match e.key() {
                "" => String::new(),
                k => format!(".{k}"),
            };
            problem(problems, &key(&which), e.to_string());
            None
        }
    }
}

/// Why `path` cannot be a PEM file to read whole: missing, or not a regular file (a
/// device or a pipe would be read without end). `None` when it is one.
fn not_a_file(path: &std::path::Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => None,
        Ok(_) => Some(format!("{} is not a regular file", path.display())),
        Err(e) => Some(format!("cannot read {}: {e}", path.display())),
    }
}
