//! Runs the shared conformance suite against the PostgreSQL backend on the test server
//! (scripts/postgres-server.sh), and what is particular to it: the schema steps under a
//! prefix, a newer schema refused, the sweeper.

use crate::common::required_env;
use csai_sidecar::conformance::{TestStore, unique_id};
use csai_sidecar::domain::{Append, NewMessage, Role, SessionId, WriteOptions};
use csai_sidecar::store::SessionStore;
use csai_sidecar::store::postgres::{PostgresOptions, PostgresStore};
use std::sync::Arc;
use std::time::Duration;

fn options(table_prefix: &str) -> PostgresOptions {
    PostgresOptions {
        url: required_env("CSAI_TEST_POSTGRES_URL"),
        ca_file: None,
        pool_size: 8,
        table_prefix: table_prefix.to_string(),
        sweep_interval: Duration::from_secs(1),
        timeout: Duration::from_secs(30),
    }
}

async fn postgres_store() -> TestStore {
    Arc::new(
        PostgresStore::open_and_migrate(options("conformance_"))
            .await
            .expect("open"),
    )
}

csai_sidecar::conformance_tests!(postgres_store());

/// A table prefix no other test (or earlier run) uses.
fn fresh_prefix() -> String {
    let id = unique_id("t");
    let digits: String = id
        .as_str()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("t{}_", &digits[digits.len().saturating_sub(24)..])
}

#[tokio::test]
async fn a_database_from_a_newer_sidecar_is_refused() {
    let prefix = fresh_prefix();
    drop(
        PostgresStore::open_and_migrate(options(&prefix))
            .await
            .expect("create"),
    );
    let (client, connection) = tokio_postgres::connect(
        &required_env("CSAI_TEST_POSTGRES_URL"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    client
        .execute(&format!("UPDATE {prefix}schema SET steps = steps + 1"), &[])
        .await
        .unwrap();
    let error = PostgresStore::open_and_migrate(options(&prefix))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("newer than this sidecar's"), "{error}");
}

#[tokio::test]
async fn the_sweeper_deletes_expired_sessions_and_their_messages() {
    let prefix = fresh_prefix();
    let store = PostgresStore::open_and_migrate(options(&prefix))
        .await
        .expect("open");
    for i in 0..500 {
        let ttl = if i % 2 == 0 {
            Duration::from_millis(1)
        } else {
            Duration::from_secs(3600)
        };
        store
            .append(
                &SessionId::new(format!("s{i}")),
                Append {
                    messages: vec![NewMessage::text(Role::User, "x")],
                    request_id: None,
                    options: WriteOptions::ttl(ttl),
                },
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    // More than one batch; two sweepers at once delete each session once.
    let (a, b) = tokio::join!(store.sweep(), store.sweep());
    assert_eq!(a.unwrap() + b.unwrap(), 250);
    assert_eq!(store.stats().await.unwrap().active_sessions, 250);
    let (client, connection) = tokio_postgres::connect(
        &required_env("CSAI_TEST_POSTGRES_URL"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let count = |table: &'static str| {
        let client = &client;
        let prefix = &prefix;
        async move {
            client
                .query_one(&format!("SELECT COUNT(*) FROM {prefix}{table}"), &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(count("sessions").await, 250);
    assert_eq!(count("messages").await, 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_writers_on_two_replicas_lose_nothing() {
    // Two stores with their own pools: two sidecar replicas on one database.
    let replicas = [postgres_store().await, postgres_store().await];
    csai_sidecar::conformance::appends_from_many_writers(&replicas, 64, 50).await;
}
