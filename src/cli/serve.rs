//! `csai-sidecar serve` (the default command): the gRPC server until SIGTERM or SIGINT.

use crate::config::Config;
use crate::observability::telemetry;
use crate::server;
use clap::Command;
use std::process::ExitCode;
use std::time::Duration;

pub fn command() -> Command {
    Command::new("serve").about("Serve gRPC (the default command)")
}

pub fn run(config: &Config) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("csai-sidecar: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let telemetry = match telemetry::init(
            config.log_format,
            &config.log_level,
            config.trace_session_ids,
            config
                .trace_session_id_key
                .as_ref()
                .map(|key| key.0.as_str()),
        ) {
            Ok(telemetry) => telemetry,
            Err(error) => {
                eprintln!("csai-sidecar: {error}");
                return ExitCode::from(2);
            }
        };
        let result = async {
            let store = server::open_store(config).await?;
            let listener = server::bind(config).await?;
            server::serve(config, store, listener, shutdown_signal()).await
        }
        .await;
        telemetry.shutdown(Duration::from_secs(5)).await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("csai-sidecar: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
