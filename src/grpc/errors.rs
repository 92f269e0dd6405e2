//! The one place where store and turn errors become gRPC status codes.

use crate::chat::provider::ProviderError;
use crate::chat::turn::TurnError;
use crate::service::ValidationError;
use crate::service::sessions::SessionError;
use crate::store::StoreError;
use std::time::Duration;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// A request value the service refuses is INVALID_ARGUMENT, its message `field: problem`.
impl From<ValidationError> for Status {
    fn from(error: ValidationError) -> Self {
        Status::invalid_argument(error.to_string())
    }
}

/// Maps a refused or failed SessionStore request to the status a client sees.
impl From<SessionError> for Status {
    fn from(error: SessionError) -> Self {
        match error {
            SessionError::Invalid(error) => error.into(),
            SessionError::Precondition(message) => Status::failed_precondition(message),
            SessionError::Store(error) => status_of(error),
        }
    }
}

/// Maps a store error to the status a client sees, with a message that says what to do.
pub fn status_of(error: StoreError) -> Status {
    match error {
        StoreError::NotFound(id) => {
            Status::not_found(format!("session {id:?} does not exist or has expired"))
        }
        StoreError::VersionMismatch { expected, actual } => Status::aborted(format!(
            "version mismatch: expected_version is {expected} but the session is at version {actual}; \
             re-read the session and retry with its current version"
        )),
        StoreError::LimitExceeded(message) => Status::resource_exhausted(message),
        StoreError::InvalidPageToken(message) => Status::invalid_argument(format!(
            "page_token: {message}; pass the next_page_token of the previous page unchanged"
        )),
        StoreError::Unavailable(message) => Status::unavailable(format!(
            "storage backend unavailable: {message}; retry with backoff"
        )),
        StoreError::Timeout(message) => {
            Status::deadline_exceeded(format!("storage backend timed out: {message}"))
        }
        StoreError::Internal(message) => {
            Status::internal(format!("internal storage error: {message}"))
        }
    }
}

/// Maps a failed turn to the status a bot sees. Rate limits carry a RetryInfo detail.
pub fn status_of_turn(error: TurnError) -> Status {
    let message = error.to_string();
    match error {
        TurnError::Invalid(message) => Status::invalid_argument(message),
        TurnError::Precondition(_) | TurnError::NoProvider | TurnError::HandedOff { .. } => {
            Status::failed_precondition(message)
        }
        TurnError::RateLimited { limited, .. } => retry_later(message, Some(limited.retry_after)),
        TurnError::Conflict { .. } => Status::aborted(message),
        TurnError::Store(error) => status_of(error),
        TurnError::Provider(error) => match error {
            ProviderError::RateLimited { retry_after, .. } => retry_later(message, retry_after),
            ProviderError::Unavailable { .. } => Status::unavailable(message),
            ProviderError::Timeout { .. } => Status::deadline_exceeded(message),
            ProviderError::Auth { .. } => Status::failed_precondition(message),
            ProviderError::Rejected {
                status: 400 | 413 | 422,
                ..
            } => Status::invalid_argument(message),
            ProviderError::Rejected { .. } => Status::failed_precondition(message),
            ProviderError::Malformed { .. } => Status::internal(message),
        },
        TurnError::Format(_) => Status::internal(message),
        TurnError::ToolTimeout { .. } => Status::deadline_exceeded(message),
        TurnError::Cancelled(_) => Status::cancelled(message),
    }
}

/// RESOURCE_EXHAUSTED with the delay after which a retry may succeed.
fn retry_later(message: String, retry_after: Option<Duration>) -> Status {
    match retry_after {
        Some(delay) => Status::with_error_details(
            Code::ResourceExhausted,
            message,
            ErrorDetails::with_retry_info(Some(delay)),
        ),
        None => Status::resource_exhausted(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_error_has_its_code() {
        let cases = [
            (StoreError::NotFound("s".into()), Code::NotFound),
            (
                StoreError::VersionMismatch {
                    expected: 1,
                    actual: 2,
                },
                Code::Aborted,
            ),
            (
                StoreError::LimitExceeded("full".into()),
                Code::ResourceExhausted,
            ),
            (
                StoreError::InvalidPageToken("bad".into()),
                Code::InvalidArgument,
            ),
            (StoreError::Unavailable("down".into()), Code::Unavailable),
            (StoreError::Timeout("slow".into()), Code::DeadlineExceeded),
            (StoreError::Internal("bug".into()), Code::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(status_of(error.clone()).code(), code, "{error:?}");
        }
        assert!(StoreError::Unavailable(String::new()).is_transient());
        assert!(StoreError::Timeout(String::new()).is_transient());
        assert!(!StoreError::NotFound(String::new()).is_transient());
    }
}
