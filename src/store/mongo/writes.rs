//! Writes inside a transaction: the head document (version, system messages, state,
//! request ids) and message buckets of at most BUCKET_MESSAGES messages or BUCKET_BYTES.

use super::*;

impl MongoStore {
    /// The session document for a write: the live one, or a fresh head when it is absent
    /// or expired (then the expired one and its buckets are deleted in this transaction).
    pub(super) async fn head_for_write(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        now: DateTime,
    ) -> Result<(Head, bool, Document), TxError> {
        let found = self
            .sessions
            .find_one(doc! {"_id": id.as_str()})
            .projection(doc! {"system": 0})
            .session(&mut *session)
            .await?;
        match found {
            Some(document) => {
                let head = Head::from_document(&document)?;
                if head.expire > now {
                    return Ok((head, true, document));
                }
                self.remove(session, id, &head.generation).await?;
                Ok((Head::fresh(now), false, Document::new()))
            }
            None => Ok((Head::fresh(now), false, Document::new())),
        }
    }

    /// Deletes a session document and the buckets of its incarnation.
    pub(super) async fn remove(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        generation: &str,
    ) -> Result<(), TxError> {
        self.buckets
            .delete_many(doc! {"sid": id.as_str(), "gen": generation})
            .session(&mut *session)
            .await?;
        self.sessions
            .delete_one(doc! {"_id": id.as_str()})
            .session(&mut *session)
            .await?;
        Ok(())
    }

    /// Moves the buckets' expiry ahead of the session's when the session catches up with
    /// it; returns the horizon new buckets must carry.
    pub(super) async fn horizon(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        head: &mut Head,
        exists: bool,
        expire: DateTime,
        ttl: Duration,
    ) -> Result<DateTime, TxError> {
        if expire > head.horizon {
            head.horizon = ttl_expiry(expire, horizon_lead(ttl));
            if exists {
                self.buckets
                    .update_many(
                        doc! {"sid": id.as_str(), "gen": &head.generation},
                        doc! {"$set": {"expire": head.horizon}},
                    )
                    .session(&mut *session)
                    .await?;
            }
        }
        Ok(head.horizon)
    }

    /// Appends messages to the open bucket (opening new ones when it is full).
    pub(super) async fn push_messages(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        head: &mut Head,
        messages: &[NewMessage],
        now: DateTime,
    ) -> Result<(), TxError> {
        let mut groups: Vec<(i64, i64, Vec<Document>)> = Vec::new();
        for message in messages {
            let size = message.approx_bytes() as i64;
            if head.bucket_messages >= BUCKET_MESSAGES
                || (head.bucket_messages > 0 && head.bucket_bytes + size > BUCKET_BYTES)
            {
                head.bucket += 1;
                head.bucket_messages = 0;
                head.bucket_bytes = 0;
            }
            head.count += 1;
            head.bucket_messages += 1;
            head.bucket_bytes += size;
            let document = message_document(message, head.count, now)?;
            match groups.last_mut() {
                Some((bucket, _, documents)) if *bucket == head.bucket => documents.push(document),
                _ => groups.push((head.bucket, head.count, vec![document])),
            }
        }
        for (bucket, first, documents) in groups {
            let last = first + documents.len() as i64 - 1;
            self.buckets
                .update_one(
                    doc! {"sid": id.as_str(), "gen": &head.generation, "b": bucket},
                    doc! {
                        "$push": {"msgs": {"$each": documents}},
                        "$set": {"last": last, "expire": head.horizon},
                        "$setOnInsert": {"first": first},
                    },
                )
                .upsert(true)
                .session(&mut *session)
                .await?;
        }
        Ok(())
    }

