//! csai-sidecar: a gRPC sidecar that keeps the chat sessions of AI customer-service bots.

pub mod chat;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dial;
pub mod files;
pub mod grpc;
pub mod migrate;
pub mod model;
pub mod observability;
pub mod records;
pub mod server;
pub mod service;
pub mod store;
pub mod transfer;
