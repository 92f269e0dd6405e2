//! How the SDK's errors become store errors: outages and throttling are transient, a lost
//! condition is a race to retry.

use super::*;

pub(super) fn sdk_error<E: ProvideErrorMetadata + std::fmt::Debug>(
    what: &str,
    error: SdkError<E>,
) -> StoreError {
    match &error {
        SdkError::TimeoutError(_) => {
            StoreError::Timeout(format!("DynamoDB timed out during {what}"))
        }
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            StoreError::Unavailable(format!("DynamoDB is unreachable during {what}: {error:?}"))
        }
        _ => {
            let code = error.code().unwrap_or("unknown").to_string();
            let message = error.message().unwrap_or("").to_string();
            match code.as_str() {
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "InternalServerError"
                | "ServiceUnavailable" => StoreError::Unavailable(format!(
                    "DynamoDB is throttling or failing {what}: {code}: {message}"
                )),
                "ValidationException" if message.contains("size") => {
                    StoreError::LimitExceeded(format!(
                        "DynamoDB refused {what}: {message} (an item is limited to 400 KB: system messages, state \
                     and the last request ids share one item)"
                    ))
                }
                "ResourceNotFoundException" => StoreError::Unavailable(format!(
                    "DynamoDB table missing during {what}: {message}; create it (deploy/dynamodb-table.json) \
                     or set dynamo_create_table = true"
                )),
                _ => StoreError::Internal(format!("DynamoDB failed {what}: {code}: {message}")),
            }
        }
    }
}

/// True when a transaction was cancelled because a condition failed (another writer won).
pub(super) fn lost_race<E: ProvideErrorMetadata>(error: &SdkError<E>) -> bool {
    matches!(
        error.code(),
        Some(
            "TransactionCanceledException"
                | "ConditionalCheckFailedException"
                | "TransactionConflictException"
        )
    )
}
