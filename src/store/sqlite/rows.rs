//! The SQLite store's rows: loading and saving the session row, reading message rows.

use super::connections::sql_error;
use crate::domain::{Message, Role};
use crate::store::StoreResult;
use crate::store::sql_rows::{SessionRow, corrupt, message_of, role_of, usage_of};
use rusqlite::{OptionalExtension, Transaction, params};

/// The row of `id`, expired or not.
pub fn load(tx: &Transaction<'_>, id: &str) -> StoreResult<Option<SessionRow>> {
    let found = tx
        .prepare_cached(
            "SELECT version, message_count, create_us, update_us, expire_us, \
             system_messages, state, recent_appends, usage_total FROM sessions WHERE id = ?1",
        )
        .and_then(|mut statement| {
            statement
                .query_row([id], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, i64>(4)?,
                        row.get::<_, String>(5)?,
                        row.get::<_, String>(6)?,
                        row.get::<_, String>(7)?,
                        row.get::<_, String>(8)?,
                    ))
                })
                .optional()
        })
        .map_err(sql_error)?;
    let Some((version, count, create, update, expire, system, state, recent, usage)) = found else {
        return Ok(None);
    };
    Ok(Some(SessionRow {
        version: version as u64,
        message_count: count as u64,
        create_us: create,
        update_us: update,
        expire_us: expire,
        system_messages: system,
        state: serde_json::from_str(&state).map_err(|e| corrupt("a state", e))?,
        recent_appends: serde_json::from_str(&recent)
            .map_err(|e| corrupt("the recent appends", e))?,
        usage_total: usage_of(&usage)?,
    }))
}

/// Writes the row (created or replaced whole).
pub fn save(row: &SessionRow, tx: &Transaction<'_>, id: &str) -> StoreResult<()> {
    let state = serde_json::to_string(&row.state).map_err(|e| corrupt("a state", e))?;
    let recent =
        serde_json::to_string(&row.recent_appends).map_err(|e| corrupt("the recent appends", e))?;
    let usage = row.usage_json()?;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO sessions (id, version, message_count, create_us, update_us, \
         expire_us, system_messages, state, recent_appends, usage_total) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .and_then(|mut statement| {
        statement.execute(params![
            id,
            row.version as i64,
            row.message_count as i64,
            row.create_us,
            row.update_us,
            row.expire_us,
            row.system_messages,
            state,
            recent,
            usage,
        ])
    })
    .map_err(sql_error)?;
    Ok(())
}

/// The roles of the session's messages from `first_seq` on, in order.
pub fn roles(tx: &Transaction<'_>, id: &str, first_seq: u64) -> StoreResult<Vec<Role>> {
    tx.prepare_cached("SELECT role FROM messages WHERE session_id = ?1 AND seq >= ?2 ORDER BY seq")
        .and_then(|mut statement| {
            statement
                .query_map(params![id, first_seq as i64], |row| {
                    Ok(role_of(&row.get::<_, String>(0)?))
                })?
                .collect()
        })
        .map_err(sql_error)
}

/// The session's messages from `first_seq` on, in order.
pub fn messages(tx: &Transaction<'_>, id: &str, first_seq: u64) -> StoreResult<Vec<Message>> {
    let rows: Vec<(i64, i64, String)> = tx
        .prepare_cached(
            "SELECT seq, create_us, body FROM messages WHERE session_id = ?1 AND seq >= ?2 \
             ORDER BY seq",
        )
        .and_then(|mut statement| {
            statement
                .query_map(params![id, first_seq as i64], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?
                .collect()
        })
        .map_err(sql_error)?;
    rows.iter()
        .map(|(seq, created, body)| message_of(*seq, *created, body))
        .collect()
}
