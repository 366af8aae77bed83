//! TLS termination on client listeners: rustls with the ring provider, TLS 1.2 and 1.3,
//! ALPN `h2` and `http/1.1`, session tickets and a session cache for resumption.
//!
//! A listener's certificates sit behind one `ArcSwap` ([`Certs`]): each handshake picks
//! one by SNI (an exact name, then `*.` one label up, then the default), and a reload
//! replaces the whole table in one swap, so open connections keep what they
//! negotiated and the next handshake gets the new certificate. A reload that cannot
//! read, parse or match a file keeps the old table and says why.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerSessionMemoryCache,
};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use tokio_rustls::TlsAcceptor;

use crate::config::{CertFiles, TlsConfig};
use crate::pem::{self, PemError};

/// Sessions remembered for resumption by id (TLS 1.2 clients without tickets).
const SESSION_CACHE: usize = 4096;

/// How long file events are gathered before one reload: a renamed-into-place
/// certificate and its key usually land as two events.
const SETTLE: Duration = Duration::from_millis(200);

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Files(#[from] PemError),
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A TLS listener's handshake settings and its certificates.
pub struct Terminator {
    /// Runs the server side of the handshake with the settings below.
    pub acceptor: TlsAcceptor,
    /// The certificates the handshakes choose from; reloadable.
    pub certs: Arc<Certs>,
    /// How long a client has to finish its handshake.
    pub handshake_timeout: Duration,
}

impl Terminator {
    /// Loads the certificates and builds the rustls settings.
    pub fn new(config: &TlsConfig) -> Result<Terminator, TlsError> {
        let certs = Arc::new(Certs::load(config)?);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut settings = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&certs) as Arc<dyn ResolvesServerCert>);
        // RFC 7301: h2 preferred, HTTP/1.1 otherwise; a client without ALPN gets
        // HTTP/1.1.
        settings.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if config.resumption {
            settings.ticketer = rustls::crypto::ring::Ticketer::new()?;
            settings.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        } else {
            // No tickets are sent (TLS 1.3 sends two by default, even with no ticketer)
            // and no session is kept: a client offering one gets a full handshake.
            settings.send_tls13_tickets = 0;
            settings.session_storage = Arc::new(NoServerSessionStorage {});
        }
        Ok(Terminator {
            acceptor: TlsAcceptor::from(Arc::new(settings)),
            certs,
            handshake_timeout: config.handshake_timeout,
        })
    }
}

/// A listener's certificates, chosen per handshake by SNI.
#[derive(Debug)]
pub struct Certs {
    /// What handshakes read: replaced whole by a reload.
    table: ArcSwap<Table>,
    /// The files it was loaded from, read again by [`Certs::reload`].
    files: TlsConfig,
}

/// One generation of certificates.
#[derive(Debug)]
struct Table {
    /// Served when no name matches, or the client sent none.
    default: Arc<CertifiedKey>,
    /// By exact lowercase name.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the name a `*.` entry stands above (`example.com` for `*.example.com`).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

// === impl Certs ===

impl Certs {
    pub fn load(files: &TlsConfig) -> Result<Certs, TlsError> {
        Ok(Certs {
            table: ArcSwap::from_pointee(Table::load(files)?),
            files: files.clone(),
        })
    }

    /// Reads every file again and swaps the new table in; on any error the old one
    /// stays and the error names the file.
    pub fn reload(&self) -> Result<(), TlsError> {
        let table = Table::load(&self.files)?;
        self.table.store(Arc::new(table));
        Ok(())
    }

    /// Every certificate and key file, for watching.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(&self.files.default)
            .chain(self.files.sni.iter().map(|s| &s.files))
            .flat_map(|f| [f.cert.as_path(), f.key.as_path()])
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.load();
        let Some(name) = hello.server_name() else {
            return Some(Arc::clone(&table.default));
        };
        // rustls hands over a validated DNS name; case is the client's.
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        let found = table.exact.get(name).or_else(|| {
            name.split_once('.')
                .and_then(|(_, parent)| table.wildcard.get(parent))
        });
        Some(Arc::clone(found.unwrap_or(&table.default)))
    }
}

