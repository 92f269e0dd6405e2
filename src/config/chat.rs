//! The Chat service's settings: the `chat_*` keys and the `[providers.NAME]` tables.

use crate::chat::completion::Sampling;
use crate::chat::guard::RateLimits;
use crate::chat::provider::{ApiKey, Endpoint, ProviderSettings};
use crate::chat::{ChatSettings, TurnLimits};
use crate::settings::{ConfigError, Values};
use std::path::PathBuf;

/// The Chat service's providers, limits and guards.
pub(super) fn settings(values: &Values) -> Result<ChatSettings, ConfigError> {
    let defaults = Sampling {
        temperature: values.get("chat_temperature", "a number from 0 to 2", |s| {
            number_in(s, 0.0, 2.0)
        })?,
        top_p: values.get("chat_top_p", "a number from 0 to 1", |s| {
            number_in(s, 0.0, 1.0)
        })?,
        max_tokens: values.get("chat_max_tokens", "a whole number from 1", |s| {
            s.parse().ok().filter(|&n| n > 0)
        })?,
        frequency_penalty: values.get("chat_frequency_penalty", "a number from -2 to 2", |s| {
            number_in(s, -2.0, 2.0)
        })?,
        presence_penalty: values.get("chat_presence_penalty", "a number from -2 to 2", |s| {
            number_in(s, -2.0, 2.0)
        })?,
        stop: Vec::new(),
        seed: None,
    };
    let shared = ProviderSettings {
        name: String::new(),
        endpoint: Endpoint::Echo,
        model: values.text("chat_model"),
        context_tokens: values.get(
            "chat_context_tokens",
            "a whole number (0 = not configured)",
            |s| s.parse().ok(),
        )?,
        defaults,
        timeout: values.get("chat_timeout", "a positive duration such as 30s", |s| {
            humantime::parse_duration(s).ok().filter(|d| !d.is_zero())
        })?,
        max_retries: values.get("chat_max_retries", "a whole number from 0 to 10", |s| {
            s.parse().ok().filter(|&n| n <= 10)
        })?,
    };

    let mut providers = Vec::new();
    if values.optional_text("chat_base_url").is_some() {
        let base_url = values.get("chat_base_url", "an http:// or https:// URL", |s| {
            is_http_url(s).then(|| s.to_string())
        })?;
        let api_key = match values.optional_text("chat_api_key") {
            Some(value) => Some(ApiKey {
                value,
                source: "CSAI_CHAT_API_KEY".into(),
            }),
            None => values
                .optional_text("chat_api_key_file")
                .map(|path| read_key_file(&path, "chat_api_key_file"))
                .transpose()?,
        };
        providers.push(ProviderSettings {
            name: DEFAULT_PROVIDER.into(),
            endpoint: Endpoint::OpenAi { base_url, api_key },
            ..shared.clone()
        });
    }
    if values.boolean("chat_echo")? {
        providers.push(ProviderSettings {
            name: ECHO_PROVIDER.into(),
            endpoint: Endpoint::Echo,
            model: "echo".into(),
            ..shared.clone()
        });
    }
    for (name, table, file) in values.tables("providers") {
        if providers.iter().any(|p| p.name == name) {
            return Err(ConfigError(format!(
                "[providers.{name}] in {file}: `{name}` is the name of a built-in provider; choose another"
            )));
        }
        providers.push(provider_from_table(name, table, file, &shared)?);
    }

    let names: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
    let known = |key: &str| -> Result<Option<String>, ConfigError> {
        let Some(name) = values.optional_text(key) else {
            return Ok(None);
        };
        if names.contains(&name.as_str()) {
            return Ok(Some(name));
        }
        Err(ConfigError(format!(
            "`{key}` names provider {name:?}, which is not configured; configured: [{}]",
            names.join(", ")
        )))
    };
    // A configured model before the echo one: echo answers only when nothing else would.
    let models: Vec<&str> = names
        .iter()
        .copied()
        .filter(|&n| n != ECHO_PROVIDER)
        .collect();
    let default_provider = known("chat_provider")?.or_else(|| {
        if models.contains(&DEFAULT_PROVIDER) {
            Some(DEFAULT_PROVIDER.to_string())
        } else if models.len() == 1 {
            Some(models[0].to_string())
        } else {
            (models.is_empty() && names.contains(&ECHO_PROVIDER)).then(|| ECHO_PROVIDER.to_string())
        }
    });
    let rate_limited = values.boolean("chat_rate_limit")?;
    let per = |key: &str| values.get(key, "a whole number (0 = no limit)", |s| s.parse().ok());
    Ok(ChatSettings {
        default_provider,
        fallback_provider: known("chat_fallback_provider")?,
        providers,
        limits: TurnLimits {
            history_window: values.get(
                "chat_history_window",
                "a whole number (0 = all messages)",
                |s| s.parse().ok(),
            )?,
            history_tokens: values.get(
                "chat_history_tokens",
                "a whole number (0 = no token budget)",
                |s| s.parse().ok(),
            )?,
            compact_after_tokens: values.get(
                "chat_compact_after_tokens",
                "a whole number (0 = never)",
                |s| s.parse().ok(),
            )?,
            token_encoding: values.get(
                "token_encoding",
                "o200k_base, cl100k_base or estimate",
                crate::tokens::Encoding::parse,
            )?,
            max_tool_rounds: values.get(
                "chat_max_tool_rounds",
                "a whole number from 1 to 100",
                |s| s.parse().ok().filter(|n| (1..=100).contains(n)),
            )?,
            tool_timeout: values.get(
                "chat_tool_timeout",
                "a positive duration such as 60s",
                |s| humantime::parse_duration(s).ok().filter(|d| !d.is_zero()),
            )?,
            max_user_message_chars: values.get(
                "chat_max_user_message_length",
                "a whole number (0 = no limit)",
                |s| s.parse().ok(),
            )?,
        },
        rate_limits: if rate_limited {
            Some(RateLimits {
                per_minute: per("chat_rate_limit_per_minute")?,
                per_hour: per("chat_rate_limit_per_hour")?,
                per_day: per("chat_rate_limit_per_day")?,
            })
        } else {
            None
        },
        transcript_dir: values
            .optional_text("chat_transcript_dir")
            .map(PathBuf::from),
        record_retention: values.get(
            "record_retention",
            "a positive duration such as 30d",
            |s| humantime::parse_duration(s).ok().filter(|d| !d.is_zero()),
        )?,
    })
}

