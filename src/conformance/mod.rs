//! The conformance suite: one async function per storage semantic, run against every backend.
//!
//! Each function takes a fresh or shared store and uses session ids of its own, so the
//! functions may run in parallel against one server. A backend's test file runs them all
//! with [`conformance_tests!`](crate::conformance_tests). It lives outside `store` because it
//! also proves the record paging of `records` built on top of the stores.

mod expiry;
mod listing;
mod records;
mod sessions;

pub use expiry::*;
pub use listing::*;
pub use records::*;
pub use sessions::*;

use crate::domain::{
    Append, FunctionCall, JsonObject, ListQuery, NewMessage, Role, SessionId, StateUpdate,
    ToolCall, Usage, UsageTotal, Window, WriteOptions,
};
use crate::store::{SessionStore, StoreError};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The store under test, shared by concurrent tasks.
pub type TestStore = Arc<dyn SessionStore>;

const TTL: Duration = Duration::from_secs(3600);
/// Timestamps may be truncated to milliseconds by a backend.
const TRUNCATION: Duration = Duration::from_millis(1);

/// Runs every conformance function as its own `#[tokio::test]`.
///
/// `$make_store` is an expression evaluated once per test that yields a future of a
/// [`TestStore`].
#[macro_export]
macro_rules! conformance_tests {
    ($make_store:expr) => {
        $crate::conformance_tests!(@each $make_store;
            get_absent_session_is_not_found,
            append_assigns_gap_free_seqs,
            concurrent_appends_lose_nothing,
            expected_version_guards_every_write,
            request_id_makes_append_idempotent,
            ttl_expires_sessions_and_touch_extends,
            millisecond_ttls_expire_on_time,
            windows_select_messages,
            last_n_window_is_tool_safe,
            window_growth_is_bounded,
            replace_renumbers_messages,
            copies_keep_their_message_times,
            system_messages_are_kept_apart,
            state_replace_and_merge,
            delete_removes_session,
            list_pages_without_duplicates_or_gaps,
            listing_under_churn_returns_each_stable_session_once,
            stats_count_what_is_stored,
            stats_count_records,
            every_message_field_round_trips,
            usage_totals_follow_writes,
            unicode_and_large_contents_round_trip,
            records_round_trip_in_time_order,
            record_ranges_and_pages_are_exact,
            expired_records_are_never_returned
        );
    };
    (@each $make_store:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let store = $make_store.await;
                $crate::conformance::$name(store).await;
            }
        )*
    };
}

/// A session id no other test (or earlier run against the same server) uses.
pub fn unique_id(name: &str) -> SessionId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    SessionId::new(format!("conf-{name}-{nanos:x}-{n}"))
}

fn user(content: &str) -> NewMessage {
    NewMessage::text(Role::User, content)
}

fn append_of(messages: Vec<NewMessage>) -> Append {
    Append {
        messages,
        request_id: None,
        options: WriteOptions::ttl(TTL),
    }
}

fn contents(messages: &[crate::domain::Message]) -> Vec<String> {
    messages.iter().map(|m| m.body.content.clone()).collect()
}

fn seqs(messages: &[crate::domain::Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

pub(crate) fn assistant_calling(ids: &[&str]) -> NewMessage {
    let mut message = NewMessage::text(Role::Assistant, "");
    message.tool_calls = ids
        .iter()
        .enumerate()
        .map(|(index, id)| ToolCall {
            id: id.to_string(),
            kind: "function".into(),
            function: FunctionCall {
                name: "lookup_order".into(),
                arguments: format!(r#"{{"order":"{id}"}}"#),
            },
            index: index as u32,
        })
        .collect();
    message
}

pub(crate) fn tool_result(call_id: &str) -> NewMessage {
    let mut message = NewMessage::text(Role::Tool, format!("result of {call_id}"));
    message.tool_call_id = Some(call_id.into());
    message
}

fn object(value: serde_json::Value) -> JsonObject {
    match value {
        serde_json::Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// Checks that a time the store assigned lies between two readings of the test's clock.
fn assert_between(actual: SystemTime, earliest: SystemTime, latest: SystemTime, what: &str) {
    assert!(
        actual + TRUNCATION >= earliest && actual <= latest,
        "{what}: {actual:?} is not between {earliest:?} and {latest:?}"
    );
}

async fn must_be_absent(store: &TestStore, id: &SessionId) {
    match store.get(id, Window::All).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("expected NotFound for {id}, got {other:?}"),
    }
}
