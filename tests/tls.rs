//! TLS and mTLS of the gRPC server, and certificate reload without restart.

mod common;

use common::{TestServer, test_config};
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
use csai_sidecar::tls::TlsFiles;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A CA that signs certificates.
struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Authority {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// A leaf certificate and its key, as PEM.
    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }
}

fn files(dir: &PathBuf, server: &(String, String), client_ca: Option<&Authority>) -> TlsFiles {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cert.pem"), &server.0).unwrap();
    std::fs::write(dir.join("key.pem"), &server.1).unwrap();
    let client_ca = client_ca.map(|ca| {
        let path = dir.join("client-ca.pem");
        std::fs::write(&path, ca.pem()).unwrap();
        path
    });
    TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_ca,
        reload_interval: Duration::from_millis(100),
    }
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("csai-tls-{}-{name}", std::process::id()))
}

async fn call(
    server: &TestServer,
    ca: &Authority,
    identity: Option<&(String, String)>,
) -> Result<u64, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    SessionStoreClient::new(channel)
        .get_stats(pb::GetStatsRequest {})
        .await
        .map(|r| r.into_inner().active_sessions)
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn tls_serves_clients_that_trust_the_ca_and_only_over_tls() {
    let ca = Authority::new("server CA");
    let server_cert = ca.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let config = csai_sidecar::config::Config {
        tls: Some(files(&scratch("plain"), &server_cert, None)),
        ..test_config()
    };
    let server = TestServer::start_serving(config, common::memory_store()).await;
    assert_eq!(call(&server, &ca, None).await, Ok(0));
    let stranger = Authority::new("someone else");
    assert!(
        call(&server, &stranger, None).await.is_err(),
        "an untrusted certificate is refused"
    );
    let plaintext = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await;
    let refused = match plaintext {
        Ok(channel) => SessionStoreClient::new(channel)
            .get_stats(pb::GetStatsRequest {})
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(refused, "plaintext gRPC must not be served");
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_client_ca() {
    let ca = Authority::new("server CA");
    let clients = Authority::new("client CA");
    let server_cert = ca.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let config = csai_sidecar::config::Config {
        tls: Some(files(&scratch("mutual"), &server_cert, Some(&clients))),
        ..test_config()
    };
    let server = TestServer::start_serving(config, common::memory_store()).await;
    let bot = clients.issue("bot", ExtendedKeyUsagePurpose::ClientAuth);
    assert_eq!(call(&server, &ca, Some(&bot)).await, Ok(0));
    assert!(
        call(&server, &ca, None).await.is_err(),
        "a client without a certificate is refused"
    );
    let impostor =
        Authority::new("other client CA").issue("bot", ExtendedKeyUsagePurpose::ClientAuth);
    assert!(
        call(&server, &ca, Some(&impostor)).await.is_err(),
        "a certificate of another CA is refused"
    );
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let old_ca = Authority::new("old CA");
    let dir = scratch("reload");
    let config = csai_sidecar::config::Config {
        tls: Some(files(
            &dir,
            &old_ca.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth),
            None,
        )),
        ..test_config()
    };
    let server = TestServer::start_serving(config, common::memory_store()).await;
    assert_eq!(call(&server, &old_ca, None).await, Ok(0));

    let new_ca = Authority::new("new CA");
    let renewed = new_ca.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth);
    // Key first, then certificate: the watcher loads the pair once both changed.
    std::fs::write(dir.join("key.pem"), &renewed.1).unwrap();
    std::fs::write(dir.join("cert.pem"), &renewed.0).unwrap();
    let mut served = false;
    for _ in 0..50 {
        if call(&server, &new_ca, None).await.is_ok() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the renewed certificate must be served within 5 s");
    assert!(
        call(&server, &old_ca, None).await.is_err(),
        "the old certificate is gone"
    );
}
