//! Connections to Redis or a Redis Cluster, per-operation timeouts, retries and error mapping.
//!
//! Standalone: one `ConnectionManager`, a multiplexed connection that pipelines every
//! concurrent RPC over one socket and reconnects by itself. Cluster: one multiplexed
//! `ClusterConnection` (a socket per node) that follows MOVED/ASK redirects. Both are
//! cheap handles cloned per call, so concurrency never opens a connection per request,
//! and both are created lazily: the sidecar starts (NOT_SERVING) while Redis is down and
//! recovers when it returns.

use super::config::RedisOptions;
use crate::store::StoreError;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    Cmd, FromRedisValue, IntoConnectionInfo, RedisError, RedisFuture, RedisResult, TlsCertificates,
    Value,
};
use std::future::Future;
use std::time::Duration;
use tokio::sync::OnceCell;

/// A cheap, cloneable handle on the connection.
#[derive(Clone)]
pub enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Standalone(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Standalone(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// A Redis server that holds part of the keyspace: the standalone server, or one master.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Node {
    Standalone,
    Master { host: String, port: u16 },
}

impl Node {
    /// A stable name for page tokens.
    pub fn name(&self) -> String {
        match self {
            Node::Standalone => "standalone".to_string(),
            Node::Master { host, port } => format!("{host}:{port}"),
        }
    }
}

enum Connector {
    Standalone(ConnectionManager),
    Cluster(Box<LazyCluster>),
}

struct LazyCluster {
    client: ClusterClient,
    connection: OnceCell<ClusterConnection>,
}

fn invalid(error: RedisError) -> StoreError {
    StoreError::Internal(format!("invalid Redis configuration: {error}"))
}

/// The CA that `rediss://` trusts instead of the system roots, if one is configured.
fn certificates(options: &RedisOptions) -> Result<Option<TlsCertificates>, StoreError> {
    let Some(path) = &options.tls_ca_file else {
        return Ok(None);
    };
    let root_cert = std::fs::read(path).map_err(|e| {
        StoreError::Internal(format!(
            "cannot read redis_tls_ca_file {}: {e}",
            path.display()
        ))
    })?;
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    }))
}

/// A client of one server at `address` with the configured database, credentials and TLS
/// (a standalone server, or one Cluster node for Pub/Sub).
pub fn standalone_client(
    address: &str,
    options: &RedisOptions,
) -> Result<redis::Client, StoreError> {
    let mut info = with_scheme(address)
        .into_connection_info()
        .map_err(invalid)?;
    let mut settings = info.redis_settings().clone().set_db(options.db);
    if let Some(username) = &options.username {
        settings = settings.set_username(username);
    }
    if let Some(password) = &options.password {
        settings = settings.set_password(password);
    }
    info = info.set_redis_settings(settings);
    match certificates(options)? {
        Some(certificates) => redis::Client::build_with_tls(info, certificates),
        None => redis::Client::open(info),
    }
    .map_err(invalid)
}

/// Connection, retry and timeout policy for one Redis deployment.
pub struct Redis {
    connector: Connector,
    timeout: Duration,
    max_retries: u32,
}

fn with_scheme(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("redis://{address}")
    }
}

