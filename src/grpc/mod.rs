//! The gRPC edge: generated code, proto <-> domain conversion, error mapping and services.

pub mod chat;
pub mod chat_convert;
pub mod convert;
pub mod dial;
pub mod errors;
pub mod export_import;
pub mod record_rpcs;
pub mod session_store;
pub mod sidecar_client;
pub mod watch_rpcs;

/// Code generated from `proto/csai/v1`.
#[allow(clippy::all)] // generated code; the proto comments are written for every language
pub mod pb {
    tonic::include_proto!("csai.v1");

    /// Encoded descriptors of the csai.v1 files (and their imports), for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/csai_descriptor.bin"));
}
