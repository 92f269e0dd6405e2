//! How the commands dial a running sidecar (`grpc://` or `grpcs://host:port`, or
//! `unix:///path`): the bearer token and TLS/mTLS they need to reach a protected one.

use std::path::PathBuf;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// What a command needs to call a protected sidecar.
#[derive(Clone, Debug, Default)]
pub struct DialOptions {
    /// Sent as `authorization: Bearer <token>`; from `CSAI_SIDECAR_TOKEN` or a file,
    /// never a flag (flags are visible to every user in `ps`).
    pub token: Option<String>,
    /// The CA of the sidecar's certificate; TLS when set (else by a `grpcs://` URL,
    /// against the public web roots).
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key, for a sidecar that requires mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name the sidecar's certificate must carry; the URL's host when unset.
    pub server_name: Option<String>,
}

impl DialOptions {
    /// Reads the token from `token_file` or, without one, from `CSAI_SIDECAR_TOKEN`.
    pub fn read_token(token_file: Option<&str>) -> Result<Option<String>, String> {
        let token = match token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the sidecar token file {path}: {e}"))?,
            ),
            None => std::env::var("CSAI_SIDECAR_TOKEN").ok(),
        };
        Ok(token
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()))
    }

    /// A channel to `url` (`grpc://host:port`, `grpcs://host:port` or `unix:///path`).
    pub async fn connect(&self, url: &str) -> Result<Channel, String> {
        if let Some(path) = url
            .strip_prefix("unix://")
            .or_else(|| url.strip_prefix("unix:"))
        {
            return connect_unix(PathBuf::from(path))
                .await
                .map_err(|e| format!("cannot connect to the sidecar at {url}: {e}"));
        }
        let (tls, address) = match (url.strip_prefix("grpc://"), url.strip_prefix("grpcs://")) {
            (Some(address), _) => (self.ca_file.is_some(), address),
            (_, Some(address)) => (true, address),
            _ => {
                return Err(format!(
                    "{url:?} is not a grpc://host:port, grpcs://host:port or unix:///path address"
                ));
            }
        };
        let scheme = if tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| format!("{url}: {e}"))?;
        if tls {
            endpoint = endpoint
                .tls_config(self.tls_config(address)?)
                .map_err(|e| format!("{url}: TLS: {e}"))?;
        }
        endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect to the sidecar at {url}: {e}"))
    }

    fn tls_config(&self, address: &str) -> Result<ClientTlsConfig, String> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
        let mut config = ClientTlsConfig::new().domain_name(
            self.server_name
                .clone()
                .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string()),
        );
        config = match &self.ca_file {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => config.with_webpki_roots(),
        };
        if let Some((cert, key)) = &self.client_cert {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(config)
    }

    /// Adds the token, if any, to every request of a client.
    pub fn authorize(&self) -> Result<Authorize, String> {
        let header =
            match &self.token {
                Some(token) => Some(MetadataValue::try_from(format!("Bearer {token}")).map_err(
                    |_| "the sidecar token holds characters a header cannot".to_string(),
                )?),
                None => None,
            };
        Ok(Authorize(header))
    }
}

/// A channel over the Unix socket at `path` (the URI only names the `:authority`).
async fn connect_unix(path: PathBuf) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://localhost")
        .connect_with_connector(UnixConnector(path))
        .await
}

/// Opens a connection to one socket path, whatever URI it is asked for.
#[derive(Clone)]
struct UnixConnector(PathBuf);

impl tower_service::Service<http::Uri> for UnixConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            Ok(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(path).await?,
            ))
        })
    }
}

/// Adds `authorization: Bearer <token>` to each request (nothing without a token).
#[derive(Clone)]
pub struct Authorize(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Authorize {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}
