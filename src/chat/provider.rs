//! Model providers: an OpenAI-compatible HTTP client with retries, and the `echo` provider.

use crate::chat::completion::{Completion, CompletionRequest, Delta, DeltaSink, Sampling};
use crate::chat::sse::{SseDecoder, SseEvent};
use crate::chat::wire;
use crate::domain::{NewMessage, Role};
use crate::observability::metrics::{self, Labels};
use crate::observability::telemetry;
use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use std::fmt;
use std::time::{Duration, Instant};
use tracing::Instrument;
use tracing::field::Empty;

/// Why a model call failed. Every message names the provider.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProviderError {
    #[error("provider {provider} is rate limiting (HTTP 429): {message}")]
    RateLimited {
        provider: String,
        retry_after: Option<Duration>,
        message: String,
    },
    #[error("provider {provider} is unavailable: {message}")]
    Unavailable { provider: String, message: String },
    #[error("provider {provider} did not answer within {after:?}")]
    Timeout { provider: String, after: Duration },
    #[error(
        "provider {provider} rejected the API key (HTTP {status}): {message}; check {key_source}"
    )]
    Auth {
        provider: String,
        status: u16,
        key_source: String,
        message: String,
    },
    #[error("provider {provider} rejected the request (HTTP {status}): {message}")]
    Rejected {
        provider: String,
        status: u16,
        message: String,
    },
    #[error("provider {provider} sent malformed output (HTTP {status}): {message}")]
    Malformed {
        provider: String,
        status: u16,
        message: String,
    },
}

impl ProviderError {
    /// Errors after which another provider may succeed (outages, overload, timeouts).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { .. }
                | ProviderError::Unavailable { .. }
                | ProviderError::Timeout { .. }
        )
    }

    /// A short label for metrics and spans.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::Unavailable { .. } => "unavailable",
            ProviderError::Timeout { .. } => "timeout",
            ProviderError::Auth { .. } => "auth",
            ProviderError::Rejected { .. } => "rejected",
            ProviderError::Malformed { .. } => "malformed",
        }
    }
}

/// The API key of a provider. Its Debug form hides it, so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub value: String,
    /// Where it came from ("CSAI_CHAT_API_KEY", "file /run/secrets/key"), for errors.
    pub source: String,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey(<redacted> from {})", self.source)
    }
}

/// What a provider talks to.
#[derive(Clone, Debug, PartialEq)]
pub enum Endpoint {
    /// An OpenAI-compatible `POST {base_url}/chat/completions`.
    OpenAi {
        base_url: String,
        api_key: Option<ApiKey>,
    },
    /// Answers with the user's last message; for local development without a model.
    Echo,
}

/// A configured provider.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderSettings {
    pub name: String,
    pub endpoint: Endpoint,
    pub model: String,
    /// The model's context window in tokens (0 = not configured): a turn's history is
    /// what it leaves after the rest of the prompt and room for the answer.
    pub context_tokens: u32,
    pub defaults: Sampling,
    /// Bound of one HTTP attempt, answer streaming included.
    pub timeout: Duration,
    /// Retries of 429, 5xx and connection failures.
    pub max_retries: u32,
}

/// Longest Retry-After the client waits for; a longer one is passed on to the bot.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// First backoff delay; doubled for each retry.
const BASE_BACKOFF: Duration = Duration::from_millis(200);

/// The `model` label of calls to a model other than the provider's configured one.
pub const OTHER_MODEL: &str = "other";

/// A provider ready to call.
#[derive(Clone, Debug)]
pub struct Provider {
    pub settings: ProviderSettings,
    http: reqwest::Client,
}

