//! Runs the shared conformance suite against standalone Redis and a Redis Cluster.

use crate::common;

use csai_sidecar::conformance::TestStore;
use csai_sidecar::store::redis::{RedisOptions, RedisStore};
use std::sync::Arc;

fn options(address: String, cluster_nodes: Vec<String>) -> RedisOptions {
    RedisOptions {
        cluster_nodes,
        ..common::redis_options(address, "csai-test:")
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
