//! Learning data and security logs in the session table: one partition per stream and day,
//! records sorted by id (which sorts by time).

use super::*;

/// Sort-key prefix of record items; session items use `meta` and `c#`.
pub(super) const RECORD_PREFIX: &str = "r#";

/// The partition of one day of a record stream. A session whose id happened to equal it
/// could not collide: its items have other sort keys.
pub(super) fn record_partition(stream: &RecordStream, day: u64) -> String {
    format!("#rec#{}#{}", stream.name(), records::day_name(day))
}

#[async_trait]
impl RecordStore for DynamoStore {
    async fn put_record(&self, stream: &RecordStream, record: Record) -> StoreResult<()> {
        let day = records::day_of(record.time());
        let expire_ms = items::to_ms(record.expire_time);
        self.bounded("put record", async {
            self.client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(record_partition(stream, day)))
                .item("sk", s(format!("{RECORD_PREFIX}{}", record.id)))
                .item("body", s(record.body))
                .item("exp", n(expire_ms))
                .item("ttl", n(expire_ms / 1000 + 1))
                .send()
                .await
                .map_err(|e| sdk_error("put record", e))?;
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
        self.bounded("list records", async {
            let now = items::now_ms();
            let mut found = Vec::new();
            for day in range.days() {
                let mut start: Option<Item> = None;
                loop {
                    let output = self
                        .client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("pk = :pk AND sk BETWEEN :low AND :high")
                        .expression_attribute_values(":pk", s(record_partition(stream, day)))
                        .expression_attribute_values(
                            ":low",
                            s(format!("{RECORD_PREFIX}{}", range.low_id())),
                        )
                        .expression_attribute_values(
                            ":high",
                            s(format!("{RECORD_PREFIX}{}", range.high_id())),
                        )
                        .limit((range.limit - found.len()) as i32)
                        .set_exclusive_start_key(start)
                        .send()
                        .await
                        .map_err(|e| sdk_error("list records", e))?;
                    for item in output.items() {
                        let expire = get_n(item, "exp")?;
                        if expire <= now {
                            continue;
                        }
                        let id = get_s(item, "sk")?.trim_start_matches(RECORD_PREFIX);
                        found.push(Record {
                            id: id.to_string(),
                            expire_time: items::to_time(expire),
                            body: get_s(item, "body")?.to_string(),
                        });
                    }
                    if found.len() >= range.limit {
                        return Ok(found);
                    }
                    match output.last_evaluated_key() {
                        Some(key) => start = Some(key.clone()),
                        None => break,
                    }
                }
            }
            Ok(found)
        })
        .await
    }

    /// Exact, by a Scan of the table's record items (expired ones filtered out: DynamoDB's
    /// TTL deletes them only within days); it reads every record's key, so GetStats
    /// costs read capacity in proportion to the table.
    async fn count_records(&self, tenant: Option<&str>) -> StoreResult<RecordCounts> {
        self.bounded("count records", async {
            let mut counts = RecordCounts::default();
            let mut start: Option<Item> = None;
            loop {
                let output = self
                    .client
                    .scan()
                    .table_name(&self.table)
                    .filter_expression("begins_with(sk, :record) AND #exp > :now")
                    .expression_attribute_names("#exp", "exp")
                    .expression_attribute_values(":record", s(RECORD_PREFIX))
                    .expression_attribute_values(":now", n(items::now_ms()))
                    .projection_expression("pk")
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(|e| sdk_error("counting records", e))?;
                for item in output.items() {
                    let partition = get_s(item, "pk")?;
                    let stream = partition
                        .strip_prefix("#rec#")
                        .and_then(|rest| rest.rsplit_once('#'))
                        .map(|(stream, _day)| stream);
                    if let Some(stream) = stream {
                        counts.add(stream, tenant, 1);
                    }
                }
                match output.last_evaluated_key() {
                    Some(key) => start = Some(key.clone()),
                    None => break,
                }
            }
            Ok(counts)
        })
        .await
    }
}
