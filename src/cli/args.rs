//! What several commands share: the configuration flags and their layering, the options
//! of dialing a sidecar, the file and target arguments, and how a command reports.

use crate::config::{self, Config};
use crate::grpc::dial::DialOptions;
use crate::operations::Location;
use crate::server;
use crate::settings::{ConfigError, Key, Source, Values};
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

/// What an operations command ends with: its summary, or an exit code and a message
/// (1: something failed, each failure listed; 2: the command cannot run as given).
pub type Outcome = Result<String, (u8, String)>;

/// A usage error: exit code 2.
pub fn usage(message: String) -> (u8, String) {
    (2, message)
}

/// Runs an operations command on a runtime of its own and reports as they all do: the
/// summary on stdout and exit 0, else the message on stderr and its exit code.
pub fn report(name: &str, work: impl Future<Output = Outcome>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("csai-sidecar: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(summary) => {
            println!("csai-sidecar {name}: {summary}");
            ExitCode::SUCCESS
        }
        Err((code, message)) => {
            eprintln!("csai-sidecar {name}: {message}");
            ExitCode::from(code)
        }
    }
}

/// A string argument, if given.
pub fn text<'a>(arguments: &'a ArgMatches, name: &str) -> Option<&'a String> {
    arguments.try_get_one::<String>(name).ok().flatten()
}

/// The settings whose flags `--help` shows; the other ~100 work the same but are listed
/// by `csai-sidecar config` and docs/configuration.md, so that help fits a screen.
const FLAGS_IN_HELP: &[&str] = &["listen", "type", "session_ttl", "log_level"];

/// Every configuration key that has a flag, as a global flag with its variable.
pub fn config_args(mut command: Command) -> Command {
    for key in config::catalog() {
        let Some(flag) = key.flag() else {
            continue;
        };
        let help = match key.default {
            "" => key.help.to_string(),
            default => format!("{} [default: {default}]", key.help),
        };
        let arg = Arg::new(key.name)
            .long(flag)
            .env(key.env)
            .hide_env_values(key.secret)
            .global(true)
            .hide(!FLAGS_IN_HELP.contains(&key.name))
            .help_heading("Settings")
            .help(help);
        command = command.arg(if is_switch(key) {
            // `--sliding-ttl-on-read` turns it on; `--reflection=false` turns one off.
            arg.num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
                .value_name("BOOL")
        } else {
            arg.value_name(placeholder(key))
        });
    }
    command
}

/// A true/false setting, given as a switch.
fn is_switch(key: &Key) -> bool {
    matches!(key.default, "true" | "false")
}

/// What a flag's value looks like, for `--help`.
fn placeholder(key: &Key) -> &'static str {
    let name = key.name;
    if name.ends_with("_file") {
        "FILE"
    } else if name == "listen" || name.ends_with("_listen") {
        "HOST:PORT"
    } else if name.ends_with("_bytes") || key.default.ends_with("iB") {
        "SIZE"
    } else if !key.default.is_empty() && key.default.bytes().all(|b| b.is_ascii_digit()) {
        "N"
    } else if humantime::parse_duration(key.default).is_ok() {
        "DURATION"
    } else {
        "VALUE"
    }
}

/// Gathers values: defaults, then the file, then environment and flags (clap resolves
/// those two, flags first).
pub fn values_from(matches: &ArgMatches) -> Result<Values, ConfigError> {
    let mut values = config::defaults();
    if let Some(path) = matches.get_one::<String>("config") {
        values = values.with_file(&PathBuf::from(path))?;
    }
    for key in config::catalog() {
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

/// How a command reaches a protected sidecar. The token comes from a file or the
/// environment (`CSAI_SIDECAR_TOKEN`), never from a flag: flags are visible in `ps`.
pub fn dial_args() -> [Arg; 5] {
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
pub fn dial_options(arguments: &ArgMatches) -> Result<DialOptions, String> {
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

/// `--file`: the backup file.
pub fn file_arg() -> Arg {
    Arg::new("file")
        .long("file")
        .required(true)
        .value_name("FILE")
        .help("the backup file")
}

/// `--to`: a running sidecar to write into instead of the configured store.
pub fn to_arg() -> Arg {
    Arg::new("to")
        .long("to")
        .value_name("URL")
        .help("grpc://host:port (grpcs:// for TLS, unix:///path): write into a running sidecar instead of the configured store")
}

/// The configured store, refusing the in-memory one, which would vanish with the command.
pub async fn configured_store(config: &Config, role: &str) -> Result<Location, String> {
    if !config.storage.backend.persistent {
        return Err(format!(
            "the {role} is the configured store, and the in-memory store would vanish when \
             this command exits: set type (CSAI_STORAGE_TYPE) to a persistent backend (redis, \
             postgres, sqlite, mongo, dynamo) \
             or name a running sidecar with grpc://host:port"
        ));
    }
    let store = server::open_store(config)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Location::Store(store))
}

/// The sidecar at `url`, else the configured store.
pub async fn endpoint(
    config: &Config,
    url: Option<&String>,
    role: &str,
    arguments: &ArgMatches,
) -> Result<Location, String> {
    match url {
        Some(url) => Location::sidecar(url, &dial_options(arguments)?).await,
        None => configured_store(config, role).await,
    }
}
