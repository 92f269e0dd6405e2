//! The typed configuration, read from flags, environment variables and a TOML file.
//!
//! One table, [`KEYS`], names every setting once: its TOML key (CS-AI's StorageConfig
//! names), its environment variable, its flag and its default. Values are gathered as
//! text with their source (flags > environment > file > defaults) and parsed once, so every
//! error names the key, where the bad value came from, and what is accepted.

mod chat;

pub use chat::{DEFAULT_PROVIDER, ECHO_PROVIDER};

use crate::chat::ChatSettings;
use crate::chat::provider::Endpoint;
use crate::observability::telemetry::SessionIdInTraces;
use crate::server::auth::Tokens;
use crate::server::tls::TlsFiles;
use crate::store::decorators::encrypted::Keyring;
use crate::store::dynamo::DynamoOptions;
use crate::store::memory::MemoryLimits;
use crate::store::mongo::MongoOptions;
use crate::store::redis::RedisOptions;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One configuration setting.
pub struct Key {
    /// Name in the TOML file; the flag is the same with '-' for '_'.
    pub name: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Value when no source sets one ("" = unset).
    pub default: &'static str,
    /// One line for `--help` and docs/configuration.md.
    pub help: &'static str,
    /// Redacted by `csai-sidecar config`.
    pub secret: bool,
    /// Read from the environment only: no flag (visible in `ps`) and no config-file key
    /// (config files get committed). For API keys.
    pub env_only: bool,
}

const fn key(
    name: &'static str,
    env: &'static str,
    default: &'static str,
    help: &'static str,
) -> Key {
    Key {
        name,
        env,
        default,
        help,
        secret: false,
        env_only: false,
    }
}

const fn env_only_secret(name: &'static str, env: &'static str, help: &'static str) -> Key {
    Key {
        name,
        env,
        default: "",
        help,
        secret: true,
        env_only: true,
    }
}

const fn secret(name: &'static str, env: &'static str, help: &'static str) -> Key {
    Key {
        name,
        env,
        default: "",
        help,
        secret: true,
        env_only: false,
    }
}

