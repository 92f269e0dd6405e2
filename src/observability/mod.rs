//! What the sidecar tells its operator: logs and traces, and metrics (the per-RPC layer
//! and the scrape endpoint are parts of the server, src/server/).

pub mod metrics;
pub mod telemetry;
