//! csai-sidecar: a gRPC sidecar that keeps the chat sessions of AI customer-service bots.

pub mod chat;
pub mod cli;
pub mod config;
pub mod conformance;
#[cfg(feature = "redis")]
pub mod cs_ai;
pub mod domain;
pub mod files;
pub mod grpc;
pub mod observability;
pub mod operations;
pub mod progress;
pub mod records;
pub mod server;
pub mod service;
pub mod settings;
pub mod store;
pub mod tokens;
pub mod transfer;
