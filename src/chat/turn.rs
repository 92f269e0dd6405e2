//! One chat turn: the tool-calling loop, its one atomic append, and replays of retries.

use crate::chat::completion::{
    Completion, CompletionRequest, Delta, ResponseFormat, Sampling, ToolChoice, ToolSpec,
};
use crate::chat::format;
use crate::chat::guard::{Limited, RateLimiter, TranscriptLog};
use crate::chat::provider::{Provider, ProviderError};
use crate::chat::window;
use crate::chat::{ChatSettings, TurnLimits};
use crate::domain::{
    Append, Message, NewMessage, Role, SessionId, ToolCall, Usage, Window, WriteOptions,
};
use crate::observability::metrics;
use crate::records::{self, RecordStream, SecurityLog};
use crate::store::{SessionStore, StoreError};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};

use std::time::Duration;

/// Metadata keys the turn writes on the messages it stores.
const META_REQUEST_ID: &str = "request_id";
const META_FINISH_REASON: &str = "finish_reason";
const META_PROVIDER: &str = "provider";
const META_IS_ERROR: &str = "is_error";
/// `finish_reason` of a turn that reached `max_tool_rounds`.
pub const MAX_TOOL_ROUNDS_REACHED: &str = "max_tool_rounds";

/// What starts or continues a turn.
#[derive(Clone, Debug, PartialEq)]
pub enum TurnInput {
    /// A new turn with the user's message.
    User(Box<NewMessage>),
    /// Unary form: the results of the pending tool calls of the session's open turn.
    ToolResults(Vec<ToolResult>),
}

/// The bot's result of one tool call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolResult {
    pub tool_call_id: String,
    pub content: String,
    pub is_error: bool,
}

/// Per-request model and sampling overrides; unset fields keep the provider's defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
}

impl Overrides {
    fn apply(&self, defaults: &Sampling) -> Sampling {
        Sampling {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            max_tokens: self.max_tokens.unwrap_or(defaults.max_tokens),
            frequency_penalty: self.frequency_penalty.unwrap_or(defaults.frequency_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(defaults.presence_penalty),
            stop: if self.stop.is_empty() {
                defaults.stop.clone()
            } else {
                self.stop.clone()
            },
            seed: self.seed.or(defaults.seed),
        }
    }
}

/// A validated turn request.
#[derive(Clone, Debug, PartialEq)]
pub struct TurnRequest {
    pub session: SessionId,
    /// The authenticated tenant, if tokens are on: part of every key the turn keeps
    /// outside the (already tenant-scoped) store, so tenants never share one.
    pub tenant: Option<String>,
    pub input: TurnInput,
    pub tools: Vec<ToolSpec>,
    pub tool_choice: ToolChoice,
    /// Sent after the session's system messages; not stored.
    pub additional_system: Vec<NewMessage>,
    pub overrides: Overrides,
    /// A named provider; the default one when None.
    pub provider: Option<String>,
    /// History messages sent to the model; the configured window when None (0 = all).
    pub history_window: Option<u32>,
    pub request_id: Option<String>,
    pub ttl: Duration,
    pub response_format: ResponseFormat,
}

/// The result of a turn (or of one unary step of it).
#[derive(Clone, Debug, PartialEq)]
pub struct TurnOutcome {
    /// The last assistant message, as stored.
    pub assistant: Message,
    /// Unary form: the tool calls the bot must answer before the turn can go on.
    pub pending: Vec<ToolCall>,
    pub usage: Usage,
    pub finish_reason: String,
    pub tool_rounds: u32,
    pub version: u64,
    pub provider: String,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Why a turn failed. Nothing of the failed step was stored.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Precondition(String),
    #[error(
        "no chat provider is configured; set CSAI_CHAT_BASE_URL (or chat_echo for local development)"
    )]
    NoProvider,
    #[error("participant {participant:?} reached the limit of {} turns per {}; retry in {:?}", .limited.limit, .limited.window, .limited.retry_after)]
    RateLimited {
        participant: String,
        limited: Limited,
    },
    #[error(
        "session {session} changed while this turn ran (another turn or write); nothing of this turn was stored; retry the turn"
    )]
    Conflict { session: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("the model did not answer in the requested format after one corrective retry: {0}")]
    Format(String),
    #[error("the bot did not answer tool call {call_id} within {after:?}")]
    ToolTimeout { call_id: String, after: Duration },
    #[error("the bot ended the turn: {0}")]
    Cancelled(String),
}

