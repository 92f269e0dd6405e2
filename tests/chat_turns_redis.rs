//! The chat turn suite over standalone Redis (CSAI_TEST_REDIS_URL).

mod common;

use csai_sidecar::store::redis::{RedisOptions, RedisStore};
use std::sync::Arc;
use std::time::Duration;

fn redis_store() -> common::chat_suite::Store {
    let options = RedisOptions {
        address: common::required_env("CSAI_TEST_REDIS_URL"),
        cluster_nodes: Vec::new(),
        tls_ca_file: None,
        username: None,
        password: None,
        db: 0,
        key_prefix: "csai-chat-test:".into(),
        timeout: Duration::from_secs(5),
        max_retries: 3,
    };
    Arc::new(RedisStore::new(&options).expect("redis store"))
}

chat_turn_tests!(redis_store());
