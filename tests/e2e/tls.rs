//! TLS and mTLS of the gRPC server, and certificate reload without restart.

use crate::common;

use crate::common::{TestServer, test_config};
use csai_sidecar::config::TlsFiles;
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
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

/// Regression: only the certificate and key were reloaded; a new client CA took a
/// restart.
#[tokio::test]
async fn a_new_client_ca_is_used_without_a_restart() {
    let ca = Authority::new("server CA");
    let old_clients = Authority::new("old client CA");
    let new_clients = Authority::new("new client CA");
    let dir = scratch("client-ca-reload");
    let config = csai_sidecar::config::Config {
        tls: Some(files(
            &dir,
            &ca.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth),
            Some(&old_clients),
        )),
        ..test_config()
    };
    let server = TestServer::start_serving(config, common::memory_store()).await;
    let old_bot = old_clients.issue("bot", ExtendedKeyUsagePurpose::ClientAuth);
    let new_bot = new_clients.issue("bot", ExtendedKeyUsagePurpose::ClientAuth);
    assert_eq!(call(&server, &ca, Some(&old_bot)).await, Ok(0));
    assert!(call(&server, &ca, Some(&new_bot)).await.is_err());

    std::fs::write(dir.join("client-ca.pem"), new_clients.pem()).unwrap();
    let mut accepted = false;
    for _ in 0..50 {
        if call(&server, &ca, Some(&new_bot)).await.is_ok() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "the new client CA must be used within 5 s");
    assert!(
        call(&server, &ca, Some(&old_bot)).await.is_err(),
        "the old client CA is gone"
    );
}

/// Runs the `csai-sidecar` binary with these arguments and variables (and no CSAI_* of
/// the caller's); its exit status and output.
fn command(args: &[&str], vars: &[(&str, String)]) -> (bool, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_csai-sidecar"));
    for (name, _) in std::env::vars() {
        if name.starts_with("CSAI_") {
            command.env_remove(name);
        }
    }
    let output = command
        .args(args)
        .envs(vars.iter().cloned())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Regression: backup, restore and migrate sent no token and spoke no TLS, and `health`
/// was plaintext only (the Docker HEALTHCHECK failed once TLS was on).
// The commands run as child processes and are waited for on a test thread, so the
// server needs worker threads of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_reach_a_sidecar_that_needs_mtls_and_a_token() {
    let ca = Authority::new("server CA");
    let clients = Authority::new("client CA");
    let dir = scratch("commands");
    let token = "token-of-the-operator-0123";
    let config = csai_sidecar::config::Config {
        tls: Some(files(
            &dir,
            &ca.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth),
            Some(&clients),
        )),
        auth_tokens: Some(csai_sidecar::config::Secret(format!("ops:{token}"))),
        ..test_config()
    };
    let server = TestServer::start_serving(config, common::memory_store()).await;
    let operator = clients.issue("operator", ExtendedKeyUsagePurpose::ClientAuth);
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("operator.pem"), &operator.0).unwrap();
    std::fs::write(path("operator.key"), &operator.1).unwrap();
    std::fs::write(path("token"), format!("{token}\n")).unwrap();
    let url = format!("grpcs://{}", server.addr);
    let tls_args = |file: &str| -> Vec<String> {
        [
            "--file",
            file,
            "--sidecar-ca-file",
            &path("ca.pem"),
            "--sidecar-server-name",
            "localhost",
            "--sidecar-cert-file",
            &path("operator.pem"),
            "--sidecar-key-file",
            &path("operator.key"),
        ]
        .map(String::from)
        .to_vec()
    };

    // A session to carry over, written by a tenant... of the operator's token.
    let backup_file = path("backup.jsonl");
    let restore_file = path("restore.jsonl");
    std::fs::write(
        &restore_file,
        concat!(
            r#"{"format":"csai-sidecar-backup","version":1,"created_ms":0}"#,
            "\n",
            r#"{"session_id":"carried","messages":[{"seq":1,"time_ms":1700000000000,"message":{"role":"user","content":"hi"}}],"system_messages":[],"state":{},"expire_time_ms":4102444800000}"#,
            "\n"
        ),
    )
    .unwrap();
    let mut restore: Vec<String> = vec!["restore".into(), "--to".into(), url.clone()];
    restore.extend(tls_args(&restore_file));
    let restore: Vec<&str> = restore.iter().map(String::as_str).collect();
    let (ok, text) = command(&restore, &[]);
    assert!(!ok, "without a token the sidecar refuses: {text}");
    assert!(
        text.contains("token") || text.contains("authorization"),
        "{text}"
    );
    let (ok, text) = command(&restore, &[("CSAI_SIDECAR_TOKEN", token.to_string())]);
    assert!(ok, "{text}");
    assert!(text.contains("sessions  1"), "{text}");

    let mut backup: Vec<String> = vec!["backup".into(), "--from".into(), url.clone()];
    backup.extend(tls_args(&backup_file));
    backup.extend(["--sidecar-token-file".into(), path("token")]);
    let backup: Vec<&str> = backup.iter().map(String::as_str).collect();
    let (ok, text) = command(&backup, &[]);
    assert!(ok, "{text}");
    let written = std::fs::read_to_string(&backup_file).unwrap();
    assert!(written.contains("\"carried\""), "{written}");

    // `health` dials the sidecar's own listen address over TLS, with a client certificate.
    let listen = [
        ("CSAI_LISTEN", server.addr.to_string()),
        ("CSAI_TLS_CERT_FILE", path("cert.pem")),
        ("CSAI_TLS_KEY_FILE", path("key.pem")),
        ("CSAI_TLS_CLIENT_CA_FILE", path("client-ca.pem")),
    ];
    let health = [
        "health",
        "--sidecar-ca-file",
        &path("ca.pem"),
        "--sidecar-cert-file",
        &path("operator.pem"),
        "--sidecar-key-file",
        &path("operator.key"),
    ];
    let mut answered = String::new();
    for _ in 0..50 {
        let (ok, text) = command(&health, &listen);
        if ok {
            answered = text;
            break;
        }
        answered = text;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered.trim(), "SERVING");
}
