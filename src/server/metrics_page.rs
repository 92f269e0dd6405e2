//! The Prometheus scrape endpoint: `GET /metrics` (and HEAD) on its own port, nothing else.

use crate::observability::metrics::{self, Labels};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `GET /metrics` on `listener` until the task is dropped. `gauges` is called at
/// every scrape (for store-wide figures such as active sessions).
pub async fn serve<F, Fut>(listener: TcpListener, gauges: Arc<F>)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Vec<(&'static str, Labels, f64)>> + Send,
{
    loop {
        let (mut stream, _) = super::accept::accept(&listener, "metrics").await;
        let gauges = gauges.clone();
        tokio::spawn(async move {
            let head = read_head(&mut stream).await;
            let (status, body, send_body) = match Request::parse(&head) {
                Request::Metrics { head_only } => (
                    "200 OK",
                    metrics::global().render(&gauges().await) + &metrics::process_metrics(),
                    !head_only,
                ),
                Request::OtherMethod => (
                    "405 Method Not Allowed",
                    "only GET and HEAD are served here\n".to_string(),
                    true,
                ),
                Request::OtherPath => (
                    "404 Not Found",
                    "only /metrics is served here\n".to_string(),
                    true,
                ),
            };
            let mut response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            if send_body {
                response.push_str(&body);
            }
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// What an HTTP request to the metrics port asks for.
#[derive(Debug, PartialEq)]
enum Request {
    Metrics { head_only: bool },
    OtherMethod,
    OtherPath,
}

impl Request {
    /// Reads the request line; a query string (`/metrics?name[]=...`, as some scrapers
    /// send) does not change the answer.
    fn parse(head: &str) -> Self {
        let mut words = head.lines().next().unwrap_or("").split(' ');
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        match (method, path) {
            (_, path) if path != "/metrics" => Self::OtherPath,
            ("GET", _) => Self::Metrics { head_only: false },
            ("HEAD", _) => Self::Metrics { head_only: true },
            _ => Self::OtherMethod,
        }
    }
}

/// The request line and headers: read until the blank line (a request may arrive in
/// several pieces), at most 8 KiB, waiting at most 5 s.
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    let reading = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => head.extend_from_slice(&buffer[..read]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), reading).await;
    String::from_utf8_lossy(&head).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_requests_are_read_by_method_and_path() {
        let metrics = |head_only| Request::Metrics { head_only };
        assert_eq!(Request::parse("GET /metrics HTTP/1.1\r\n"), metrics(false));
        assert_eq!(
            Request::parse("GET /metrics?x=1 HTTP/1.1\r\n"),
            metrics(false)
        );
        assert_eq!(Request::parse("HEAD /metrics HTTP/1.1\r\n"), metrics(true));
        assert_eq!(
            Request::parse("POST /metrics HTTP/1.1\r\n"),
            Request::OtherMethod
        );
        assert_eq!(
            Request::parse("GET /metricsx HTTP/1.1\r\n"),
            Request::OtherPath
        );
        assert_eq!(Request::parse(""), Request::OtherPath);
    }
}
