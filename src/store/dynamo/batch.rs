//! BatchWriteItem in batches of at most 25, retrying UnprocessedItems with backoff.

use crate::store::{StoreError, StoreResult};
use aws_sdk_dynamodb::types::WriteRequest;
use std::future::Future;
use std::time::Duration;

/// BatchWriteItem takes at most 25 requests.
const BATCH_LIMIT: usize = 25;
/// Rounds of retrying UnprocessedItems before giving up.
const MAX_UNPROCESSED_ROUNDS: u32 = 8;

/// Sends write requests in batches of at most 25, retrying UnprocessedItems with backoff.
/// `send` sends one batch and returns the requests DynamoDB left unprocessed.
pub(super) async fn write_in_batches<F, Fut>(
    requests: Vec<WriteRequest>,
    mut send: F,
) -> StoreResult<()>
where
    F: FnMut(Vec<WriteRequest>) -> Fut,
    Fut: Future<Output = StoreResult<Vec<WriteRequest>>>,
{
    for batch in requests.chunks(BATCH_LIMIT) {
        let mut pending = batch.to_vec();
        let mut round = 0;
        while !pending.is_empty() {
            let unprocessed = send(pending).await?;
            if unprocessed.is_empty() {
                break;
            }
            round += 1;
            if round > MAX_UNPROCESSED_ROUNDS {
                return Err(StoreError::Unavailable(format!(
                    "DynamoDB left {} writes unprocessed after {MAX_UNPROCESSED_ROUNDS} retries (throttled)",
                    unprocessed.len()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20 << round.min(6))).await;
            pending = unprocessed;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::types::{AttributeValue, PutRequest};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    fn s(text: impl Into<String>) -> AttributeValue {
        AttributeValue::S(text.into())
    }

    fn put(n: usize) -> WriteRequest {
        let item = HashMap::from([
            ("pk".to_string(), s(format!("k{n}"))),
            ("sk".to_string(), s("x")),
        ]);
        WriteRequest::builder()
            .put_request(
                PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .expect("put"),
            )
            .build()
    }

    fn key_of(request: &WriteRequest) -> String {
        request
            .put_request()
            .and_then(|p| p.item().get("pk"))
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default()
    }

    /// DynamoDB may leave part of a batch unprocessed (moto never does, so the path is
    /// proved here): every request is sent until processed, never more than 25 at once.
    #[tokio::test]
    async fn batches_hold_at_most_25_and_unprocessed_items_are_retried() {
        let sent: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
        let log = sent.clone();
        let requests: Vec<WriteRequest> = (0..60).map(put).collect();
        write_in_batches(requests, move |batch| {
            let log = log.clone();
            async move {
                let keys: Vec<String> = batch.iter().map(key_of).collect();
                let first_time = log.lock().expect("log").iter().all(|b| b != &keys);
                log.lock().expect("log").push(keys);
                // The first time a batch is seen, its last two requests come back unprocessed.
                Ok(if first_time && batch.len() > 2 {
                    batch[batch.len() - 2..].to_vec()
                } else {
                    Vec::new()
                })
            }
        })
        .await
        .expect("all written");
        let sent = sent.lock().expect("log");
        assert!(sent.iter().all(|b| b.len() <= 25), "{sent:?}");
        let mut processed: Vec<String> = Vec::new();
        for (i, batch) in sent.iter().enumerate() {
            let retried_next = sent
                .get(i + 1)
                .is_some_and(|next| next.len() == 2 && batch.ends_with(next));
            let done = if retried_next {
                &batch[..batch.len() - 2]
            } else {
                &batch[..]
            };
            processed.extend(done.iter().cloned());
        }
        processed.sort();
        let mut expected: Vec<String> = (0..60).map(|n| format!("k{n}")).collect();
        expected.sort();
        assert_eq!(processed, expected);
        assert_eq!(
            sent.len(),
            6,
            "3 batches of 25/25/10, each retried once: {sent:?}"
        );
    }

    #[tokio::test]
    async fn unprocessed_items_that_never_clear_fail_as_unavailable() {
        let result = write_in_batches(vec![put(1)], |batch| async move { Ok(batch) }).await;
        assert!(
            matches!(result, Err(StoreError::Unavailable(ref m)) if m.contains("unprocessed")),
            "{result:?}"
        );
    }
}
