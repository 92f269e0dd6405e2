//! `csai-sidecar backup`: every live session of the configured store (or of a running
//! sidecar) into a backup file, replaced atomically.

use crate::cli::args::{self, dial_args, endpoint, file_arg, usage};
use crate::config::Config;
use crate::operations;
use crate::service::Policy;
use clap::{Arg, ArgMatches, Command};
use std::path::PathBuf;
use std::process::ExitCode;

pub fn command() -> Command {
    Command::new("backup")
        .about("Write every live session to a backup file (JSON Lines)")
        .arg(file_arg())
        .arg(
            Arg::new("from")
                .long("from")
                .value_name("URL")
                .help("grpc://host:port (grpcs:// for TLS, unix:///path): back up a running sidecar (its in-memory store too)"),
        )
        .args(dial_args())
}

pub fn run(config: &Config, arguments: &ArgMatches) -> ExitCode {
    args::report("backup", async {
        let policy = Policy::from_config(config);
        let mut source = endpoint(config, args::text(arguments, "from"), "source", arguments)
            .await
            .map_err(usage)?;
        let path = PathBuf::from(args::text(arguments, "file").expect("required"));
        let report = operations::backup(&mut source, &policy, &path)
            .await
            .map_err(|e| (1, e))?;
        Ok(format!("backed up to {}\n{report}", path.display()))
    })
}
