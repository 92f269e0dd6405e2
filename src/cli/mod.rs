//! The `csai-sidecar` command line: one file per command, each with its `command()`
//! (arguments and help) and its `run`. Settings come from flags, then environment
//! variables, then the config file, then defaults, for every command alike.

mod args;
mod backup;
mod health;
mod migrate;
mod restore;
mod rotate_keys;
mod serve;

use crate::config;
use crate::observability::telemetry;
use clap::{Arg, Command};
use std::process::ExitCode;

/// The whole command tree.
pub fn command() -> Command {
    let root = Command::new("csai-sidecar")
        .version(env!("CARGO_PKG_VERSION"))
        .about("gRPC sidecar that keeps the chat sessions of AI customer-service bots")
        .after_help(
            "Settings are read from flags, then environment variables, then the config file, \
             then defaults. `csai-sidecar config` shows the effective values.",
        )
        .arg(
            Arg::new("config")
                .long("config")
                .env("CSAI_CONFIG")
                .value_name("FILE")
                .global(true)
                .help("TOML configuration file"),
        )
        .subcommand(serve::command())
        .subcommand(health::command())
        .subcommand(
            Command::new("config")
                .about("Validate and print the effective configuration, secrets redacted"),
        )
        .subcommand(migrate::command())
        .subcommand(rotate_keys::command())
        .subcommand(backup::command())
        .subcommand(restore::command());
    args::config_args(root)
}

/// Parses the command line, resolves the configuration and runs the command. Exit code
/// 2 for a configuration or usage error.
pub fn run() -> ExitCode {
    let matches = command().get_matches();
    let (values, config) =
        match args::values_from(&matches).and_then(|v| config::parse(&v).map(|c| (v, c))) {
            Ok(parsed) => parsed,
            Err(error) => {
                eprintln!("csai-sidecar: {error}");
                return ExitCode::from(2);
            }
        };
    telemetry::redact_panics(config.secrets());
    match matches.subcommand() {
        Some(("config", _)) => {
            print!("{}", values.render());
            ExitCode::SUCCESS
        }
        Some(("health", arguments)) => health::run(&config, arguments),
        Some(("backup", arguments)) => backup::run(&config, arguments),
        Some(("restore", arguments)) => restore::run(&config, arguments),
        Some(("migrate", arguments)) => migrate::run(&config, arguments),
        Some(("rotate-keys", arguments)) => rotate_keys::run(&config, arguments),
        _ => serve::run(&config),
    }
}
