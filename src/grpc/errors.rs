//! The one place where store errors become gRPC status codes.

use crate::store::StoreError;
use tonic::Status;

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

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

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
