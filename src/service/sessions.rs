//! SessionStore's rules between the edge and a store: reads by window or token budget
//! (with the sliding TTL), and the tool-result checks of appends and replacements.

use crate::chat::compaction::Summary;
use crate::chat::token_window::{Budget, TokenWindows};
use crate::domain::{MAX_WINDOW_GROWTH, NewMessage, Session, SessionId, Window};
use crate::service::{Policy, ValidationError, validate};
use crate::store::decorators::tenant::stored_id;
use crate::store::{SessionStore, StoreError};
use crate::tokens::Encoding;
use std::fmt;
use std::time::SystemTime;

/// Which part of a session a read returns.
#[derive(Clone, Debug)]
pub enum Read {
    /// A window of messages (all, the last n, after a seq).
    Messages(Window),
    /// The newest messages whose tokens fit `budget`, counted as `model` counts them.
    Tokens {
        budget: u32,
        model: String,
        count_system_messages: bool,
    },
}

/// What a read returns: the session, and for a token budget the tokens counted and the
/// summary that stands for older messages.
#[derive(Debug)]
pub struct SessionRead {
    pub session: Session,
    /// 0 unless the read was by tokens.
    pub tokens: u32,
    pub summary: Option<(Summary, u32)>,
}

/// Why the service refused or failed a request.
#[derive(Debug)]
pub enum SessionError {
    /// A request value out of bounds (INVALID_ARGUMENT).
    Invalid(ValidationError),
    /// The request is well formed but the session's messages forbid it
    /// (FAILED_PRECONDITION).
    Precondition(String),
    Store(StoreError),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(error) => error.fmt(f),
            Self::Precondition(message) => f.write_str(message),
            Self::Store(error) => error.fmt(f),
        }
    }
}

impl From<ValidationError> for SessionError {
    fn from(error: ValidationError) -> Self {
        Self::Invalid(error)
    }
}

impl From<StoreError> for SessionError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

/// The SessionStore service's rules, for any store a request is scoped to.
pub struct SessionService {
    policy: Policy,
    token_windows: TokenWindows,
}

