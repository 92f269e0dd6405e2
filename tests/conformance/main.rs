//! Every backend and decorator against the one conformance suite of `csai_sidecar::conformance`, and the in-memory store against a reference model (property test).
//!
//! One test binary (one link of the SDKs) with a module per area; run one area with
//! `cargo test --test conformance <module>::`.

#[path = "../common/mod.rs"]
mod common;

mod dynamo;
mod encrypted;
mod memory;
mod model_check;
mod mongo;
mod postgres;
mod redis;
mod sqlite;
mod tenant;
