//! Accepting connections without spinning when the process runs out of file descriptors.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// The first pause after a failed accept; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// The next connection `accept` gives. A failed accept (EMFILE, ENFILE, ENOBUFS...) fails
/// again at once until something is closed, so retrying without a pause burns a core and
/// starves the connections being served: pause, doubling, and log once per outage.
async fn next<T, F, Fut>(what: &'static str, mut accept: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<T>>,
{
    let mut pause = FIRST_PAUSE;
    loop {
        match accept().await {
            Ok(accepted) => return accepted,
            Err(error) => {
                if pause == FIRST_PAUSE {
                    tracing::warn!(listener = what, %error, "accept failed; pausing before the next");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

/// The next TCP connection on `listener` (see [`next`] for failed accepts).
pub async fn accept(listener: &TcpListener, what: &'static str) -> (TcpStream, SocketAddr) {
    next(what, || listener.accept()).await
}

/// Accepted connections with TCP_NODELAY, for tonic's `serve_with_incoming`. Without it,
/// Nagle's algorithm holds a response's last small segment until the previous one is
/// acknowledged: about a millisecond on loopback, on most RPCs.
pub fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<TcpStream>> + Send + 'static {
    futures::stream::unfold(listener, |listener| async move {
        let (stream, _) = accept(&listener, "grpc").await;
        let _ = stream.set_nodelay(true);
        Some((Ok(stream), listener))
    })
}

/// Accepted Unix-socket connections, for tonic's `serve_with_incoming`.
pub fn incoming_unix(
    listener: UnixListener,
) -> impl futures::Stream<Item = std::io::Result<UnixStream>> + Send + 'static {
    futures::stream::unfold(listener, |listener| async move {
        let (stream, _) = next("grpc-unix", || listener.accept()).await;
        Some((Ok(stream), listener))
    })
}