/// The calling bot, as the turn sees it.
#[async_trait]
pub trait Bot: Send {
    /// True when the bot wants the answer's text as the model streams it.
    fn streams(&self) -> bool;

    /// Passes on a piece of streamed text.
    fn delta(&mut self, delta: Delta);

    /// Asks the bot to run `calls` (distinct functions-with-arguments) and returns their
    /// results, or None when the bot answers in a later call (unary form).
    async fn run_tools(&mut self, calls: &[ToolCall])
    -> Result<Option<Vec<ToolResult>>, TurnError>;
}

/// The `outcome` label of a turn: its finish reason when it is one of OpenAI's or the
/// sidecar's own, else `other` (a provider may send any text there).
fn outcome_label(finish_reason: &str) -> &str {
    match finish_reason {
        "stop" | "tool_calls" | "length" | "content_filter" | "function_call"
        | "max_tool_rounds" => finish_reason,
        _ => "other",
    }
}

/// Runs chat turns over one store and the configured providers.
pub struct ChatEngine {
    providers: BTreeMap<String, Provider>,
    default_provider: Option<String>,
    fallback_provider: Option<String>,
    limits: TurnLimits,
    rate_limiter: Option<RateLimiter>,
    transcripts: Option<TranscriptLog>,
    record_retention: Duration,
}

/// A session as the turn reads it.
struct Loaded {
    version: u64,
    system: Vec<Message>,
    messages: Vec<Message>,
}

/// A tool call's function and arguments: identical calls share one answer in a turn.
type CallKey = (String, String);

fn key_of(call: &ToolCall) -> CallKey {
    (call.function.name.clone(), call.function.arguments.clone())
}

impl ChatEngine {
    /// An engine for `settings`; fails if a provider's HTTP client cannot be built.
    pub fn new(settings: &ChatSettings) -> Result<Self, String> {
        let providers = settings
            .providers
            .iter()
            .map(|p| Ok((p.name.clone(), Provider::new(p.clone())?)))
            .collect::<Result<_, String>>()?;
        Ok(Self {
            providers,
            default_provider: settings.default_provider.clone(),
            fallback_provider: settings.fallback_provider.clone(),
            limits: settings.limits.clone(),
            rate_limiter: settings.rate_limits.map(RateLimiter::new),
            transcripts: settings.transcript_dir.clone().map(TranscriptLog::new),
            record_retention: settings.record_retention,
        })
    }

    /// True when turns without a named provider have one to go to.
    pub fn has_default_provider(&self) -> bool {
        self.default_provider.is_some()
    }

    /// The configured limits of turns.
    pub fn limits(&self) -> &TurnLimits {
        &self.limits
    }

    /// Runs one turn, or one unary step of it, and stores its messages atomically.
    pub async fn run(
        &self,
        store: &dyn SessionStore,
        request: TurnRequest,
        bot: &mut dyn Bot,
    ) -> Result<TurnOutcome, TurnError> {
        let requested = self
            .provider(request.provider.as_deref())
            .map(|p| p.name().to_string())
            .unwrap_or_default();
        let result = self.run_turn(store, request, bot).await;
        let (provider, model, outcome) = match &result {
            Ok(turn) => (
                turn.provider.clone(),
                self.model_label(&turn.provider, &turn.assistant.body),
                outcome_label(&turn.finish_reason).to_string(),
            ),
            Err(_) => (requested, String::new(), "error".to_string()),
        };
        metrics::global().count(
            "csai_chat_turns_total",
            vec![
                ("provider", provider),
                ("model", model),
                ("outcome", outcome),
            ],
            1.0,
        );
        result
    }

