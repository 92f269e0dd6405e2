//! The `csai-sidecar` command: `serve` (the default) and `config`.

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use csai_sidecar::config::{Config, ConfigError, KEYS, Source, StorageType, Values};
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
        )
        .subcommand(
            Command::new("migrate")
                .about("Copy CS-AI's Redis data into the configured store (idempotent)")
                .arg(
                    Arg::new("from")
                        .long("from")
                        .required(true)
                        .value_name("URL")
                        .help("CS-AI's Redis: cs-ai-redis://[user:password@]host:port/db (cs-ai-rediss:// for TLS)"),
                )
                .arg(
                    Arg::new("dry-run")
                        .long("dry-run")
                        .action(ArgAction::SetTrue)
                        .help("read and convert everything, write nothing"),
                ),
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

/// `csai-sidecar migrate`: exit 0 when everything was copied, 1 when something failed,
/// 2 when the command cannot run as given.
fn migrate(config: &Config, arguments: &ArgMatches) -> ExitCode {
    let from = arguments
        .get_one::<String>("from")
        .cloned()
        .unwrap_or_default();
    let Some(url) = from
        .strip_prefix("cs-ai-redis://")
        .map(|rest| format!("redis://{rest}"))
        .or_else(|| {
            from.strip_prefix("cs-ai-rediss://")
                .map(|rest| format!("rediss://{rest}"))
        })
    else {
        eprintln!(
            "csai-sidecar: --from must be a cs-ai-redis:// or cs-ai-rediss:// URL (CS-AI's Redis), not {from:?}"
        );
        return ExitCode::from(2);
    };
    if config.storage_type == StorageType::Memory {
        eprintln!(
            "csai-sidecar: migrate writes into the configured store, and the in-memory store \
             would vanish when migrate exits: set type (CSAI_STORAGE_TYPE) to redis, mongo or dynamo"
        );
        return ExitCode::from(2);
    }
    let options = csai_sidecar::migrate::Options {
        dry_run: arguments.get_flag("dry-run"),
        default_ttl: config.session_ttl,
        record_retention: config.record_retention,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("csai-sidecar: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let store = server::open_store(config)
            .await
            .map_err(|e| e.to_string())?;
        csai_sidecar::migrate::from_cs_ai_redis(&url, store.as_ref(), &options)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(summary) => {
            let verb = if options.dry_run {
                "would copy (dry run)"
            } else {
                "copied"
            };
            println!(
                "csai-sidecar migrate: {verb} into {}\n{summary}",
                config.storage_type.name()
            );
            if summary.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("csai-sidecar: {error}");
            ExitCode::FAILURE
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
    if let Some(("migrate", arguments)) = matches.subcommand() {
        return migrate(&config, arguments);
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
