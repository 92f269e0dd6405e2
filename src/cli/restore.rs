//! `csai-sidecar restore`: a backup file into the configured store (or a running
//! sidecar), every session checked as ImportSessions checks it.

use crate::cli::args::{self, dial_args, endpoint, file_arg, to_arg, usage};
use crate::config::Config;
use crate::operations;
use crate::service::Policy;
use crate::transfer::Existing;
use clap::{Arg, ArgMatches, Command};
use std::path::PathBuf;
use std::process::ExitCode;

pub fn command() -> Command {
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
        .args(dial_args())
}

pub fn run(config: &Config, arguments: &ArgMatches) -> ExitCode {
    args::report("restore", async {
        let policy = Policy::from_config(config);
        let mut target = endpoint(config, args::text(arguments, "to"), "target", arguments)
            .await
            .map_err(usage)?;
        let existing = match args::text(arguments, "existing").map(String::as_str) {
            Some("skip") => Existing::Skip,
            Some("overwrite") => Existing::Overwrite,
            _ => Existing::Fail,
        };
        let path = PathBuf::from(args::text(arguments, "file").expect("required"));
        let report = operations::restore(&mut target, &policy, &path, existing)
            .await
            .map_err(|e| (1, e))?;
        let clean = report.is_clean();
        let text = format!("restored from {}\n{report}", path.display());
        if clean { Ok(text) } else { Err((1, text)) }
    })
}