    /// The `model` label of a turn's metrics: see [`Provider::model_label`].
    fn model_label(&self, provider: &str, message: &NewMessage) -> String {
        self.providers
            .get(provider)
            .map(|p| p.model_label(message.model.as_deref().unwrap_or(&p.settings.model)))
            .unwrap_or_default()
            .to_string()
    }

    async fn run_turn(
        &self,
        store: &dyn SessionStore,
        request: TurnRequest,
        bot: &mut dyn Bot,
    ) -> Result<TurnOutcome, TurnError> {
        let provider = self.provider(request.provider.as_deref())?;
        if let TurnInput::User(user) = &request.input {
            let verdict = self.check_length(user);
            if verdict.is_err() {
                self.log_security(store, &request.session, user, &verdict)
                    .await;
            }
            verdict?;
        }
        let window = request.history_window.unwrap_or(self.limits.history_window);
        let continuing = matches!(request.input, TurnInput::ToolResults(_));
        let loaded = self
            .load(store, &request.session, window, continuing)
            .await?;
        if let Some(request_id) = &request.request_id
            && let Some(outcome) = replay(&loaded.messages, request_id, loaded.version)
        {
            return Ok(outcome);
        }
        if let TurnInput::User(user) = &request.input {
            // After the replay check: a retried turn is not a new one.
            let verdict = self.check_rate(request.tenant.as_deref(), &request.session, user);
            self.log_security(store, &request.session, user, &verdict)
                .await;
            verdict?;
        }

        let (before, open_turn) = match (continuing, window::turn_start(&loaded.messages)) {
            (true, Some(start)) => loaded.messages.split_at(start),
            (true, None) => {
                return Err(TurnError::Precondition(format!(
                    "session {} has no open turn to continue; start one with user_message",
                    request.session
                )));
            }
            (false, _) => (loaded.messages.as_slice(), &[][..]),
        };
        let history = window::history(before, window);
        let stored_turn: Vec<NewMessage> = open_turn.iter().map(|m| m.body.clone()).collect();
        let mut cache = answered_calls(&stored_turn);
        let mut rounds = stored_turn
            .iter()
            .filter(|m| !m.tool_calls.is_empty())
            .count() as u32;

        // The messages this call stores, in one append at the end.
        let mut new = match request.input.clone() {
            TurnInput::User(user) => vec![*user],
            TurnInput::ToolResults(results) => {
                continue_with(&request.session, &stored_turn, results, &mut cache)?
            }
        };

        let mut usage = Usage::default();
        let (finish_reason, pending, answered_by) = loop {
            let at_limit = rounds >= self.limits.max_tool_rounds;
            let mut turn = stored_turn.clone();
            turn.extend(new.iter().cloned());
            let messages =
                window::prompt(&loaded.system, &request.additional_system, &history, &turn);
            let (completion, answered_by) = self
                .complete(provider, &request, messages, at_limit, bot)
                .await?;
            if let Some(u) = completion.message.usage {
                usage += u;
            }
            let mut assistant = completion.message;
            // Providers may ignore tool_choice "none"; calls past the limit are dropped so
            // the stored turn never waits for results.
            let finish = if at_limit && !assistant.tool_calls.is_empty() {
                assistant.tool_calls.clear();
                MAX_TOOL_ROUNDS_REACHED.to_string()
            } else {
                completion.finish_reason
            };
            let metadata = &mut assistant.metadata;
            metadata.insert(META_PROVIDER.into(), answered_by.clone().into());
            metadata.insert(META_FINISH_REASON.into(), finish.clone().into());
            let calls = assistant.tool_calls.clone();
            new.push(assistant);
            if calls.is_empty() {
                break (finish, Vec::new(), answered_by);
            }
            rounds += 1;
            if let Some(assistant) = new.last() {
                metrics::global().count(
                    "csai_chat_tool_rounds_total",
                    vec![
                        ("provider", answered_by.clone()),
                        ("model", self.model_label(&answered_by, assistant)),
                    ],
                    1.0,
                );
            }

            let mut asked: Vec<ToolCall> = Vec::new();
            for call in &calls {
                let key = key_of(call);
                if !cache.contains_key(&key) && !asked.iter().any(|a| key_of(a) == key) {
                    asked.push(call.clone());
                }
            }
            if !asked.is_empty() {
                match bot.run_tools(&asked).await? {
                    None => {
                        // Unary form: store what is known and hand the rest to the bot.
                        new.extend(tool_messages(&calls, &cache));
                        break (finish, asked, answered_by);
                    }
                    Some(results) => {
                        for result in results {
                            if let Some(call) = asked.iter().find(|c| c.id == result.tool_call_id) {
                                cache.insert(key_of(call), (result.content, result.is_error));
                            }
                        }
                    }
                }
            }
            new.extend(tool_messages(&calls, &cache));
        };

        self.store_turn(
            store,
            &request,
            &loaded,
            new,
            usage,
            finish_reason,
            rounds,
            pending,
            answered_by,
        )
        .await
    }

