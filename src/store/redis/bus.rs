//! Change signals between replicas over Redis Pub/Sub: one channel per key prefix
//! (`{prefix}changes`), outside the keyspace, so no keyspace notification setting is
//! needed. In a Cluster, classic Pub/Sub messages reach every node, so a replica
//! subscribes on any one node (the next seed when that one fails).

use super::config::RedisOptions;
use super::connection::{Redis, standalone_client};
use crate::store::changes::{Change, ChangeBus, ChangeHub, Envelope, Mechanism};
use crate::store::{StoreError, StoreResult};
use async_trait::async_trait;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// Pause before subscribing again after the subscription failed.
const RESUBSCRIBE: Duration = Duration::from_millis(500);

/// The Redis bus.
pub struct RedisBus {
    redis: Redis,
    channel: String,
    /// Clients of the servers a subscription may use, tried in turn.
    subscribers: Vec<redis::Client>,
}

impl RedisBus {
    /// A bus on the configured deployment; nothing is dialled yet.
    pub fn new(options: &RedisOptions) -> StoreResult<Self> {
        let addresses = if options.cluster_nodes.is_empty() {
            vec![options.address.clone()]
        } else {
            options.cluster_nodes.clone()
        };
        let subscribers = addresses
            .iter()
            .map(|address| standalone_client(address, options))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Self {
            redis: Redis::new(options)?,
            channel: format!("{}changes", options.key_prefix),
            subscribers,
        })
    }

    /// Subscribes through `client` and delivers until the connection ends. After a gap
    /// (`again`), every watcher is woken to read what it may have missed.
    async fn subscribe(
        &self,
        client: &redis::Client,
        hub: &ChangeHub,
        again: bool,
    ) -> redis::RedisResult<()> {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&self.channel).await?;
        if again {
            hub.resync();
        }
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => match message.get_payload::<String>() {
                        Ok(payload) => Envelope::deliver(&payload, hub),
                        Err(error) => tracing::warn!(%error, "ignoring a non-text change signal"),
                    },
                    None => return Ok(()),
                },
                _ = hub.closed() => return Ok(()),
            }
        }
    }
}

#[async_trait]
impl ChangeBus for RedisBus {
    fn mechanism(&self) -> Mechanism {
        Mechanism::Bus("redis pub/sub")
    }

    async fn publish(&self, origin: u64, changes: &[Change]) -> StoreResult<()> {
        for payload in Envelope::encode(origin, changes, usize::MAX) {
            let channel = self.channel.clone();
            self.redis
                .run("publish", true, move |mut connection| {
                    let (channel, payload) = (channel.clone(), payload.clone());
                    async move {
                        redis::cmd("PUBLISH")
                            .arg(channel)
                            .arg(payload)
                            .query_async::<i64>(&mut connection)
                            .await
                    }
                })
                .await?;
        }
        Ok(())
    }

    async fn listen(&self, hub: Arc<ChangeHub>) {
        let mut next = 0;
        loop {
            let client = &self.subscribers[next % self.subscribers.len()];
            if let Err(error) = self.subscribe(client, &hub, next > 0).await {
                tracing::warn!(%error, "the Redis change-signal subscription failed; retrying");
            }
            next += 1;
            tokio::select! {
                _ = tokio::time::sleep(RESUBSCRIBE) => {}
                _ = hub.closed() => return,
            }
        }
    }
}
