//! Chat turns: model providers, prompt windows, the tool-calling loop and its guards.

pub mod compaction;
pub mod completion;
pub mod format;
pub mod guard;
pub mod provider;
pub mod sse;
pub mod token_window;
pub mod turn;
pub mod window;
mod wire;

use crate::chat::guard::RateLimits;
use crate::chat::provider::ProviderSettings;
use std::path::PathBuf;
use std::time::Duration;

/// Limits of every turn.
#[derive(Clone, Debug, PartialEq)]
pub struct TurnLimits {
    /// History messages sent to the model when a request does not say (0 = all).
    pub history_window: u32,
    /// Tokens of that history at most when a request does not say (0 = no budget).
    pub history_tokens: u32,
    /// How the budget counts for models whose name does not say.
    pub token_encoding: crate::tokens::Encoding,
    /// Compact when this many tokens of history no longer fit the budget (0 = never).
    pub compact_after_tokens: u32,
    /// Model answers with tool calls per turn; the next call forbids tools.
    pub max_tool_rounds: u32,
    /// How long the streaming form waits for each tool result.
    pub tool_timeout: Duration,
    /// Longest user message in characters (0 = only max_content_bytes applies).
    pub max_user_message_chars: usize,
}

impl Default for TurnLimits {
    fn default() -> Self {
        Self {
            history_window: 50,
            history_tokens: 0,
            token_encoding: crate::tokens::Encoding::O200k,
            compact_after_tokens: 0,
            max_tool_rounds: 10,
            tool_timeout: Duration::from_secs(60),
            max_user_message_chars: 0,
        }
    }
}

/// Everything the Chat service is configured with.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatSettings {
    pub providers: Vec<ProviderSettings>,
    /// The provider of requests that name none.
    pub default_provider: Option<String>,
    /// Tried when a provider fails with a retryable error.
    pub fallback_provider: Option<String>,
    pub limits: TurnLimits,
    /// Per-participant turn limits, when enabled.
    pub rate_limits: Option<RateLimits>,
    /// Folder of per-session transcript files, when enabled.
    pub transcript_dir: Option<PathBuf>,
    /// How long the security logs of turns are kept (`record_retention`).
    pub record_retention: Duration,
}

impl Default for ChatSettings {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            default_provider: None,
            fallback_provider: None,
            limits: TurnLimits::default(),
            rate_limits: None,
            transcript_dir: None,
            record_retention: Duration::from_secs(30 * 86_400),
        }
    }
}
