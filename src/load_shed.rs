//! Load shedding: at most `max_concurrent_requests` RPCs in flight; the next ones are
//! refused at once with RESOURCE_EXHAUSTED instead of queueing without bound.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Wraps the server's routes in [`LoadShed`].
#[derive(Clone, Debug)]
pub struct LoadShedLayer {
    permits: Option<Arc<Semaphore>>,
    limit: usize,
}

impl LoadShedLayer {
    /// At most `limit` RPCs at once; 0 means no limit.
    pub fn new(limit: usize) -> Self {
        Self {
            permits: (limit > 0).then(|| Arc::new(Semaphore::new(limit))),
            limit,
        }
    }
}

impl<S> tower_layer::Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            permits: self.permits.clone(),
            limit: self.limit,
        }
    }
}

/// The service [`LoadShedLayer`] wraps around the server's routes.
#[derive(Clone, Debug)]
pub struct LoadShed<S> {
    inner: S,
    permits: Option<Arc<Semaphore>>,
    limit: usize,
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
        // Probes must answer under overload: a shed health check would restart the Pod.
        let exempt = request.uri().path().starts_with("/grpc.health.v1.");
        let permit = match &self.permits {
            Some(permits) if !exempt => match permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let status = tonic::Status::resource_exhausted(format!(
                        "overloaded: {} RPCs are in flight (max_concurrent_requests); retry \
                         with backoff",
                        self.limit
                    ));
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            },
            _ => None,
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
