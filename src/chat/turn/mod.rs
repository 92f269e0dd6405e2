//! One chat turn: the tool-calling loop, its one atomic append, and replays of retries.

use crate::chat::compaction::{self, Summary};
use crate::chat::completion::{
    Completion, CompletionRequest, Delta, ResponseFormat, Sampling, ToolChoice, ToolSpec,
};
use crate::chat::format;
use crate::chat::guard::{Limited, RateLimiter, TranscriptLog};
use crate::chat::provider::{Provider, ProviderError};
use crate::chat::token_window::TokenWindows;
use crate::chat::window;
use crate::chat::{ChatSettings, TurnLimits};
use crate::domain::{
    Append, Message, NewMessage, Role, SessionId, ToolCall, Usage, Window, WriteOptions,
};
use crate::observability::metrics;
use crate::records::{self, RecordStream, SecurityLog};
use crate::store::{SessionStore, StoreError};
use crate::tokens::{self, Encoding};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};

use std::time::{Duration, SystemTime};

/// Metadata keys the turn writes on the messages it stores.
mod model_calls;
mod replay;
mod session_io;
mod tool_rounds;

use replay::replay;
use tool_rounds::{answered_calls, continue_with, key_of, tool_messages};

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
    /// Tokens of that history at most; the configured budget when None (0 = none).
    pub history_tokens: Option<u32>,
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
        "no chat provider is configured; set CSAI_CHAT_BASE_URL (or CSAI_CHAT_ECHO=true for the echo model)"
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
    #[error(
        "session {session} is taken over by a human agent (state {HANDOFF_KEY:?} is {holder}); bot turns resume once it is released (UpdateState MERGE {{\"{HANDOFF_KEY}\": null}})"
    )]
    HandedOff {
        session: String,
        holder: serde_json::Value,
    },
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
    /// Token counts and window sizes of budgeted history reads.
    token_windows: TokenWindows,
}

/// A session as the turn reads it; the default is a session not stored yet.
#[derive(Default)]
struct Loaded {
    version: u64,
    system: Vec<Message>,
    messages: Vec<Message>,
    /// The value of the state's [`HANDOFF_KEY`] while a human agent has the session.
    handoff: Option<serde_json::Value>,
    /// What the oldest messages are summarised as, if the session was compacted.
    summary: Option<Summary>,
}

impl Loaded {
    fn of(session: crate::domain::Session) -> Self {
        Loaded {
            version: session.version,
            handoff: handoff_of(&session.state),
            summary: Summary::of_state(&session.state),
            system: session.system_messages,
            messages: session.messages,
        }
    }
}

/// The state key by which a human agent takes a session over: while it is set (to
/// anything but null), bot turns of the session are refused.
pub const HANDOFF_KEY: &str = "csai.handoff";

/// Who holds the session, if a human agent took it over.
fn handoff_of(state: &crate::domain::JsonObject) -> Option<serde_json::Value> {
    state.get(HANDOFF_KEY).filter(|v| !v.is_null()).cloned()
}