impl Redis {
    /// Prepares the connection; nothing is dialled until the first operation.
    pub fn new(options: &RedisOptions) -> Result<Self, StoreError> {
        // rediss:// needs a TLS crypto provider; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let connector = if options.cluster_nodes.is_empty() {
            let client = standalone_client(&options.address, options)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.timeout))
                .set_response_timeout(Some(options.timeout))
                // Reconnection is retried on the next request; our own retries bound it.
                .set_number_of_retries(1);
            Connector::Standalone(
                ConnectionManager::new_lazy_with_config(client, config).map_err(invalid)?,
            )
        } else {
            let nodes: Vec<String> = options
                .cluster_nodes
                .iter()
                .map(|n| with_scheme(n))
                .collect();
            let mut builder = ClusterClientBuilder::new(nodes)
                .connection_timeout(options.timeout)
                .response_timeout(options.timeout)
                .retries(options.max_retries);
            if let Some(username) = &options.username {
                builder = builder.username(username);
            }
            if let Some(password) = &options.password {
                builder = builder.password(password);
            }
            if let Some(certificates) = certificates(options)? {
                builder = builder.certs(certificates);
            }
            Connector::Cluster(Box::new(LazyCluster {
                client: builder.build().map_err(invalid)?,
                connection: OnceCell::new(),
            }))
        };
        Ok(Self {
            connector,
            timeout: options.timeout,
            max_retries: options.max_retries,
        })
    }

    /// True in Cluster mode.
    pub fn is_cluster(&self) -> bool {
        matches!(self.connector, Connector::Cluster(_))
    }

    async fn connection(&self) -> RedisResult<Connection> {
        match &self.connector {
            Connector::Standalone(manager) => Ok(Connection::Standalone(manager.clone())),
            Connector::Cluster(cluster) => cluster
                .connection
                .get_or_try_init(|| cluster.client.get_async_connection())
                .await
                .cloned()
                .map(Connection::Cluster),
        }
    }

    /// Runs `operation` within the timeout, retrying transient failures with backoff.
    ///
    /// Only failures where Redis cannot have run the command (the connection was refused)
    /// are retried for writes that are not `idempotent`; a dropped connection may have
    /// lost the reply of a write that happened, and repeating it could apply it twice.
    pub async fn run<T, F, Fut>(
        &self,
        what: &str,
        idempotent: bool,
        mut operation: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Connection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let attempts = async {
            let mut attempt = 0;
            loop {
                let result = match self.connection().await {
                    Ok(connection) => operation(connection).await,
                    Err(error) => Err(error),
                };
                match result {
                    Ok(value) => return Ok(value),
                    Err(error) if attempt < self.max_retries && retryable(&error, idempotent) => {
                        tracing::debug!(%error, attempt, what, "retrying a transient Redis error");
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                    }
                    Err(error) => return Err(store_error(what, error)),
                }
            }
        };
        match tokio::time::timeout(self.timeout, attempts).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(format!(
                "Redis did not answer {what} within {:?} (timeout)",
                self.timeout
            ))),
        }
    }

    /// The servers that hold the keyspace: the standalone server, or every Cluster master
    /// in a stable order.
    pub async fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        if !self.is_cluster() {
            return Ok(vec![Node::Standalone]);
        }
        let text: String = self
            .run("CLUSTER NODES", true, |mut c| async move {
                redis::cmd("CLUSTER").arg("NODES").query_async(&mut c).await
            })
            .await?;
        let mut masters = parse_cluster_masters(&text);
        masters.sort();
        if masters.is_empty() {
            return Err(StoreError::Unavailable(
                "the Redis Cluster reports no master".into(),
            ));
        }
        Ok(masters)
    }

    /// Runs one command on one node.
    pub async fn on_node<T: FromRedisValue>(
        &self,
        node: &Node,
        what: &str,
        command: Cmd,
    ) -> Result<T, StoreError> {
        self.run(what, true, |connection| {
            let command = command.clone();
            async move {
                match (connection, node) {
                    (Connection::Cluster(mut c), Node::Master { host, port }) => {
                        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        });
                        let value = c.route_command(command, routing).await?;
                        Ok(T::from_redis_value(value)?)
                    }
                    (mut c, _) => command.query_async(&mut c).await,
                }
            }
        })
        .await
    }
}

/// Masters of `CLUSTER NODES` output: `<id> <ip:port@cport[,host]> <flags> ...`.
fn parse_cluster_masters(text: &str) -> Vec<Node> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.split(',').any(|f| f == "master")
                || flags.contains("fail")
                || flags.contains("noaddr")
            {
                return None;
            }
            let address = fields.get(1)?.split('@').next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some(Node::Master {
                host: host.to_string(),
                port: port.parse().ok()?,
            })
        })
        .collect()
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(25u64.saturating_mul(1 << attempt.min(5)).min(500))
}

fn retryable(error: &RedisError, idempotent: bool) -> bool {
    if error.is_connection_refusal() {
        return true;
    }
    if !idempotent {
        return false;
    }
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || matches!(
            error.retry_method(),
            redis::RetryMethod::WaitAndRetry
                | redis::RetryMethod::RetryImmediately
                | redis::RetryMethod::Reconnect
        )
}

/// Maps a Redis failure to a store error that says what happened.
pub fn store_error(what: &str, error: RedisError) -> StoreError {
    if error.code() == Some("OOM") {
        return StoreError::LimitExceeded(format!(
            "Redis is out of memory (maxmemory reached) during {what}: {error}"
        ));
    }
    if error.is_timeout() {
        return StoreError::Timeout(format!("Redis timed out during {what}: {error}"));
    }
    if error.is_io_error()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_cluster_error()
        || matches!(
            error.retry_method(),
            redis::RetryMethod::WaitAndRetry | redis::RetryMethod::Reconnect
        )
    {
        return StoreError::Unavailable(format!("Redis is unreachable during {what}: {error}"));
    }
    StoreError::Internal(format!("Redis failed {what}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_masters_are_parsed_from_cluster_nodes() {
        let text = "\
a1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:30002@40002,redis-b master - 0 1 2 connected 5461-10922
c3 127.0.0.1:30003@40003 slave b2 0 1 2 connected
d4 127.0.0.1:30004@40004 master,fail - 0 1 4 disconnected
";
        assert_eq!(
            parse_cluster_masters(text),
            vec![
                Node::Master {
                    host: "127.0.0.1".into(),
                    port: 30001
                },
                Node::Master {
                    host: "127.0.0.1".into(),
                    port: 30002
                },
            ]
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(25));
        assert_eq!(backoff(1), Duration::from_millis(50));
        assert_eq!(backoff(10), Duration::from_millis(500));
    }
}
