//! `grpc.health.v1` statuses: `""` says the process serves (liveness), the csai services
//! follow a periodic check of the storage backend (readiness).

use crate::store::SessionStore;
use std::sync::Arc;
use std::time::Duration;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Health service names: the process, and each csai service.
pub const SERVER: &str = "";
pub const SESSION_STORE: &str = "csai.v1.SessionStore";
pub const CHAT: &str = "csai.v1.Chat";

fn status(serving: bool) -> ServingStatus {
    if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Sets the statuses. `""` is SERVING whatever the backend does: a liveness probe on it
/// must not restart every sidecar during a backend outage that they recover from by
/// themselves (it turns NOT_SERVING only at shutdown). SessionStore follows the backend;
/// Chat needs the backend and a provider.
pub async fn report(reporter: &HealthReporter, store_serving: bool, chat_configured: bool) {
    reporter
        .set_service_status(SERVER, ServingStatus::Serving)
        .await;
    reporter
        .set_service_status(SESSION_STORE, status(store_serving))
        .await;
    reporter
        .set_service_status(CHAT, status(store_serving && chat_configured))
        .await;
}

/// Checks the backend every `interval` (each check bounded by `timeout`) and reports and
/// logs each change of the result. Runs until aborted.
pub async fn run_checks(
    store: Arc<dyn SessionStore>,
    reporter: HealthReporter,
    interval: Duration,
    timeout: Duration,
    chat_configured: bool,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<bool> = None;
    loop {
        ticks.tick().await;
        let serving = match tokio::time::timeout(timeout, store.health_check()).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                if last != Some(false) {
                    tracing::warn!(backend = store.backend(), %error, "backend health check failed");
                }
                false
            }
            Err(_) => {
                if last != Some(false) {
                    tracing::warn!(
                        backend = store.backend(),
                        ?timeout,
                        "backend health check timed out"
                    );
                }
                false
            }
        };
        if serving && last == Some(false) {
            tracing::info!(backend = store.backend(), "backend healthy again");
        }
        // Only changes are reported, so Watch streams carry transitions, not every tick.
        if last != Some(serving) {
            report(&reporter, serving, chat_configured).await;
        }
        last = Some(serving);
    }
}

/// Asks the sidecar listening on `listen` for the status of `service` (e.g. `SERVING`),
/// for container health checks; an unspecified address means loopback. Over TLS when
/// `tls` (the sidecar's own TLS settings) is set, with `dial`'s CA and client certificate.
pub async fn probe(
    listen: &crate::config::Listen,
    service: &str,
    tls: bool,
    dial: &crate::grpc::dial::DialOptions,
) -> Result<String, String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let url = match listen {
        crate::config::Listen::Tcp(address) => {
            let mut address = *address;
            if address.ip().is_unspecified() {
                address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let scheme = if tls { "grpcs" } else { "grpc" };
            format!("{scheme}://{address}")
        }
        unix => unix.to_string(),
    };
    let channel = tokio::time::timeout(Duration::from_secs(3), dial.connect(&url))
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|connected| connected)
        .map_err(|e| format!("cannot reach the sidecar on {url}: {e}"))?;
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_string(),
    });
    request.set_timeout(Duration::from_secs(3));
    let response = HealthClient::new(channel)
        .check(request)
        .await
        .map_err(|status| format!("health check of {service:?} failed: {}", status.message()))?;
    Ok(response.into_inner().status().as_str_name().to_string())
}