/// Name of the provider configured by the `chat_*` keys.
pub const DEFAULT_PROVIDER: &str = "default";
/// Name of the provider `chat_echo` adds.
pub const ECHO_PROVIDER: &str = "echo";

fn number_in(text: &str, low: f64, high: f64) -> Option<f64> {
    text.parse::<f64>()
        .ok()
        .filter(|n| (low..=high).contains(n))
}

fn is_http_url(text: &str) -> bool {
    text.strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .is_some_and(|rest| !rest.is_empty())
}

/// Reads an API key from a file (trailing newline removed); the error never shows its content.
fn read_key_file(path: &str, key: &str) -> Result<ApiKey, ConfigError> {
    let value = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("`{key}`: cannot read the API key file {path}: {e}")))?
        .trim()
        .to_string();
    if value.is_empty() {
        return Err(ConfigError(format!(
            "`{key}`: the API key file {path} is empty"
        )));
    }
    Ok(ApiKey {
        value,
        source: format!("the API key file {path} (`{key}`)"),
    })
}

/// Keys of a `[providers.NAME]` table.
const PROVIDER_KEYS: &[&str] = &[
    "base_url",
    "model",
    "api_key_env",
    "api_key_file",
    "echo",
    "temperature",
    "top_p",
    "max_tokens",
    "frequency_penalty",
    "presence_penalty",
    "timeout",
    "max_retries",
    "context_tokens",
];

