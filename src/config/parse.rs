//! Turns layered text values into the typed [`Config`]: every value parsed once, every
//! error naming the key, where the value came from and what is accepted.

use super::{Config, Listen, RequestLimits, Secret, TlsFiles, chat};
use crate::observability::telemetry::{LogFormat, SessionIdInTraces};
use crate::settings::{ConfigError, Values, format_duration, parse_size};
use crate::store::decorators::encrypted::Keyring;
use crate::store::open::{self, Shared};
use std::path::PathBuf;
use std::sync::Arc;

/// Parses and validates every value: the core keys, the chosen backend's section and the
/// chat settings.
pub fn parse(values: &Values) -> Result<Config, ConfigError> {
    let duration = |s: &str| humantime::parse_duration(s).ok();

    let config = Config {
        listen: listen(values)?,
        tls: tls(values)?,
        auth_tokens: auth_tokens(values)?,
        reflection: values.boolean("reflection")?,
        storage: storage(values)?,
        session_ttl: values.positive_duration("session_ttl")?,
        sliding_ttl_on_read: values.boolean("sliding_ttl_on_read")?,
        health_interval: values.positive_duration("health_interval")?,
        stats_refresh_interval: values.positive_duration("stats_refresh_interval")?,
        token_encoding: values.get(
            "token_encoding",
            "o200k_base, cl100k_base or estimate",
            crate::tokens::Encoding::parse,
        )?,
        watch_max_watchers: values.get("watch_max_watchers", "a whole number from 1", |s| {
            s.parse().ok().filter(|n: &usize| *n >= 1)
        })?,
        watch_buffer: values.get("watch_buffer", "a whole number from 1", |s| {
            s.parse().ok().filter(|n: &usize| *n >= 1)
        })?,
        watch_poll_interval: values.positive_duration("watch_poll_interval")?,
        shutdown_grace: values.get(
            "shutdown_grace",
            "a duration such as 0s, 10s or 1m",
            duration,
        )?,
        max_concurrent_requests: values.get(
            "max_concurrent_requests",
            "a whole number (0 = no limit)",
            |s| s.parse().ok(),
        )?,
        max_grpc_message_size: values.get(
            "max_grpc_message_size",
            "a size from 64KiB to 1GiB, such as 4MiB",
            |s| {
                parse_size(s)
                    .filter(|n| (64 << 10..=1 << 30).contains(n))
                    .map(|n| n as usize)
            },
        )?,
        limits: RequestLimits {
            max_messages_per_request: values.get(
                "max_messages_per_request",
                "a whole number from 1 to 100000",
                |s| s.parse().ok().filter(|n| (1..=100_000).contains(n)),
            )?,
            max_content_bytes: values.get(
                "max_content_bytes",
                "a size from 1KiB to 1GiB, such as 1MiB",
                |s| {
                    parse_size(s)
                        .filter(|n| (1 << 10..=1 << 30).contains(n))
                        .map(|n| n as usize)
                },
            )?,
            max_ttl: values.positive_duration("max_ttl")?,
            max_page_size: values.get("max_page_size", "a whole number from 1 to 100000", |s| {
                s.parse().ok().filter(|n| (1..=100_000).contains(n))
            })?,
        },
        record_retention: values.positive_duration("record_retention")?,
        encryption_keys: encryption_keys(values)?,
        chat: chat::settings(values)?,
        slow_op_threshold: values.positive_duration("slow_op_threshold")?,
        metrics_listen: match values.optional_text("metrics_listen") {
            None => None,
            Some(_) => Some(
                values.get("metrics_listen", "host:port, e.g. 0.0.0.0:9090", |s| {
                    s.parse().ok()
                })?,
            ),
        },
        trace_session_ids: values.get(
            "trace_session_ids",
            "plain, hashed or omitted",
            |s| match s {
                "plain" => Some(SessionIdInTraces::Plain),
                "hashed" => Some(SessionIdInTraces::Hashed),
                "omitted" => Some(SessionIdInTraces::Omitted),
                _ => None,
            },
        )?,
        trace_session_id_key: match values.optional_text("trace_session_id_key") {
            Some(key) if key.chars().count() < 16 => {
                return Err(ConfigError(
                    "`trace_session_id_key` (CSAI_TRACE_SESSION_ID_KEY) must have at least 16 characters".into(),
                ));
            }
            key => key.map(Secret),
        },
        log_format: values.get("log_format", "text or json", |s| match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        })?,
        log_level: values.text("log_level"),
        progress_interval: values.positive_duration("progress_interval")?,
        setting_secrets: values.secrets().into_iter().map(Secret).collect(),
    };
    if config.tls.is_some() && matches!(config.listen, Listen::Unix { .. }) {
        return Err(ConfigError(
            "TLS is for TCP listeners: a Unix socket (`listen` = unix://...) is guarded by its file mode (`listen_socket_mode`) and its folder"
                .into(),
        ));
    }
    if config.session_ttl > config.limits.max_ttl {
        return Err(ConfigError(format!(
            "`session_ttl` ({}) is longer than `max_ttl` ({})",
            format_duration(config.session_ttl),
            format_duration(config.limits.max_ttl)
        )));
    }
    Ok(config)
}