/// Every setting. The flag of `type` is `--storage-type` (see [`Key::flag`]).
pub const KEYS: &[Key] = &[
    key(
        "listen",
        "CSAI_LISTEN",
        "127.0.0.1:50051",
        "gRPC listen address (host:port)",
    ),
    env_only_secret(
        "auth_tokens",
        "CSAI_AUTH_TOKENS",
        "bearer tokens as tenant:token entries, comma-separated; setting them requires a token on every csai RPC (environment only)",
    ),
    key(
        "auth_tokens_file",
        "CSAI_AUTH_TOKENS_FILE",
        "",
        "file of bearer tokens, one tenant:token per line",
    ),
    key(
        "reflection",
        "CSAI_REFLECTION",
        "true",
        "serve gRPC server reflection (lists the services and their messages)",
    ),
    key(
        "tls_cert_file",
        "CSAI_TLS_CERT_FILE",
        "",
        "PEM certificate chain of the gRPC server; setting it (with tls_key_file) turns TLS on",
    ),
    key(
        "tls_key_file",
        "CSAI_TLS_KEY_FILE",
        "",
        "PEM private key of the gRPC server's certificate",
    ),
    key(
        "tls_client_ca_file",
        "CSAI_TLS_CLIENT_CA_FILE",
        "",
        "PEM CA that client certificates must chain to (mTLS); no client certificates when unset",
    ),
    key(
        "tls_reload_interval",
        "CSAI_TLS_RELOAD_INTERVAL",
        "10s",
        "how often the certificate files are checked; a changed pair is loaded without restart",
    ),
    key(
        "type",
        "CSAI_STORAGE_TYPE",
        "memory",
        "storage backend: memory, redis, mongo or dynamo",
    ),
    key(
        "session_ttl",
        "CSAI_SESSION_TTL",
        "12h",
        "default session time to live",
    ),
    key(
        "max_ttl",
        "CSAI_MAX_TTL",
        "365d",
        "largest TTL a request may ask for",
    ),
    key(
        "sliding_ttl_on_read",
        "CSAI_SLIDING_TTL_ON_READ",
        "false",
        "GetSession also extends the TTL (writes always do)",
    ),
    key(
        "timeout",
        "CSAI_TIMEOUT",
        "5s",
        "timeout of one backend operation",
    ),
    key(
        "max_retries",
        "CSAI_MAX_RETRIES",
        "3",
        "retries of a transient backend error",
    ),
    key(
        "redis_address",
        "CSAI_REDIS_ADDRESS",
        "localhost:6379",
        "Redis host:port, redis:// URL or rediss:// URL (TLS)",
    ),
    key(
        "redis_username",
        "CSAI_REDIS_USERNAME",
        "",
        "Redis ACL username",
    ),
    secret("redis_password", "CSAI_REDIS_PASSWORD", "Redis password"),
    key(
        "redis_db",
        "CSAI_REDIS_DB",
        "0",
        "Redis database number (standalone only)",
    ),
    key(
        "redis_cluster_nodes",
        "CSAI_REDIS_CLUSTER_NODES",
        "",
        "comma-separated Redis Cluster seed nodes; setting it selects Cluster mode",
    ),
    key(
        "redis_tls_ca_file",
        "CSAI_REDIS_TLS_CA_FILE",
        "",
        "PEM file of the CA that signed Redis's TLS certificate (rediss://); system roots when unset",
    ),
    key(
        "redis_key_prefix",
        "CSAI_REDIS_KEY_PREFIX",
        "csai:",
        "prefix of every Redis key (no '{' or '}')",
    ),
    secret(
        "mongo_uri",
        "CSAI_MONGO_URI",
        "MongoDB connection string (default mongodb://localhost:27017)",
    ),
    key(
        "mongo_database",
        "CSAI_MONGO_DATABASE",
        "cs_ai",
        "MongoDB database",
    ),
    key(
        "mongo_collection",
        "CSAI_MONGO_COLLECTION",
        "sessions",
        "MongoDB collection of sessions; messages go to <collection>_messages",
    ),
    key(
        "mongo_pool_size",
        "CSAI_MONGO_POOL_SIZE",
        "32",
        "most connections in the MongoDB driver's pool",
    ),
    key(
        "dynamo_region",
        "CSAI_DYNAMO_REGION",
        "us-east-1",
        "DynamoDB region",
    ),
    key(
        "dynamo_table",
        "CSAI_DYNAMO_TABLE",
        "cs_ai_sessions",
        "DynamoDB table",
    ),
    key(
        "dynamo_endpoint",
        "CSAI_DYNAMO_ENDPOINT",
        "",
        "DynamoDB endpoint URL (local testing, VPC endpoints); no instance-metadata lookups when set",
    ),
    key(
        "dynamo_create_table",
        "CSAI_DYNAMO_CREATE_TABLE",
        "false",
        "create the DynamoDB table (on-demand, TTL on `ttl`) at start if it is missing",
    ),
    key(
        "memory_max_sessions",
        "CSAI_MEMORY_MAX_SESSIONS",
        "0",
        "in-memory store: most live sessions (0 = no limit)",
    ),
    key(
        "memory_max_bytes",
        "CSAI_MEMORY_MAX_BYTES",
        "0",
        "in-memory store: most stored bytes, e.g. 512MiB (0 = no limit)",
    ),
    key(
        "memory_sweep_interval",
        "CSAI_MEMORY_SWEEP_INTERVAL",
        "1s",
        "in-memory store: how often expired sessions are freed",
    ),
    key(
        "health_interval",
        "CSAI_HEALTH_INTERVAL",
        "5s",
        "how often the backend health check runs",
    ),
    key(
        "stats_refresh_interval",
        "CSAI_STATS_REFRESH_INTERVAL",
        "30s",
        "how old the whole-store figures of the metrics gauges and of tenants' GetStats may get (each refresh scans the store)",
    ),
    key(
        "shutdown_grace",
        "CSAI_SHUTDOWN_GRACE",
        "10s",
        "how long in-flight RPCs may run after SIGTERM/SIGINT",
    ),
    key(
        "max_concurrent_requests",
        "CSAI_MAX_CONCURRENT_REQUESTS",
        "1000",
        "RPCs in flight at once; more are refused at once with RESOURCE_EXHAUSTED (health checks never are; 0 = no limit)",
    ),
    key(
        "max_grpc_message_size",
        "CSAI_MAX_GRPC_MESSAGE_SIZE",
        "4MiB",
        "largest gRPC message received or sent",
    ),
    key(
        "max_messages_per_request",
        "CSAI_MAX_MESSAGES_PER_REQUEST",
        "1000",
        "most messages in one write request",
    ),
    key(
        "max_content_bytes",
        "CSAI_MAX_CONTENT_BYTES",
        "1MiB",
        "largest content of one message",
    ),
    key(
        "max_page_size",
        "CSAI_MAX_PAGE_SIZE",
        "1000",
        "largest ListSessions page",
    ),
    env_only_secret(
        "encryption_keys",
        "CSAI_ENCRYPTION_KEYS",
        "encryption at rest: id:base64-key entries, comma-separated, the first for writes (environment only)",
    ),
    key(
        "encryption_keys_file",
        "CSAI_ENCRYPTION_KEYS_FILE",
        "",
        "file of encryption keys, one id:base64-key per line, the first for writes",
    ),
    key(
        "record_retention",
        "CSAI_RECORD_RETENTION",
        "30d",
        "how long learning data and security logs are kept",
    ),
    key(
        "chat_base_url",
        "CSAI_CHAT_BASE_URL",
        "",
        "OpenAI-compatible base URL of the default chat provider, e.g. https://api.deepseek.com/v1",
    ),
    env_only_secret(
        "chat_api_key",
        "CSAI_CHAT_API_KEY",
        "API key of the default chat provider (environment only)",
    ),
    key(
        "chat_api_key_file",
        "CSAI_CHAT_API_KEY_FILE",
        "",
        "file holding the API key of the default chat provider (when CSAI_CHAT_API_KEY is unset)",
    ),
    key(
        "chat_model",
        "CSAI_CHAT_MODEL",
        "deepseek-chat",
        "model of the default chat provider",
    ),
    key(
        "chat_temperature",
        "CSAI_CHAT_TEMPERATURE",
        "0.2",
        "default sampling temperature, 0 to 2",
    ),
    key(
        "chat_top_p",
        "CSAI_CHAT_TOP_P",
        "0.7",
        "default nucleus sampling, 0 to 1",
    ),
    key(
        "chat_max_tokens",
        "CSAI_CHAT_MAX_TOKENS",
        "1200",
        "default most completion tokens",
    ),
    key(
        "chat_frequency_penalty",
        "CSAI_CHAT_FREQUENCY_PENALTY",
        "0",
        "default frequency penalty, -2 to 2",
    ),
    key(
        "chat_presence_penalty",
        "CSAI_CHAT_PRESENCE_PENALTY",
        "-1.5",
        "default presence penalty, -2 to 2",
    ),
    key(
        "chat_timeout",
        "CSAI_CHAT_TIMEOUT",
        "120s",
        "bound of one model call (one HTTP attempt, streaming included)",
    ),
    key(
        "chat_max_retries",
        "CSAI_CHAT_MAX_RETRIES",
        "2",
        "retries of a model call after HTTP 429, 5xx or a connection failure",
    ),
    key(
        "chat_echo",
        "CSAI_CHAT_ECHO",
        "false",
        "add the `echo` provider, which answers with the user's message (local development)",
    ),
    key(
        "chat_provider",
        "CSAI_CHAT_PROVIDER",
        "",
        "provider of requests that name none (default: `default`, else `echo`, else the only [providers.*])",
    ),
    key(
        "chat_fallback_provider",
        "CSAI_CHAT_FALLBACK_PROVIDER",
        "",
        "provider tried when another fails with 429, 5xx, a timeout or a connection failure",
    ),
    key(
        "chat_history_window",
        "CSAI_CHAT_HISTORY_WINDOW",
        "50",
        "history messages sent to the model (tool-safe; 0 = all)",
    ),
    key(
        "chat_max_tool_rounds",
        "CSAI_CHAT_MAX_TOOL_ROUNDS",
        "10",
        "model answers with tool calls per turn; then the model must answer without tools",
    ),
    key(
        "chat_tool_timeout",
        "CSAI_CHAT_TOOL_TIMEOUT",
        "60s",
        "ExecStream: how long the bot may take to answer a tool call",
    ),
    key(
        "chat_max_user_message_length",
        "CSAI_CHAT_MAX_USER_MESSAGE_LENGTH",
        "0",
        "longest user message in characters (0 = only max_content_bytes applies)",
    ),
    key(
        "chat_rate_limit",
        "CSAI_CHAT_RATE_LIMIT",
        "false",
        "limit the turns each participant may start (per sidecar process)",
    ),
    key(
        "chat_rate_limit_per_minute",
        "CSAI_CHAT_RATE_LIMIT_PER_MINUTE",
        "10",
        "turns per participant per minute when chat_rate_limit is on (0 = no limit)",
    ),
    key(
        "chat_rate_limit_per_hour",
        "CSAI_CHAT_RATE_LIMIT_PER_HOUR",
        "100",
        "turns per participant per hour when chat_rate_limit is on (0 = no limit)",
    ),
    key(
        "chat_rate_limit_per_day",
        "CSAI_CHAT_RATE_LIMIT_PER_DAY",
        "1000",
        "turns per participant per day when chat_rate_limit is on (0 = no limit)",
    ),
    key(
        "chat_transcript_dir",
        "CSAI_CHAT_TRANSCRIPT_DIR",
        "",
        "folder of one JSON transcript file per session (off when empty)",
    ),
    key(
        "slow_op_threshold",
        "CSAI_SLOW_OP_THRESHOLD",
        "100ms",
        "backend operations this slow or slower are logged at WARN (at most once per operation every 10 s)",
    ),
    key(
        "metrics_listen",
        "CSAI_METRICS_LISTEN",
        "",
        "host:port of the Prometheus /metrics endpoint (off when empty)",
    ),
    key(
        "trace_session_ids",
        "CSAI_TRACE_SESSION_IDS",
        "hashed",
        "how session ids appear in spans and logs: plain, hashed (16 hex digits of a keyed HMAC-SHA256) or omitted",
    ),
    env_only_secret(
        "trace_session_id_key",
        "CSAI_TRACE_SESSION_ID_KEY",
        "key of hashed session ids, at least 16 characters; give every sidecar the same one to join a session's spans across them (environment only)",
    ),
    key(
        "log_format",
        "CSAI_LOG_FORMAT",
        "text",
        "log format: text or json",
    ),
    key(
        "log_level",
        "CSAI_LOG_LEVEL",
        "info",
        "log filter (tracing EnvFilter syntax, e.g. info,csai_sidecar=debug)",
    ),
];

