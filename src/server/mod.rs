//! Builds the gRPC server: services, health, reflection, limits and graceful shutdown;
//! the listener's parts (tokens, TLS, load shedding, accept loops, health) live beside it.

pub mod accept;
pub mod auth;
pub mod health;
pub mod listener;
pub mod load_shed;
pub mod metrics_page;
pub mod rpc_telemetry;
pub mod tls;

use crate::chat::turn::ChatEngine;
use crate::config::Config;
use crate::grpc::chat::ChatService;
use crate::grpc::pb::chat_server::ChatServer;
use crate::grpc::pb::session_store_server::SessionStoreServer;
use crate::grpc::session_store::{Feeds, SessionStoreService};
use crate::observability::metrics;
use crate::server::auth::Tokens;
use crate::server::listener::Listener;
use crate::server::load_shed::LoadShedLayer;
use crate::server::rpc_telemetry::RpcTelemetryLayer;
use crate::service::Policy;
use crate::store::SessionStore;
use crate::store::changes::{ChangeHub, Mechanism, poller};
use crate::store::decorators::encrypted::{EncryptedStore, Keyring};
use crate::store::decorators::metered::MeteredStore;
use crate::store::decorators::notifying::NotifyingStore;
use crate::store::stats_cache::StatsCache;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Store(String),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Chat(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("auth tokens: {0}")]
    Auth(String),
    #[error("reflection descriptors are invalid: {0}")]
    Reflection(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Stops a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens the configured backend, timed, behind the encryption decorator when keys are set.
/// Connections are made lazily, so a backend that is down at start makes the sidecar
/// NOT_SERVING rather than stopping it.
pub async fn open_store(config: &Config) -> Result<Arc<dyn SessionStore>, ServeError> {
    let backend: Arc<dyn SessionStore> = Arc::new(MeteredStore::new(
        open_backend(config).await?,
        config.slow_op_threshold,
    ));
    match keyring(config)? {
        Some(keys) => Ok(Arc::new(EncryptedStore::new(backend, keys))),
        None => Ok(backend),
    }
}

/// The configured encryption keys, if any.
pub fn keyring(config: &Config) -> Result<Option<Arc<Keyring>>, ServeError> {
    config
        .encryption_keys
        .as_ref()
        .map(|keys| {
            Keyring::parse(&keys.0)
                .map(Arc::new)
                .map_err(ServeError::Store)
        })
        .transpose()
}

/// Opens the configured backend as it is, without encryption (for `rotate-keys`).
pub async fn open_backend(config: &Config) -> Result<Arc<dyn SessionStore>, ServeError> {
    config
        .storage
        .open()
        .await
        .map_err(|e| ServeError::Store(e.to_string()))
}

/// Binds the configured listen address (a TCP port or a Unix socket).
pub async fn bind(config: &Config) -> Result<Listener, ServeError> {
    Listener::bind(&config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            address: config.listen.to_string(),
            source,
        })
}