    /// Writes the session document after a change: next version, times, counters.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn save_head(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        head: &Head,
        exists: bool,
        now: DateTime,
        expire: DateTime,
        mut set: Document,
        request: Option<Document>,
    ) -> Result<WriteOutcome, TxError> {
        let version = head.version + 1;
        set.insert("gen", &head.generation);
        set.insert("version", version);
        set.insert("count", head.count);
        set.insert("bucket", head.bucket);
        set.insert("bucket_messages", head.bucket_messages);
        set.insert("bucket_bytes", head.bucket_bytes);
        set.insert("updated", now);
        set.insert("expire", expire);
        set.insert("horizon", head.horizon);
        set.insert("usage", usage_document(&head.usage_total));
        if exists {
            let mut update = doc! {"$set": set};
            if let Some(request) = request {
                update.insert(
                    "$push",
                    doc! {"reqs": {"$each": [request], "$slice": -REMEMBERED_REQUEST_IDS}},
                );
            }
            self.sessions
                .update_one(doc! {"_id": id.as_str()}, update)
                .session(&mut *session)
                .await?;
        } else {
            let mut document = doc! {
                "_id": id.as_str(),
                "created": now,
                "system": [],
                "state": {},
                "reqs": request.map(|r| vec![r]).unwrap_or_default(),
            };
            document.extend(set);
            self.sessions
                .insert_one(document)
                .session(&mut *session)
                .await?;
        }
        Ok(WriteOutcome {
            version: version as u64,
            expire_time: to_system_time(expire),
        })
    }

    pub(super) async fn append_in(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        append: &Append,
    ) -> Result<Plan<AppendOutcome>, TxError> {
        let now = DateTime::now();
        let (mut head, exists, _) = self.head_for_write(session, id, now).await?;
        if let Some(request_id) = &append.request_id
            && let Some(earlier) = head
                .reqs
                .iter()
                .find(|r| r.get_str("id").is_ok_and(|r| r == request_id))
        {
            return Ok(Plan::Answer(AppendOutcome {
                first_seq: get_i64(earlier, "first")? as u64,
                count: get_i64(earlier, "count")? as u64,
                version: get_i64(earlier, "version")? as u64,
                expire_time: to_system_time(get_time(earlier, "expire")?),
                deduplicated: true,
            }));
        }
        check_version(append.options.expected_version, head.version as u64)?;
        let expire = ttl_expiry(now, append.options.ttl);
        self.horizon(session, id, &mut head, exists, expire, append.options.ttl)
            .await?;
        let first_seq = head.count + 1;
        self.push_messages(session, id, &mut head, &append.messages, now)
            .await?;
        head.usage_total += UsageTotal::of(&append.messages);
        let count = append.messages.len() as i64;
        let request = append.request_id.as_ref().map(|request_id| {
            doc! {
                "id": request_id,
                "first": first_seq,
                "count": count,
                "version": head.version + 1,
                "expire": expire,
            }
        });
        let written = self
            .save_head(
                session,
                id,
                &head,
                exists,
                now,
                expire,
                Document::new(),
                request,
            )
            .await?;
        Ok(Plan::Write(AppendOutcome {
            first_seq: first_seq as u64,
            count: count as u64,
            version: written.version,
            expire_time: written.expire_time,
            deduplicated: false,
        }))
    }

    pub(super) async fn replace_in(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        messages: &[NewMessage],
        options: &WriteOptions,
    ) -> Result<Plan<WriteOutcome>, TxError> {
        let now = DateTime::now();
        let (mut head, exists, _) = self.head_for_write(session, id, now).await?;
        check_version(options.expected_version, head.version as u64)?;
        if exists {
            self.buckets
                .delete_many(doc! {"sid": id.as_str(), "gen": &head.generation})
                .session(&mut *session)
                .await?;
        }
        // A new incarnation: readers holding the old one never mix old and new buckets.
        let expire = ttl_expiry(now, options.ttl);
        head.generation = new_generation();
        head.count = 0;
        head.bucket = 0;
        head.bucket_messages = 0;
        head.bucket_bytes = 0;
        head.usage_total = UsageTotal::of(messages);
        head.horizon = ttl_expiry(expire, horizon_lead(options.ttl));
        self.push_messages(session, id, &mut head, messages, now)
            .await?;
        let written = self
            .save_head(
                session,
                id,
                &head,
                exists,
                now,
                expire,
                Document::new(),
                None,
            )
            .await?;
        Ok(Plan::Write(written))
    }

    pub(super) async fn set_in(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        options: &WriteOptions,
        change: &StateOrSystem<'_>,
    ) -> Result<Plan<(WriteOutcome, JsonObject)>, TxError> {
        let now = DateTime::now();
        let (mut head, exists, document) = self.head_for_write(session, id, now).await?;
        check_version(options.expected_version, head.version as u64)?;
        let expire = ttl_expiry(now, options.ttl);
        self.horizon(session, id, &mut head, exists, expire, options.ttl)
            .await?;
        let (set, state) = match change {
            StateOrSystem::System(messages) => {
                let documents = messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| message_document(m, i as i64 + 1, now))
                    .collect::<StoreResult<Vec<_>>>()?;
                (doc! {"system": documents}, JsonObject::new())
            }
            StateOrSystem::State(update) => {
                let mut state = document_to_json(document.get_document("state").ok())?;
                (*update).clone().apply(&mut state);
                (doc! {"state": json_to_document(&state)?}, state)
            }
        };
        let written = self
            .save_head(session, id, &head, exists, now, expire, set, None)
            .await?;
        Ok(Plan::Write((written, state)))
    }

    pub(super) async fn touch_in(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        ttl: Duration,
    ) -> Result<Plan<WriteOutcome>, TxError> {
        let now = DateTime::now();
        let (mut head, exists, _) = self.head_for_write(session, id, now).await?;
        if !exists {
            return Err(StoreError::NotFound(id.to_string()).into());
        }
        let expire = ttl_expiry(now, ttl);
        self.horizon(session, id, &mut head, exists, expire, ttl)
            .await?;
        self.sessions
            .update_one(
                doc! {"_id": id.as_str()},
                doc! {"$set": {"expire": expire, "horizon": head.horizon}},
            )
            .session(&mut *session)
            .await?;
        Ok(Plan::Write(WriteOutcome {
            version: head.version as u64,
            expire_time: to_system_time(expire),
        }))
    }

    pub(super) async fn delete_in(
        &self,
        session: &mut ClientSession,
        id: &SessionId,
        expected_version: Option<u64>,
    ) -> Result<Plan<bool>, TxError> {
        let now = DateTime::now();
        let (head, exists, _) = self.head_for_write(session, id, now).await?;
        check_version(expected_version, head.version as u64)?;
        if exists {
            self.remove(session, id, &head.generation).await?;
        }
        // An expired session was already removed by head_for_write: commit that too.
        Ok(Plan::Write(exists))
    }
}
