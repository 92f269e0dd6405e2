//! The typed configuration, read from flags, environment variables and a TOML file.
//!
//! Every setting is named once, in [`catalog`]: the core table [`KEYS`] and each
//! backend's own section (src/store/*/config.rs), with their TOML keys (CS-AI's
//! StorageConfig names), environment variables, flags and defaults. Values are gathered as
//! text with their source (flags > environment > file > defaults, src/settings/) and
//! parsed once, so every error names the key, where the bad value came from, and what is
//! accepted.

mod chat;
mod keys;
mod parse;

pub use keys::KEYS;
pub use parse::parse;

use crate::chat::ChatSettings;
use crate::chat::provider::Endpoint;
use crate::observability::telemetry::{LogFormat, SessionIdInTraces};
use crate::settings::{Key, Values};
use crate::store::open::{BACKENDS, Backend, Configured, Shared};
use crate::store::{SessionStore, StoreResult};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

pub use chat::{DEFAULT_PROVIDER, ECHO_PROVIDER};

/// Every key that may be set: the core keys, then each compiled-in backend's section.
pub fn catalog() -> &'static [&'static Key] {
    static CATALOG: LazyLock<Vec<&'static Key>> = LazyLock::new(|| {
        KEYS.iter()
            .chain(BACKENDS.iter().flat_map(|backend| backend.keys))
            .collect()
    });
    &CATALOG
}

/// The defaults of every key; the file, environment and flags go on top.
pub fn defaults() -> Values {
    Values::defaults(catalog(), &["providers"])
}

/// The chosen storage backend, its section read and checked.
#[derive(Clone)]
pub struct Storage {
    pub backend: &'static Backend,
    pub shared: Shared,
    options: Arc<dyn Configured>,
}

impl Storage {
    /// Opens the backend as it is, without decorators.
    pub async fn open(&self) -> StoreResult<Arc<dyn SessionStore>> {
        self.options.open().await
    }

    /// The backend's carrier of change signals between replicas.
    pub fn bus(&self) -> StoreResult<Arc<dyn crate::store::changes::ChangeBus>> {
        self.options.bus()
    }
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Storage({})", self.backend.name)
    }
}

/// Where the gRPC server listens: a TCP address, or a Unix domain socket for a bot in the
/// same Pod (`unix:///path`), created with `mode` and removed at shutdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix { path: PathBuf, mode: u32 },
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(address) => write!(f, "{address}"),
            Listen::Unix { path, .. } => write!(f, "unix://{}", path.display()),
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
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Listen,
    /// TLS of the gRPC server, when on.
    pub tls: Option<TlsFiles>,
    /// Bearer tokens (`tenant:token` entries), when authentication is on.
    pub auth_tokens: Option<Secret>,
    pub reflection: bool,
    pub storage: Storage,
    pub session_ttl: Duration,
    pub sliding_ttl_on_read: bool,
    pub health_interval: Duration,
    pub stats_refresh_interval: Duration,
    /// How token budgets count when the model does not say.
    pub token_encoding: crate::tokens::Encoding,
    /// Watch streams open at once.
    pub watch_max_watchers: usize,
    /// Sessions with unread changes a WatchSessions stream may have.
    pub watch_buffer: usize,
    /// How often the polling fallback looks at watched sessions and prefixes.
    pub watch_poll_interval: Duration,
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
    /// Between the progress lines of long commands, when stderr is not a terminal.
    pub progress_interval: Duration,
    /// Secret values and passwords inside URLs of every setting, whichever backend is on
    /// (their Debug form hides them).
    pub setting_secrets: Vec<Secret>,
}

impl Config {
    /// Every secret value of the configuration, for redaction: passwords, API keys,
    /// tokens and encryption keys.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets: Vec<String> = self
            .setting_secrets
            .iter()
            .map(|Secret(value)| value.clone())
            .collect();
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
}