/// A tool call's function and arguments: identical calls share one answer in a turn.
type CallKey = (String, String);

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
            token_windows: TokenWindows::default(),
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
        let model = match &request.overrides.model {
            Some(model) => model.as_str(),
            None => provider.settings.model.as_str(),
        };
        let encoding = Encoding::for_model(model, self.limits.token_encoding);
        let requested = request.history_tokens.unwrap_or(self.limits.history_tokens);
        let context = provider.settings.context_tokens;
        let answer_room = request
            .overrides
            .max_tokens
            .unwrap_or(provider.settings.defaults.max_tokens)
            .saturating_add(tokens::REPLY_PRIMING);
        let every = self.limits.compact_after_tokens;
        // Enough history to fill the most the budget can be, and to tell whether `every`
        // tokens more than that no longer fit (compaction's trigger).
        let read_budget = window::history_budget(requested, context, answer_room)
            .map(|budget| (budget.saturating_add(every), encoding));
        let loaded = self
            .load(store, &request, window, continuing, read_budget)
            .await?;
        if let Some(request_id) = &request.request_id
            && let Some(outcome) = replay(&loaded.messages, request_id, loaded.version)
        {
            return Ok(outcome);
        }
        // After the replay check: a turn stored before the takeover still answers its retry.
        if let Some(holder) = loaded.handoff.clone() {
            return Err(TurnError::HandedOff {
                session: request.session.to_string(),
                holder,
            });
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
        // A summary stands for the messages it covers.
        let summarised = loaded.summary.as_ref().map_or(0, |s| s.through_seq);
        let before = &before[before.partition_point(|m| m.seq <= summarised)..];
        let mut history = window::history(before, window);
        let additional_system: Vec<NewMessage> = loaded
            .summary
            .iter()
            .map(Summary::as_message)
            .chain(request.additional_system.iter().cloned())
            .collect();
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

        // The rest of the request, which the model's context must hold beside the history.
        let rest = if context > 0 {
            let messages = loaded.system.iter().map(|m| &m.body);
            let others = request.additional_system.iter();
            let turn = stored_turn.iter().chain(new.iter());
            messages
                .chain(others)
                .chain(turn)
                .map(|m| encoding.message(m))
                .sum::<u32>()
                .saturating_add(window::tools_tokens(&request.tools, encoding))
                .saturating_add(answer_room)
        } else {
            0
        };
        let budget = window::history_budget(requested, context, rest);
        let mut left_out = 0u32;
        if let Some(budget) = budget {
            let summary_tokens = loaded.summary.as_ref().map_or(0, |s| s.tokens(encoding));
            (history, left_out) =
                window::fit_tokens(history, budget.saturating_sub(summary_tokens), encoding);
            // A budgeted read stops once `every` tokens more than the budget would not
            // fit: history it did not read is left out too, and is more than that.
            let unread = before.first().is_some_and(|m| m.seq > summarised + 1);
            if window == 0 && unread {
                left_out = left_out.max(every);
            }
        }

        let mut usage = Usage::default();
        let (finish_reason, pending, answered_by) = loop {
            let at_limit = rounds >= self.limits.max_tool_rounds;
            let mut turn = stored_turn.clone();
            turn.extend(new.iter().cloned());
            let messages = window::prompt(&loaded.system, &additional_system, &history, &turn);
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

        let outcome = self
            .store_turn(
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
            .await?;
        // Enough history no longer fits: summarise it now, after the turn is stored, so a
        // failure costs this turn nothing (the next one tries again).
        if let Some(budget) = budget
            && every > 0
            && left_out >= every
        {
            let id = &request.session;
            if let Err(error) = self
                .compact(store, id, request.provider.as_deref(), budget)
                .await
            {
                tracing::warn!(session = %crate::observability::telemetry::logged(id.as_str()), %error, "cannot compact the session; the next turn tries again");
            }
        }
        Ok(outcome)
    }

    /// Summarises the session's oldest messages (after its current summary) so that the
    /// rest fits `budget` tokens, with the model of `provider`, and stores the summary in
    /// the state if the session did not change meanwhile. None when nothing needed
    /// summarising or another write came first (a concurrent compaction included).
    pub async fn compact(
        &self,
        store: &dyn SessionStore,
        id: &SessionId,
        provider: Option<&str>,
        budget: u32,
    ) -> Result<Option<Summary>, TurnError> {
        let provider = self.provider(provider)?;
        let encoding = Encoding::for_model(&provider.settings.model, self.limits.token_encoding);
        let previous = match store.get(id, Window::HEADER).await {
            Ok(header) => Summary::of_state(&header.state),
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let through = previous.as_ref().map_or(0, |s| s.through_seq);
        let session = store.get(id, Window::AfterSeq(through)).await?;
        let left = budget.saturating_sub(previous.as_ref().map_or(0, |s| s.tokens(encoding)));
        let cut = compaction::cut(&session.messages, left, encoding);
        if cut == 0 {
            return Ok(None);
        }
        let asked = CompletionRequest {
            model: provider.settings.model.clone(),
            messages: compaction::request(previous.as_ref(), &session.messages[..cut]),
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            sampling: provider.settings.defaults.clone(),
            response_format: ResponseFormat::Text,
        };
        let answer = provider.complete(&asked, None).await?;
        let text = answer.message.content.trim().to_string();
        if text.is_empty() {
            return Err(TurnError::Format("the model wrote an empty summary".into()));
        }
        let summary = Summary {
            text,
            through_seq: session.messages[cut - 1].seq,
        };
        let mut merge = crate::domain::JsonObject::new();
        merge.insert(compaction::SUMMARY_KEY.into(), summary.to_state());
        // The session's expiry stays what it was.
        let ttl = session
            .expire_time
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .max(crate::service::validate::MIN_TTL);
        let options = WriteOptions {
            expected_version: Some(session.version),
            ttl,
        };
        match store
            .update_state(id, crate::domain::StateUpdate::Merge(merge), options)
            .await
        {
            Ok(_) => Ok(Some(summary)),
            Err(StoreError::VersionMismatch { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
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
        if let Err(error) = records::put(
            store,
            &stream,
            &log,
            SystemTime::now(),
            self.record_retention,
        )
        .await
        {
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
}

/// Who a turn's user is for abuse controls: the participant name, else the session.
fn participant(session: &SessionId, user: &NewMessage) -> String {
    user.name.clone().unwrap_or_else(|| session.to_string())
}

fn no_pending(session: &SessionId) -> TurnError {
    TurnError::Precondition(format!(
        "session {session} has no pending tool calls; start a new turn with user_message"
    ))
}