impl SessionService {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            token_windows: TokenWindows::default(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Reads `id` from `store` (scoped to `tenant`, whose prefix keys the token windows'
    /// hints); with `sliding_ttl_on_read`, extends the session's expiry.
    pub async fn read(
        &self,
        store: &dyn SessionStore,
        tenant: Option<&str>,
        id: &SessionId,
        read: Read,
    ) -> Result<SessionRead, SessionError> {
        let read = match read {
            Read::Messages(Window::LastN(0)) => {
                return Err(ValidationError::new("last_n", "must be at least 1").into());
            }
            Read::Tokens { budget: 0, .. } => {
                return Err(ValidationError::new("max_tokens", "must be at least 1").into());
            }
            Read::Messages(window) => SessionRead {
                session: store.get(id, window).await?,
                tokens: 0,
                summary: None,
            },
            Read::Tokens {
                budget,
                model,
                count_system_messages,
            } => {
                let budget = Budget {
                    encoding: Encoding::for_model(&model, self.policy.token_encoding),
                    tokens: budget,
                    count_system: count_system_messages,
                    open_turn: false,
                };
                let stored = stored_id(tenant, id.as_str());
                let fitted = self.token_windows.read(store, id, &stored, budget).await?;
                SessionRead {
                    session: fitted.session,
                    tokens: fitted.tokens,
                    summary: fitted.summary,
                }
            }
        };
        Ok(SessionRead {
            session: self.slide(store, id, read.session).await?,
            ..read
        })
    }

    /// With `sliding_ttl_on_read`, extends a read session's expiry to the default TTL
    /// (never shortening a longer one).
    async fn slide(
        &self,
        store: &dyn SessionStore,
        id: &SessionId,
        mut session: Session,
    ) -> Result<Session, StoreError> {
        if self.policy.sliding_ttl_on_read {
            let extended = SystemTime::now() + self.policy.default_ttl;
            if extended > session.expire_time {
                session.expire_time = store.touch(id, self.policy.default_ttl).await?.expire_time;
            }
        }
        Ok(session)
    }

    /// Checks an append's messages: at least one, and every tool result answering a call of
    /// an assistant message before it, in the request or among the session's last messages.
    /// The tool-safe window grows back from a result to its call, so a run of results
    /// without one would make every read walk it.
    pub async fn check_append(
        &self,
        store: &dyn SessionStore,
        id: &SessionId,
        messages: &[NewMessage],
    ) -> Result<(), SessionError> {
        if messages.is_empty() {
            return Err(
                ValidationError::new("messages", "at least one message is required").into(),
            );
        }
        if validate::unanswered_tool_results(messages, &[]).is_empty() {
            return Ok(());
        }
        let recent = match store.get(id, Window::LastN(MAX_WINDOW_GROWTH as u32)).await {
            Ok(session) => session.messages,
            Err(StoreError::NotFound(_)) => Vec::new(),
            Err(error) => return Err(error.into()),
        };
        let earlier: Vec<(usize, String)> = recent
            .iter()
            .rev()
            .enumerate()
            .flat_map(|(back, m)| {
                m.body
                    .tool_calls
                    .iter()
                    .map(move |c| (back + 1, c.id.clone()))
            })
            .collect();
        match validate::unanswered_tool_results(messages, &earlier).first() {
            None => Ok(()),
            Some((i, call)) => Err(SessionError::Precondition(format!(
                "messages[{i}].tool_call_id: {call:?} answers no tool call of the session's last \
                 {MAX_WINDOW_GROWTH} messages or of this request; append the assistant message \
                 with the call first"
            ))),
        }
    }

    /// Checks a replacement's messages: every tool result answers a call before it among
    /// them (nothing of the session is kept to answer it).
    pub fn check_replace(&self, messages: &[NewMessage]) -> Result<(), ValidationError> {
        match validate::unanswered_tool_results(messages, &[]).first() {
            None => Ok(()),
            Some((i, call)) => Err(ValidationError::new(
                format!("messages[{i}].tool_call_id"),
                format!(
                    "{call:?} answers no tool call of an assistant message before it (at most \
                     {MAX_WINDOW_GROWTH} messages before)"
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::conformance::{assistant_calling, tool_result};
    use crate::domain::{Append, Role, WriteOptions};
    use crate::store::memory::{MemoryLimits, MemoryStore};
    use std::time::Duration;

    fn service(sliding_ttl_on_read: bool) -> SessionService {
        SessionService::new(Policy {
            sliding_ttl_on_read,
            ..Policy::from_config(&Config::default())
        })
    }

    async fn stored(store: &MemoryStore, id: &SessionId, messages: Vec<NewMessage>, ttl: u64) {
        let append = Append {
            messages,
            request_id: None,
            options: WriteOptions::ttl(Duration::from_secs(ttl)),
        };
        store.append(id, append).await.expect("append");
    }

    #[tokio::test]
    async fn empty_windows_and_budgets_are_refused_before_any_read() {
        let store = MemoryStore::new(MemoryLimits::default());
        let id = SessionId::new("absent");
        let service = service(false);
        let refused = |read| async { service.read(&store, None, &id, read).await.unwrap_err() };
        let error = refused(Read::Messages(Window::LastN(0))).await;
        assert_eq!(error.to_string(), "last_n: must be at least 1");
        let tokens = Read::Tokens {
            budget: 0,
            model: String::new(),
            count_system_messages: false,
        };
        assert_eq!(
            refused(tokens).await.to_string(),
            "max_tokens: must be at least 1"
        );
        let absent = refused(Read::Messages(Window::All)).await;
        assert!(matches!(
            absent,
            SessionError::Store(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_read_slides_the_expiry_only_when_the_policy_says_and_never_shortens_it() {
        let store = MemoryStore::new(MemoryLimits::default());
        let default_ttl = Policy::from_config(&Config::default()).default_ttl;
        let short = SessionId::new("short");
        let long = SessionId::new("long");
        stored(&store, &short, vec![NewMessage::text(Role::User, "hi")], 60).await;
        let long_ttl = default_ttl.as_secs() * 2;
        stored(
            &store,
            &long,
            vec![NewMessage::text(Role::User, "hi")],
            long_ttl,
        )
        .await;
        let expiry = |id: &SessionId| {
            let store = &store;
            let id = id.clone();
            async move { store.get(&id, Window::All).await.unwrap().expire_time }
        };
        let before = expiry(&short).await;
        let fixed = service(false);
        let read = fixed.read(&store, None, &short, Read::Messages(Window::All));
        assert_eq!(read.await.unwrap().session.expire_time, before);
        assert_eq!(
            expiry(&short).await,
            before,
            "no sliding: the store is untouched"
        );

        let sliding = service(true);
        let read = sliding.read(&store, None, &short, Read::Messages(Window::LastN(1)));
        let slid = read.await.unwrap().session.expire_time;
        let moved = slid.duration_since(before).unwrap();
        assert!(moved >= default_ttl - Duration::from_secs(61), "{moved:?}");
        assert_eq!(expiry(&short).await, slid, "the new expiry is stored");

        let long_before = expiry(&long).await;
        let read = sliding.read(&store, None, &long, Read::Messages(Window::All));
        assert_eq!(read.await.unwrap().session.expire_time, long_before);
        assert_eq!(expiry(&long).await, long_before, "a longer TTL is kept");
    }

    #[tokio::test]
    async fn tool_results_must_answer_a_call_in_the_request_or_the_session() {
        let store = MemoryStore::new(MemoryLimits::default());
        let id = SessionId::new("tools");
        let service = service(false);
        let error = service.check_append(&store, &id, &[]).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "messages: at least one message is required"
        );

        let error = service
            .check_append(&store, &id, &[tool_result("c1")])
            .await
            .unwrap_err();
        assert!(matches!(error, SessionError::Precondition(_)), "{error}");
        assert!(
            error
                .to_string()
                .starts_with("messages[0].tool_call_id: \"c1\"")
        );

        let in_request = [assistant_calling(&["c1"]), tool_result("c1")];
        service
            .check_append(&store, &id, &in_request)
            .await
            .unwrap();
        stored(&store, &id, vec![assistant_calling(&["c2"])], 60).await;
        service
            .check_append(&store, &id, &[tool_result("c2")])
            .await
            .unwrap();

        service.check_replace(&in_request).unwrap();
        let error = service.check_replace(&[tool_result("c2")]).unwrap_err();
        assert_eq!(error.field, "messages[0].tool_call_id");
    }

    #[tokio::test]
    async fn a_token_read_returns_the_newest_messages_that_fit() {
        let store = MemoryStore::new(MemoryLimits::default());
        let id = SessionId::new("budget");
        let messages = (0..20)
            .map(|n| NewMessage::text(Role::User, format!("message number {n} of twenty")))
            .collect();
        stored(&store, &id, messages, 60).await;
        let read = Read::Tokens {
            budget: 30,
            model: "gpt-4o".into(),
            count_system_messages: false,
        };
        let read = service(false).read(&store, None, &id, read).await.unwrap();
        assert!(read.tokens > 0 && read.tokens <= 30, "{}", read.tokens);
        let kept = &read.session.messages;
        assert!(!kept.is_empty() && kept.len() < 20, "{}", kept.len());
        assert_eq!(kept.last().unwrap().seq, 20, "the newest message is kept");
    }
}
