//! The `csai-sidecar` command: `serve` (the default) and `config`.

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};
use csai_sidecar::config::{ConfigError, KEYS, Source, Values};
use csai_sidecar::{server, telemetry};
use std::path::PathBuf;
use std::process::ExitCode;

fn cli() -> Command {
    let mut command = Command::new("csai-sidecar")
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
        .subcommand(Command::new("serve").about("Serve gRPC (the default command)"))
        .subcommand(
            Command::new("config")
                .about("Validate and print the effective configuration, secrets redacted"),
        );
    for key in KEYS {
        let Some(flag) = key.flag() else {
            continue;
        };
        command = command.arg(
            Arg::new(key.name)
                .long(flag)
                .env(key.env)
                .hide_env_values(key.secret)
                .value_name("VALUE")
                .global(true)
                .help(key.help),
        );
    }
    command
}

/// Gathers values: defaults, then the file, then environment and flags (clap resolves
/// those two, flags first).
fn values_from(matches: &ArgMatches) -> Result<Values, ConfigError> {
    let mut values = Values::defaults();
    if let Some(path) = matches.get_one::<String>("config") {
        values = values.with_file(&PathBuf::from(path))?;
    }
    for key in KEYS {
        if key.env_only {
            if let Ok(value) = std::env::var(key.env) {
                values.set(key.name, value, Source::Env(key.env));
            }
            continue;
        }
        let Some(value) = matches.try_get_one::<String>(key.name).ok().flatten() else {
            continue;
        };
        let source = match matches.value_source(key.name) {
            Some(ValueSource::EnvVariable) => Source::Env(key.env),
            _ => Source::Flag(key.flag().unwrap_or_default()),
        };
        values.set(key.name, value.clone(), source);
    }
    Ok(values)
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

fn main() -> ExitCode {
    let matches = cli().get_matches();
    let (values, config) = match values_from(&matches).and_then(|v| v.parse().map(|c| (v, c))) {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("csai-sidecar: {error}");
            return ExitCode::from(2);
        }
    };
    if matches.subcommand_name() == Some("config") {
        print!("{}", values.render());
        return ExitCode::SUCCESS;
    }
    if let Err(error) = telemetry::init_logging(config.log_format, &config.log_level) {
        eprintln!("csai-sidecar: {error}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("csai-sidecar: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let store = server::open_store(&config).await?;
        let listener = server::bind(&config).await?;
        server::serve(&config, store, listener, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("csai-sidecar: {error}");
            ExitCode::FAILURE
        }
    }
}
