//! Transactions: one session's write as a MongoDB transaction, retried when another writer
//! wins (write conflicts, transient errors), bounded by the operation timeout.

use super::*;

/// Commits a transaction whose body planned a write, aborts one that only answered.
pub(super) async fn finish<T>(
    session: &mut ClientSession,
    outcome: Result<Plan<T>, TxError>,
) -> Result<T, TxError> {
    match outcome {
        Ok(Plan::Answer(value)) => {
            let _ = session.abort_transaction().await;
            Ok(value)
        }
        Ok(Plan::Write(value)) => loop {
            match session.commit_transaction().await {
                Ok(()) => return Ok(value),
                Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) => continue,
                Err(e) => return Err(TxError::Mongo(e)),
            }
        },
        Err(error) => {
            let _ = session.abort_transaction().await;
            Err(error)
        }
    }
}

impl MongoStore {
    /// Runs `body` in a transaction within the timeout, retrying conflicts (transient
    /// transaction errors) and, up to `max_retries`, network failures. `body` gets the
    /// session with a started transaction and hands it back with its result.
    pub(super) async fn transaction<T, F, Fut>(
        &self,
        what: &str,
        writes_to: Option<&SessionId>,
        mut body: F,
    ) -> StoreResult<T>
    where
        F: FnMut(ClientSession) -> Fut,
        Fut: Future<Output = (ClientSession, Result<Plan<T>, TxError>)>,
    {
        let run = async {
            self.ensure_ready().await?;
            let _serialised = match writes_to {
                Some(id) => Some(self.write_locks.lock(id).await),
                None => None,
            };
            let mut network_failures = 0;
            let mut conflicts = 0;
            loop {
                let mut session = self
                    .client
                    .start_session()
                    .await
                    .map_err(|e| store_error(what, e))?;
                let attempt = match session.start_transaction().await {
                    Ok(()) => {
                        let (mut session, outcome) = body(session).await;
                        finish(&mut session, outcome).await
                    }
                    Err(error) => Err(TxError::Mongo(error)),
                };
                match attempt {
                    Ok(value) => return Ok(value),
                    Err(TxError::Store(error)) => return Err(error),
                    Err(TxError::Mongo(error))
                        if is_transient(&error) && conflicts < MAX_CONFLICT_RETRIES =>
                    {
                        conflicts += 1;
                        // Jitter keeps colliding writers from colliding again.
                        let jitter = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.subsec_nanos())
                            % 2_000;
                        let pause = u64::from(jitter) + 200 * u64::from(conflicts.min(25));
                        tokio::time::sleep(Duration::from_micros(pause)).await;
                    }
                    Err(TxError::Mongo(error))
                        if is_network(&error) && network_failures < self.max_retries =>
                    {
                        network_failures += 1;
                        tokio::time::sleep(Duration::from_millis(25 << network_failures.min(4)))
                            .await;
                    }
                    Err(TxError::Mongo(error)) => return Err(store_error(what, error)),
                }
            }
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(format!(
                "MongoDB did not complete {what} within {:?} (timeout)",
                self.timeout
            ))),
        }
    }
}
