//! `csai-sidecar migrate`: every session from another backend, a running sidecar or
//! CS-AI's Redis into the configured store (or `--to` a sidecar), verified as it copies.

use crate::cli::args::{
    self, Outcome, configured_store, dial_args, dial_options, endpoint, to_arg, usage,
};
use crate::config::{self, Config};
use crate::operations::{self, Location};
use crate::service::Policy;
use clap::{Arg, ArgAction, ArgMatches, Command};
use std::path::PathBuf;
use std::process::ExitCode;

pub fn command() -> Command {
    Command::new("migrate")
        .about("Copy every session into the configured store (or --to a sidecar)")
        .arg(
            Arg::new("from")
                .long("from")
                .value_name("URL")
                .help("cs-ai-redis://[user:password@]host:port/db (CS-AI's Redis; cs-ai-rediss:// for TLS) or grpc://host:port, grpcs://, unix:///path (a running sidecar)"),
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
        .args(dial_args())
}

pub fn run(config: &Config, arguments: &ArgMatches) -> ExitCode {
    args::report("migrate", migrate(config, arguments))
}

async fn migrate(config: &Config, arguments: &ArgMatches) -> Outcome {
    let policy = Policy::from_config(config);
    let text = |name: &str| args::text(arguments, name);
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
        return from_cs_ai(&url, target, config, dry_run, text("checkpoint").is_some()).await;
    }
    let mut source = match (text("from"), text("from-config")) {
        (Some(url), None)
            if ["grpc://", "grpcs://", "unix:"]
                .iter()
                .any(|s| url.starts_with(s)) =>
        {
            Location::sidecar(url, &dial_options(arguments).map_err(usage)?)
                .await
                .map_err(usage)?
        }
        (None, Some(file)) => {
            let source_config = config::defaults()
                .with_file(&PathBuf::from(file))
                .and_then(|v| config::parse(&v))
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
    let report = operations::migrate(
        &mut source,
        &mut target,
        &policy,
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

/// CS-AI's Redis into a backend (cs_ai.rs).
#[cfg(feature = "redis")]
async fn from_cs_ai(
    url: &str,
    target: Location,
    config: &Config,
    dry_run: bool,
    checkpoint: bool,
) -> Outcome {
    let Location::Store(store) = target else {
        return Err(usage(
            "CS-AI's data is migrated into a backend, not --to a sidecar".into(),
        ));
    };
    if checkpoint {
        return Err(usage(
            "--checkpoint is for --from-config and --from grpc://; a CS-AI migration can be re-run as it is".into(),
        ));
    }
    let options = crate::cs_ai::Options {
        dry_run,
        default_ttl: config.session_ttl,
        record_retention: config.record_retention,
        limits: config.limits.clone(),
    };
    let summary = crate::cs_ai::copy_from_redis(url, store.as_ref(), &options)
        .await
        .map_err(|e| (1, e.to_string()))?;
    let verb = if dry_run {
        "would copy (dry run)"
    } else {
        "copied"
    };
    let text = format!("{verb} into {}\n{summary}", config.storage.backend.name);
    if summary.failures.is_empty() {
        Ok(text)
    } else {
        Err((1, text))
    }
}

#[cfg(not(feature = "redis"))]
async fn from_cs_ai(_: &str, _: Location, _: &Config, _: bool, _: bool) -> Outcome {
    Err(usage(
        "this build has no Redis driver, so it cannot read CS-AI's Redis (build with the cargo feature `redis`)".into(),
    ))
}
