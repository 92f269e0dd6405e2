//! How settings are declared and read, whoever owns them: [`Key`] (one setting's names,
//! default and help), [`Values`] (text values layered by source) and the units of
//! durations and sizes. The core keys (src/config/keys.rs) and each backend's section
//! (src/store/*/config.rs) are declared with it; nothing here knows a particular setting.

mod units;
mod values;

pub use units::{format_duration, parse_size};
pub use values::{Source, Values, url_password};

/// A configuration error; the message names the key, the source and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// One configuration setting.
#[derive(Debug)]
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

/// A plain setting.
pub const fn key(
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

/// A secret that only the environment may set (tokens, API keys, encryption keys).
pub const fn env_only_secret(name: &'static str, env: &'static str, help: &'static str) -> Key {
    Key {
        env_only: true,
        ..secret(name, env, help)
    }
}

/// A secret that any source may set (a password in a connection string, say).
pub const fn secret(name: &'static str, env: &'static str, help: &'static str) -> Key {
    Key {
        secret: true,
        ..key(name, env, "", help)
    }
}
