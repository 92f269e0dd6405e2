//! Logging setup: structured tracing output as text or JSON.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
pub fn init_logging(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => EnvFilter::try_new(&from_env)
            .map_err(|e| format!("invalid RUST_LOG {from_env:?}: {e}"))?,
        _ => EnvFilter::try_new(level).map_err(|e| {
            format!("invalid value {level:?} for `log_level` (CSAI_LOG_LEVEL): {e}")
        })?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}

/// Replaces every secret in `text` with `<redacted>`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_string(), |text, secret| {
        text.replace(secret.as_str(), "<redacted>")
    })
}

/// Makes panic messages go through [`redact`]: a panic must not print a password, token
/// or key that reached its message.
pub fn redact_panics(secrets: Vec<String>) {
    // Very short values would redact ordinary text; no real secret is that short.
    let secrets: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 6).collect();
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("{}", redact(&info.to_string(), &secrets));
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_replaced_wherever_they_appear() {
        let secrets = vec!["hunter22".to_string(), "sk-live-0123".to_string()];
        assert_eq!(
            redact(
                "password hunter22 and key sk-live-0123, again hunter22",
                &secrets
            ),
            "password <redacted> and key <redacted>, again <redacted>"
        );
    }
}
