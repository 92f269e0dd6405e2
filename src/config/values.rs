//! The layering of settings: text values with their source (flags > environment > file >
//! defaults), parsed once into a [`Config`], and rendered with secrets redacted.

use super::{
    Config, ConfigError, KEYS, RequestLimits, Secret, StorageType, TlsFiles, format_duration,
    parse_size,
};
use crate::observability::telemetry::{LogFormat, SessionIdInTraces};
use crate::store::decorators::encrypted::Keyring;
use crate::store::memory::MemoryLimits;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File(String),
    Env(&'static str),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::File(path) => write!(f, "file {path}"),
            Source::Env(var) => write!(f, "environment {var}"),
            Source::Flag(flag) => write!(f, "flag --{flag}"),
        }
    }
}

/// Raw text values by key, with their source, and the `[providers.NAME]` tables of the file.
#[derive(Clone, Debug, Default)]
pub struct Values {
    keys: BTreeMap<&'static str, (String, Source)>,
    pub(super) providers: BTreeMap<String, (toml::Table, String)>,
}

impl Values {
    /// Only the defaults.
    pub fn defaults() -> Self {
        Self {
            keys: KEYS
                .iter()
                .map(|k| (k.name, (k.default.to_string(), Source::Default)))
                .collect(),
            providers: BTreeMap::new(),
        }
    }

