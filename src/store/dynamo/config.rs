//! The DynamoDB section of the configuration: its keys, the options they give, and the
//! registry entry that opens the store.

use crate::settings::{ConfigError, Key, Values, key};
use crate::store::open::{Backend, Configured, Shared};
use crate::store::{SessionStore, StoreResult};
use std::sync::Arc;
use std::time::Duration;

/// The registry entry (src/store/open.rs).
pub static BACKEND: Backend = Backend {
    name: "dynamo",
    aliases: &["dynamodb"],
    persistent: true,
    keys: KEYS,
    configure: |values, shared| Ok(Box::new(DynamoOptions::read(values, shared)?)),
};

/// The DynamoDB keys.
pub const KEYS: &[Key] = &[
    key(
        "dynamo_region",
        "CSAI_DYNAMO_REGION",
        "us-east-1",
        "DynamoDB region",
    ),
    key(
        "dynamo_table",
        "CSAI_DYNAMO_TABLE",
        "cs_ai_sessions",
        "DynamoDB table",
    ),
    key(
        "dynamo_endpoint",
        "CSAI_DYNAMO_ENDPOINT",
        "",
        "DynamoDB endpoint URL (local testing, VPC endpoints); no instance-metadata lookups when set",
    ),
    key(
        "dynamo_create_table",
        "CSAI_DYNAMO_CREATE_TABLE",
        "false",
        "create the DynamoDB table (on-demand, TTL on `ttl`) at start if it is missing",
    ),
];

/// How to reach DynamoDB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamoOptions {
    pub region: String,
    pub table: String,
    /// Custom endpoint (local testing, VPC endpoints). When set, credentials come from
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` or are placeholders: never from instance
    /// metadata.
    pub endpoint: Option<String>,
    /// Create the table (on-demand billing, TTL on `ttl`) at start if it is missing.
    pub create_table: bool,
    /// Bound of one operation, retries included.
    pub timeout: Duration,
    /// Retries of a throttled or failed request (the SDK's standard retry mode).
    pub max_retries: u32,
}

impl DynamoOptions {
    /// Reads the section.
    pub fn read(values: &Values, shared: &Shared) -> Result<Self, ConfigError> {
        Ok(Self {
            region: values.text("dynamo_region"),
            table: values.text("dynamo_table"),
            endpoint: values.optional_text("dynamo_endpoint"),
            create_table: values.boolean("dynamo_create_table")?,
            timeout: shared.timeout,
            max_retries: shared.max_retries,
        })
    }
}

#[async_trait::async_trait]
impl Configured for DynamoOptions {
    async fn open(&self) -> StoreResult<Arc<dyn SessionStore>> {
        Ok(Arc::new(super::DynamoStore::new(self).await?))
    }

    fn bus(&self) -> StoreResult<Arc<dyn crate::store::changes::ChangeBus>> {
        use crate::store::changes::{Mechanism, NoBus};
        Ok(Arc::new(NoBus(Mechanism::Polling)))
    }
}
