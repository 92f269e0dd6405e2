//! End to end over real sockets: the gRPC services, chat turns against a scripted model, the CLI, operations, security, observability, clients, deployment files and docs.
//!
//! One test binary (one link of the SDKs) with a module per area; run one area with
//! `cargo test --test e2e <module>::`.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod bench;
mod chat_service;
mod chat_turns_memory;
mod chat_turns_redis;
mod cli;
mod clients;
mod compaction;
mod deploy;
mod docs;
mod dynamo_e2e;
mod encryption;
mod grpc_server;
mod grpc_session_store;
mod migrate_cs_ai;
mod mongo_e2e;
mod observability;
mod operations;
mod otlp_export;
mod overload;
mod redis_e2e;
mod reliability;
mod sql_e2e;
mod tls;
mod token_windows;
mod unix_socket;
mod watch;
