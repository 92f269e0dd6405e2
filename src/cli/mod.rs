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

/// The end of every command's help: where the settings not shown are.
const SETTINGS_HELP: &str = "Every setting (storage, TLS, tokens, limits, chat, telemetry: about \
    100) is a flag like those above, an environment variable and a config-file key; flags win, \
    then variables, then the file, then defaults. `csai-sidecar config` prints each with its \
    value and source; docs/configuration.md explains each.";

/// The whole command tree.
pub fn command() -> Command {
    let root = Command::new("csai-sidecar")
        .version(env!("CARGO_PKG_VERSION"))
        .about("gRPC sidecar that keeps the chat sessions of AI customer-service bots")
        .after_help(SETTINGS_HELP)
        .arg(
            Arg::new("config")
                .long("config")
                .env("CSAI_CONFIG")
                .value_name("FILE")
                .global(true)
                .help("TOML configuration file"),
        )
        .subcommands(
            [
                serve::command(),
                health::command(),
                Command::new("config")
                    .about("Validate and print the effective configuration, secrets redacted"),
                migrate::command(),
                rotate_keys::command(),
                backup::command(),
                restore::command(),
            ]
            .map(|command| command.after_help(SETTINGS_HELP)),
        );
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
    crate::progress::set_line_interval(config.progress_interval);
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
