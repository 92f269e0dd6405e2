//! Learning data and security logs: one collection of records, indexed by stream and id,
//! expired by MongoDB's TTL index.

use super::*;

#[async_trait]
impl RecordStore for MongoStore {
    async fn put_record(&self, stream: &RecordStream, record: Record) -> StoreResult<()> {
        self.ensure_ready().await?;
        let document = doc! {
            "s": stream.name(),
            "r": &record.id,
            "expire": DateTime::from_system_time(record.expire_time),
            "body": &record.body,
        };
        match tokio::time::timeout(self.timeout, self.records.insert_one(document)).await {
            Ok(Ok(_)) => Ok(()),
            // The unique (s, r) index: a retried insert that had landed changes nothing.
            Ok(Err(error)) if is_duplicate_key(&error) => Ok(()),
            Ok(Err(error)) => Err(store_error("put record", error)),
            Err(_) => Err(StoreError::Timeout(
                "MongoDB did not store a record in time".into(),
            )),
        }
    }

    async fn list_records(
        &self,
        stream: &RecordStream,
        range: &RecordRange,
    ) -> StoreResult<Vec<Record>> {
        self.ensure_ready().await?;
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let filter = doc! {
            "s": stream.name(),
            "r": {"$gte": range.low_id(), "$lt": range.high_id()},
            "expire": {"$gt": DateTime::now()},
        };
        let read = async {
            let documents: Vec<Document> = self
                .records
                .find(filter)
                .sort(doc! {"r": 1})
                .limit(range.limit as i64)
                .await?
                .try_collect()
                .await?;
            Ok::<_, MongoError>(documents)
        };
        let documents = match tokio::time::timeout(self.timeout, read).await {
            Ok(result) => result.map_err(|e| store_error("list records", e))?,
            Err(_) => {
                return Err(StoreError::Timeout(
                    "MongoDB did not list records in time".into(),
                ));
            }
        };
        documents
            .iter()
            .map(|document| {
                let field = |name: &str| {
                    document
                        .get_str(name)
                        .map(str::to_string)
                        .map_err(|_| StoreError::Internal(format!("a record lacks `{name}`")))
                };
                Ok(Record {
                    id: field("r")?,
                    body: field("body")?,
                    expire_time: document
                        .get_datetime("expire")
                        .map_err(|_| StoreError::Internal("a record lacks `expire`".into()))?
                        .to_system_time(),
                })
            })
            .collect()
    }

    /// Exact: live records grouped by stream on the server (the TTL monitor deletes
    /// expired ones only every minute, so they are filtered out here).
    async fn count_records(&self, tenant: Option<&str>) -> StoreResult<RecordCounts> {
        self.ensure_ready().await?;
        let count = async {
            let groups: Vec<Document> = self
                .records
                .aggregate(vec![
                    doc! {"$match": {"expire": {"$gt": DateTime::now()}}},
                    doc! {"$group": {"_id": "$s", "n": {"$sum": 1}}},
                ])
                .await?
                .try_collect()
                .await?;
            Ok::<_, MongoError>(groups)
        };
        let groups = match tokio::time::timeout(self.timeout, count).await {
            Ok(result) => result.map_err(|e| store_error("count records", e))?,
            Err(_) => {
                return Err(StoreError::Timeout(
                    "MongoDB did not count records in time".into(),
                ));
            }
        };
        let mut counts = RecordCounts::default();
        for group in &groups {
            if let Ok(stream) = group.get_str("_id") {
                counts.add(stream, tenant, get_i64(group, "n")?.max(0) as u64);
            }
        }
        Ok(counts)
    }
}
