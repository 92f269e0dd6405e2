//! The `csai-sidecar` command: `serve` (the default), `config`, `health`, `backup`,
//! `restore`, `migrate` and `rotate-keys`; flags, environment and file layered by `config`.

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use csai_sidecar::commands::{self, Endpoint};
use csai_sidecar::config::{Config, ConfigError, KEYS, Source, StorageType, Values};
use csai_sidecar::dial::DialOptions;
use csai_sidecar::observability::telemetry;
use csai_sidecar::server;
use csai_sidecar::service::Policy;
use csai_sidecar::transfer::Existing;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
            Command::new("health")
                .about(
                    "Check the running sidecar's grpc.health.v1 status on `listen`; exit 0 \
                     when SERVING (for container health checks)",
                )
                .arg(
                    Arg::new("service")
                        .long("service")
                        .value_name("NAME")
                        .default_value("")
                        .help("health service name: empty for the server, or csai.v1.SessionStore, csai.v1.Chat"),
                )
                .args(dial_args()),
        )
        .subcommand(
            Command::new("config")
                .about("Validate and print the effective configuration, secrets redacted"),
        )
        .subcommand(
            Command::new("migrate")
                .about("Copy every session into the configured store (or --to a sidecar)")
                .arg(
                    Arg::new("from")
                        .long("from")
                        .value_name("URL")
                        .help("cs-ai-redis://[user:password@]host:port/db (CS-AI's Redis; cs-ai-rediss:// for TLS) or grpc://host:port (a running sidecar)"),
                )
                .arg(
                    Arg::new("from-config")
                        .long("from-config")
                        .value_name("FILE")
                        .help("a config file naming the source backend (type, redis_*, mongo_*, dynamo_*)"),
                )
                .arg(to_arg())
                .arg(
                    Arg::new("checkpoint")
                        .long("checkpoint")
                        .value_name("FILE")
                        .help("record copied sessions here; a re-run after an interruption skips them"),
                )
                .arg(
                    Arg::new("dry-run")
                        .long("dry-run")
                        .action(ArgAction::SetTrue)
                        .help("read and convert everything, write nothing"),
                )
                .args(dial_args()),
        )
        .subcommand(
            Command::new("rotate-keys")
                .about("Re-encrypt every session under the primary encryption key (the first of encryption_keys)")
                .arg(
                    Arg::new("accept-unsealed")
                        .long("accept-unsealed")
                        .action(ArgAction::SetTrue)
                        .help("also seal values stored in plaintext (before encryption was on) or by versions before csai-enc:2; without it they are failures"),
                ),
        )
        .subcommand(
            Command::new("backup")
                .about("Write every live session to a backup file (JSON Lines)")
                .arg(file_arg())
                .arg(
                    Arg::new("from")
                        .long("from")
                        .value_name("URL")
                        .help("grpc://host:port (grpcs:// for TLS): back up a running sidecar (its in-memory store too)"),
                )
                .args(dial_args()),
        )
        .subcommand(
            Command::new("restore")
                .about("Restore a backup file into the configured store (or --to a sidecar)")
                .arg(file_arg())
                .arg(to_arg())
                .arg(
                    Arg::new("existing")
                        .long("existing")
                        .value_name("POLICY")
                        .value_parser(["skip", "overwrite", "fail"])
                        .default_value("fail")
                        .help("what to do with sessions that already exist"),
                )
                .args(dial_args()),
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

/// How a command reaches a protected sidecar. The token comes from a file or the
/// environment (`CSAI_SIDECAR_TOKEN`), never from a flag: flags are visible in `ps`.
fn dial_args() -> [Arg; 5] {
    let file = |name: &'static str, env: &'static str, help: &'static str| {
        Arg::new(name)
            .long(name)
            .env(env)
            .value_name("FILE")
            .help(help)
    };
    [
        file(
            "sidecar-token-file",
            "CSAI_SIDECAR_TOKEN_FILE",
            "the bearer token for the sidecar (else CSAI_SIDECAR_TOKEN)",
        ),
        file(
            "sidecar-ca-file",
            "CSAI_SIDECAR_CA_FILE",
            "CA certificate of the sidecar's TLS certificate; dials TLS",
        ),
        file(
            "sidecar-cert-file",
            "CSAI_SIDECAR_CERT_FILE",
            "client certificate for a sidecar that requires mTLS",
        ),
        file(
            "sidecar-key-file",
            "CSAI_SIDECAR_KEY_FILE",
            "key of --sidecar-cert-file",
        ),
        Arg::new("sidecar-server-name")
            .long("sidecar-server-name")
            .env("CSAI_SIDECAR_SERVER_NAME")
            .value_name("NAME")
            .help("name the sidecar's certificate must carry (default: the URL's host)"),
    ]
}

