//! The client listeners: `[listen]` itself and each `[[listen.extra]]`, plain, TLS, or a
//! plain one that redirects to https. Certificates are loaded here once to check them
//! (file, PEM, key matching the certificate), so a start or a reload with a bad one is
//! refused before anything is bound.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawEndpoint, RawListen, RawTls};
use super::validate::{duration, problem};
use super::{Excerpt, Problem};

/// How long a client has to finish its TLS handshake unless `handshake_timeout` says.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One client listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The TCP address it listens on (port 0 picks a free one).
    pub address: SocketAddr,
    /// The name of a socket systemd passes (`FileDescriptorName=`) to serve here
    /// instead of binding.
    pub name: Option<String>,
    /// Terminate TLS with these certificates; `None` speaks plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Every request gets `308` to the same host and target over https.
    pub redirect_https: bool,
}

/// A listener's certificates and handshake limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain served when no SNI entry matches, and its key.
    pub default: CertFiles,
    /// Certificates chosen by the name the client asks for (SNI), in file order.
    pub sni: Vec<SniCert>,
    /// How long a client has to finish its handshake before the connection is closed.
    pub handshake_timeout: Duration,
    /// Clients may resume a session (tickets, and ids for TLS 1.2); false makes every
    /// handshake a full one (HAProxy's `no-tls-tickets` with no session cache).
    pub resumption: bool,
}

/// A certificate chain and its key, as PEM files: read at start, again when they
/// change on disk, and on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCert {
    /// Lowercase DNS name, or `*.example.com` matching one label under it.
    pub name: String,
    pub files: CertFiles,
}

/// Every listener in config order; the first is `[listen]` itself (`address` already
/// parsed, or `None` when it was not and a problem is recorded).
pub(super) fn endpoints(
    raw: &RawListen,
    first: Option<SocketAddr>,
    problems: &mut Vec<Problem>,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    let first_raw = RawEndpointRef {
        address: first,
        tls: raw.tls.as_ref(),
        redirect_https: raw.redirect_https,
        name: raw.name.as_deref(),
    };
    if let Some(e) = endpoint("listen", first_raw, problems) {
        out.push(e);
    }
    for (i, extra) in raw.extra.iter().enumerate() {
        let key = format!("listen.extra[{i}]");
        let address = parse_address(&extra.address, &format!("{key}.address"), problems);
        if let Some(e) = endpoint(&key, RawEndpointRef::of(extra, address), problems) {
            out.push(e);
        }
    }
    let mut addresses = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, e) in out.iter().enumerate() {
        let key = if i == 0 {
            "listen".to_owned()
        } else {
            format!("listen.extra[{}]", i - 1)
        };
        if !addresses.insert(e.address) && e.address.port() != 0 {
            problem(
                problems,
                &format!("{key}.address"),
                format!("{} is already a listener; each address once", e.address),
            );
        }
        if let Some(name) = &e.name
            && !names.insert(name.clone())
        {
            problem(
                problems,
                &format!("{key}.name"),
                format!("{name:?} names another listener too; names are unique"),
            );
        }
    }
    out
}

/// A listener's keys with its address parsed.
struct RawEndpointRef<'a> {
    address: Option<SocketAddr>,
    tls: Option<&'a RawTls>,
    redirect_https: Option<bool>,
    name: Option<&'a str>,
}

impl<'a> RawEndpointRef<'a> {
    fn of(raw: &'a RawEndpoint, address: Option<SocketAddr>) -> Self {
        RawEndpointRef {
            address,
            tls: raw.tls.as_ref(),
            redirect_https: raw.redirect_https,
            name: raw.name.as_deref(),
        }
    }
}

fn endpoint(key: &str, raw: RawEndpointRef<'_>, problems: &mut Vec<Problem>) -> Option<Endpoint> {
    let redirect_https = raw.redirect_https.unwrap_or(false);
    if redirect_https && raw.tls.is_some() {
        problem(
            problems,
            &format!("{key}.redirect_https"),
            "is for a plain listener; this one has tls (leave redirect_https out)".into(),
        );
    }
    if let Some(name) = raw.name
        && (name.is_empty()
            || name.len() > 255
            || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':'))
    {
        problem(
            problems,
            &format!("{key}.name"),
            format!(
                "{:?} is not a socket name; systemd's FileDescriptorName is printable ASCII without ':'",
                Excerpt(name)
            ),
        );
    }
    let tls = raw.tls.map(|t| tls(&format!("{key}.tls"), t, problems));
    Some(Endpoint {
        address: raw.address?,
        name: raw.name.map(str::to_owned),
        tls,
        redirect_https,
    })
}

fn parse_address(text: &str, key: &str, problems: &mut Vec<Problem>) -> Option<SocketAddr> {
    let parsed = text.parse::<SocketAddr>().ok();
    if parsed.is_none() {
        problem(
            problems,
            key,
            format!(
                "{:?} is not an IP:port address; write e.g. \"0.0.0.0:443\" or \"[::]:443\"",
                Excerpt(text)
            ),
        );
    }
    parsed
}

fn tls(key: &str, raw: &RawTls, problems: &mut Vec<Problem>) -> TlsConfig {
    let default = CertFiles {
        cert: raw.cert.clone(),
        key: raw.key.clone(),
    };
    check_files(key, &default, problems);
    let mut seen = BTreeSet::new();
    let sni = raw
        .sni
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let key = format!("{key}.sni[{i}]");
            let name = s.name.to_ascii_lowercase();
            if !sni_name_ok(&name) {
                problem(
                    problems,
                    &format!("{key}.name"),
                    format!(
                        "{:?} is not a DNS name; write e.g. \"api.example.com\" or \"*.example.com\"",
                        Excerpt(&s.name)
                    ),
                );
            } else if !seen.insert(name.clone()) {
                problem(
                    problems,
                    &format!("{key}.name"),
                    format!("{name:?} has a certificate already; one entry per name"),
                );
            }
            let files = CertFiles {
                cert: s.cert.clone(),
                key: s.key.clone(),
            };
            check_files(&key, &files, problems);
            SniCert { name, files }
        })
        .collect();
    TlsConfig {
        default,
        sni,
        handshake_timeout: duration(
            problems,
            &format!("{key}.handshake_timeout"),
            raw.handshake_timeout.clone(),
            DEFAULT_HANDSHAKE_TIMEOUT,
        ),
        resumption: raw.resumption.unwrap_or(true),
    }
}

/// Loads the pair once: a missing file, bad PEM or a key of another certificate is a
/// problem named by the key that points at the file.
fn check_files(key: &str, files: &CertFiles, problems: &mut Vec<Problem>) {
    if let Err(e) = crate::pem::certified_key(&files.cert, &files.key) {
        let which = match &e {
            crate::pem::PemError::Read { path, .. } | crate::pem::PemError::Parse { path, .. }
                if *path == files.key =>
            {
                "key"
            }
            crate::pem::PemError::NoKey { .. }
            | crate::pem::PemError::Unsupported { .. }
            | crate::pem::PemError::Mismatch { .. } => "key",
            _ => "cert",
        };
        problem(problems, &format!("{key}.{which}"), e.to_string());
    }
}

/// A DNS name of letters, digits and hyphens, or `*.` before one.
fn sni_name_ok(name: &str) -> bool {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
