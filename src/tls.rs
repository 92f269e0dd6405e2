//! TLS for the gRPC server: rustls with optional client certificates (mTLS), and the
//! server certificate reloaded from its files when they change, without a restart.

use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Where the server's TLS material lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate signed by this CA (mTLS) when set.
    pub client_ca: Option<PathBuf>,
    /// How often the certificate files are checked for changes.
    pub reload_interval: Duration,
}

fn load_certified_key(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| format!("cannot read tls_cert_file {}: {e}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls_cert_file {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls_cert_file {} holds no certificate",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("tls_key_file {}: {e}", files.key.display()))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls_key_file {}: {e}", files.key.display()))?;
    let certified = CertifiedKey::new(certs, signing_key);
    // A pair caught halfway through a renewal (new key, old certificate) is refused.
    certified.keys_match().map_err(|e| {
        format!(
            "tls_key_file {} does not belong to tls_cert_file {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(certified)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Serves the current certificate; a watcher task swaps in a new one when the files change.
#[derive(Debug)]
struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// Builds the acceptor and starts the certificate watcher (which ends with the acceptor).
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    let resolver = Arc::new(ReloadingCert {
        current: RwLock::new(Arc::new(load_certified_key(files)?)),
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("cannot read tls_client_ca_file {}: {e}", ca.display()))?
            {
                let cert = cert.map_err(|e| format!("tls_client_ca_file {}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("tls_client_ca_file {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("tls_client_ca_file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio::spawn(watch(Arc::downgrade(&resolver), files.clone()));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Reloads the certificate when either file's modification time changes. A broken new
/// pair is logged and the old certificate stays in use.
async fn watch(resolver: std::sync::Weak<ReloadingCert>, files: TlsFiles) {
    let stamp = |files: &TlsFiles| (modified(&files.cert), modified(&files.key));
    let mut seen = stamp(&files);
    loop {
        tokio::time::sleep(files.reload_interval).await;
        let Some(resolver) = resolver.upgrade() else {
            return;
        };
        let now = stamp(&files);
        if now == seen {
            continue;
        }
        match load_certified_key(&files) {
            Ok(key) => {
                *resolver.current.write() = Arc::new(key);
                seen = now;
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                tracing::warn!(%error, "new TLS certificate files do not load; keeping the old one");
            }
        }
    }
}

/// Accepted TLS connections, for `serve_with_incoming`. Handshakes run in their own tasks
/// so a slow or failing client never holds up the others.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<tokio::net::TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = crate::accept::accept(&listener, "grpc-tls").await;
            if tx.is_closed() {
                return;
            }
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
