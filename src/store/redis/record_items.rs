//! Learning data and security logs: a sorted set per stream and day, scored by time, each
//! record's body beside it, expired by Redis with the day's key.

use super::*;

#[async_trait]
impl RecordStore for RedisStore {
    async fn put_record(&self, stream: &RecordStream, record: Record) -> StoreResult<()> {
        let day = records::day_name(records::day_of(record.time()));
        let key = keys::record_key(&self.prefix, &stream.name(), &day);
        let expire_ms = to_ms(record.expire_time);
        let member = format!("{}|{expire_ms}|{}", record.id, record.body);
        // The day's key lives as long as its longest-lived record. Adding the same member
        // twice changes nothing, so a retried write is harmless.
        self.redis
            .run("put record", true, |mut connection| {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .zadd(&key, &member, 0)
                    .cmd("PEXPIREAT")
                    .arg(&key)
                    .arg(expire_ms)
                    .arg("NX")
                    .cmd("PEXPIREAT")
                    .arg(&key)
                    .arg(expire_ms)
                    .arg("GT");
                async move { pipe.query_async::<()>(&mut connection).await }
            })
            .await
    }

    async fn list_records(
        &self,
        stream: &RecordStream,
        range: &RecordRange,
    ) -> StoreResult<Vec<Record>> {
        let now = to_ms(SystemTime::now());
        let high = format!("({}", range.high_id());
        let mut found = Vec::new();
        if range.is_empty() {
            return Ok(found);
        }
        let mut low = format!("[{}", range.low_id());
        for day in range.days() {
            let key = keys::record_key(&self.prefix, &stream.name(), &records::day_name(day));
            loop {
                let wanted = range.limit - found.len();
                let members: Vec<String> = self
                    .redis
                    .run("list records", true, |mut connection| {
                        let command = redis::cmd("ZRANGEBYLEX")
                            .arg(&key)
                            .arg(&low)
                            .arg(&high)
                            .arg("LIMIT")
                            .arg(0)
                            .arg(wanted)
                            .clone();
                        async move { command.query_async(&mut connection).await }
                    })
                    .await?;
                for member in &members {
                    let mut parts = member.splitn(3, '|');
                    let (Some(id), Some(expire), Some(body)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        return Err(corrupt("a record member without its fields"));
                    };
                    let expire: u64 = expire.parse().map_err(|_| corrupt("a record expiry"))?;
                    low = format!("({id}~");
                    if expire > now {
                        found.push(Record {
                            id: id.to_string(),
                            expire_time: UNIX_EPOCH + Duration::from_millis(expire),
                            body: body.to_string(),
                        });
                    }
                }
                if found.len() >= range.limit {
                    return Ok(found);
                }
                if members.len() < wanted {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// ZCARD of every day's key: a record that expired before the rest of its day is
    /// counted until the day's key expires (at most a day later).
    async fn count_records(&self, tenant: Option<&str>) -> StoreResult<RecordCounts> {
        let pattern = keys::record_pattern(&self.prefix);
        let mut counts = RecordCounts::default();
        for node in self.redis.nodes().await? {
            let mut cursor = 0;
            loop {
                let (next, found) = self.scan_keys(&node, cursor, &pattern).await?;
                for key in found {
                    let Some(stream) = keys::stream_of_record_key(&self.prefix, &key) else {
                        continue;
                    };
                    let count: u64 = self
                        .redis
                        .run("count records", true, |mut connection| {
                            let command = redis::cmd("ZCARD").arg(&key).clone();
                            async move { command.query_async(&mut connection).await }
                        })
                        .await?;
                    counts.add(&stream, tenant, count);
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(counts)
    }
}
