//! csai-sidecar: a gRPC sidecar that keeps the chat sessions of AI customer-service bots.

pub mod model;
pub mod store;
