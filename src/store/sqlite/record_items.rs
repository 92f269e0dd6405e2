//! Learning data and security logs in the `records` table: keyed by (stream, id), so a
//! range is read by the primary key, never by scan; expired ones are skipped by reads and
//! deleted by the sweeper.

use super::SqliteStore;
use super::connections::sql_error;
use crate::store::records::{Record, RecordCounts, RecordRange, RecordStream};
use crate::store::sql_rows::{micros_of, now_us, time_of};
use crate::store::{RecordStore, StoreResult};
use async_trait::async_trait;
use rusqlite::params;

#[async_trait]
impl RecordStore for SqliteStore {
    async fn put_record(&self, stream: &RecordStream, record: Record) -> StoreResult<()> {
        let stream = stream.name();
        self.db
            .write(move |tx| {
                // A retried put of the same id changes nothing.
                tx.execute(
                    "INSERT OR IGNORE INTO records (stream, id, expire_us, body) \
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        stream,
                        record.id,
                        micros_of(record.expire_time),
                        record.body
                    ],
                )
                .map_err(sql_error)?;
                Ok(())
            })
            .await
    }

    async fn list_records(
        &self,
        stream: &RecordStream,
        range: &RecordRange,
    ) -> StoreResult<Vec<Record>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let (stream, range) = (stream.name(), range.clone());
        self.db
            .read(move |tx| {
                tx.prepare_cached(
                    "SELECT id, expire_us, body FROM records WHERE stream = ?1 AND id >= ?2 \
                     AND id < ?3 AND expire_us > ?4 ORDER BY id LIMIT ?5",
                )
                .and_then(|mut statement| {
                    statement
                        .query_map(
                            params![
                                stream,
                                range.low_id(),
                                range.high_id(),
                                now_us(),
                                range.limit as i64
                            ],
                            |row| {
                                Ok(Record {
                                    id: row.get(0)?,
                                    expire_time: time_of(row.get(1)?),
                                    body: row.get(2)?,
                                })
                            },
                        )?
                        .collect()
                })
                .map_err(sql_error)
            })
            .await
    }

    /// Exact: live records grouped by stream.
    async fn count_records(&self, tenant: Option<&str>) -> StoreResult<RecordCounts> {
        let tenant = tenant.map(String::from);
        self.db
            .read(move |tx| {
                let groups: Vec<(String, i64)> = tx
                    .prepare_cached(
                        "SELECT stream, COUNT(*) FROM records WHERE expire_us > ?1 GROUP BY stream",
                    )
                    .and_then(|mut statement| {
                        statement
                            .query_map([now_us()], |row| Ok((row.get(0)?, row.get(1)?)))?
                            .collect()
                    })
                    .map_err(sql_error)?;
                let mut counts = RecordCounts::default();
                for (stream, count) in groups {
                    counts.add(&stream, tenant.as_deref(), count as u64);
                }
                Ok(counts)
            })
            .await
    }
}
