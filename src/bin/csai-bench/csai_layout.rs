//! CS-AI's Redis layout, for comparison: one JSON array per session, read whole, extended
//! and written back on every append (what the Go library's RedisStorageProvider does).

use crate::load::{self, Plan, Samples};
use serde_json::{Value, json};

/// Seeds `sessions` CS-AI sessions of `length` messages, then appends one message per
/// request under `plan`.
pub async fn append_rows(
    redis_address: &str,
    run_id: &str,
    sessions: usize,
    length: usize,
    payload: usize,
    plan: &Plan,
) -> Result<Samples, String> {
    let client =
        redis::Client::open(format!("redis://{redis_address}")).map_err(|e| e.to_string())?;
    let connection = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("cannot reach Redis at {redis_address}: {e}"))?;
    let message = |i: usize| json!({"role": "user", "content": "x".repeat(payload), "tool_calls": null, "name": format!("m{i}")});
    let keys: Vec<String> = (0..sessions.max(1))
        .map(|s| format!("csai-bench-cs-ai:{run_id}:{length}:{s}"))
        .collect();
    let seed: Vec<Value> = (0..length).map(message).collect();
    let seed = serde_json::to_string(&seed).expect("JSON");
    for key in &keys {
        let mut connection = connection.clone();
        redis::cmd("SET")
            .arg(key)
            .arg(&seed)
            .arg("EX")
            .arg(3600)
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
    }
    let label = format!("cs-ai layout at {length}");
    let new_message = serde_json::to_value(message(length)).expect("JSON");
    Ok(load::run(&label, plan, move |i| {
        let mut connection = connection.clone();
        let key = keys[i as usize % keys.len()].clone();
        let new_message = new_message.clone();
        async move {
            let stored: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut connection)
                .await
                .map_err(|e| e.to_string())?;
            let mut messages: Vec<Value> = match stored {
                Some(text) => serde_json::from_str(&text).map_err(|e| e.to_string())?,
                None => Vec::new(),
            };
            messages.push(new_message);
            let text = serde_json::to_string(&messages).map_err(|e| e.to_string())?;
            redis::cmd("SET")
                .arg(&key)
                .arg(text)
                .arg("EX")
                .arg(3600)
                .query_async::<()>(&mut connection)
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await)
}
