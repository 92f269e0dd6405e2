//! The SQLite schema, created and migrated at start by numbered steps; a database written
//! by a newer sidecar (a higher step than this one knows) is refused.

use rusqlite::{Connection, OptionalExtension};

/// Each step's SQL, in order; the database records how many it has run. Never edit a
/// step once released: add one.
const STEPS: &[&str] = &[
    // 1: sessions, their messages keyed by (session, seq), records by (stream, id).
    "CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        message_count INTEGER NOT NULL,
        create_us INTEGER NOT NULL,
        update_us INTEGER NOT NULL,
        expire_us INTEGER NOT NULL,
        system_messages TEXT NOT NULL,
        state TEXT NOT NULL,
        recent_appends TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX sessions_by_expiry ON sessions (expire_us);
    CREATE TABLE messages (
        session_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        role TEXT NOT NULL,
        create_us INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (session_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE records (
        stream TEXT NOT NULL,
        id TEXT NOT NULL,
        expire_us INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (stream, id)
    ) WITHOUT ROWID;
    CREATE INDEX records_by_expiry ON records (expire_us);",
    // 2: the provider usage of each session's messages, added up (JSON). Sessions stored
    // before count what is appended from here on.
    "ALTER TABLE sessions ADD COLUMN usage_total TEXT NOT NULL DEFAULT '{}';",
];

/// Brings the database to the current schema in one transaction.
pub fn migrate(connection: &mut Connection) -> Result<(), String> {
    let sql = |e: rusqlite::Error| e.to_string();
    let transaction = connection
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sql)?;
    transaction
        .execute_batch("CREATE TABLE IF NOT EXISTS csai_schema (steps INTEGER NOT NULL)")
        .map_err(sql)?;
    let done: Option<i64> = transaction
        .query_row("SELECT steps FROM csai_schema", [], |row| row.get(0))
        .optional()
        .map_err(sql)?;
    let done = done.unwrap_or(0) as usize;
    if done > STEPS.len() {
        return Err(format!(
            "the database has schema step {done}, newer than this sidecar's {}: it was \
             written by a newer csai-sidecar; run that version (or newer)",
            STEPS.len()
        ));
    }
    for step in &STEPS[done..] {
        transaction.execute_batch(step).map_err(sql)?;
    }
    transaction
        .execute("DELETE FROM csai_schema", [])
        .map_err(sql)?;
    transaction
        .execute(
            "INSERT INTO csai_schema (steps) VALUES (?1)",
            [STEPS.len() as i64],
        )
        .map_err(sql)?;
    transaction.commit().map_err(sql)
}