/// A named provider of the config file; unset fields take the `chat_*` values.
fn provider_from_table(
    name: &str,
    table: &toml::Table,
    file: &str,
    shared: &ProviderSettings,
) -> Result<ProviderSettings, ConfigError> {
    let error = |field: &str, problem: &str| {
        ConfigError(format!("[providers.{name}] {field} in {file}: {problem}"))
    };
    if let Some(unknown) = table.keys().find(|k| !PROVIDER_KEYS.contains(&k.as_str())) {
        return Err(error(
            unknown,
            &format!("unknown key; known keys: {}", PROVIDER_KEYS.join(", ")),
        ));
    }
    let text = |field: &str| -> Result<Option<String>, ConfigError> {
        match table.get(field) {
            None => Ok(None),
            Some(toml::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            Some(_) => Err(error(field, "must be non-empty text")),
        }
    };
    let number = |field: &str, low: f64, high: f64, default: f64| -> Result<f64, ConfigError> {
        match table.get(field) {
            None => Ok(default),
            Some(toml::Value::Float(n)) if (low..=high).contains(n) => Ok(*n),
            Some(toml::Value::Integer(n)) if (low..=high).contains(&(*n as f64)) => Ok(*n as f64),
            Some(_) => Err(error(
                field,
                &format!("must be a number from {low} to {high}"),
            )),
        }
    };
    let whole = |field: &str, low: i64, high: i64, default: u32| -> Result<u32, ConfigError> {
        match table.get(field) {
            None => Ok(default),
            Some(toml::Value::Integer(n)) if (low..=high).contains(n) => Ok(*n as u32),
            Some(_) => Err(error(
                field,
                &format!("must be a whole number from {low} to {high}"),
            )),
        }
    };
    let echo = match table.get("echo") {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(_) => return Err(error("echo", "must be true or false")),
    };
    let endpoint = if echo {
        Endpoint::Echo
    } else {
        let base_url = text("base_url")?
            .filter(|u| is_http_url(u))
            .ok_or_else(|| error("base_url", "an http:// or https:// URL is required"))?;
        let api_key = match (text("api_key_env")?, text("api_key_file")?) {
            (Some(variable), _) => {
                let value = std::env::var(&variable).unwrap_or_default();
                if value.trim().is_empty() {
                    return Err(error(
                        "api_key_env",
                        &format!("the environment variable {variable} is not set"),
                    ));
                }
                Some(ApiKey {
                    value: value.trim().to_string(),
                    source: variable,
                })
            }
            (None, Some(path)) => Some(read_key_file(
                &path,
                &format!("providers.{name}.api_key_file"),
            )?),
            (None, None) => None,
        };
        Endpoint::OpenAi { base_url, api_key }
    };
    let defaults = &shared.defaults;
    Ok(ProviderSettings {
        name: name.to_string(),
        endpoint,
        model: text("model")?.unwrap_or_else(|| {
            if echo {
                "echo".into()
            } else {
                shared.model.clone()
            }
        }),
        defaults: Sampling {
            temperature: number("temperature", 0.0, 2.0, defaults.temperature)?,
            top_p: number("top_p", 0.0, 1.0, defaults.top_p)?,
            max_tokens: whole("max_tokens", 1, i64::from(u32::MAX), defaults.max_tokens)?,
            frequency_penalty: number("frequency_penalty", -2.0, 2.0, defaults.frequency_penalty)?,
            presence_penalty: number("presence_penalty", -2.0, 2.0, defaults.presence_penalty)?,
            stop: Vec::new(),
            seed: None,
        },
        timeout: match text("timeout")? {
            None => shared.timeout,
            Some(t) => humantime::parse_duration(&t)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| error("timeout", "must be a positive duration such as 30s"))?,
        },
        max_retries: whole("max_retries", 0, 10, shared.max_retries)?,
        context_tokens: whole(
            "context_tokens",
            0,
            i64::from(u32::MAX),
            shared.context_tokens,
        )?,
    })
}
