//! "The history that fits": the most recent messages whose tokens add up to at most a
//! budget, tool-safe like `last_n`, read with windows of the backend (LastN) so that its
//! cost follows the window, not the session's length.

use crate::chat::compaction::Summary;
use crate::chat::window::turn_start;
use crate::domain::{Role, Session, SessionId, Window};
use crate::store::{SessionStore, StoreResult};
use crate::tokens::{self, Encoding, TokenCache};
use parking_lot::Mutex;
use std::collections::HashMap;

/// Messages read first when nothing is known of the session.
const FIRST_READ: u32 = 32;
/// Sessions whose last window size is remembered, at most.
const HINTS: usize = 100_000;

/// A budgeted window: the messages that fit, the tokens they (and the system messages,
/// when counted) add up to.
#[derive(Debug)]
pub struct Fitted {
    pub session: Session,
    pub tokens: u32,
    /// The summary that stands for the oldest messages, and its tokens, when the session
    /// was compacted: the window holds only messages after it.
    pub summary: Option<(Summary, u32)>,
}

/// What a budgeted read counts.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub encoding: Encoding,
    pub tokens: u32,
    /// Count the system messages too.
    pub count_system: bool,
    /// Keep the session's open turn (its last user message and what follows) whole and
    /// outside the budget: what a continued chat turn counts is the history before it.
    pub open_turn: bool,
}

/// What a budgeted read needs beside the store: the token counts of stored messages and,
/// per session, how many messages the last window held (the next read's first guess).
#[derive(Default)]
pub struct TokenWindows {
    counts: TokenCache,
    hints: Mutex<HashMap<String, u32>>,
}

impl TokenWindows {
    /// The most recent messages of `id` (stored as `stored_id`) that fit `budget`. Never
    /// starts with tool results whose call was cut off.
    pub async fn read(
        &self,
        store: &dyn SessionStore,
        id: &SessionId,
        stored_id: &str,
        budget: Budget,
    ) -> StoreResult<Fitted> {
        let encoding = budget.encoding;
        let hint = self.hints.lock().get(stored_id).copied();
        // A little more than last time, so that a window that grew by a message or two is
        // one read (a turn more costs a second one).
        let mut n = hint.map_or(FIRST_READ, |h| h + h / 8 + 2);
        loop {
            let mut session = store.get(id, Window::LastN(n)).await?;
            let summary = Summary::of_state(&session.state).map(|s| {
                let tokens = s.tokens(encoding);
                (s, tokens)
            });
            let summarised = summary.as_ref().map_or(0, |(s, _)| s.through_seq);
            let covered = session.messages.partition_point(|m| m.seq <= summarised);
            let whole = (session.messages.len() as u32) < n
                || covered > 0
                || session.messages.first().is_none_or(|m| m.seq == 1);
            let end = match (budget.open_turn, turn_start(&session.messages)) {
                (false, _) => session.messages.len(),
                (true, Some(start)) => start.max(covered),
                (true, None) if whole => session.messages.len(),
                // The open turn started before this read.
                (true, None) => {
                    n = n.saturating_mul(4);
                    continue;
                }
            };
            let system: u32 = summary.as_ref().map_or(0, |(_, t)| *t)
                + if budget.count_system {
                    self.counts
                        .messages(encoding, stored_id, &session.system_messages)
                        .iter()
                        .sum()
                } else {
                    0
                };
            let costs = self
                .counts
                .messages(encoding, stored_id, &session.messages[..end]);
            let messages = &session.messages;
            let fit = tokens::fit(&costs, covered, system, budget.tokens, |i| {
                messages[i].body.role == Role::Tool
            });
            if !fit.exhausted && !whole {
                // The budget reaches further back than this read: read more.
                n = n.saturating_mul(4);
                continue;
            }
            let (start, tokens) = (fit.start, fit.tokens);
            session.messages.drain(..start);
            let mut hints = self.hints.lock();
            if hints.len() >= HINTS {
                hints.clear();
            }
            hints.insert(stored_id.to_string(), session.messages.len() as u32);
            return Ok(Fitted {
                session,
                tokens,
                summary,
            });
        }
    }
}