/// The token and TLS settings of `dial_args`.
fn dial_options(arguments: &ArgMatches) -> Result<DialOptions, String> {
    let text = |name: &str| arguments.try_get_one::<String>(name).ok().flatten();
    let client_cert = match (text("sidecar-cert-file"), text("sidecar-key-file")) {
        (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
        (None, None) => None,
        _ => return Err("--sidecar-cert-file and --sidecar-key-file go together".into()),
    };
    Ok(DialOptions {
        token: DialOptions::read_token(text("sidecar-token-file").map(String::as_str))?,
        ca_file: text("sidecar-ca-file").map(PathBuf::from),
        client_cert,
        server_name: text("sidecar-server-name").cloned(),
    })
}

fn file_arg() -> Arg {
    Arg::new("file")
        .long("file")
        .required(true)
        .value_name("FILE")
        .help("the backup file")
}

fn to_arg() -> Arg {
    Arg::new("to")
        .long("to")
        .value_name("URL")
        .help("grpc://host:port (grpcs:// for TLS): write into a running sidecar instead of the configured store")
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

/// `csai-sidecar health`: prints the status; exit 0 only when SERVING.
fn health_check(config: &Config, arguments: &ArgMatches) -> ExitCode {
    let service = arguments
        .get_one::<String>("service")
        .map_or("", String::as_str);
    // With TLS on, the probe trusts the CA given, else the sidecar's own certificate (a
    // self-signed one), and checks the name `localhost` unless told another.
    let result = dial_options(arguments).and_then(|mut dial| {
        if let Some(tls) = &config.tls {
            dial.ca_file.get_or_insert_with(|| tls.cert.clone());
            dial.server_name.get_or_insert_with(|| "localhost".into());
        }
        tokio::runtime::Runtime::new()
            .map_err(|e| e.to_string())
            .and_then(|runtime| {
                runtime.block_on(csai_sidecar::server::health::probe(
                    config.listen,
                    service,
                    config.tls.is_some(),
                    &dial,
                ))
            })
    });
    match result {
        Ok(status) if status == "SERVING" => {
            println!("{status}");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("{status}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("csai-sidecar: {error}");
            ExitCode::FAILURE
        }
    }
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

/// The configured store, refusing the in-memory one, which would vanish with the command.
async fn configured_store(config: &Config, role: &str) -> Result<Endpoint, String> {
    if config.storage_type == StorageType::Memory {
        return Err(format!(
            "the {role} is the configured store, and the in-memory store would vanish when \
             this command exits: set type (CSAI_STORAGE_TYPE) to redis, mongo or dynamo, \
             or name a running sidecar with grpc://host:port"
        ));
    }
    let store = server::open_store(config)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Endpoint::Store(store))
}

async fn endpoint(
    config: &Config,
    url: Option<&String>,
    role: &str,
    arguments: &ArgMatches,
) -> Result<Endpoint, String> {
    match url {
        Some(url) => Endpoint::sidecar(url, &dial_options(arguments)?).await,
        None => configured_store(config, role).await,
    }
}

/// `csai-sidecar migrate`, `backup` and `restore`. Exit codes: 0 all done, 1 something
/// failed (each failure is listed), 2 the command cannot run as given.
fn operations(config: &Config, command: &str, arguments: &ArgMatches) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("csai-sidecar: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let policy = Policy::from_config(config);
    let text = |name: &str| arguments.try_get_one::<String>(name).ok().flatten();
    let result: Result<String, (u8, String)> = runtime.block_on(async {
        let usage = |e: String| (2u8, e);
        match command {
            "backup" => {
                let mut source = endpoint(config, text("from"), "source", arguments)
                    .await
                    .map_err(usage)?;
                let path = PathBuf::from(text("file").expect("required"));
                let report = commands::backup(&mut source, &policy, &path)
                    .await
                    .map_err(|e| (1, e))?;
                Ok(format!("backed up to {}\n{report}", path.display()))
            }
            "restore" => {
                let mut target = endpoint(config, text("to"), "target", arguments)
                    .await
                    .map_err(usage)?;
                let existing = match text("existing").map(String::as_str) {
                    Some("skip") => Existing::Skip,
                    Some("overwrite") => Existing::Overwrite,
                    _ => Existing::Fail,
                };
                let path = PathBuf::from(text("file").expect("required"));
                let report = commands::restore(&mut target, &policy, &path, existing)
                    .await
                    .map_err(|e| (1, e))?;
                let clean = report.is_clean();
                let text = format!("restored from {}\n{report}", path.display());
                if clean { Ok(text) } else { Err((1, text)) }
            }
            "rotate-keys" => {
                let keys = server::keyring(config)
                    .map_err(|e| usage(e.to_string()))?
                    .ok_or_else(|| usage("rotate-keys needs encryption_keys (CSAI_ENCRYPTION_KEYS or encryption_keys_file)".into()))?;
                if config.storage_type == StorageType::Memory {
                    return Err(usage("rotate-keys works on a backend; the in-memory store lives in the sidecar's process".into()));
                }
                let backend = server::open_backend(config).await.map_err(|e| usage(e.to_string()))?;
                let primary = keys.primary_id().to_string();
                let accept_unsealed = arguments.get_flag("accept-unsealed");
                let rotation = csai_sidecar::store::decorators::encrypted::rotate(backend, keys, accept_unsealed).await;
                let mut text = format!("re-encrypted {} sessions under key {primary:?}", rotation.sessions);
                for failure in &rotation.failures {
                    text.push_str(&format!("\n  {failure}"));
                }
                if rotation.failures.is_empty() { Ok(text) } else { Err((1, text)) }
            }
            _ => migrate(config, &policy, arguments).await,
        }
    });
    match result {
        Ok(summary) => {
            println!("csai-sidecar {command}: {summary}");
            ExitCode::SUCCESS
        }
        Err((code, message)) => {
            eprintln!("csai-sidecar {command}: {message}");
            ExitCode::from(code)
        }
    }
}

async fn migrate(
    config: &Config,
    policy: &Policy,
    arguments: &ArgMatches,
) -> Result<String, (u8, String)> {
    let text = |name: &str| arguments.try_get_one::<String>(name).ok().flatten();
    let usage = |e: String| (2u8, e);
    let dry_run = arguments.get_flag("dry-run");
    let mut target = endpoint(config, text("to"), "target", arguments)
        .await
        .map_err(usage)?;
    if let Some(from) = text("from")
        && let Some(url) = from
            .strip_prefix("cs-ai-redis://")
            .map(|rest| format!("redis://{rest}"))
            .or_else(|| {
                from.strip_prefix("cs-ai-rediss://")
                    .map(|rest| format!("rediss://{rest}"))
            })
    {
        let Endpoint::Store(store) = target else {
            return Err(usage(
                "CS-AI's data is migrated into a backend, not --to a sidecar".into(),
            ));
        };
        if text("checkpoint").is_some() {
            return Err(usage(
                "--checkpoint is for --from-config and --from grpc://; a CS-AI migration can be re-run as it is".into(),
            ));
        }
        let options = csai_sidecar::migrate::Options {
            dry_run,
            default_ttl: config.session_ttl,
            record_retention: config.record_retention,
            limits: config.limits.clone(),
        };
        let summary = csai_sidecar::migrate::from_cs_ai_redis(&url, store.as_ref(), &options)
            .await
            .map_err(|e| (1, e.to_string()))?;
        let verb = if dry_run {
            "would copy (dry run)"
        } else {
            "copied"
        };
        let text = format!("{verb} into {}\n{summary}", config.storage_type.name());
        return if summary.failures.is_empty() {
            Ok(text)
        } else {
            Err((1, text))
        };
    }
    let mut source = match (text("from"), text("from-config")) {
        (Some(url), None) if url.starts_with("grpc://") || url.starts_with("grpcs://") => {
            Endpoint::sidecar(url, &dial_options(arguments).map_err(usage)?)
                .await
                .map_err(usage)?
        }
        (None, Some(file)) => {
            let source_config = Values::defaults()
                .with_file(&PathBuf::from(file))
                .and_then(|v| v.parse())
                .map_err(|e| usage(e.to_string()))?;
            configured_store(&source_config, "source")
                .await
                .map_err(usage)?
        }
        _ => {
            return Err(usage(
                "name the source with --from cs-ai-redis://..., --from grpc://host:port or --from-config FILE".into(),
            ));
        }
    };
    let checkpoint = text("checkpoint").map(PathBuf::from);
    let report = commands::migrate(
        &mut source,
        &mut target,
        policy,
        checkpoint.as_deref(),
        dry_run,
    )
    .await
    .map_err(|e| (1, e))?;
    let verb = if dry_run {
        "would copy (dry run)"
    } else {
        "copied and verified"
    };
    let text = format!("{verb}\n{report}");
    if report.is_clean() {
        Ok(text)
    } else {
        Err((1, text))
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
    telemetry::redact_panics(config.secrets());
    if matches.subcommand_name() == Some("config") {
        print!("{}", values.render());
        return ExitCode::SUCCESS;
    }
    if let Some(("health", arguments)) = matches.subcommand() {
        return health_check(&config, arguments);
    }
    if let Some((command @ ("migrate" | "backup" | "restore" | "rotate-keys"), arguments)) =
        matches.subcommand()
    {
        return operations(&config, command, arguments);
    }
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
            let store = server::open_store(&config).await?;
            let listener = server::bind(&config).await?;
            server::serve(&config, store, listener, shutdown_signal()).await
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
