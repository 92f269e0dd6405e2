//! Writes: the meta item (version, system messages, state, request ids) and message chunks,
//! each write one optimistic attempt that a lost race retries.

use super::*;

impl DynamoStore {
    /// The meta item, if the session is live; an expired one counts as absent.
    pub(super) async fn live_meta(
        &self,
        id: &SessionId,
    ) -> StoreResult<(Option<Meta>, Option<Meta>)> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(id.as_str()))
            .key("sk", s(META))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("reading a session", e))?;
        match output.item() {
            None => Ok((None, None)),
            Some(item) => {
                let meta = Meta::from_item(item)?;
                if meta.expire > now_ms() {
                    Ok((Some(meta), None))
                } else {
                    Ok((None, Some(meta)))
                }
            }
        }
    }

    /// The meta item for a write: the remembered one when `use_cache` allows and it is
    /// still live, else read. Returns (live, expired, from_cache).
    pub(super) async fn meta_for_write(
        &self,
        id: &SessionId,
        use_cache: bool,
    ) -> StoreResult<(Option<Meta>, Option<Meta>, bool)> {
        if use_cache
            && let Some(meta) = self.written.lock().get(id).cloned()
            && meta.expire > now_ms()
        {
            return Ok((Some(meta), None, true));
        }
        let (live, expired) = self.live_meta(id).await?;
        Ok((live, expired, false))
    }

    /// Remembers the meta item this process just wrote.
    pub(super) fn remember(&self, id: &SessionId, meta: &Meta) {
        let mut written = self.written.lock();
        if written.len() >= REMEMBERED_METAS && !written.contains_key(id) {
            written.clear();
        }
        written.insert(id.clone(), meta.clone());
    }

    /// Keys of every chunk of one incarnation.
    pub(super) async fn chunk_keys(
        &self,
        id: &SessionId,
        generation: &str,
    ) -> StoreResult<Vec<String>> {
        let mut keys = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(id.as_str()))
                .expression_attribute_values(":prefix", s(chunk_prefix(generation)))
                .projection_expression("sk")
                .set_exclusive_start_key(start)
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| sdk_error("listing chunks", e))?;
            for item in output.items() {
                keys.push(get_s(item, "sk")?.to_string());
            }
            match output.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => return Ok(keys),
            }
        }
    }

    /// Deletes chunks (of a replaced, deleted or expired incarnation) in batches.
    pub(super) async fn delete_chunks(&self, id: &SessionId, keys: Vec<String>) -> StoreResult<()> {
        let requests = keys
            .into_iter()
            .map(|sk| {
                let delete = DeleteRequest::builder()
                    .key("pk", s(id.as_str()))
                    .key("sk", s(sk))
                    .build()
                    .map_err(|e| StoreError::Internal(e.to_string()))?;
                Ok(WriteRequest::builder().delete_request(delete).build())
            })
            .collect::<StoreResult<Vec<_>>>()?;
        self.batch_write(requests).await
    }

    pub(super) async fn batch_write(&self, requests: Vec<WriteRequest>) -> StoreResult<()> {
        write_in_batches(requests, |batch| async move {
            let output = self
                .client
                .batch_write_item()
                .request_items(&self.table, batch)
                .send()
                .await
                .map_err(|e| sdk_error("a batch write", e))?;
            Ok(output
                .unprocessed_items()
                .and_then(|items| items.get(&self.table))
                .cloned()
                .unwrap_or_default())
        })
        .await
    }

    /// Moves chunk expiry ahead when the session's expiry catches up with it.
    pub(super) async fn advance_horizon(
        &self,
        id: &SessionId,
        meta: &mut Meta,
        existed: bool,
        expire: u64,
        ttl: Duration,
    ) -> StoreResult<()> {
        if expire <= meta.horizon {
            return Ok(());
        }
        meta.horizon = expire + horizon_lead_ms(ttl);
        if existed {
            // Chunks first: if this fails, the session's expiry is not moved either.
            for sk in self.chunk_keys(id, &meta.generation).await? {
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .key("pk", s(id.as_str()))
                    .key("sk", s(sk))
                    .update_expression("SET #ttl = :ttl")
                    .expression_attribute_names("#ttl", "ttl")
                    .expression_attribute_values(":ttl", n(ttl_seconds(meta.horizon)))
                    .send()
                    .await
                    .map_err(|e| sdk_error("extending chunk expiry", e))?;
            }
        }
        Ok(())
    }

    /// The meta item's update: every field from `meta`, the open messages as `open` says,
    /// guarded by the version read (or by the item's absence).
    pub(super) fn meta_update(
        &self,
        id: &SessionId,
        meta: &Meta,
        read_version: Option<u64>,
        open: OpenChange,
    ) -> StoreResult<Update> {
        let reqs =
            serde_json::to_string(&meta.reqs).map_err(|e| StoreError::Internal(e.to_string()))?;
        let usage = serde_json::to_string(&meta.usage_total)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut sets = vec![
            ("gen", s(&meta.generation)),
            ("ver", n(meta.version)),
            ("cnt", n(meta.count)),
            ("chunk", n(meta.chunk)),
            ("obytes", n(meta.open_bytes)),
            ("mbytes", n(meta.message_bytes)),
            ("created", n(meta.created)),
            ("updated", n(meta.updated)),
            ("exp", n(meta.expire)),
            ("horizon", n(meta.horizon)),
            ("sys", s(&meta.system)),
            ("state", s(&meta.state)),
            ("reqs", s(reqs)),
            ("usage", s(usage)),
            ("ttl", n(ttl_seconds(meta.expire))),
        ];
        let mut expression: Vec<String> = sets
            .iter()
            .map(|(name, _)| format!("#{name} = :{name}"))
            .collect();
        match open {
            OpenChange::Keep => {}
            OpenChange::Append(elements) => {
                expression.push("#open = list_append(if_not_exists(#open, :empty), :open)".into());
                sets.push(("open", AttributeValue::L(elements)));
                sets.push(("empty", AttributeValue::L(Vec::new())));
            }
            OpenChange::Set(elements) => {
                expression.push("#open = :open".into());
                sets.push(("open", AttributeValue::L(elements)));
            }
        }
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(id.as_str()))
            .key("sk", s(META))
            .update_expression(format!("SET {}", expression.join(", ")));
        for (name, value) in sets {
            if name != "empty" {
                update = update.expression_attribute_names(format!("#{name}"), name);
            }
            update = update.expression_attribute_values(format!(":{name}"), value);
        }
        update = match read_version {
            Some(version) => update
                .condition_expression("#ver = :read")
                .expression_attribute_values(":read", n(version)),
            None => update.condition_expression("attribute_not_exists(pk)"),
        };
        update
            .build()
            .map_err(|e| StoreError::Internal(e.to_string()))
    }

    /// Writes the meta item alone (one conditional UpdateItem), or with sealed chunks (one
    /// transaction). `Retry` if another writer changed the session since it was read.
    pub(super) async fn write_meta(
        &self,
        update: Update,
        chunks: Vec<TransactWriteItem>,
    ) -> StoreResult<Attempt<()>> {
        if chunks.is_empty() {
            let result = self
                .client
                .update_item()
                .table_name(update.table_name())
                .set_key(Some(update.key().clone()))
                .update_expression(update.update_expression())
                .set_condition_expression(update.condition_expression().map(String::from))
                .set_expression_attribute_names(update.expression_attribute_names().cloned())
                .set_expression_attribute_values(update.expression_attribute_values().cloned())
                .send()
                .await;
            return match result {
                Ok(_) => Ok(Attempt::Done(())),
                Err(error) if lost_race(&error) => Ok(Attempt::Retry),
                Err(error) => Err(sdk_error("writing a session", error)),
            };
        }
        let mut items = vec![TransactWriteItem::builder().update(update).build()];
        items.extend(chunks);
        self.commit(items).await
    }

    /// Commits meta and chunk updates together; `Retry` if another writer won the race.
    pub(super) async fn commit(&self, items: Vec<TransactWriteItem>) -> StoreResult<Attempt<()>> {
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(Attempt::Done(())),
            Err(error) if lost_race(&error) => Ok(Attempt::Retry),
            Err(error) => Err(sdk_error("a transactional write", error)),
        }
    }

    /// A sealed chunk item, as a transaction's Put.
    pub(super) fn chunk_transact_put(
        &self,
        id: &SessionId,
        meta: &Meta,
        group: ChunkGroup,
    ) -> StoreResult<TransactWriteItem> {
        let put = aws_sdk_dynamodb::types::Put::builder()
            .table_name(&self.table)
            .set_item(Some(self.chunk_item(id, meta, group)))
            .build()
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    pub(super) fn chunk_item(&self, id: &SessionId, meta: &Meta, group: ChunkGroup) -> Item {
        Item::from([
            ("pk".to_string(), s(id.as_str())),
            (
                "sk".to_string(),
                s(chunk_key(&meta.generation, group.chunk)),
            ),
            ("msgs".to_string(), AttributeValue::L(group.elements)),
            ("first".to_string(), n(group.first)),
            ("last".to_string(), n(group.last)),
            ("ttl".to_string(), n(ttl_seconds(meta.horizon))),
        ])
    }

    /// A sealed chunk item, as a batch write request (for replace).
    pub(super) fn chunk_put(
        &self,
        id: &SessionId,
        meta: &Meta,
        group: ChunkGroup,
    ) -> StoreResult<WriteRequest> {
        let put = PutRequest::builder()
            .set_item(Some(self.chunk_item(id, meta, group)))
            .build()
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        Ok(WriteRequest::builder().put_request(put).build())
    }

    /// Removes what an expired incarnation left behind (best effort: TTL would too).
    pub(super) async fn clean_expired(&self, id: &SessionId, expired: Option<Meta>) {
        if let Some(expired) = expired {
            match self.chunk_keys(id, &expired.generation).await {
                Ok(keys) => {
                    if let Err(error) = self.delete_chunks(id, keys).await {
                        tracing::debug!(%error, "could not delete the chunks of an expired session");
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "could not list the chunks of an expired session")
                }
            }
        }
    }

    pub(super) async fn append_attempt(
        &self,
        id: &SessionId,
        append: &Append,
        use_cache: bool,
    ) -> StoreResult<Attempt<AppendOutcome>> {
        let now = now_ms();
        let (live, expired, cached) = self.meta_for_write(id, use_cache).await?;
        let read_version = live
            .as_ref()
            .map(|m| m.version)
            .or(expired.as_ref().map(|m| m.version));
        if let (Some(meta), Some(request_id)) = (&live, &append.request_id)
            && let Some(earlier) = meta.reqs.iter().find(|r| &r.id == request_id)
        {
            return Ok(Attempt::Done(AppendOutcome {
                first_seq: earlier.first,
                count: earlier.count,
                version: earlier.version,
                expire_time: to_time(earlier.expire),
                deduplicated: true,
            }));
        }
        let existed = live.is_some();
        let mut meta = live.unwrap_or_else(|| Meta::fresh(now));
        if cached
            && append
                .options
                .expected_version
                .is_some_and(|v| v != meta.version)
        {
            // Another replica may have moved the version: decide on a fresh read.
            return Ok(Attempt::Retry);
        }
        check_version(append.options.expected_version, meta.version)?;
        let expire = now + append.options.ttl.as_millis() as u64;
        self.advance_horizon(id, &mut meta, existed, expire, append.options.ttl)
            .await?;
        let first_seq = meta.count + 1;
        let (open, groups) = place_messages(&mut meta, &append.messages, now)?;
        meta.usage_total += UsageTotal::of(&append.messages);
        let chunks = groups
            .into_iter()
            .map(|group| self.chunk_transact_put(id, &meta, group))
            .collect::<StoreResult<Vec<_>>>()?;
        meta.version += 1;
        meta.updated = now;
        meta.expire = expire;
        if let Some(request_id) = &append.request_id {
            meta.reqs.push(RecentAppend {
                id: request_id.clone(),
                first: first_seq,
                count: append.messages.len() as u64,
                version: meta.version,
                expire,
            });
            let excess = meta.reqs.len().saturating_sub(REMEMBERED_REQUEST_IDS);
            meta.reqs.drain(..excess);
        }
        let update = self.meta_update(id, &meta, read_version, open)?;
        if let Attempt::Retry = self.write_meta(update, chunks).await? {
            return Ok(Attempt::Retry);
        }
        self.remember(id, &meta);
        self.clean_expired(id, expired).await;
        Ok(Attempt::Done(AppendOutcome {
            first_seq,
            count: append.messages.len() as u64,
            version: meta.version,
            expire_time: to_time(expire),
            deduplicated: false,
        }))
    }

    /// Changes only the meta item (system messages, state, expiry) under the version read.
    pub(super) async fn meta_attempt(
        &self,
        id: &SessionId,
        options: &WriteOptions,
        use_cache: bool,
        change: impl Fn(&mut Meta, u64) -> StoreResult<()>,
    ) -> StoreResult<Attempt<(WriteOutcome, Meta)>> {
        let now = now_ms();
        let (live, expired, cached) = self.meta_for_write(id, use_cache).await?;
        let read_version = live
            .as_ref()
            .map(|m| m.version)
            .or(expired.as_ref().map(|m| m.version));
        let existed = live.is_some();
        let mut meta = live.unwrap_or_else(|| Meta::fresh(now));
        if cached && options.expected_version.is_some_and(|v| v != meta.version) {
            return Ok(Attempt::Retry);
        }
        check_version(options.expected_version, meta.version)?;
        let expire = now + options.ttl.as_millis() as u64;
        self.advance_horizon(id, &mut meta, existed, expire, options.ttl)
            .await?;
        change(&mut meta, now)?;
        meta.version += 1;
        meta.updated = now;
        meta.expire = expire;
        let update = self.meta_update(id, &meta, read_version, OpenChange::Keep)?;
        if let Attempt::Retry = self.write_meta(update, Vec::new()).await? {
            return Ok(Attempt::Retry);
        }
        self.remember(id, &meta);
        self.clean_expired(id, expired).await;
        Ok(Attempt::Done((
            WriteOutcome {
                version: meta.version,
                expire_time: to_time(expire),
            },
            meta,
        )))
    }

    pub(super) async fn replace_attempt(
        &self,
        id: &SessionId,
        messages: &[NewMessage],
        options: &WriteOptions,
    ) -> StoreResult<Attempt<WriteOutcome>> {
        let now = now_ms();
        let (live, expired) = self.live_meta(id).await?;
        let read_version = live
            .as_ref()
            .map(|m| m.version)
            .or(expired.as_ref().map(|m| m.version));
        let old = live.clone().or(expired);
        let mut meta = live.unwrap_or_else(|| Meta::fresh(now));
        check_version(options.expected_version, meta.version)?;
        let expire = now + options.ttl.as_millis() as u64;
        meta.generation = new_generation();
        meta.count = 0;
        meta.chunk = 0;
        meta.open = Vec::new();
        meta.open_bytes = 0;
        meta.message_bytes = 0;
        meta.usage_total = UsageTotal::of(messages);
        meta.horizon = expire + horizon_lead_ms(options.ttl);
        // New chunks go in first (invisible until the meta item points to them)...
        let (_, groups) = place_messages(&mut meta, messages, now)?;
        let puts = groups
            .into_iter()
            .map(|group| self.chunk_put(id, &meta, group))
            .collect::<StoreResult<Vec<_>>>()?;
        self.batch_write(puts).await?;
        meta.version += 1;
        meta.updated = now;
        meta.expire = expire;
        // ...then the meta item switches to them, and the old ones go.
        let update =
            self.meta_update(id, &meta, read_version, OpenChange::Set(meta.open.clone()))?;
        if let Attempt::Retry = self.write_meta(update, Vec::new()).await? {
            let orphans = self.chunk_keys(id, &meta.generation).await?;
            self.delete_chunks(id, orphans).await?;
            return Ok(Attempt::Retry);
        }
        self.remember(id, &meta);
        if let Some(old) = old {
            let keys = self.chunk_keys(id, &old.generation).await?;
            self.delete_chunks(id, keys).await?;
        }
        Ok(Attempt::Done(WriteOutcome {
            version: meta.version,
            expire_time: to_time(expire),
        }))
    }

    pub(super) async fn delete_attempt(
        &self,
        id: &SessionId,
        expected_version: Option<u64>,
    ) -> StoreResult<Attempt<bool>> {
        let (live, expired) = self.live_meta(id).await?;
        check_version(expected_version, live.as_ref().map_or(0, |m| m.version))?;
        let Some(meta) = live.or(expired.clone()) else {
            return Ok(Attempt::Done(false));
        };
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(id.as_str()))
            .key("sk", s(META))
            .condition_expression("#ver = :read")
            .expression_attribute_names("#ver", "ver")
            .expression_attribute_values(":read", n(meta.version))
            .send()
            .await;
        match deleted {
            Ok(_) => {}
            Err(error) if lost_race(&error) => return Ok(Attempt::Retry),
            Err(error) => return Err(sdk_error("deleting a session", error)),
        }
        self.written.lock().remove(id);
        let keys = self.chunk_keys(id, &meta.generation).await?;
        self.delete_chunks(id, keys).await?;
        Ok(Attempt::Done(expired.is_none()))
    }
}
