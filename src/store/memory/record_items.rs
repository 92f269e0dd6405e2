//! Learning data and security logs in memory: a map per stream, ordered by id (which sorts
//! by time), counted toward `memory_max_bytes` like sessions.

use super::*;

#[async_trait]
impl RecordStore for MemoryStore {
    async fn put_record(&self, stream: &RecordStream, record: Record) -> StoreResult<()> {
        // Records count toward max_bytes like sessions: thirty 1 MB security logs must not
        // fit under a 4 MiB limit.
        let bytes = record_bytes(stream, &record);
        self.with_sweep_retry(|| self.reserve(bytes as i64, false))?;
        let expire_time = record.expire_time;
        let mut records = self.records.lock();
        records
            .by_expiry
            .insert((expire_time, stream.clone(), record.id.clone()));
        let replaced = records
            .streams
            .entry(stream.clone())
            .or_default()
            .insert(record.id.clone(), record);
        if let Some(old) = replaced {
            self.bytes
                .fetch_sub(record_bytes(stream, &old), Ordering::Relaxed);
            if old.expire_time != expire_time {
                records
                    .by_expiry
                    .remove(&(old.expire_time, stream.clone(), old.id));
            }
        }
        Ok(())
    }

    async fn list_records(
        &self,
        stream: &RecordStream,
        range: &RecordRange,
    ) -> StoreResult<Vec<Record>> {
        let now = SystemTime::now();
        let records = self.records.lock();
        let Some(stream_records) = records.streams.get(stream).filter(|_| !range.is_empty()) else {
            return Ok(Vec::new());
        };
        Ok(stream_records
            .range(range.low_id()..range.high_id())
            .map(|(_, record)| record)
            .filter(|record| record.expire_time > now)
            .take(range.limit)
            .cloned()
            .collect())
    }

    /// Exact: expired records are swept first, so every map holds live records only.
    async fn count_records(&self, tenant: Option<&str>) -> StoreResult<RecordCounts> {
        self.sweep_expired();
        let mut counts = RecordCounts::default();
        for (stream, stream_records) in &self.records.lock().streams {
            counts.add(&stream.name(), tenant, stream_records.len() as u64);
        }
        Ok(counts)
    }
}

/// Approximate bytes a record occupies: its JSON, id and stream, and the index entries.
pub(super) fn record_bytes(stream: &RecordStream, record: &Record) -> u64 {
    const FIXED: usize = 96;
    (FIXED + record.body.len() + 2 * (record.id.len() + stream.name().len())) as u64
}
