//! A SessionStore client of a running sidecar, for the commands that read from or write to
//! one (`grpc://` / `grpcs://` locations): it speaks proto and hands back domain types.

use crate::domain::{Session, SessionId};
use crate::grpc::dial::{Authorize, DialOptions};
use crate::grpc::pb;
use crate::grpc::pb::session_store_client::SessionStoreClient;
use crate::service::Policy;
use crate::transfer::{Existing, Imported};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Sessions as they arrive, or why one could not be read.
pub type Sessions<'a> = Pin<Box<dyn Stream<Item = Result<Session, String>> + Send + 'a>>;

/// A connection to a sidecar that sends the token, if one is configured, on every call.
pub struct SidecarClient(SessionStoreClient<InterceptedService<Channel, Authorize>>);

impl SidecarClient {
    /// Connects to `grpc://host:port` (or `grpcs://` for TLS) with `dial`'s token and TLS.
    pub async fn connect(url: &str, dial: &DialOptions) -> Result<Self, String> {
        let channel = dial.connect(url).await?;
        Ok(Self(
            SessionStoreClient::with_interceptor(channel, dial.authorize()?)
                .max_decoding_message_size(usize::MAX),
        ))
    }

    /// How many live sessions the sidecar holds (GetStats), if it says.
    pub async fn session_count(&mut self) -> Option<u64> {
        let stats = self
            .0
            .get_stats(pb::GetStatsRequest::default())
            .await
            .ok()?;
        Some(stats.into_inner().active_sessions)
    }

    /// Every live session, whole (ExportSessions), each checked like an import.
    pub async fn sessions<'a>(&'a mut self, policy: &'a Policy) -> Result<Sessions<'a>, String> {
        let stream = self
            .0
            .export_sessions(pb::ExportSessionsRequest::default())
            .await
            .map_err(|e| e.message().to_string())?
            .into_inner();
        Ok(Box::pin(stream.map(move |item| {
            let exported = item.map_err(|e| e.message().to_string())?;
            crate::grpc::export_import::session_of(exported, policy, "session")
                .map(|(session, _)| session)
                .map_err(|e| e.message().to_string())
        })))
    }

    /// Writes one session (ImportSessions), which the sidecar checks by its import rules.
    pub async fn import(
        &mut self,
        session: &Session,
        ttl: Duration,
        existing: Existing,
    ) -> Imported {
        let request = pb::ImportSessionsRequest {
            session: Some(pb::ExportedSession {
                session: Some(crate::grpc::convert::session_to_proto(session.clone())),
                remaining_ttl: Some(proto_duration(ttl)),
            }),
            existing: match existing {
                Existing::Skip => pb::ExistingSessions::Skip,
                Existing::Overwrite => pb::ExistingSessions::Overwrite,
                Existing::Fail => pb::ExistingSessions::Fail,
            } as i32,
        };
        match self
            .0
            .import_sessions(futures::stream::iter([request]))
            .await
        {
            Ok(response) => outcome_of(response.into_inner()),
            Err(status) => Imported::Failed(status.message().to_string()),
        }
    }

    /// The session with this id as the sidecar holds it now, if it exists.
    pub async fn get(
        &mut self,
        id: &SessionId,
        policy: &Policy,
    ) -> Result<Option<Session>, String> {
        let request = pb::GetSessionRequest {
            session_id: id.as_str().to_string(),
            window: None,
            ..Default::default()
        };
        match self.0.get_session(request).await {
            Ok(response) => {
                let exported = pb::ExportedSession {
                    session: response.into_inner().session,
                    remaining_ttl: None,
                };
                crate::grpc::export_import::session_of(exported, policy, "session")
                    .map(|(found, _)| Some(found))
                    .map_err(|e| e.message().to_string())
            }
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(status.message().to_string()),
        }
    }
}

fn proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: duration.subsec_nanos() as i32,
    }
}

fn outcome_of(response: pb::ImportSessionsResponse) -> Imported {
    use pb::import_outcome::Result as Kind;
    match response.outcomes.into_iter().next() {
        Some(o) if o.result == Kind::Imported as i32 => Imported::Written,
        Some(o) if o.result == Kind::Skipped as i32 => Imported::Skipped(o.error),
        Some(o) => Imported::Failed(o.error),
        None => Imported::Failed("the sidecar answered no outcome".into()),
    }
}
