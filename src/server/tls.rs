//! TLS for the gRPC server: rustls with optional client certificates (mTLS), and the
//! certificate, key and client CA reloaded from their files when they change, without a
//! restart.

use crate::config::TlsFiles;
use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

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

/// A rustls server configuration of the files: the certificate and key, and the client
/// CA when mTLS is on.
fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let certified = Arc::new(load_certified_key(files)?);
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
    let mut config = builder.with_cert_resolver(Arc::new(FixedCert(certified)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Serves one certificate (the whole configuration is swapped on reload).
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The current TLS configuration; a watcher task swaps in a new one when the certificate,
/// the key or the client CA file changes.
#[derive(Clone)]
pub struct ReloadingAcceptor {
    current: Arc<RwLock<TlsAcceptor>>,
}

impl ReloadingAcceptor {
    fn current(&self) -> TlsAcceptor {
        self.current.read().clone()
    }
}

/// Builds the acceptor and starts the file watcher (which ends with the acceptor).
pub fn acceptor(files: &TlsFiles) -> Result<ReloadingAcceptor, String> {
    let acceptor = ReloadingAcceptor {
        current: Arc::new(RwLock::new(TlsAcceptor::from(server_config(files)?))),
    };
    tokio::spawn(watch(Arc::downgrade(&acceptor.current), files.clone()));
    Ok(acceptor)
}

/// Reloads the configuration when the certificate's, the key's or the client CA's
/// modification time changes. Files that do not load are logged and the old
/// configuration stays in use.
async fn watch(current: std::sync::Weak<RwLock<TlsAcceptor>>, files: TlsFiles) {
    let stamp = |files: &TlsFiles| {
        (
            modified(&files.cert),
            modified(&files.key),
            files.client_ca.as_deref().and_then(modified),
        )
    };
    let mut seen = stamp(&files);
    loop {
        tokio::time::sleep(files.reload_interval).await;
        let Some(current) = current.upgrade() else {
            return;
        };
        let now = stamp(&files);
        if now == seen {
            continue;
        }
        match server_config(&files) {
            Ok(config) => {
                *current.write() = TlsAcceptor::from(config);
                seen = now;
                tracing::info!(cert = %files.cert.display(), "TLS certificate and client CA reloaded");
            }
            Err(error) => {
                tracing::warn!(%error, "new TLS files do not load; keeping the old ones");
            }
        }
    }
}

/// Accepted TLS connections, for `serve_with_incoming`. Handshakes run in their own tasks
/// so a slow or failing client never holds up the others.
pub fn incoming(
    listener: TcpListener,
    acceptor: ReloadingAcceptor,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<tokio::net::TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = crate::server::accept::accept(&listener, "grpc-tls").await;
            if tx.is_closed() {
                return;
            }
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.current();
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