impl Key {
    /// The command-line flag, without the leading dashes (env-only keys have none).
    pub fn flag(&self) -> Option<String> {
        match self.name {
            _ if self.env_only => None,
            "type" => Some("storage-type".to_string()),
            name => Some(name.replace('_', "-")),
        }
    }
}

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

/// A configuration error; the message names the key, the source and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// The storage backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageType {
    Memory,
    Redis,
    Mongo,
    Dynamo,
}

impl StorageType {
    /// The name used in config and stats.
    pub fn name(self) -> &'static str {
        match self {
            StorageType::Memory => "memory",
            StorageType::Redis => "redis",
            StorageType::Mongo => "mongo",
            StorageType::Dynamo => "dynamo",
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Limits the service layer enforces on every request, for every backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_messages_per_request: usize,
    pub max_content_bytes: usize,
    pub max_ttl: Duration,
    pub max_page_size: u32,
}

/// The effective configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    /// TLS of the gRPC server, when on.
    pub tls: Option<TlsFiles>,
    /// Bearer tokens (`tenant:token` entries), when authentication is on.
    pub auth_tokens: Option<Secret>,
    pub reflection: bool,
    pub storage_type: StorageType,
    pub session_ttl: Duration,
    pub sliding_ttl_on_read: bool,
    pub timeout: Duration,
    pub max_retries: u32,
    pub redis_address: String,
    pub redis_username: Option<String>,
    pub redis_password: Option<String>,
    pub redis_db: i64,
    pub redis_cluster_nodes: Vec<String>,
    pub redis_tls_ca_file: Option<PathBuf>,
    pub redis_key_prefix: String,
    pub mongo_uri: String,
    pub mongo_database: String,
    pub mongo_collection: String,
    pub mongo_pool_size: u32,
    pub dynamo_region: String,
    pub dynamo_table: String,
    pub dynamo_endpoint: Option<String>,
    pub dynamo_create_table: bool,
    pub memory_limits: MemoryLimits,
    pub memory_sweep_interval: Duration,
    pub health_interval: Duration,
    pub stats_refresh_interval: Duration,
    pub shutdown_grace: Duration,
    pub max_grpc_message_size: usize,
    pub max_concurrent_requests: usize,
    pub limits: RequestLimits,
    pub record_retention: Duration,
    /// Encryption keys (`id:base64` entries), when encryption at rest is on.
    pub encryption_keys: Option<Secret>,
    pub chat: ChatSettings,
    pub slow_op_threshold: Duration,
    pub metrics_listen: Option<SocketAddr>,
    pub trace_session_ids: SessionIdInTraces,
    /// The key of hashed session ids; a random one per process when unset.
    pub trace_session_id_key: Option<Secret>,
    pub log_format: LogFormat,
    pub log_level: String,
}

