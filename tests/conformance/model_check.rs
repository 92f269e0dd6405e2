//! Property test: random sequences of appends, replaces, guarded writes, reads and
//! deletes run against a plain model of the storage semantics and against a real store
//! (in-memory, redis-server, SQLite, PostgreSQL), and every answer must match the model.

use crate::common;

use csai_sidecar::domain::{Append, NewMessage, Role, SessionId, Window, WriteOptions};
use csai_sidecar::store::memory::{MemoryLimits, MemoryStore};
use csai_sidecar::store::redis::RedisStore;
use csai_sidecar::store::{SessionStore, StoreError};
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const SESSIONS: usize = 3;
const TTL: Duration = Duration::from_secs(600);

/// What a write expects of the session's version.
#[derive(Clone, Copy, Debug)]
enum Guard {
    None,
    /// The version the model knows: must succeed.
    Current,
    /// A version the session does not have: must fail, changing nothing.
    Stale,
    /// 0, "must not exist".
    Absent,
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        session: usize,
        count: usize,
        guard: Guard,
    },
    Replace {
        session: usize,
        count: usize,
        guard: Guard,
    },
    Get {
        session: usize,
        last_n: Option<u32>,
    },
    Delete {
        session: usize,
    },
}

fn guard() -> impl Strategy<Value = Guard> {
    prop_oneof![
        3 => Just(Guard::None),
        2 => Just(Guard::Current),
        1 => Just(Guard::Stale),
        1 => Just(Guard::Absent),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let session = 0..SESSIONS;
    prop_oneof![
        4 => (session.clone(), 1..4usize, guard())
            .prop_map(|(session, count, guard)| Op::Append { session, count, guard }),
        1 => (session.clone(), 0..4usize, guard())
            .prop_map(|(session, count, guard)| Op::Replace { session, count, guard }),
        3 => (session.clone(), proptest::option::of(0..6u32))
            .prop_map(|(session, last_n)| Op::Get { session, last_n }),
        1 => session.prop_map(|session| Op::Delete { session }),
    ]
}

/// The model: per session, the contents in seq order (seq = position + 1) and the last
/// version the store reported (versions must grow; their steps are the store's).
#[derive(Default)]
struct Model {
    sessions: HashMap<usize, (Vec<String>, u64)>,
}

impl Model {
    /// The expected_version to send, and whether the model says the write may proceed.
    fn expected(&self, session: usize, guard: Guard) -> (Option<u64>, bool) {
        let current = self.sessions.get(&session).map(|(_, version)| *version);
        match guard {
            Guard::None => (None, true),
            Guard::Current => (Some(current.unwrap_or(0)), true),
            Guard::Stale => (Some(current.unwrap_or(0) + 1000), false),
            Guard::Absent => (Some(0), current.is_none()),
        }
    }
}

static CASE: AtomicU64 = AtomicU64::new(0);

async fn check(store: &dyn SessionStore, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let case = CASE.fetch_add(1, Ordering::Relaxed);
    let run = std::process::id();
    let id = |session: usize| SessionId::new(format!("model-{run}-{case}-{session}"));
    let mut model = Model::default();
    let mut written = 0u64;
    for (step, op) in ops.into_iter().enumerate() {
        let context = format!("step {step}: {op:?}");
        match op {
            Op::Append {
                session,
                count,
                guard,
            }
            | Op::Replace {
                session,
                count,
                guard,
            } => {
                let replace = matches!(op, Op::Replace { .. });
                let contents: Vec<String> = (0..count)
                    .map(|_| {
                        written += 1;
                        format!("m{written}")
                    })
                    .collect();
                let messages = contents
                    .iter()
                    .map(|c| NewMessage::text(Role::User, c.clone()))
                    .collect();
                let (expected_version, allowed) = model.expected(session, guard);
                let options = WriteOptions {
                    expected_version,
                    ttl: TTL,
                };
                let version = if replace {
                    store
                        .replace(&id(session), messages, options)
                        .await
                        .map(|outcome| outcome.version)
                } else {
                    store
                        .append(
                            &id(session),
                            Append {
                                messages,
                                request_id: None,
                                options,
                            },
                        )
                        .await
                        .map(|outcome| {
                            let known = model.sessions.get(&session).map_or(0, |s| s.0.len());
                            assert_eq!(outcome.first_seq, known as u64 + 1, "{context}");
                            outcome.version
                        })
                };
                match (version, allowed) {
                    (Ok(version), true) => {
                        let entry = model.sessions.entry(session).or_default();
                        prop_assert!(
                            version > entry.1,
                            "{context}: version {version} after {}",
                            entry.1
                        );
                        if replace {
                            entry.0 = contents;
                        } else {
                            entry.0.extend(contents);
                        }
                        entry.1 = version;
                    }
                    (Err(StoreError::VersionMismatch { .. }), false) => {}
                    (other, allowed) => {
                        return Err(TestCaseError::fail(format!(
                            "{context}: store said {other:?}, model allowed = {allowed}"
                        )));
                    }
                }
            }
            Op::Get { session, last_n } => {
                let window = last_n.map_or(Window::All, Window::LastN);
                let got = store.get(&id(session), window).await;
                match (model.sessions.get(&session), got) {
                    (None, Err(StoreError::NotFound(_))) => {}
                    (Some((contents, version)), Ok(got)) => {
                        let skip = last_n.map_or(0, |n| contents.len().saturating_sub(n as usize));
                        let expected: Vec<(u64, &str)> = contents
                            .iter()
                            .enumerate()
                            .skip(skip)
                            .map(|(i, c)| (i as u64 + 1, c.as_str()))
                            .collect();
                        let actual: Vec<(u64, &str)> = got
                            .messages
                            .iter()
                            .map(|m| (m.seq, m.body.content.as_str()))
                            .collect();
                        prop_assert_eq!(actual, expected, "{}", context);
                        prop_assert_eq!(got.version, *version, "{}", context);
                        prop_assert_eq!(got.message_count, contents.len() as u64, "{}", context);
                    }
                    (expected, got) => {
                        return Err(TestCaseError::fail(format!(
                            "{context}: model {expected:?}, store {got:?}"
                        )));
                    }
                }
            }
            Op::Delete { session } => {
                let deleted = store.delete(&id(session), None).await;
                let existed = model.sessions.remove(&session).is_some();
                prop_assert_eq!(deleted.ok(), Some(existed), "{}", context);
            }
        }
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Found by this test: `last_n = 0` indexed past the end of the in-memory store's
/// messages (a panic); it is the empty window, as on Redis.
#[test]
fn a_last_0_window_is_empty() {
    let store = MemoryStore::new(MemoryLimits::default());
    runtime()
        .block_on(check(
            &store,
            vec![
                Op::Append {
                    session: 0,
                    count: 1,
                    guard: Guard::None,
                },
                Op::Get {
                    session: 0,
                    last_n: Some(0),
                },
            ],
        ))
        .expect("matches the model");
}

proptest! {
    // Failing cases are saved beside this file and tried first on the next run.
    #![proptest_config(ProptestConfig {
        cases: 200,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "tests/model_check.proptest-regressions",
            ),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_memory_store_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let store = MemoryStore::new(MemoryLimits::default());
        runtime().block_on(check(&store, ops))?;
    }

    #[test]
    fn redis_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let runtime = runtime();
        let store = runtime.block_on(async {
            RedisStore::new(&common::redis_options(
                common::required_env("CSAI_TEST_REDIS_URL"),
                "csai-model:",
            ))
            .expect("redis store")
        });
        runtime.block_on(check(&store, ops))?;
    }

    #[test]
    fn sqlite_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let runtime = runtime();
        let store = runtime.block_on(common::sqlite_store());
        runtime.block_on(check(store.as_ref(), ops))?;
    }

    #[test]
    fn postgres_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let runtime = runtime();
        let store = runtime.block_on(common::postgres_store("model_"));
        runtime.block_on(check(store.as_ref(), ops))?;
    }
}
