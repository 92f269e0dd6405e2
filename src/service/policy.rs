//! The policy the service applies the same way for every backend: default and longest
//! TTLs, sliding expiry on read, request limits, record retention, page sizes.

use crate::config::{Config, RequestLimits};
use crate::domain::WriteOptions;
use crate::service::validate::{self, ValidationError};
use std::time::Duration;

/// Default ListSessions page size when the request leaves it at 0.
const DEFAULT_PAGE_SIZE: u32 = 100;

/// Policy the service applies the same way for every backend.
#[derive(Clone, Debug)]
pub struct Policy {
    pub default_ttl: Duration,
    pub sliding_ttl_on_read: bool,
    pub limits: RequestLimits,
    /// How long learning data and security logs are kept.
    pub record_retention: Duration,
    /// How token budgets count when the request names no OpenAI model.
    pub token_encoding: crate::tokens::Encoding,
}

impl Policy {
    /// The policy part of a configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            default_ttl: config.session_ttl,
            sliding_ttl_on_read: config.sliding_ttl_on_read,
            limits: config.limits.clone(),
            record_retention: config.record_retention,
            token_encoding: config.token_encoding,
        }
    }

    /// A listing's page size: 0 means the default, more than max_page_size is an error.
    pub fn page_size(&self, requested: u32) -> Result<u32, ValidationError> {
        let max = self.limits.max_page_size;
        match requested {
            0 => Ok(DEFAULT_PAGE_SIZE.min(max)),
            n if n > max => Err(ValidationError::new(
                "page_size",
                format!("{n} is more than the maximum of {max} (max_page_size)"),
            )),
            n => Ok(n),
        }
    }

    /// A write's options: the requested TTL (else the default) within the limits.
    pub fn write_options(
        &self,
        expected_version: Option<u64>,
        ttl: Option<Duration>,
    ) -> Result<WriteOptions, ValidationError> {
        Ok(WriteOptions {
            expected_version,
            ttl: validate::ttl(ttl, self.default_ttl, &self.limits, "ttl")?,
        })
    }
}
