//! The typed configuration, read from flags, environment variables and a TOML file.
//!
//! One table, [`KEYS`], names every setting once: its TOML key (CS-AI's StorageConfig
//! names), its environment variable, its flag and its default. Values are gathered as
//! text with their source (flags > environment > file > defaults) and parsed once, so every
//! error names the key, where the bad value came from, and what is accepted.

mod chat;
mod keys;
mod units;
mod values;

pub use keys::{KEYS, Key};
pub use units::{format_duration, parse_size};
use values::url_password;
pub use values::{Source, Values};

pub use chat::{DEFAULT_PROVIDER, ECHO_PROVIDER};

use crate::chat::ChatSettings;
use crate::chat::provider::Endpoint;
use crate::observability::telemetry::{LogFormat, SessionIdInTraces};
use crate::store::dynamo::DynamoOptions;
use crate::store::memory::MemoryLimits;
use crate::store::mongo::MongoOptions;
use crate::store::redis::RedisOptions;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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

/// Where the server's TLS material lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate signed by this CA (mTLS) when set.
    pub client_ca: Option<PathBuf>,
    /// How often the certificate files are checked for changes.
    pub reload_interval: Duration,
}

/// A secret value: its Debug form never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::completion::Sampling;
    use crate::chat::guard::RateLimits;

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
