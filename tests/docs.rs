//! Keeps the README in step with the code: every setting and every RPC is documented.

use csai_sidecar::config::KEYS;

const README: &str = include_str!("../README.md");
const PROTOS: [&str; 2] = [
    include_str!("../proto/csai/v1/session_store.proto"),
    include_str!("../proto/csai/v1/chat.proto"),
];

#[test]
fn readme_documents_every_setting() {
    for key in KEYS {
        let flag = key
            .flag()
            .map_or_else(|| "(environment only)".to_string(), |f| format!("`--{f}`"));
        let row = format!("| `{}` | `{}` | {flag} |", key.name, key.env);
        assert!(
            README.contains(&row),
            "README lacks the configuration row {row}"
        );
    }
}

#[test]
fn readme_documents_every_rpc() {
    for proto in PROTOS {
        for line in proto.lines() {
            let Some(rest) = line.trim().strip_prefix("rpc ") else {
                continue;
            };
            let name = rest.split('(').next().unwrap_or_default().trim();
            assert!(
                README.contains(&format!(".{name}`")),
                "README lacks RPC {name}"
            );
        }
    }
}