impl Default for Config {
    fn default() -> Self {
        parse(&defaults()).expect("the built-in defaults are valid")
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
    use crate::settings::{ConfigError, Source};
    use crate::store::dynamo::DynamoOptions;
    use crate::store::memory::{MemoryLimits, MemoryOptions};
    use crate::store::mongo::MongoOptions;

    #[test]
    fn defaults_mirror_cs_ai() {
        let config = Config::default();
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(config.storage.backend.name, "memory");
        assert_eq!(config.session_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(config.max_grpc_message_size, 4 << 20);
        let values = defaults();
        let shared = config.storage.shared;
        let mongo = MongoOptions::read(&values, &shared).unwrap();
        assert_eq!(
            (mongo.database.as_str(), mongo.collection.as_str()),
            ("cs_ai", "sessions")
        );
        assert_eq!(
            DynamoOptions::read(&values, &shared).unwrap().table,
            "cs_ai_sessions"
        );
        assert_eq!(
            MemoryOptions::read(&values).unwrap().limits,
            MemoryLimits::default()
        );
    }

    #[test]
    fn later_sources_override_earlier_ones() {
        let mut values = defaults();
        values.set("session_ttl", "1h".into(), Source::File("f.toml".into()));
        values.set("session_ttl", "30m".into(), Source::Env("CSAI_SESSION_TTL"));
        assert_eq!(
            parse(&values).unwrap().session_ttl,
            Duration::from_secs(1800)
        );
    }

    #[test]
    fn listen_takes_a_unix_socket_with_its_mode_but_not_with_tls() {
        let with = |pairs: &[(&'static str, &str)]| {
            let mut values = defaults();
            for (key, value) in pairs {
                values.set(key, value.to_string(), Source::Env("CSAI_TEST"));
            }
            parse(&values)
        };
        let config = with(&[("listen", "unix:///run/csai/sidecar.sock")]).unwrap();
        assert_eq!(
            config.listen,
            Listen::Unix {
                path: PathBuf::from("/run/csai/sidecar.sock"),
                mode: 0o660
            }
        );
        assert_eq!(config.listen.to_string(), "unix:///run/csai/sidecar.sock");
        let relative = with(&[
            ("listen", "unix:sidecar.sock"),
            ("listen_socket_mode", "600"),
        ]);
        assert_eq!(
            relative.unwrap().listen,
            Listen::Unix {
                path: PathBuf::from("sidecar.sock"),
                mode: 0o600
            }
        );
        for (pairs, expected) in [
            (vec![("listen", "unix://")], "unix:///path"),
            (
                vec![("listen", "unix:///s"), ("listen_socket_mode", "0999")],
                "octal file mode",
            ),
            (
                vec![("listen", "unix:///s"), ("listen_socket_mode", "0400")],
                "octal file mode",
            ),
            (
                vec![
                    ("listen", "unix:///s"),
                    ("tls_cert_file", "c.pem"),
                    ("tls_key_file", "k.pem"),
                ],
                "TLS is for TCP listeners",
            ),
        ] {
            let error = with(&pairs).unwrap_err().to_string();
            assert!(error.contains(expected), "{pairs:?}: {error}");
        }
    }

    #[test]
    fn errors_name_key_source_and_accepted_values() {
        let mut values = defaults();
        values.set("type", "cassandra".into(), Source::Env("CSAI_STORAGE_TYPE"));
        let error = parse(&values).unwrap_err().to_string();
        assert!(error.contains("`type`"), "{error}");
        assert!(error.contains("CSAI_STORAGE_TYPE"), "{error}");
        assert!(error.contains("memory, redis, mongo, dynamo"), "{error}");
        assert!(error.contains("cassandra"), "{error}");

        let mut values = defaults();
        values.set(
            "session_ttl",
            "forever".into(),
            Source::Flag("session-ttl".into()),
        );
        let error = parse(&values).unwrap_err().to_string();
        assert!(error.contains("flag --session-ttl"), "{error}");
    }

    #[test]
    fn secrets_are_redacted() {
        let mut values = defaults();
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
        let config = parse(&values).expect("a valid configuration");
        for secret in ["pw-in-url", "hunter2", "s3cret"] {
            assert!(config.secrets().contains(&secret.to_string()), "{secret}");
        }
        // The backend's options live behind the registry; the Debug form of the whole
        // configuration (as a panic or a log line might print it) shows no secret.
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("s3cret") && !debug.contains("pw-in-url"),
            "{debug}"
        );
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
        let values = defaults().with_file(&path);
        std::fs::remove_file(&path).unwrap();
        values
    }

    #[test]
    fn chat_defaults_are_cs_ai_with_only_the_echo_model() {
        let chat = Config::default().chat;
        let names: Vec<&str> = chat.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, [ECHO_PROVIDER]);
        assert_eq!(chat.default_provider.as_deref(), Some(ECHO_PROVIDER));
        assert_eq!(chat.limits.max_tool_rounds, 10);
        assert_eq!(chat.rate_limits, None);

        let mut values = defaults();
        values.set("chat_echo", "false".into(), Source::Default);
        let chat = parse(&values).unwrap().chat;
        assert!(chat.providers.is_empty());
        assert_eq!(chat.default_provider, None);
    }

    #[test]
    fn a_configured_model_comes_before_the_echo_one() {
        let one = file_values(
            "[providers.ollama]\nbase_url = \"http://localhost:11434/v1\"\nmodel = \"llama3.1\"\n",
        )
        .unwrap();
        assert_eq!(
            parse(&one).unwrap().chat.default_provider.as_deref(),
            Some("ollama")
        );
        // Two models and no chat_provider: requests must name one; echo never stands in.
        let two = file_values(
            "[providers.a]\nbase_url = \"http://a/v1\"\n[providers.b]\nbase_url = \"http://b/v1\"\n",
        )
        .unwrap();
        assert_eq!(parse(&two).unwrap().chat.default_provider, None);
    }

    #[test]
    fn the_default_provider_comes_from_the_chat_keys() {
        let mut values = defaults();
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
        let chat = parse(&values).unwrap().chat;
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
        let chat = parse(&values).unwrap().chat;
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
        let error = parse(&values).unwrap_err().to_string();
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
        let values = file_values("[providers.x]\nbase_url = \"ftp://x\"\n").unwrap();
        assert!(
            parse(&values)
                .unwrap_err()
                .to_string()
                .contains("[providers.x] base_url")
        );
        let values = file_values("[providers.x]\necho = true\ncolour = 1\n").unwrap();
        assert!(
            parse(&values)
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
            let mut values = defaults();
            values.set(key, value.into(), Source::Default);
            let error = parse(&values).unwrap_err().to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
    }

    #[test]
    fn every_secret_is_known_for_redaction() {
        let mut values = defaults();
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
        let secrets = parse(&values).unwrap().secrets();
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
        let mut values = defaults();
        values.set("session_ttl", "400d".into(), Source::Default);
        assert!(parse(&values).unwrap_err().to_string().contains("max_ttl"));
    }
}