    fn provider(&self, name: Option<&str>) -> Result<&Provider, TurnError> {
        let name = match name {
            Some(name) => name,
            None => self
                .default_provider
                .as_deref()
                .ok_or(TurnError::NoProvider)?,
        };
        self.providers.get(name).ok_or_else(|| {
            TurnError::Invalid(format!(
                "provider: no provider is named {name:?}; configured: {}",
                self.providers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    fn check_length(&self, user: &NewMessage) -> Result<(), TurnError> {
        let max = self.limits.max_user_message_chars;
        let length = user.content.chars().count();
        if max > 0 && length > max {
            return Err(TurnError::Invalid(format!(
                "user_message.content: {length} characters is more than the limit of {max} (chat_max_user_message_length)"
            )));
        }
        Ok(())
    }

    /// With abuse controls on, records the decision about a user's message as a security
    /// log (CS-AI's SaveSecurityLog). A failure to record is logged, not fatal.
    async fn log_security(
        &self,
        store: &dyn SessionStore,
        session: &SessionId,
        user: &NewMessage,
        verdict: &Result<(), TurnError>,
    ) {
        if self.rate_limiter.is_none() && self.limits.max_user_message_chars == 0 {
            return;
        }
        let log = SecurityLog {
            id: String::new(),
            user_id: participant(session, user),
            session_id: session.to_string(),
            message_hash: records::message_hash(&user.content),
            spam_score: 0.0,
            allowed: verdict.is_ok(),
            reason: verdict
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default(),
        };
        let stream = RecordStream::Security {
            user: log.user_id.clone(),
        };
        if let Err(error) = records::put(store, &stream, &log, self.record_retention).await {
            tracing::warn!(session = %crate::observability::telemetry::logged(session.as_str()), %error, "cannot record the security log of a turn");
        }
    }

    fn check_rate(
        &self,
        tenant: Option<&str>,
        session: &SessionId,
        user: &NewMessage,
    ) -> Result<(), TurnError> {
        if let Some(limiter) = &self.rate_limiter {
            let participant = participant(session, user);
            limiter
                .check(tenant, &participant)
                .map_err(|limited| TurnError::RateLimited {
                    participant,
                    limited,
                })?;
        }
        Ok(())
    }

    /// Reads the session with enough history for the window, and for a continued turn
    /// the whole open turn however long it is.
    async fn load(
        &self,
        store: &dyn SessionStore,
        id: &SessionId,
        window: u32,
        continuing: bool,
    ) -> Result<Loaded, TurnError> {
        let read = |w: Window| async move {
            match store.get(id, w).await {
                Ok(session) => Ok(Loaded {
                    version: session.version,
                    system: session.system_messages,
                    messages: session.messages,
                }),
                Err(StoreError::NotFound(_)) => Ok(Loaded {
                    version: 0,
                    system: Vec::new(),
                    messages: Vec::new(),
                }),
                Err(e) => Err(TurnError::Store(e)),
            }
        };
        if window == 0 {
            return read(Window::All).await;
        }
        let loaded = read(Window::LastN(window)).await?;
        let starts_at_one = loaded.messages.first().is_none_or(|m| m.seq == 1);
        let enough = match window::turn_start(&loaded.messages) {
            _ if !continuing || starts_at_one => true,
            Some(start) => start >= window as usize,
            None => false,
        };
        if enough {
            return Ok(loaded);
        }
        read(Window::All).await
    }

    /// One model answer, with the fallback provider after a retryable failure and one
    /// corrective retry when the answer has the wrong format.
    async fn complete(
        &self,
        primary: &Provider,
        request: &TurnRequest,
        mut messages: Vec<NewMessage>,
        at_tool_limit: bool,
        bot: &mut dyn Bot,
    ) -> Result<(Completion, String), TurnError> {
        let mut corrected = false;
        loop {
            let (completion, by) = self
                .complete_with_fallback(primary, request, &messages, at_tool_limit, bot)
                .await?;
            let problem = if completion.message.tool_calls.is_empty() {
                format::mismatch(&request.response_format, &completion.message.content)
            } else {
                None
            };
            let Some(problem) = problem else {
                return Ok((completion, by));
            };
            if corrected {
                return Err(TurnError::Format(problem));
            }
            tracing::info!(session = %crate::observability::telemetry::logged(request.session.as_str()), %problem, "answer has the wrong format; asking once more");
            corrected = true;
            messages.push(completion.message);
            messages.push(NewMessage::text(Role::User, format::correction(&problem)));
        }
    }

    async fn complete_with_fallback(
        &self,
        primary: &Provider,
        request: &TurnRequest,
        messages: &[NewMessage],
        at_tool_limit: bool,
        bot: &mut dyn Bot,
    ) -> Result<(Completion, String), TurnError> {
        let fallback = self
            .fallback_provider
            .as_deref()
            .filter(|name| *name != primary.name())
            .and_then(|name| self.providers.get(name));
        let mut streamed = false;
        let first = self
            .call(
                primary,
                request,
                messages,
                at_tool_limit,
                bot,
                &mut streamed,
                true,
            )
            .await;
        match (first, fallback) {
            (Ok(completion), _) => Ok((completion, primary.name().to_string())),
            (Err(error), Some(fallback)) if error.is_retryable() && !streamed => {
                tracing::warn!(%error, fallback = fallback.name(), "primary provider failed; trying the fallback");
                let completion = self
                    .call(
                        fallback,
                        request,
                        messages,
                        at_tool_limit,
                        bot,
                        &mut streamed,
                        false,
                    )
                    .await?;
                Ok((completion, fallback.name().to_string()))
            }
            (Err(error), _) => Err(error.into()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        provider: &Provider,
        request: &TurnRequest,
        messages: &[NewMessage],
        at_tool_limit: bool,
        bot: &mut dyn Bot,
        streamed: &mut bool,
        is_primary: bool,
    ) -> Result<Completion, ProviderError> {
        let settings = &provider.settings;
        // A requested model names a model of the requested provider, not the fallback's.
        let model = match (&request.overrides.model, is_primary) {
            (Some(model), true) => model.clone(),
            _ => settings.model.clone(),
        };
        let completion = CompletionRequest {
            model,
            messages: messages.to_vec(),
            tools: request.tools.clone(),
            tool_choice: if at_tool_limit {
                ToolChoice::None
            } else {
                request.tool_choice.clone()
            },
            sampling: request.overrides.apply(&settings.defaults),
            response_format: request.response_format.clone(),
        };
        if bot.streams() {
            let mut forward = |delta: Delta| {
                *streamed = true;
                bot.delta(delta);
            };
            provider.complete(&completion, Some(&mut forward)).await
        } else {
            provider.complete(&completion, None).await
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn store_turn(
        &self,
        store: &dyn SessionStore,
        request: &TurnRequest,
        loaded: &Loaded,
        mut new: Vec<NewMessage>,
        usage: Usage,
        finish_reason: String,
        tool_rounds: u32,
        pending: Vec<ToolCall>,
        provider: String,
    ) -> Result<TurnOutcome, TurnError> {
        if let Some(request_id) = &request.request_id {
            for message in &mut new {
                message
                    .metadata
                    .insert(META_REQUEST_ID.into(), request_id.clone().into());
            }
        }
        let append = Append {
            messages: new.clone(),
            request_id: request.request_id.clone(),
            options: WriteOptions {
                expected_version: Some(loaded.version),
                ttl: request.ttl,
            },
        };
        let outcome = match store.append(&request.session, append).await {
            Ok(outcome) => outcome,
            Err(StoreError::VersionMismatch { .. }) => {
                return Err(TurnError::Conflict {
                    session: request.session.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let stored = store
            .get(&request.session, Window::AfterSeq(outcome.first_seq - 1))
            .await?
            .messages;
        let stored: Vec<Message> = stored
            .into_iter()
            .take_while(|m| m.seq < outcome.first_seq + outcome.count)
            .collect();
        if outcome.deduplicated {
            // A concurrent call with this request_id stored the step: the turn is what
            // was loaded before it, then the step.
            let turn: Vec<Message> = loaded
                .messages
                .iter()
                .filter(|m| m.seq < outcome.first_seq)
                .cloned()
                .chain(stored.iter().cloned())
                .collect();
            return replay(
                &turn,
                request.request_id.as_deref().unwrap_or_default(),
                outcome.version,
            )
            .ok_or_else(|| {
                StoreError::Internal("a deduplicated turn cannot be read back".into()).into()
            });
        }
        if let Some(transcripts) = &self.transcripts
            && let Err(error) = transcripts
                .record(request.tenant.as_deref(), &request.session, &stored)
                .await
        {
            tracing::warn!(session = %crate::observability::telemetry::logged(request.session.as_str()), %error, "cannot write the transcript log");
        }
        let assistant = stored
            .iter()
            .rev()
            .find(|m| m.body.role == Role::Assistant)
            .cloned()
            .ok_or_else(|| {
                StoreError::Internal("the stored turn has no assistant message".into())
            })?;
        Ok(TurnOutcome {
            assistant,
            pending,
            usage,
            finish_reason,
            tool_rounds,
            version: outcome.version,
            provider,
            first_seq: outcome.first_seq,
            last_seq: outcome.first_seq + outcome.count - 1,
        })
    }
}

/// Who a turn's user is for abuse controls: the participant name, else the session.
fn participant(session: &SessionId, user: &NewMessage) -> String {
    user.name.clone().unwrap_or_else(|| session.to_string())
}

/// Answers of the tool calls in `turn`, by function and arguments.
fn answered_calls(turn: &[NewMessage]) -> HashMap<CallKey, (String, bool)> {
    let mut keys: HashMap<&str, CallKey> = HashMap::new();
    let mut answers = HashMap::new();
    for message in turn {
        for call in &message.tool_calls {
            keys.insert(&call.id, key_of(call));
        }
        if let Some(key) = message.tool_call_id.as_deref().and_then(|id| keys.get(id)) {
            let is_error = message.metadata.get(META_IS_ERROR) == Some(&true.into());
            answers.insert(key.clone(), (message.content.clone(), is_error));
        }
    }
    answers
}

/// Tool messages for `calls`, in their order, from the answers known so far.
fn tool_messages(
    calls: &[ToolCall],
    answers: &HashMap<CallKey, (String, bool)>,
) -> Vec<NewMessage> {
    calls
        .iter()
        .filter_map(|call| {
            let (content, is_error) = answers.get(&key_of(call))?;
            let mut message = NewMessage::text(Role::Tool, content.clone());
            message.tool_call_id = Some(call.id.clone());
            if *is_error {
                message.metadata.insert(META_IS_ERROR.into(), true.into());
            }
            Some(message)
        })
        .collect()
}

/// The tool messages that answer the open turn's pending calls with `results`.
fn continue_with(
    session: &SessionId,
    turn: &[NewMessage],
    results: Vec<ToolResult>,
    cache: &mut HashMap<CallKey, (String, bool)>,
) -> Result<Vec<NewMessage>, TurnError> {
    let Some(last_call) = turn.iter().rposition(|m| !m.tool_calls.is_empty()) else {
        return Err(no_pending(session));
    };
    let answered: Vec<&str> = turn[last_call + 1..]
        .iter()
        .filter_map(|m| m.tool_call_id.as_deref())
        .collect();
    let pending: Vec<&ToolCall> = turn[last_call]
        .tool_calls
        .iter()
        .filter(|c| !answered.contains(&c.id.as_str()))
        .collect();
    if pending.is_empty() {
        return Err(no_pending(session));
    }
    for (i, result) in results.iter().enumerate() {
        let Some(call) = pending.iter().find(|c| c.id == result.tool_call_id) else {
            return Err(TurnError::Invalid(format!(
                "tool_results[{i}].tool_call_id: {:?} is not a pending tool call of session {session}; pending: {}",
                result.tool_call_id,
                pending
                    .iter()
                    .map(|c| c.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        cache.insert(key_of(call), (result.content.clone(), result.is_error));
    }
    let missing: Vec<&str> = pending
        .iter()
        .filter(|c| !cache.contains_key(&key_of(c)))
        .map(|c| c.id.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(TurnError::Invalid(format!(
            "tool_results: the pending tool calls {} have no result; answer every pending call in one request",
            missing.join(", ")
        )));
    }
    let pending: Vec<ToolCall> = pending.into_iter().cloned().collect();
    Ok(tool_messages(&pending, cache))
}

/// Tool rounds of the turn up to the end of the step with this request_id, as the step
/// first reported them: the whole turn's, not only the step's.
fn turn_rounds(messages: &[Message], request_id: &str) -> u32 {
    let Some(last) = messages.iter().rposition(|m| {
        m.body
            .metadata
            .get(META_REQUEST_ID)
            .and_then(|v| v.as_str())
            == Some(request_id)
    }) else {
        return 0;
    };
    let start = window::turn_start(&messages[..=last]).unwrap_or(0);
    messages[start..=last]
        .iter()
        .filter(|m| !m.body.tool_calls.is_empty())
        .count() as u32
}

fn no_pending(session: &SessionId) -> TurnError {
    TurnError::Precondition(format!(
        "session {session} has no pending tool calls; start a new turn with user_message"
    ))
}

/// The outcome of an earlier step with this request_id, from the stored messages of its
/// turn (the step's own and the turn's earlier steps, for `tool_rounds`).
fn replay(messages: &[Message], request_id: &str, version: u64) -> Option<TurnOutcome> {
    let tagged = |m: &&Message| {
        m.body
            .metadata
            .get(META_REQUEST_ID)
            .and_then(|v| v.as_str())
            == Some(request_id)
    };
    let step: Vec<&Message> = messages.iter().filter(tagged).collect();
    let assistant = step.iter().rev().find(|m| m.body.role == Role::Assistant)?;
    let answered: Vec<&str> = step
        .iter()
        .filter_map(|m| m.body.tool_call_id.as_deref())
        .collect();
    let mut pending: Vec<ToolCall> = Vec::new();
    for call in &assistant.body.tool_calls {
        if !answered.contains(&call.id.as_str())
            && !pending.iter().any(|p| key_of(p) == key_of(call))
        {
            pending.push(call.clone());
        }
    }
    let mut usage = Usage::default();
    for message in &step {
        if let Some(u) = message.body.usage {
            usage += u;
        }
    }
    let text = |key: &str| {
        assistant
            .body
            .metadata
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    Some(TurnOutcome {
        assistant: (*assistant).clone(),
        pending,
        usage,
        finish_reason: text(META_FINISH_REASON),
        tool_rounds: turn_rounds(messages, request_id),
        version,
        provider: text(META_PROVIDER),
        first_seq: step.first().map_or(0, |m| m.seq),
        last_seq: step.last().map_or(0, |m| m.seq),
    })
}
