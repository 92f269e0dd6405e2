//! csai-sidecar: a gRPC sidecar that keeps the chat sessions of AI customer-service bots.

pub mod accept;
pub mod auth;
pub mod chat;
pub mod commands;
pub mod config;
pub mod dial;
pub mod files;
pub mod grpc;
pub mod health;
pub mod load_shed;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod records;
pub mod rpc_telemetry;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transfer;
