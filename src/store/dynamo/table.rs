//! The table: created at first use when `dynamo_create_table` is on, checked otherwise.

use super::*;

impl DynamoStore {
    /// Checks that the table exists, or creates it when configured to, once.
    pub(super) async fn ensure_ready(&self) -> StoreResult<()> {
        self.ready
            .get_or_try_init(|| async {
                let described = self
                    .client
                    .describe_table()
                    .table_name(&self.table)
                    .send()
                    .await;
                match described {
                    Ok(_) => Ok(()),
                    Err(error)
                        if error.code() == Some("ResourceNotFoundException")
                            && self.create_table =>
                    {
                        self.create_missing_table().await
                    }
                    Err(error) => Err(sdk_error("checking the table", error)),
                }
            })
            .await
            .map(|_| ())
    }

    pub(super) async fn create_missing_table(&self) -> StoreResult<()> {
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(|e| StoreError::Internal(e.to_string()))
        };
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| StoreError::Internal(e.to_string()))
        };
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .attribute_definitions(attribute("pk")?)
            .attribute_definitions(attribute("sk")?)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => {}
            // Another replica created it first.
            Err(error) if error.code() == Some("ResourceInUseException") => {}
            Err(error) => return Err(sdk_error("creating the table", error)),
        }
        for _ in 0..100 {
            let status = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| sdk_error("waiting for the table", e))?
                .table()
                .and_then(|t| t.table_status().cloned());
            if status == Some(aws_sdk_dynamodb::types::TableStatus::Active) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let ttl = TimeToLiveSpecification::builder()
            .attribute_name("ttl")
            .enabled(true)
            .build()
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(ttl)
            .send()
            .await
            .map_err(|e| sdk_error("enabling TTL", e))?;
        tracing::info!(table = %self.table, "created the DynamoDB table");
        Ok(())
    }
}
