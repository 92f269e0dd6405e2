//! `csai-sidecar health`: a `grpc.health.v1` Check of the sidecar on `listen`, over TLS
//! when the sidecar serves TLS (the container's health check).

use crate::cli::args::{dial_args, dial_options};
use crate::config::Config;
use clap::{Arg, ArgMatches, Command};
use std::process::ExitCode;

pub fn command() -> Command {
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
                .help("health service name: empty for the process (liveness), or csai.v1.SessionStore (the backend: readiness), csai.v1.Chat"),
        )
        .args(dial_args())
}

/// `csai-sidecar health`: prints the status; exit 0 only when SERVING.
pub fn run(config: &Config, arguments: &ArgMatches) -> ExitCode {
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
                runtime.block_on(crate::server::health::probe(
                    &config.listen,
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
