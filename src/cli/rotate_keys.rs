//! `csai-sidecar rotate-keys`: every session rewritten under the primary encryption key,
//! and with `--accept-unsealed` plaintext and older envelopes sealed.

use crate::cli::args::{self, usage};
use crate::config::Config;
use crate::operations;
use crate::server;
use clap::{Arg, ArgAction, ArgMatches, Command};
use std::process::ExitCode;

pub fn command() -> Command {
    Command::new("rotate-keys")
        .about("Re-encrypt every session under the primary encryption key (the first of encryption_keys)")
        .arg(
            Arg::new("accept-unsealed")
                .long("accept-unsealed")
                .action(ArgAction::SetTrue)
                .help("also seal values stored in plaintext (before encryption was on) or by versions before csai-enc:2; without it they are failures"),
        )
}

pub fn run(config: &Config, arguments: &ArgMatches) -> ExitCode {
    args::report("rotate-keys", async {
        let keys = server::keyring(config)
            .map_err(|e| usage(e.to_string()))?
            .ok_or_else(|| {
                usage("rotate-keys needs encryption_keys (CSAI_ENCRYPTION_KEYS or encryption_keys_file)".into())
            })?;
        if !config.storage.backend.persistent {
            return Err(usage(
                "rotate-keys works on a backend; the in-memory store lives in the sidecar's process".into(),
            ));
        }
        let backend = server::open_backend(config)
            .await
            .map_err(|e| usage(e.to_string()))?;
        let primary = keys.primary_id().to_string();
        let accept_unsealed = arguments.get_flag("accept-unsealed");
        let rotation = operations::rotate_keys(backend, keys, accept_unsealed).await;
        let mut text = format!(
            "re-encrypted {} sessions under key {primary:?}",
            rotation.sessions
        );
        for failure in &rotation.failures {
            text.push_str(&format!("\n  {failure}"));
        }
        if rotation.failures.is_empty() {
            Ok(text)
        } else {
            Err((1, text))
        }
    })
}
