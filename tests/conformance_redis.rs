//! Runs the shared conformance suite against standalone Redis and a Redis Cluster.

mod common;

use csai_sidecar::store::conformance::TestStore;
use csai_sidecar::store::redis::{RedisOptions, RedisStore};
use std::sync::Arc;
use std::time::Duration;

fn options(address: String, cluster_nodes: Vec<String>) -> RedisOptions {
    RedisOptions {
        address,
        cluster_nodes,
        tls_ca_file: None,
        username: None,
        password: None,
        db: 0,
        key_prefix: "csai-test:".into(),
        timeout: Duration::from_secs(5),
        max_retries: 3,
    }
}

async fn standalone_store() -> TestStore {
    let url = common::required_env("CSAI_TEST_REDIS_URL");
    Arc::new(RedisStore::new(&options(url, vec![])).expect("redis store"))
}

async fn cluster_store() -> TestStore {
    let nodes = common::required_env("CSAI_TEST_REDIS_CLUSTER")
        .split(',')
        .map(String::from)
        .collect();
    Arc::new(RedisStore::new(&options(String::new(), nodes)).expect("redis cluster store"))
}

mod standalone {
    csai_sidecar::conformance_tests!(super::standalone_store());
}

mod cluster {
    csai_sidecar::conformance_tests!(super::cluster_store());
}