/// Serves until `shutdown` completes, then: health goes NOT_SERVING, new connections are
/// refused, in-flight RPCs get `shutdown_grace` to finish, and the function returns.
pub async fn serve(
    config: &Config,
    store: Arc<dyn SessionStore>,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::grpc::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_error =
        |e: tonic_reflection::server::Error| ServeError::Reflection(e.to_string());
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;

    let engine = ChatEngine::new(&config.chat).map_err(ServeError::Chat)?;
    let chat_configured = engine.has_default_provider();
    if !chat_configured {
        tracing::info!("no chat provider is configured: csai.v1.Chat is NOT_SERVING");
    } else if config.chat.default_provider.as_deref() == Some(crate::config::ECHO_PROVIDER) {
        // The out-of-the-box model; a production sidecar missing its model URL says so here.
        tracing::warn!(
            "no model is configured: Chat turns get the built-in echo model, which repeats \
             the user's message; set CSAI_CHAT_BASE_URL for a real one, or CSAI_CHAT_ECHO=false \
             to refuse turns"
        );
    }
    // Change feeds: the store's writes signal this sidecar's hub and the backend's bus;
    // the bus (or the poller) brings other replicas' changes in.
    let hub = ChangeHub::new(config.watch_max_watchers);
    let bus = config
        .storage
        .bus()
        .map_err(|e| ServeError::Store(e.to_string()))?;
    let mechanism = bus.mechanism();
    let store: Arc<dyn SessionStore> =
        Arc::new(NotifyingStore::new(store, hub.clone(), bus.clone()));
    let _listening = AbortOnDrop(tokio::spawn({
        let hub = hub.clone();
        async move { bus.listen(hub).await }
    }));
    let _polling = (mechanism == Mechanism::Polling).then(|| {
        AbortOnDrop(tokio::spawn(poller::run(
            store.clone(),
            hub.clone(),
            config.watch_poll_interval,
        )))
    });
    tracing::info!(
        changes = mechanism.describe(),
        "change feeds between replicas"
    );
    let (reporter, health_service) = tonic_health::server::health_reporter();
    health::report(&reporter, false, false).await;
    let checks = tokio::spawn(health::run_checks(
        store.clone(),
        reporter.clone(),
        config.health_interval,
        config.storage.shared.timeout,
        chat_configured,
    ));

    let size = config.max_grpc_message_size;
    let tokens = match &config.auth_tokens {
        Some(text) => Some(Arc::new(Tokens::parse(&text.0).map_err(ServeError::Auth)?)),
        None => None,
    };
    // Health stays open (probes cannot send tokens); the csai services and reflection
    // need a token when tokens are configured (reflection describes the whole API).
    let authenticate = move |request: tonic::Request<()>| match &tokens {
        Some(tokens) => tokens.authenticate(request),
        None => Ok(request),
    };
    let stats = StatsCache::new(store.clone(), config.stats_refresh_interval);
    let sessions = InterceptedService::new(
        SessionStoreServer::new(SessionStoreService::new(
            store.clone(),
            stats.clone(),
            Policy::from_config(config),
            Feeds {
                hub: hub.clone(),
                buffer: config.watch_buffer,
            },
        ))
        .max_decoding_message_size(size)
        .max_encoding_message_size(size),
        authenticate.clone(),
    );
    let chat = InterceptedService::new(
        ChatServer::new(ChatService::new(
            Arc::new(engine),
            store.clone(),
            Policy::from_config(config),
        ))
        .max_decoding_message_size(size)
        .max_encoding_message_size(size),
        authenticate.clone(),
    );
    let reflection_v1 = InterceptedService::new(reflection_v1, authenticate.clone());
    let reflection_v1alpha = InterceptedService::new(reflection_v1alpha, authenticate);

    let metrics_endpoint = match config.metrics_listen {
        Some(address) => {
            let listener =
                TcpListener::bind(address)
                    .await
                    .map_err(|source| ServeError::Listen {
                        address: address.to_string(),
                        source,
                    })?;
            let address = listener.local_addr().map_or(address, |bound| bound);
            tracing::info!(%address, "Prometheus metrics on /metrics");
            // A scrape reads the last figures; it never scans the store itself.
            let stats = stats.clone();
            let gauges = Arc::new(move || {
                let figures = stats.latest();
                async move { metrics::store_gauges(figures) }
            });
            Some(AbortOnDrop(tokio::spawn(metrics_page::serve(
                listener, gauges,
            ))))
        }
        None => None,
    };
    // One loop refreshes the figures for both the scrapes and the OTLP export.
    let gauge_refresh = (metrics_endpoint.is_some() || metrics::exporting_over_otlp()).then(|| {
        AbortOnDrop(tokio::spawn(
            stats.clone().refresh_forever(metrics::export_store_gauges),
        ))
    });

    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = {
        let reporter = reporter.clone();
        let hub = hub.clone();
        async move {
            shutdown.await;
            checks.abort();
            // Watch streams would hold the shutdown for its whole grace: they end now,
            // with UNAVAILABLE, and their clients resume on another replica.
            hub.close();
            for service in [health::SERVER, health::SESSION_STORE, health::CHAT] {
                reporter
                    .set_service_status(service, ServingStatus::NotServing)
                    .await;
            }
            tracing::info!("shutting down: health is NOT_SERVING, finishing in-flight RPCs");
            let _ = stopping_tx.send(());
        }
    };

    let address = listener.address();
    tracing::info!(%address, backend = store.backend(), "csai-sidecar serving");
    let router = tonic::transport::Server::builder()
        // Outermost first: shed RPCs are still counted and traced.
        .layer(RpcTelemetryLayer)
        .layer(LoadShedLayer::new(config.max_concurrent_requests))
        .add_service(health_service)
        .add_optional_service(config.reflection.then_some(reflection_v1))
        .add_optional_service(config.reflection.then_some(reflection_v1alpha))
        .add_service(sessions)
        .add_service(chat);
    let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match (listener, &config.tls) {
            (Listener::Tcp(listener), Some(files)) => {
                let acceptor = tls::acceptor(files).map_err(ServeError::Tls)?;
                tracing::info!(
                    mutual = files.client_ca.is_some(),
                    "TLS on; certificate reloaded when its files change"
                );
                Box::pin(
                    router.serve_with_incoming_shutdown(tls::incoming(listener, acceptor), signal),
                )
            }
            (Listener::Tcp(listener), None) => {
                Box::pin(router.serve_with_incoming_shutdown(accept::incoming(listener), signal))
            }
            // The socket file is removed when the server future, which owns it, is dropped.
            (Listener::Unix(listener, file), _) => Box::pin(async move {
                let served = router
                    .serve_with_incoming_shutdown(accept::incoming_unix(listener), signal)
                    .await;
                drop(file);
                served
            }),
        };
    tokio::pin!(server);

    tokio::select! {
        result = &mut server => result?,
        Ok(()) = stopping_rx => {
            match tokio::time::timeout(config.shutdown_grace, &mut server).await {
                Ok(result) => result?,
                Err(_) => tracing::warn!(
                    grace = ?config.shutdown_grace,
                    "shutdown grace period over; closing RPCs still in flight"
                ),
            }
        }
    }
    drop((metrics_endpoint, gauge_refresh));
    tracing::info!("csai-sidecar stopped");
    Ok(())
}
