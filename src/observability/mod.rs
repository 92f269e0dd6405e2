//! What the sidecar tells its operator: logs and traces, metrics, and the per-RPC span,
//! count and latency.

pub mod metrics;
pub mod rpc_telemetry;
pub mod telemetry;
