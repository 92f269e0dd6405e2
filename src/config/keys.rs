//! The table of every setting: its TOML key, environment variable, flag, default and help.

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