impl Table {
    fn load(files: &TlsConfig) -> Result<Table, TlsError> {
        let read = |f: &CertFiles| pem::certified_key(&f.cert, &f.key).map(Arc::new);
        let mut table = Table {
            default: read(&files.default)?,
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for sni in &files.sni {
            let key = read(&sni.files)?;
            match sni.name.strip_prefix("*.") {
                Some(parent) => table.wildcard.insert(parent.to_owned(), key),
                None => table.exact.insert(sni.name.clone(), key),
            };
        }
        Ok(table)
    }
}

/// Why a handshake failed, as `cutover_tls_handshake_failures_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not finished within the handshake timeout.
    Timeout,
    /// The client closed (or reset) before the handshake finished.
    Eof,
    /// Not TLS, or TLS the rules do not allow (a plain HTTP request lands here).
    Protocol,
    /// No version, cipher suite or application protocol in common.
    Incompatible,
    /// The client refused the certificate (an alert saying so).
    Certificate,
    /// Anything else: a socket error, another alert.
    Other,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 6] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::Eof,
        HandshakeFailure::Protocol,
        HandshakeFailure::Incompatible,
        HandshakeFailure::Certificate,
        HandshakeFailure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Eof => "eof",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::Certificate => "certificate",
            HandshakeFailure::Other => "other",
        }
    }

    /// The label for what `TlsAcceptor::accept` failed with.
    pub fn of(e: &io::Error) -> HandshakeFailure {
        use rustls::{AlertDescription as A, Error as E};
        let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) else {
            return match e.kind() {
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe => HandshakeFailure::Eof,
                _ => HandshakeFailure::Other,
            };
        };
        match tls {
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::DecryptError
            | E::PeerMisbehaved(_) => HandshakeFailure::Protocol,
            E::PeerIncompatible(_) | E::NoApplicationProtocol => HandshakeFailure::Incompatible,
            E::AlertReceived(
                A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA,
            ) => HandshakeFailure::Certificate,
            E::AlertReceived(
                A::ProtocolVersion | A::HandshakeFailure | A::InsufficientSecurity,
            ) => HandshakeFailure::Incompatible,
            _ => HandshakeFailure::Other,
        }
    }
}

/// Reloads `certs` when one of their files changes (written in place, or a new file
/// renamed over it): the parent directories are watched, since a rename replaces the
/// file a watch on it would follow. Runs until dropped.
pub async fn watch(certs: Vec<Arc<Certs>>, counted: impl Fn(bool) + Send) {
    if certs.is_empty() {
        return;
    }
    let files: Vec<PathBuf> = certs
        .iter()
        .flat_map(|c| c.paths().map(normal).collect::<Vec<_>>())
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let wanted = files.clone();
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event.paths.iter().any(|p| wanted.iter().any(|w| w == p)) {
            // Full: a reload is already due and will read this change too.
            let _ = tx.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch certificate files; they reload on SIGHUP only");
            return;
        }
    };
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        use notify::Watcher;
        if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::error!(dir = %dir.display(), error = %e, "cannot watch a certificate directory; its files reload on SIGHUP only");
        }
    }
    while rx.recv().await.is_some() {
        tokio::time::sleep(SETTLE).await;
        while rx.try_recv().is_ok() {}
        let _ = reload_all(&certs, &counted);
    }
}

/// Reloads every listener's certificates (SIGHUP, a file change), each logged and
/// passed to `counted` (whether it loaded): the old ones stay where the new ones are
/// bad. Returns why each that did not load failed.
pub fn reload_all(certs: &[Arc<Certs>], counted: &impl Fn(bool)) -> Vec<String> {
    let mut errors = Vec::new();
    for c in certs {
        match c.reload() {
            Ok(()) => {
                counted(true);
                tracing::info!(cert = %c.files.default.cert.display(), "certificates reloaded");
            }
            Err(e) => {
                counted(false);
                tracing::error!(error = %e, "certificates not reloaded; the previous ones are still served");
                errors.push(e.to_string());
            }
        }
    }
    errors
}

/// `path` as a directory watch reports it: a bare file name is under `.`.
fn normal(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => path.to_owned(),
        _ => Path::new(".").join(path),
    }
}
