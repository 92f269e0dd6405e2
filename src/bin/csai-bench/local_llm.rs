//! A local OpenAI-compatible model for the chat-turn rows: answers every request at once
//! with the same short completion, over plain HTTP/1.1 with keep-alive, so a turn's cost
//! is the sidecar's and the HTTP round trip's, not a model's.

use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The answer's text, as the model sends it.
pub const ANSWER: &str = "Your order ships today.";

/// Starts the model on an ephemeral port; returns its base URL (`http://…/v1`).
pub async fn start() -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot start the bench model: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            tokio::spawn(serve(socket));
        }
    });
    Ok(format!("http://{address}/v1"))
}

async fn serve(socket: TcpStream) {
    let body = serde_json::json!({
        "id": "bench", "object": "chat.completion", "model": "bench-model",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": ANSWER}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let (reader, mut writer) = socket.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    let mut request_body = Vec::new();
    loop {
        // Request line and headers; only Content-Length matters.
        let mut length = 0usize;
        loop {
            line.clear();
            match tokio::time::timeout(Duration::from_secs(300), reader.read_line(&mut line)).await
            {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        request_body.resize(length, 0);
        if reader.read_exact(&mut request_body).await.is_err()
            || writer.write_all(response.as_bytes()).await.is_err()
        {
            return;
        }
    }
}
