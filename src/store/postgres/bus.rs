//! Change signals between replicas over PostgreSQL's LISTEN/NOTIFY, on the channel
//! `{table_prefix}changes`: one listening connection per replica, and `pg_notify` on
//! a small pool of its own, so signals never wait for the store's connections.

use super::Connecting;
use super::config::PostgresOptions;
use crate::store::changes::{Change, ChangeBus, ChangeHub, Envelope, Mechanism};
use crate::store::{StoreError, StoreResult};
use async_trait::async_trait;
use deadpool_postgres::Pool;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::AsyncMessage;

/// NOTIFY takes payloads shorter than 8000 bytes.
const MAX_PAYLOAD: usize = 7900;
/// Pause before listening again after the connection failed.
const RELISTEN: Duration = Duration::from_millis(500);

/// The PostgreSQL bus.
pub struct PostgresBus {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    pool: Pool,
    channel: String,
    timeout: Duration,
}

impl PostgresBus {
    /// A bus on the configured database; nothing is dialled yet.
    pub fn new(options: &PostgresOptions) -> StoreResult<Self> {
        let connecting = Connecting::new(options)?;
        Ok(Self {
            pool: connecting.pool(2)?,
            config: connecting.config,
            tls: connecting.tls,
            channel: format!("{}changes", options.table_prefix),
            timeout: options.timeout,
        })
    }

    /// Listens on one connection, delivering until it ends. After a gap (`again`), every
    /// watcher is woken to read what it may have missed.
    async fn listen_once(&self, hub: &Arc<ChangeHub>, again: bool) -> Result<(), String> {
        let (client, mut connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| e.to_string())?;
        // The connection delivers notifications only while polled: a task does that.
        let deliver_to = hub.clone();
        let mut driver = tokio::spawn(async move {
            loop {
                match futures::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(notification))) => {
                        Envelope::deliver(notification.payload(), &deliver_to)
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return error.to_string(),
                    None => return "the connection closed".to_string(),
                }
            }
        });
        let listen = format!("LISTEN \"{}\"", self.channel.replace('"', "\"\""));
        if let Err(error) = client.batch_execute(&listen).await {
            driver.abort();
            return Err(error.to_string());
        }
        if again {
            hub.resync();
        }
        tokio::select! {
            ended = &mut driver => Err(ended.unwrap_or_else(|e| e.to_string())),
            _ = hub.closed() => {
                driver.abort();
                Ok(())
            }
        }
    }
}

#[async_trait]
impl ChangeBus for PostgresBus {
    fn mechanism(&self) -> Mechanism {
        Mechanism::Bus("postgresql listen/notify")
    }

    async fn publish(&self, origin: u64, changes: &[Change]) -> StoreResult<()> {
        let work = async {
            let client = self
                .pool
                .get()
                .await
                .map_err(|e| StoreError::Unavailable(format!("PostgreSQL: {e}")))?;
            for payload in Envelope::encode(origin, changes, MAX_PAYLOAD) {
                client
                    .execute("SELECT pg_notify($1, $2)", &[&self.channel, &payload])
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("PostgreSQL NOTIFY: {e}")))?;
            }
            Ok(())
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| StoreError::Timeout("PostgreSQL NOTIFY within the timeout".into()))?
    }

    async fn listen(&self, hub: Arc<ChangeHub>) {
        let mut again = false;
        loop {
            match self.listen_once(&hub, again).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, "the PostgreSQL change-signal listener failed; retrying")
                }
            }
            again = true;
            tokio::select! {
                _ = tokio::time::sleep(RELISTEN) => {}
                _ = hub.closed() => return,
            }
        }
    }
}