impl Provider {
    /// A client for `settings`.
    pub fn new(settings: ProviderSettings) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| {
                format!(
                    "cannot build the HTTP client of provider {}: {e}",
                    settings.name
                )
            })?;
        Ok(Self { settings, http })
    }

    /// The provider's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Calls the model. With `on_delta`, the answer is streamed and each piece of text is
    /// passed on as it arrives. 429, 5xx and connection failures are retried with
    /// exponential backoff (honouring Retry-After) unless text was already passed on.
    pub async fn complete<'a>(
        &self,
        request: &CompletionRequest,
        on_delta: Option<&mut DeltaSink<'a>>,
    ) -> Result<Completion, ProviderError> {
        let result = self.complete_with_retries(request, on_delta).await;
        if let Err(error) = &result {
            metrics::global().count(
                "csai_provider_errors_total",
                vec![
                    ("provider", self.name().to_string()),
                    ("kind", error.kind().to_string()),
                ],
                1.0,
            );
        }
        result
    }

    async fn complete_with_retries<'a>(
        &self,
        request: &CompletionRequest,
        mut on_delta: Option<&mut DeltaSink<'a>>,
    ) -> Result<Completion, ProviderError> {
        let mut retry = 0;
        loop {
            let mut streamed_any = false;
            let span = tracing::info_span!(
                "provider",
                otel.name = format!("chat {}", request.model),
                otel.kind = "client",
                otel.status_code = Empty,
                gen_ai.operation.name = "chat",
                gen_ai.provider.name = self.name(),
                gen_ai.request.model = request.model.as_str(),
                gen_ai.response.model = Empty,
                gen_ai.response.finish_reasons = Empty,
                gen_ai.usage.input_tokens = Empty,
                gen_ai.usage.output_tokens = Empty,
                http.response.status_code = Empty,
                error.type = Empty,
                csai.retry = retry,
            );
            let started = Instant::now();
            let attempt = self.attempt(request, on_delta.as_deref_mut(), &mut streamed_any);
            let result = tokio::time::timeout(self.settings.timeout, attempt)
                .instrument(span.clone())
                .await
                .unwrap_or_else(|_| {
                    Err(ProviderError::Timeout {
                        provider: self.name().to_string(),
                        after: self.settings.timeout,
                    })
                });
            self.observe(&span, request, &result, started.elapsed());
            let error = match result {
                Ok(completion) => return Ok(completion),
                Err(error) => error,
            };
            let delay = match &error {
                ProviderError::RateLimited { retry_after, .. } => {
                    retry_after.unwrap_or(BASE_BACKOFF * 2u32.pow(retry))
                }
                ProviderError::Unavailable { .. } => BASE_BACKOFF * 2u32.pow(retry),
                _ => return Err(error),
            };
            if retry >= self.settings.max_retries || streamed_any || delay > MAX_RETRY_AFTER {
                return Err(error);
            }
            tracing::warn!(provider = self.name(), %error, ?delay, retry = retry + 1, "retrying the model call");
            metrics::global().count(
                "csai_provider_retries_total",
                vec![
                    ("provider", self.name().to_string()),
                    ("reason", error.kind().to_string()),
                ],
                1.0,
            );
            tokio::time::sleep(delay).await;
            retry += 1;
        }
    }

    /// The `model` label of this provider's metrics: its configured model, else
    /// [`OTHER_MODEL`]. A request may name any model (and a provider may answer with a
    /// dated variant of it); a label taken from either as it came would let any caller
    /// grow /metrics without bound.
    pub fn model_label<'m>(&'m self, model: &'m str) -> &'m str {
        if model == self.settings.model {
            model
        } else {
            OTHER_MODEL
        }
    }

    /// Records one model call on its span and in the metrics.
    fn observe(
        &self,
        span: &tracing::Span,
        request: &CompletionRequest,
        result: &Result<Completion, ProviderError>,
        elapsed: Duration,
    ) {
        let labels = |extra: Option<(&'static str, &str)>| -> Labels {
            let mut labels = vec![
                ("provider", self.name().to_string()),
                ("model", self.model_label(&request.model).to_string()),
            ];
            labels.extend(extra.map(|(k, v)| (k, v.to_string())));
            labels
        };
        let registry = metrics::global();
        registry.observe(
            "csai_provider_request_duration_seconds",
            labels(None),
            elapsed,
        );
        let completion = match result {
            Ok(completion) => completion,
            Err(error) => {
                span.record("error.type", error.kind());
                span.record("otel.status_code", "error");
                return;
            }
        };
        span.record("gen_ai.response.finish_reasons", &completion.finish_reason);
        if let Some(model) = &completion.message.model {
            span.record("gen_ai.response.model", model.as_str());
        }
        if let Some(usage) = &completion.message.usage {
            span.record("gen_ai.usage.input_tokens", usage.prompt_tokens);
            span.record("gen_ai.usage.output_tokens", usage.completion_tokens);
            for (kind, tokens) in [
                ("input", usage.prompt_tokens),
                ("output", usage.completion_tokens),
                ("cached_input", usage.cached_tokens),
                ("reasoning", usage.reasoning_tokens),
            ] {
                if tokens > 0 {
                    registry.count(
                        "csai_chat_tokens_total",
                        labels(Some(("type", kind))),
                        f64::from(tokens),
                    );
                }
            }
        }
    }

    async fn attempt<'a>(
        &self,
        request: &CompletionRequest,
        on_delta: Option<&mut DeltaSink<'a>>,
        streamed_any: &mut bool,
    ) -> Result<Completion, ProviderError> {
        let (base_url, api_key) = match &self.settings.endpoint {
            Endpoint::Echo => return Ok(echo(request, on_delta)),
            Endpoint::OpenAi { base_url, api_key } => (base_url, api_key.as_ref()),
        };
        let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        let mut http = self
            .http
            .post(url)
            .json(&wire::request_body(request, on_delta.is_some()));
        if let Some(key) = api_key {
            http = http.bearer_auth(&key.value);
        }
        let mut trace_headers = HeaderMap::new();
        let span = tracing::Span::current();
        telemetry::inject_trace(&span, &mut trace_headers);
        let response = http
            .headers(trace_headers)
            .send()
            .await
            .map_err(|e| self.unavailable(&e))?;
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        if !status.is_success() {
            let retry_after = retry_after(response.headers());
            let body = response.bytes().await.unwrap_or_default();
            return Err(self.status_error(status, retry_after, &body, api_key));
        }
        let malformed = |message: String| ProviderError::Malformed {
            provider: self.name().to_string(),
            status: status.as_u16(),
            message,
        };
        let is_event_stream = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let on_delta = match on_delta {
            Some(on_delta) if is_event_stream => on_delta,
            // Not asked to stream, or a server that ignored `stream: true`.
            not_streamed => {
                let body = response.bytes().await.map_err(|e| self.unavailable(&e))?;
                let completion = wire::parse_answer(&body).map_err(malformed)?;
                if let Some(on_delta) = not_streamed
                    && !completion.message.content.is_empty()
                {
                    *streamed_any = true;
                    on_delta(Delta::Content(completion.message.content.clone()));
                }
                return Ok(completion);
            }
        };
        let mut accumulator = wire::Accumulator::default();
        let mut decoder = SseDecoder::default();
        let mut body = response.bytes_stream();
        let mut forward = |delta: Delta| {
            *streamed_any = true;
            on_delta(delta);
        };
        while let Some(bytes) = body.next().await {
            let bytes = bytes.map_err(|e| self.unavailable(&e))?;
            for event in decoder.push(&bytes) {
                match event {
                    SseEvent::Data(data) => {
                        accumulator.chunk(&data, &mut forward).map_err(malformed)?
                    }
                    SseEvent::Done => return accumulator.finish().map_err(malformed),
                }
            }
        }
        // Some servers end the stream without [DONE]; what arrived is the answer.
        accumulator.finish().map_err(malformed)
    }

    fn unavailable(&self, error: &reqwest::Error) -> ProviderError {
        ProviderError::Unavailable {
            provider: self.name().to_string(),
            message: describe(error),
        }
    }

    fn status_error(
        &self,
        status: StatusCode,
        retry_after: Option<Duration>,
        body: &[u8],
        api_key: Option<&ApiKey>,
    ) -> ProviderError {
        let provider = self.name().to_string();
        let message = wire::error_message(body);
        match status.as_u16() {
            429 => ProviderError::RateLimited {
                provider,
                retry_after,
                message,
            },
            401 | 403 => ProviderError::Auth {
                provider,
                status: status.as_u16(),
                key_source: api_key.map_or_else(
                    || "the provider's API key: none is configured".to_string(),
                    |k| k.source.clone(),
                ),
                message,
            },
            code if status.is_server_error() => ProviderError::Unavailable {
                provider,
                message: format!("HTTP {code}: {message}"),
            },
            code => ProviderError::Rejected {
                provider,
                status: code,
                message,
            },
        }
    }
}

/// The echo provider's answer: the last user message.
fn echo(request: &CompletionRequest, on_delta: Option<&mut DeltaSink<'_>>) -> Completion {
    let last_user = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map_or_else(String::new, |m| m.content.clone());
    if let Some(on_delta) = on_delta {
        on_delta(Delta::Content(last_user.clone()));
    }
    let mut message = NewMessage::text(Role::Assistant, last_user);
    message.model = Some("echo".into());
    Completion {
        message,
        finish_reason: "stop".into(),
    }
}

/// Retry-After in seconds (HTTP dates are rare from model APIs and read as absent).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// The whole chain of a reqwest error: its top line alone rarely says what went wrong.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(500)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn the_api_key_never_shows_in_debug_output() {
        let key = ApiKey {
            value: "sk-secret-123".into(),
            source: "CSAI_CHAT_API_KEY".into(),
        };
        let shown = format!("{key:?}");
        assert!(!shown.contains("sk-secret"), "{shown}");
        assert!(shown.contains("CSAI_CHAT_API_KEY"));
    }
}