/// `host:port`, or `unix:///absolute/path` (also `unix:relative/path`) with the socket
/// file's mode.
fn listen(values: &Values) -> Result<Listen, ConfigError> {
    let accepted = "host:port (e.g. 127.0.0.1:50051) or unix:///path/to/socket";
    if values.text("listen").starts_with("unix:") {
        let path = values.get("listen", accepted, |s| {
            let path = s
                .strip_prefix("unix://")
                .or_else(|| s.strip_prefix("unix:"))?;
            (!path.is_empty()).then(|| PathBuf::from(path))
        })?;
        let mode = values.get(
            "listen_socket_mode",
            "an octal file mode from 0600 to 0777, such as 0660",
            |s| {
                u32::from_str_radix(s, 8)
                    .ok()
                    .filter(|m| (0o600..=0o777).contains(m))
            },
        )?;
        return Ok(Listen::Unix { path, mode });
    }
    Ok(Listen::Tcp(
        values.get("listen", accepted, |s| s.parse().ok())?,
    ))
}

/// The bearer tokens from the environment or a file; the server parses them at start
/// (server/auth.rs), and its errors never show a token.
fn auth_tokens(values: &Values) -> Result<Option<Secret>, ConfigError> {
    let text = match (
        values.optional_text("auth_tokens"),
        values.optional_text("auth_tokens_file"),
    ) {
        (Some(tokens), _) => tokens,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| ConfigError(format!("`auth_tokens_file`: cannot read {path}: {e}")))?,
        (None, None) => return Ok(None),
    };
    Ok(Some(Secret(text)))
}

fn tls(values: &Values) -> Result<Option<TlsFiles>, ConfigError> {
    let cert = values.optional_text("tls_cert_file");
    let key = values.optional_text("tls_key_file");
    let client_ca = values
        .optional_text("tls_client_ca_file")
        .map(PathBuf::from);
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) if client_ca.is_none() => return Ok(None),
        _ => {
            return Err(ConfigError(
                "TLS needs both `tls_cert_file` and `tls_key_file` (and `tls_client_ca_file` needs them too)"
                    .into(),
            ));
        }
    };
    Ok(Some(TlsFiles {
        cert: PathBuf::from(cert),
        key: PathBuf::from(key),
        client_ca,
        reload_interval: values.get(
            "tls_reload_interval",
            "a positive duration such as 10s",
            |s| humantime::parse_duration(s).ok().filter(|d| !d.is_zero()),
        )?,
    }))
}

/// The encryption keys from the environment or a file, checked now so that a bad key
/// stops the sidecar at start (errors never show key material).
fn encryption_keys(values: &Values) -> Result<Option<Secret>, ConfigError> {
    let text = match (
        values.optional_text("encryption_keys"),
        values.optional_text("encryption_keys_file"),
    ) {
        (Some(keys), _) => keys,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| ConfigError(format!("`encryption_keys_file`: cannot read {path}: {e}")))?,
        (None, None) => return Ok(None),
    };
    Keyring::parse(&text).map_err(|e| ConfigError(format!("encryption keys: {e}")))?;
    Ok(Some(Secret(text)))
}

/// The chosen backend and its section, read now so that a bad value stops the sidecar at
/// start.
fn storage(values: &Values) -> Result<super::Storage, ConfigError> {
    let backend = values.get("type", &format!("one of {}", open::names()), open::find)?;
    let shared = Shared {
        timeout: values.positive_duration("timeout")?,
        max_retries: values.get("max_retries", "a whole number from 0 to 100", |s| {
            s.parse().ok().filter(|&n| n <= 100)
        })?,
    };
    Ok(super::Storage {
        backend,
        shared,
        options: Arc::from((backend.configure)(values, &shared)?),
    })
}
