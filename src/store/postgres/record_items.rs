//! Learning data and security logs in the records table: keyed by (stream, id), so a
//! range is read by the primary key, never by scan; expired ones are skipped by reads and
//! deleted by the sweeper.

use super::{NOW_US, PostgresStore, sql_error};
use crate::store::records::{Record, RecordCounts, RecordRange, RecordStream};
use crate::store::sql_rows::{micros_of, time_of};
use crate::store::{RecordStore, StoreResult};
use async_trait::async_trait;

#[async_trait]
impl RecordStore for PostgresStore {
    async fn put_record(&self, stream: &RecordStream, record: Record) -> StoreResult<()> {
        let stream = stream.name();
        self.bounded(async {
            // A retried put of the same id changes nothing.
            self.client()
                .await?
                .execute(
                    &format!(
                        "INSERT INTO {} (stream, id, expire_us, body) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT DO NOTHING",
                        self.tables.records
                    ),
                    &[
                        &stream,
                        &record.id,
                        &micros_of(record.expire_time),
                        &record.body,
                    ],
                )
                .await
                .map(drop)
                .map_err(sql_error)
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
        let stream = stream.name();
        let rows = self
            .bounded(async {
                self.client()
                    .await?
                    .query(
                        &format!(
                            "SELECT id, expire_us, body FROM {} WHERE stream = $1 AND id >= $2 \
                             AND id < $3 AND expire_us > {NOW_US} ORDER BY id LIMIT $4",
                            self.tables.records
                        ),
                        &[
                            &stream,
                            &range.low_id(),
                            &range.high_id(),
                            &(range.limit as i64),
                        ],
                    )
                    .await
                    .map_err(sql_error)
            })
            .await?;
        Ok(rows
            .iter()
            .map(|row| Record {
                id: row.get(0),
                expire_time: time_of(row.get(1)),
                body: row.get(2),
            })
            .collect())
    }

    /// Exact: live records grouped by stream (a scan of the live records).
    async fn count_records(&self, tenant: Option<&str>) -> StoreResult<RecordCounts> {
        let rows = self
            .bounded(async {
                self.client()
                    .await?
                    .query(
                        &format!(
                            "SELECT stream, COUNT(*) FROM {} WHERE expire_us > {NOW_US} \
                             GROUP BY stream",
                            self.tables.records
                        ),
                        &[],
                    )
                    .await
                    .map_err(sql_error)
            })
            .await?;
        let mut counts = RecordCounts::default();
        for row in &rows {
            counts.add(row.get::<_, &str>(0), tenant, row.get::<_, i64>(1) as u64);
        }
        Ok(counts)
    }
}
