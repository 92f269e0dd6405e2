//! The gRPC server on a Unix domain socket: the file's mode, a live socket or another file
//! refused, a stale one replaced, and the file removed at shutdown.

use crate::common::test_config;
use csai_sidecar::config::{Config, Listen};
use csai_sidecar::grpc::dial::DialOptions;
use csai_sidecar::grpc::pb;
use csai_sidecar::grpc::pb::session_store_client::SessionStoreClient;
use csai_sidecar::server;
use csai_sidecar::store::memory::{MemoryLimits, MemoryStore};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

fn folder(name: &str) -> std::path::PathBuf {
    let folder = std::env::temp_dir().join(format!("csai-uds-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).expect("socket folder");
    folder
}

fn on_socket(path: &std::path::Path, mode: u32) -> Config {
    Config {
        listen: Listen::Unix {
            path: path.to_path_buf(),
            mode,
        },
        ..test_config()
    }
}

#[tokio::test]
async fn a_unix_socket_serves_with_its_mode_and_is_removed_at_shutdown() {
    let folder = folder("serve");
    let path = folder.join("sidecar.sock");
    // A socket file left by a sidecar that was killed: replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("a stale socket"));
    assert!(path.exists());

    let config = on_socket(&path, 0o600);
    let listener = server::bind(&config)
        .await
        .expect("binds over the stale socket");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let store = Arc::new(MemoryStore::new(MemoryLimits::default()));
    let serving = tokio::spawn(async move {
        server::serve(&config, store, listener, async {
            let _ = stopped.await;
        })
        .await
    });

    let url = format!("unix://{}", path.display());
    let channel = DialOptions::default()
        .connect(&url)
        .await
        .expect("dial the socket");
    let appended = SessionStoreClient::new(channel)
        .append_messages(pb::AppendMessagesRequest {
            session_id: "over-uds".into(),
            messages: vec![pb::Message {
                role: pb::Role::User as i32,
                content: "hello over a socket".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("append over the socket")
        .into_inner();
    assert_eq!(appended.seqs, [1]);

    // A second sidecar on the same path is refused while the first one answers.
    let error = server::bind(&on_socket(&path, 0o600))
        .await
        .err()
        .expect("the socket is in use")
        .to_string();
    assert!(error.contains("another process is listening"), "{error}");
    assert!(path.exists(), "the refused bind left the live socket alone");

    stop.send(()).unwrap();
    serving.await.unwrap().expect("clean shutdown");
    assert!(!path.exists(), "the socket file is removed at shutdown");
    std::fs::remove_dir_all(&folder).unwrap();
}

#[tokio::test]
async fn a_path_that_is_not_a_socket_is_never_replaced() {
    let folder = folder("file");
    let path = folder.join("important.txt");
    std::fs::write(&path, "keep me").unwrap();
    let error = server::bind(&on_socket(&path, 0o660))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("not a socket"), "{error}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    std::fs::remove_dir_all(&folder).unwrap();
}