impl Config {
    /// Every secret value of the configuration, for redaction: passwords, API keys,
    /// tokens and encryption keys.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets: Vec<String> = self.redis_password.iter().cloned().collect();
        for url in self
            .redis_address
            .split(',')
            .chain(self.redis_cluster_nodes.iter().map(String::as_str))
        {
            secrets.extend(url_password(url.trim()).map(String::from));
        }
        if let Some((_, rest)) = self.mongo_uri.split_once("://")
            && let Some((userinfo, _)) = rest.split_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
        {
            secrets.push(password.to_string());
        }
        for provider in &self.chat.providers {
            if let Endpoint::OpenAi {
                api_key: Some(key), ..
            } = &provider.endpoint
            {
                secrets.push(key.value.clone());
            }
        }
        secrets.extend(
            self.trace_session_id_key
                .iter()
                .map(|Secret(key)| key.clone()),
        );
        for Secret(list) in self.encryption_keys.iter().chain(&self.auth_tokens) {
            for entry in list.split([',', '\n']) {
                if let Some((_, value)) = entry.trim().split_once(':') {
                    secrets.push(value.trim().to_string());
                }
            }
        }
        secrets.retain(|s| !s.is_empty());
        secrets
    }

    /// The DynamoDB connection options.
    pub fn dynamo_options(&self) -> DynamoOptions {
        DynamoOptions {
            region: self.dynamo_region.clone(),
            table: self.dynamo_table.clone(),
            endpoint: self.dynamo_endpoint.clone(),
            create_table: self.dynamo_create_table,
            timeout: self.timeout,
            max_retries: self.max_retries,
        }
    }

    /// The MongoDB connection options.
    pub fn mongo_options(&self) -> MongoOptions {
        MongoOptions {
            uri: self.mongo_uri.clone(),
            database: self.mongo_database.clone(),
            collection: self.mongo_collection.clone(),
            pool_size: self.mongo_pool_size,
            timeout: self.timeout,
            max_retries: self.max_retries,
        }
    }

    /// The Redis connection options.
    pub fn redis_options(&self) -> RedisOptions {
        RedisOptions {
            address: self.redis_address.clone(),
            cluster_nodes: self.redis_cluster_nodes.clone(),
            tls_ca_file: self.redis_tls_ca_file.clone(),
            username: self.redis_username.clone(),
            password: self.redis_password.clone(),
            db: self.redis_db,
            key_prefix: self.redis_key_prefix.clone(),
            timeout: self.timeout,
            max_retries: self.max_retries,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Values::defaults()
            .parse()
            .expect("the built-in defaults are valid")
    }
}

