//! The results: one row per measured operation, printed as a table or as JSON.

use crate::load::Samples;
use serde::Serialize;
use std::collections::BTreeMap;

/// One line of the results table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub requests: u64,
    pub errors: u64,
    /// The failed requests by gRPC code (or error text).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// A note on what the row compares with (e.g. "0.82x the gRPC floor").
    pub note: String,
}

impl Row {
    pub fn new(name: impl Into<String>, samples: &Samples) -> Self {
        Self {
            name: name.into(),
            ops_per_sec: samples.throughput(),
            p50_ms: samples.quantile_ms(0.5),
            p90_ms: samples.quantile_ms(0.9),
            p99_ms: samples.quantile_ms(0.99),
            p999_ms: samples.quantile_ms(0.999),
            requests: samples.latencies_us.len() as u64 + samples.error_count(),
            errors: samples.error_count(),
            errors_by_kind: samples.errors.clone(),
            note: String::new(),
        }
    }
}

/// The rows as an aligned text table.
pub fn table(rows: &[Row]) -> String {
    let name_width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(9);
    let mut out = format!(
        "{:<name_width$} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>6}  note\n",
        "operation", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "requests", "errors"
    );
    for row in rows {
        let errors: Vec<String> = row
            .errors_by_kind
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        let note = match errors.is_empty() {
            true => row.note.clone(),
            false => format!("{} (errors: {})", row.note, errors.join(", ")),
        };
        out.push_str(&format!(
            "{:<name_width$} {:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9} {:>6}  {}\n",
            row.name,
            row.ops_per_sec,
            row.p50_ms,
            row.p90_ms,
            row.p99_ms,
            row.p999_ms,
            row.requests,
            row.errors,
            note
        ));
    }
    out
}
