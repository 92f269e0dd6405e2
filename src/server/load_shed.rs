//! Load shedding: at most `max_concurrent_requests` RPCs in flight; the next ones are
//! refused at once with RESOURCE_EXHAUSTED instead of queueing without bound. Health
//! `Watch` and reflection streams have small pools of their own, so neither can take
//! capacity from the csai services (nor starve each other). Change feeds (WatchSession,
//! WatchSessions) are long-lived and idle mostly: the hub admits at most
//! `watch_max_watchers` of them, and they never take a place of the requests.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Open health `Watch` streams at most; a probe's `Check` is never limited.
pub const MAX_HEALTH_WATCHES: usize = 64;
/// Open reflection streams at most (tools such as grpcurl hold one per command).
pub const MAX_REFLECTION_STREAMS: usize = 8;

/// One limited pool of in-flight calls.
#[derive(Clone, Debug)]
struct Pool {
    permits: Arc<Semaphore>,
    limit: usize,
    /// What the limit is called in the refusal, so the operator knows what to change.
    name: &'static str,
}

impl Pool {
    fn new(limit: usize, name: &'static str) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            name,
        }
    }
}

/// Wraps the server's routes in [`LoadShed`].
#[derive(Clone, Debug)]
pub struct LoadShedLayer {
    requests: Option<Pool>,
    health_watches: Pool,
    reflection: Pool,
}

impl LoadShedLayer {
    /// At most `limit` csai RPCs at once (0 means no limit), beside the fixed pools of
    /// health watches and reflection streams.
    pub fn new(limit: usize) -> Self {
        Self {
            requests: (limit > 0).then(|| Pool::new(limit, "max_concurrent_requests")),
            health_watches: Pool::new(MAX_HEALTH_WATCHES, "open health Watch streams"),
            reflection: Pool::new(MAX_REFLECTION_STREAMS, "open reflection streams"),
        }
    }

    /// The pool a call draws from; `None` for the unlimited health `Check`, because a
    /// shed probe would restart the Pod.
    fn pool_of(&self, path: &str) -> Option<&Pool> {
        if path == "/grpc.health.v1.Health/Watch" {
            Some(&self.health_watches)
        } else if path.starts_with("/grpc.health.v1.") {
            None
        } else if path.starts_with("/grpc.reflection.") {
            Some(&self.reflection)
        } else if path == "/csai.v1.SessionStore/WatchSession"
            || path == "/csai.v1.SessionStore/WatchSessions"
        {
            None
        } else {
            self.requests.as_ref()
        }
    }
}

impl<S> tower_layer::Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            pools: self.clone(),
        }
    }
}

/// The service [`LoadShedLayer`] wraps around the server's routes.
#[derive(Clone, Debug)]
pub struct LoadShed<S> {
    inner: S,
    pools: LoadShedLayer,
}

impl<S, B> tower_service::Service<http::Request<B>> for LoadShed<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let permit = match self.pools.pool_of(request.uri().path()) {
            Some(pool) => match pool.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let status = tonic::Status::resource_exhausted(format!(
                        "overloaded: {} calls are in flight ({}); retry with backoff",
                        pool.limit, pool.name
                    ));
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            },
            None => None,
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            // A streaming RPC stays in flight until its response stream ends.
            Ok(response.map(|inner| {
                tonic::body::Body::new(WithPermit {
                    inner,
                    _permit: permit,
                })
            }))
        })
    }
}

/// A response body that holds its RPC's permit until it is dropped.
struct WithPermit {
    inner: tonic::body::Body,
    _permit: Option<OwnedSemaphorePermit>,
}

impl http_body::Body for WithPermit {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
