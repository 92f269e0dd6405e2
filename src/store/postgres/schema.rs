//! The PostgreSQL schema, created and migrated at start by numbered steps under an
//! advisory lock (replicas starting together migrate once); a database whose schema a
//! newer sidecar wrote is refused.

use tokio_postgres::Client;

/// The table names under the configured prefix.
#[derive(Clone, Debug)]
pub struct Tables {
    pub sessions: String,
    pub messages: String,
    pub records: String,
    schema: String,
}

impl Tables {
    pub fn new(prefix: &str) -> Self {
        Self {
            sessions: format!("{prefix}sessions"),
            messages: format!("{prefix}messages"),
            records: format!("{prefix}records"),
            schema: format!("{prefix}schema"),
        }
    }

    /// Each step's SQL, in order; the database records how many it has run. Never edit a
    /// step once released: add one. Ids sort bytewise (COLLATE "C"), as listing expects.
    fn steps(&self) -> Vec<String> {
        let Tables {
            sessions,
            messages,
            records,
            ..
        } = self;
        vec![
            format!(
                "CREATE TABLE {sessions} (
                id TEXT COLLATE \"C\" PRIMARY KEY,
                version BIGINT NOT NULL,
                message_count BIGINT NOT NULL,
                create_us BIGINT NOT NULL,
                update_us BIGINT NOT NULL,
                expire_us BIGINT NOT NULL,
                system_messages TEXT NOT NULL,
                state JSONB NOT NULL,
                recent_appends JSONB NOT NULL
            );
            CREATE INDEX {sessions}_by_expiry ON {sessions} (expire_us);
            CREATE TABLE {messages} (
                session_id TEXT COLLATE \"C\" NOT NULL,
                seq BIGINT NOT NULL,
                role TEXT NOT NULL,
                create_us BIGINT NOT NULL,
                body TEXT NOT NULL,
                PRIMARY KEY (session_id, seq)
            );
            CREATE TABLE {records} (
                stream TEXT COLLATE \"C\" NOT NULL,
                id TEXT COLLATE \"C\" NOT NULL,
                expire_us BIGINT NOT NULL,
                body TEXT NOT NULL,
                PRIMARY KEY (stream, id)
            );
            CREATE INDEX {records}_by_expiry ON {records} (expire_us);"
            ),
            // The provider usage of each session's messages, added up. Sessions stored
            // before count what is appended from here on.
            format!("ALTER TABLE {sessions} ADD COLUMN usage_total JSONB NOT NULL DEFAULT '{{}}'"),
        ]
    }
}

/// Brings the database to the current schema in one transaction.
pub async fn migrate(client: &mut Client, tables: &Tables) -> Result<(), String> {
    let sql = |e: tokio_postgres::Error| e.to_string();
    let transaction = client.transaction().await.map_err(sql)?;
    // One migrating replica at a time; the lock ends with the transaction.
    transaction
        .execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&tables.schema],
        )
        .await
        .map_err(sql)?;
    transaction
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (steps INTEGER NOT NULL)",
            tables.schema
        ))
        .await
        .map_err(sql)?;
    let done: Option<i32> = transaction
        .query_opt(&format!("SELECT steps FROM {}", tables.schema), &[])
        .await
        .map_err(sql)?
        .map(|row| row.get(0));
    let steps = tables.steps();
    let done = done.unwrap_or(0) as usize;
    if done > steps.len() {
        return Err(format!(
            "the database has schema step {done} ({}), newer than this sidecar's {}: it was \
             written by a newer csai-sidecar; run that version (or newer)",
            tables.schema,
            steps.len()
        ));
    }
    for step in &steps[done..] {
        transaction.batch_execute(step).await.map_err(sql)?;
    }
    transaction
        .execute(&format!("DELETE FROM {}", tables.schema), &[])
        .await
        .map_err(sql)?;
    transaction
        .execute(
            &format!("INSERT INTO {} (steps) VALUES ($1)", tables.schema),
            &[&(steps.len() as i32)],
        )
        .await
        .map_err(sql)?;
    transaction.commit().await.map_err(sql)
}
