//! The chat turn suite over standalone Redis (CSAI_TEST_REDIS_URL).

use crate::common;

use csai_sidecar::store::redis::RedisStore;
use std::sync::Arc;

fn redis_store() -> common::chat_suite::Store {
    let options = common::redis_options(
        common::required_env("CSAI_TEST_REDIS_URL"),
        "csai-chat-test:",
    );
    Arc::new(RedisStore::new(&options).expect("redis store"))
}

crate::chat_turn_tests!(redis_store());
