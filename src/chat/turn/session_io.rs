//! What a turn reads and writes in the store: the session's window at the start, and the
//! whole turn as one atomic append at the end.

use super::*;
use crate::chat::token_window::Budget;
use crate::store::decorators::tenant::stored_id;

/// A read of the session as the turn sees it: a session not stored yet is an empty one.
fn loaded(read: crate::store::StoreResult<crate::domain::Session>) -> Result<Loaded, TurnError> {
    match read {
        Ok(session) => Ok(Loaded::of(session)),
        Err(StoreError::NotFound(_)) => Ok(Loaded::default()),
        Err(e) => Err(TurnError::Store(e)),
    }
}

impl ChatEngine {
    /// Reads the session with enough history for the window (or, without one, for
    /// `budget` tokens), and for a continued turn the whole open turn however long it is.
    pub(super) async fn load(
        &self,
        store: &dyn SessionStore,
        request: &TurnRequest,
        window: u32,
        continuing: bool,
        budget: Option<(u32, Encoding)>,
    ) -> Result<Loaded, TurnError> {
        let id = &request.session;
        let read = |w: Window| async move { loaded(store.get(id, w).await) };
        if window == 0 {
            let Some((tokens, encoding)) = budget else {
                return read(Window::All).await;
            };
            // The history that fits the budget, read like GetSession's: O(window), not
            // O(session).
            let stored = stored_id(request.tenant.as_deref(), id.as_str());
            let budget = Budget {
                encoding,
                tokens,
                count_system: false,
                open_turn: continuing,
            };
            let fitted = self.token_windows.read(store, id, &stored, budget).await;
            return loaded(fitted.map(|fitted| fitted.session));
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

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn store_turn(
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
                // A takeover during the turn bumped the version: it is the clearer reason.
                let session = request.session.to_string();
                return Err(match store.get(&request.session, Window::HEADER).await {
                    Ok(now) => match handoff_of(&now.state) {
                        Some(holder) => TurnError::HandedOff { session, holder },
                        None => TurnError::Conflict { session },
                    },
                    Err(_) => TurnError::Conflict { session },
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