    /// Overlays the top-level keys of a TOML file; an unknown key is an error.
    pub fn with_file(mut self, path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {shown}: {e}")))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e| ConfigError(format!("config file {shown} is not valid TOML: {e}")))?;
        for (name, value) in table {
            if name == "providers" {
                let toml::Value::Table(providers) = value else {
                    return Err(ConfigError(format!(
                        "`providers` in config file {shown} must be tables: [providers.NAME]"
                    )));
                };
                for (provider, fields) in providers {
                    let toml::Value::Table(fields) = fields else {
                        return Err(ConfigError(format!(
                            "`providers.{provider}` in config file {shown} must be a table"
                        )));
                    };
                    self.providers.insert(provider, (fields, shown.clone()));
                }
                continue;
            }
            let key = KEYS.iter().find(|k| k.name == name).ok_or_else(|| {
                ConfigError(format!(
                    "unknown key `{name}` in config file {shown}; known keys: {}",
                    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
                ))
            })?;
            if key.env_only {
                return Err(ConfigError(format!(
                    "`{name}` may not be set in config file {shown}: set the environment variable {} or use `{name}_file`",
                    key.env
                )));
            }
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => {
                    return Err(ConfigError(format!(
                        "key `{name}` in config file {shown} must be a string, number or boolean, not {}",
                        other.type_str()
                    )));
                }
            };
            self.set(key.name, text, Source::File(shown.clone()));
        }
        Ok(self)
    }

    /// Sets one value (a later source overrides an earlier one).
    pub fn set(&mut self, name: &'static str, value: String, source: Source) {
        self.keys.insert(name, (value, source));
    }

    pub(super) fn raw(&self, name: &str) -> (&str, &Source) {
        debug_assert!(
            KEYS.iter().any(|k| k.name == name),
            "`{name}` is read but missing from KEYS"
        );
        self.keys
            .get(name)
            .map(|(value, source)| (value.as_str(), source))
            .unwrap_or(("", &Source::Default))
    }

    /// Parses one value, naming the key, the source and what is accepted on error.
    pub(super) fn get<T>(
        &self,
        name: &str,
        accepted: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        let (value, source) = self.raw(name);
        parse(value.trim()).ok_or_else(|| {
            let env = KEYS.iter().find(|k| k.name == name).map_or("", |k| k.env);
            ConfigError(format!(
                "invalid value {value:?} for `{name}` ({env}) from {source}: expected {accepted}"
            ))
        })
    }

    pub(super) fn text(&self, name: &str) -> String {
        self.raw(name).0.trim().to_string()
    }

    pub(super) fn optional_text(&self, name: &str) -> Option<String> {
        Some(self.text(name)).filter(|s| !s.is_empty())
    }

    /// Parses and validates every value.
    pub fn parse(&self) -> Result<Config, ConfigError> {
        let duration = |s: &str| humantime::parse_duration(s).ok();
        let positive_duration = |s: &str| duration(s).filter(|d| !d.is_zero());
        const DURATION: &str = "a positive duration such as 500ms, 5s, 12h or 7d";
        let limit = |s: &str| s.parse::<u64>().ok().map(|n| Some(n).filter(|&n| n > 0));
        let size_limit = |s: &str| parse_size(s).map(|n| Some(n).filter(|&n| n > 0));

        let config = Config {
            listen: self.get("listen", "host:port, e.g. 127.0.0.1:50051", |s| {
                s.parse().ok()
            })?,
            tls: self.tls()?,
            auth_tokens: self.auth_tokens()?,
            reflection: self.get("reflection", "true or false", |s| s.parse().ok())?,
            storage_type: self.get("type", "one of memory, redis, mongo, dynamo", |s| match s {
                "memory" | "inmemory" | "in-memory" => Some(StorageType::Memory),
                "redis" => Some(StorageType::Redis),
                "mongo" | "mongodb" => Some(StorageType::Mongo),
                "dynamo" | "dynamodb" => Some(StorageType::Dynamo),
                _ => None,
            })?,
            session_ttl: self.get("session_ttl", DURATION, positive_duration)?,
            sliding_ttl_on_read: self
                .get("sliding_ttl_on_read", "true or false", |s| s.parse().ok())?,
            timeout: self.get("timeout", DURATION, positive_duration)?,
            max_retries: self.get("max_retries", "a whole number from 0 to 100", |s| {
                s.parse().ok().filter(|&n| n <= 100)
            })?,
            redis_address: self.text("redis_address"),
            redis_username: self.optional_text("redis_username"),
            redis_password: self.optional_text("redis_password"),
            redis_db: self.get("redis_db", "a whole number from 0", |s| {
                s.parse().ok().filter(|&n| n >= 0)
            })?,
            redis_cluster_nodes: self
                .text("redis_cluster_nodes")
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect(),
            redis_tls_ca_file: self.optional_text("redis_tls_ca_file").map(PathBuf::from),
            redis_key_prefix: self.get(
                "redis_key_prefix",
                "text without '{' or '}' (they delimit the Redis Cluster hash tag)",
                |s| Some(s.to_string()).filter(|s| !s.contains(['{', '}'])),
            )?,
            mongo_uri: self
                .optional_text("mongo_uri")
                .unwrap_or_else(|| "mongodb://localhost:27017".to_string()),
            mongo_database: self.text("mongo_database"),
            mongo_collection: self.text("mongo_collection"),
            mongo_pool_size: self.get("mongo_pool_size", "a whole number from 1 to 1000", |s| {
                s.parse().ok().filter(|n| (1..=1000).contains(n))
            })?,
            dynamo_region: self.text("dynamo_region"),
            dynamo_table: self.text("dynamo_table"),
            dynamo_endpoint: self.optional_text("dynamo_endpoint"),
            dynamo_create_table: self
                .get("dynamo_create_table", "true or false", |s| s.parse().ok())?,
            memory_limits: MemoryLimits {
                max_sessions: self.get(
                    "memory_max_sessions",
                    "a whole number (0 = no limit)",
                    limit,
                )?,
                max_bytes: self.get(
                    "memory_max_bytes",
                    "a size such as 512MiB or 1GB (0 = no limit)",
                    size_limit,
                )?,
            },
            memory_sweep_interval: self.get(
                "memory_sweep_interval",
                DURATION,
                positive_duration,
            )?,
            health_interval: self.get("health_interval", DURATION, positive_duration)?,
            stats_refresh_interval: self.get(
                "stats_refresh_interval",
                DURATION,
                positive_duration,
            )?,
            shutdown_grace: self.get(
                "shutdown_grace",
                "a duration such as 0s, 10s or 1m",
                duration,
            )?,
            max_concurrent_requests: self.get(
                "max_concurrent_requests",
                "a whole number (0 = no limit)",
                |s| s.parse().ok(),
            )?,
            max_grpc_message_size: self.get(
                "max_grpc_message_size",
                "a size from 64KiB to 1GiB, such as 4MiB",
                |s| {
                    parse_size(s)
                        .filter(|n| (64 << 10..=1 << 30).contains(n))
                        .map(|n| n as usize)
                },
            )?,
            limits: RequestLimits {
                max_messages_per_request: self.get(
                    "max_messages_per_request",
                    "a whole number from 1 to 100000",
                    |s| s.parse().ok().filter(|n| (1..=100_000).contains(n)),
                )?,
                max_content_bytes: self.get(
                    "max_content_bytes",
                    "a size from 1KiB to 1GiB, such as 1MiB",
                    |s| {
                        parse_size(s)
                            .filter(|n| (1 << 10..=1 << 30).contains(n))
                            .map(|n| n as usize)
                    },
                )?,
                max_ttl: self.get("max_ttl", DURATION, positive_duration)?,
                max_page_size: self.get(
                    "max_page_size",
                    "a whole number from 1 to 100000",
                    |s| s.parse().ok().filter(|n| (1..=100_000).contains(n)),
                )?,
            },
            record_retention: self.get("record_retention", DURATION, positive_duration)?,
            encryption_keys: self.encryption_keys()?,
            chat: self.chat_settings()?,
            slow_op_threshold: self.get("slow_op_threshold", DURATION, positive_duration)?,
            metrics_listen: match self.optional_text("metrics_listen") {
                None => None,
                Some(_) => Some(self.get(
                    "metrics_listen",
                    "host:port, e.g. 0.0.0.0:9090",
                    |s| s.parse().ok(),
                )?),
            },
            trace_session_ids: self.get("trace_session_ids", "plain, hashed or omitted", |s| {
                match s {
                    "plain" => Some(SessionIdInTraces::Plain),
                    "hashed" => Some(SessionIdInTraces::Hashed),
                    "omitted" => Some(SessionIdInTraces::Omitted),
                    _ => None,
                }
            })?,
            trace_session_id_key: match self.optional_text("trace_session_id_key") {
                Some(key) if key.chars().count() < 16 => {
                    return Err(ConfigError(
                        "`trace_session_id_key` (CSAI_TRACE_SESSION_ID_KEY) must have at least 16 characters".into(),
                    ));
                }
                key => key.map(Secret),
            },
            log_format: self.get("log_format", "text or json", |s| match s {
                "text" => Some(LogFormat::Text),
                "json" => Some(LogFormat::Json),
                _ => None,
            })?,
            log_level: self.text("log_level"),
        };
        if config.session_ttl > config.limits.max_ttl {
            return Err(ConfigError(format!(
                "`session_ttl` ({}) is longer than `max_ttl` ({})",
                format_duration(config.session_ttl),
                format_duration(config.limits.max_ttl)
            )));
        }
        Ok(config)
    }

    /// The bearer tokens from the environment or a file; the server parses them at start
    /// (server/auth.rs), and its errors never show a token.
    pub(super) fn auth_tokens(&self) -> Result<Option<Secret>, ConfigError> {
        let text = match (
            self.optional_text("auth_tokens"),
            self.optional_text("auth_tokens_file"),
        ) {
            (Some(tokens), _) => tokens,
            (None, Some(path)) => std::fs::read_to_string(&path)
                .map_err(|e| ConfigError(format!("`auth_tokens_file`: cannot read {path}: {e}")))?,
            (None, None) => return Ok(None),
        };
        Ok(Some(Secret(text)))
    }

    pub(super) fn tls(&self) -> Result<Option<TlsFiles>, ConfigError> {
        let cert = self.optional_text("tls_cert_file");
        let key = self.optional_text("tls_key_file");
        let client_ca = self.optional_text("tls_client_ca_file").map(PathBuf::from);
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
            reload_interval: self.get(
                "tls_reload_interval",
                "a positive duration such as 10s",
                |s| humantime::parse_duration(s).ok().filter(|d| !d.is_zero()),
            )?,
        }))
    }

    /// The encryption keys from the environment or a file, checked now so that a bad key
    /// stops the sidecar at start (errors never show key material).
    pub(super) fn encryption_keys(&self) -> Result<Option<Secret>, ConfigError> {
        let text = match (
            self.optional_text("encryption_keys"),
            self.optional_text("encryption_keys_file"),
        ) {
            (Some(keys), _) => keys,
            (None, Some(path)) => std::fs::read_to_string(&path).map_err(|e| {
                ConfigError(format!("`encryption_keys_file`: cannot read {path}: {e}"))
            })?,
            (None, None) => return Ok(None),
        };
        Keyring::parse(&text).map_err(|e| ConfigError(format!("encryption keys: {e}")))?;
        Ok(Some(Secret(text)))
    }

    /// The effective settings as TOML, secrets redacted, each with its source.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for key in KEYS {
            let (value, source) = self.raw(key.name);
            let shown = if key.secret && !value.is_empty() {
                redact(key.name, value)
            } else {
                // A password inside a URL (`redis://:pw@host`) is a secret wherever it is.
                value
                    .split(',')
                    .map(|item| match url_password(item) {
                        Some(password) => item.replacen(password, "<redacted>", 1),
                        None => item.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            };
            out.push_str(&format!("{} = {:?}  # {source}\n", key.name, shown));
        }
        out
    }
}

/// The password of a `scheme://user:password@host...` URL, if it has one.
pub(super) fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let (userinfo, _) = rest.split_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// Hides a secret: a URI keeps everything but its password, anything else is replaced.
fn redact(name: &str, value: &str) -> String {
    if name.ends_with("_uri")
        && let Some((scheme, rest)) = value.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
    {
        let user = userinfo.split(':').next().unwrap_or("");
        return format!("{scheme}://{user}:<redacted>@{host}");
    }
    if name.ends_with("_uri") {
        return value.to_string();
    }
    "<redacted>".to_string()
}