/// Raw text values by key, with their source, and the `[providers.NAME]` tables of the file.
#[derive(Clone, Debug, Default)]
pub struct Values {
    keys: BTreeMap<&'static str, (String, Source)>,
    providers: BTreeMap<String, (toml::Table, String)>,
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

    fn raw(&self, name: &str) -> (&str, &Source) {
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
    fn get<T>(
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

    fn text(&self, name: &str) -> String {
        self.raw(name).0.trim().to_string()
    }

    fn optional_text(&self, name: &str) -> Option<String> {
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

    /// The bearer tokens from the environment or a file, checked now (errors never show one).
    fn auth_tokens(&self) -> Result<Option<Secret>, ConfigError> {
        let text = match (
            self.optional_text("auth_tokens"),
            self.optional_text("auth_tokens_file"),
        ) {
            (Some(tokens), _) => tokens,
            (None, Some(path)) => std::fs::read_to_string(&path)
                .map_err(|e| ConfigError(format!("`auth_tokens_file`: cannot read {path}: {e}")))?,
            (None, None) => return Ok(None),
        };
        Tokens::parse(&text).map_err(|e| ConfigError(format!("auth tokens: {e}")))?;
        Ok(Some(Secret(text)))
    }

    fn tls(&self) -> Result<Option<TlsFiles>, ConfigError> {
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
    fn encryption_keys(&self) -> Result<Option<Secret>, ConfigError> {
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

/// A secret value: its Debug form never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The password of a `scheme://user:password@host...` URL, if it has one.
fn url_password(url: &str) -> Option<&str> {
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

/// Formats a duration in the largest whole unit (d, h, m, s, ms), as config accepts it.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Parses a byte size: a number with an optional unit (B, KB, KiB, MB, MiB, GB, GiB).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::guard::RateLimits;
    use crate::chat::provider::Sampling;

    #[test]
    fn defaults_mirror_cs_ai() {
        let config = Config::default();
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(config.storage_type, StorageType::Memory);
        assert_eq!(config.session_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(config.mongo_database, "cs_ai");
        assert_eq!(config.mongo_collection, "sessions");
        assert_eq!(config.dynamo_table, "cs_ai_sessions");
        assert_eq!(config.max_grpc_message_size, 4 << 20);
        assert_eq!(config.memory_limits, MemoryLimits::default());
    }

    #[test]
    fn later_sources_override_earlier_ones() {
        let mut values = Values::defaults();
        values.set("session_ttl", "1h".into(), Source::File("f.toml".into()));
        values.set("session_ttl", "30m".into(), Source::Env("CSAI_SESSION_TTL"));
        assert_eq!(
            values.parse().unwrap().session_ttl,
            Duration::from_secs(1800)
        );
    }

    #[test]
    fn errors_name_key_source_and_accepted_values() {
        let mut values = Values::defaults();
        values.set("type", "cassandra".into(), Source::Env("CSAI_STORAGE_TYPE"));
        let error = values.parse().unwrap_err().to_string();
        assert!(error.contains("`type`"), "{error}");
        assert!(error.contains("CSAI_STORAGE_TYPE"), "{error}");
        assert!(error.contains("memory, redis, mongo, dynamo"), "{error}");
        assert!(error.contains("cassandra"), "{error}");

        let mut values = Values::defaults();
        values.set(
            "session_ttl",
            "forever".into(),
            Source::Flag("session-ttl".into()),
        );
        let error = values.parse().unwrap_err().to_string();
        assert!(error.contains("flag --session-ttl"), "{error}");
    }

    #[test]
    fn durations_format_in_whole_units() {
        assert_eq!(format_duration(Duration::from_secs(365 * 86_400)), "365d");
        assert_eq!(format_duration(Duration::from_secs(12 * 3600)), "12h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("4MiB"), Some(4 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("1 GB"), Some(1_000_000_000));
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn secrets_are_redacted() {
        let mut values = Values::defaults();
        values.set(
            "redis_password",
            "hunter2".into(),
            Source::Env("CSAI_REDIS_PASSWORD"),
        );
        values.set(
            "mongo_uri",
            "mongodb://app:s3cret@db:27017/?tls=true".into(),
            Source::Default,
        );
        // Regression: a password inside the Redis URL was printed as it was.
        values.set(
            "redis_address",
            "redis://:pw-in-url@cache:6379/0".into(),
            Source::Default,
        );
        let shown = values.render();
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret") && !shown.contains("pw-in-url"),
            "{shown}"
        );
        assert!(
            shown.contains("redis://:<redacted>@cache:6379/0"),
            "{shown}"
        );
        let config = values.parse().expect("a valid configuration");
        assert!(config.secrets().contains(&"pw-in-url".to_string()));
        assert!(
            shown.contains("mongodb://app:<redacted>@db:27017/?tls=true"),
            "{shown}"
        );
    }

    fn file_values(text: &str) -> Result<Values, ConfigError> {
        let path = std::env::temp_dir().join(format!(
            "csai-config-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).unwrap();
        let values = Values::defaults().with_file(&path);
        std::fs::remove_file(&path).unwrap();
        values
    }

    #[test]
    fn chat_defaults_are_cs_ai_and_no_provider_is_configured() {
        let chat = Config::default().chat;
        assert!(chat.providers.is_empty());
        assert_eq!(chat.default_provider, None);
        assert_eq!(chat.limits.max_tool_rounds, 10);
        assert_eq!(chat.rate_limits, None);
    }

    #[test]
    fn the_default_provider_comes_from_the_chat_keys() {
        let mut values = Values::defaults();
        values.set(
            "chat_base_url",
            "https://api.deepseek.com/v1".into(),
            Source::Env("CSAI_CHAT_BASE_URL"),
        );
        values.set(
            "chat_api_key",
            "sk-1".into(),
            Source::Env("CSAI_CHAT_API_KEY"),
        );
        values.set("chat_rate_limit", "true".into(), Source::Default);
        let chat = values.parse().unwrap().chat;
        assert_eq!(chat.default_provider.as_deref(), Some(DEFAULT_PROVIDER));
        let provider = &chat.providers[0];
        assert_eq!(provider.model, "deepseek-chat");
        assert_eq!(provider.defaults, Sampling::default());
        let Endpoint::OpenAi { api_key, .. } = &provider.endpoint else {
            panic!("an OpenAI endpoint");
        };
        assert_eq!(api_key.as_ref().unwrap().source, "CSAI_CHAT_API_KEY");
        assert_eq!(chat.rate_limits, Some(RateLimits::default()));
        assert!(!values.render().contains("sk-1"), "the key is redacted");
    }

    #[test]
    fn named_providers_come_from_provider_tables() {
        // SAFETY: only this test reads this variable.
        unsafe { std::env::set_var("CSAI_TEST_OPENAI_KEY_FOR_CONFIG", "sk-openai") };
        let mut values = file_values(
            "chat_provider = \"openai\"\nchat_fallback_provider = \"local\"\n\
             [providers.openai]\nbase_url = \"https://api.openai.com/v1\"\nmodel = \"gpt-4o-mini\"\n\
             api_key_env = \"CSAI_TEST_OPENAI_KEY_FOR_CONFIG\"\ntemperature = 0.5\n\
             [providers.local]\nbase_url = \"http://localhost:11434/v1\"\nmodel = \"llama3.1\"\ntimeout = \"300s\"\n",
        )
        .unwrap();
        let chat = values.parse().unwrap().chat;
        assert_eq!(chat.default_provider.as_deref(), Some("openai"));
        assert_eq!(chat.fallback_provider.as_deref(), Some("local"));
        let openai = chat.providers.iter().find(|p| p.name == "openai").unwrap();
        assert_eq!(
            (openai.model.as_str(), openai.defaults.temperature),
            ("gpt-4o-mini", 0.5)
        );
        assert_eq!(
            openai.defaults.presence_penalty, -1.5,
            "unset fields take chat_*"
        );
        let local = chat.providers.iter().find(|p| p.name == "local").unwrap();
        assert_eq!(local.timeout, Duration::from_secs(300));

        values.set("chat_fallback_provider", "nowhere".into(), Source::Default);
        let error = values.parse().unwrap_err().to_string();
        assert!(
            error.contains("nowhere") && error.contains("openai"),
            "{error}"
        );
    }

    #[test]
    fn bad_chat_settings_are_rejected() {
        let error = file_values("chat_api_key = \"sk-in-a-file\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("CSAI_CHAT_API_KEY"), "{error}");
        assert!(!error.contains("sk-in-a-file"), "{error}");
        let error = file_values("[providers.x]\nbase_url = \"ftp://x\"\n").unwrap();
        assert!(
            error
                .parse()
                .unwrap_err()
                .to_string()
                .contains("[providers.x] base_url")
        );
        let error = file_values("[providers.x]\necho = true\ncolour = 1\n").unwrap();
        assert!(
            error
                .parse()
                .unwrap_err()
                .to_string()
                .contains("unknown key")
        );
        for (key, value) in [
            ("chat_temperature", "2.5"),
            ("chat_top_p", "-0.1"),
            ("chat_presence_penalty", "-3"),
            ("chat_base_url", "api.deepseek.com"),
            ("chat_provider", "missing"),
        ] {
            let mut values = Values::defaults();
            values.set(key, value.into(), Source::Default);
            let error = values.parse().unwrap_err().to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
    }

    #[test]
    fn every_secret_is_known_for_redaction() {
        let mut values = Values::defaults();
        values.set("redis_password", "hunter22".into(), Source::Default);
        values.set(
            "mongo_uri",
            "mongodb://app:s3cret-pw@db/".into(),
            Source::Default,
        );
        values.set(
            "chat_base_url",
            "https://api.example.com/v1".into(),
            Source::Default,
        );
        values.set("chat_api_key", "sk-live-0123".into(), Source::Default);
        values.set(
            "auth_tokens",
            "shop-a:token-aaaaaaaaaaaaaaaa".into(),
            Source::Default,
        );
        let secrets = values.parse().unwrap().secrets();
        for secret in [
            "hunter22",
            "s3cret-pw",
            "sk-live-0123",
            "token-aaaaaaaaaaaaaaaa",
        ] {
            assert!(secrets.iter().any(|s| s == secret), "{secret} missing");
        }
    }

    #[test]
    fn session_ttl_may_not_exceed_max_ttl() {
        let mut values = Values::defaults();
        values.set("session_ttl", "400d".into(), Source::Default);
        assert!(values.parse().unwrap_err().to_string().contains("max_ttl"));
    }
}
