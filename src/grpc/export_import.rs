//! ExportSessions and ImportSessions: whole sessions over gRPC streams.

use crate::domain::{Message, Session, SessionId};
use crate::grpc::convert::{self, invalid, session_to_proto};
use crate::grpc::errors::status_of;
use crate::grpc::pb;
use crate::service::{Policy, import};
use crate::store::SessionStore;
use crate::transfer::{self, Existing, Imported};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tonic::{Status, Streaming};
use tracing::Instrument;

/// Streams every live session; the export runs in its own task and stops when the
/// client goes away.
pub fn export(
    store: Arc<dyn SessionStore>,
    prefix: String,
) -> BoxStream<'static, Result<pb::ExportedSession, Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let task = async move {
        let sessions = transfer::export(store, prefix);
        futures::pin_mut!(sessions);
        while let Some(item) = sessions.next().await {
            let message = item.map_err(status_of).map(|session| pb::ExportedSession {
                remaining_ttl: Some(prost_types::Duration {
                    seconds: transfer::remaining_ttl(&session).as_secs() as i64,
                    nanos: transfer::remaining_ttl(&session).subsec_nanos() as i32,
                }),
                session: Some(session_to_proto(session)),
            });
            let failed = message.is_err();
            if tx.send(message).await.is_err() || failed {
                return;
            }
        }
    };
    tokio::spawn(task.in_current_span());
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Imports every session of the stream and answers with the outcomes.
pub async fn import(
    store: &dyn SessionStore,
    policy: &Policy,
    mut requests: Streaming<pb::ImportSessionsRequest>,
) -> Result<pb::ImportSessionsResponse, Status> {
    let mut response = pb::ImportSessionsResponse::default();
    let mut index = 0;
    while let Some(request) = requests.message().await? {
        let field = format!("sessions[{index}]");
        index += 1;
        let existing = match pb::ExistingSessions::try_from(request.existing) {
            Ok(pb::ExistingSessions::Skip) => Existing::Skip,
            Ok(pb::ExistingSessions::Overwrite) => Existing::Overwrite,
            Ok(pb::ExistingSessions::Fail | pb::ExistingSessions::Unspecified) => Existing::Fail,
            Err(_) => return Err(invalid(&format!("{field}.existing"), "unknown value")),
        };
        let exported = request.session.unwrap_or_default();
        let (session, ttl) = match session_of(exported, policy, &field) {
            Ok(parsed) => parsed,
            Err(status) => {
                let id = String::new();
                record(
                    &mut response,
                    id,
                    Imported::Failed(status.message().to_string()),
                );
                continue;
            }
        };
        let outcome = transfer::import(store, &session, ttl, existing).await;
        record(&mut response, session.id.as_str().to_string(), outcome);
    }
    Ok(response)
}

fn record(response: &mut pb::ImportSessionsResponse, session_id: String, outcome: Imported) {
    use pb::import_outcome::Result as Kind;
    let (result, error) = match outcome {
        Imported::Written => {
            response.imported += 1;
            (Kind::Imported, String::new())
        }
        Imported::Skipped(why) => {
            response.skipped += 1;
            (Kind::Skipped, why)
        }
        Imported::Failed(why) => {
            response.failed += 1;
            (Kind::Failed, why)
        }
    };
    response.outcomes.push(pb::ImportOutcome {
        session_id,
        result: result as i32,
        error,
    });
}

/// A validated session and its TTL from an ExportedSession: converted here, checked by
/// the service's import rules (the same the CLI's restore and migrations use).
pub fn session_of(
    raw: pb::ExportedSession,
    policy: &Policy,
    field: &str,
) -> Result<(Session, Duration), Status> {
    let session = raw
        .session
        .ok_or_else(|| invalid(&format!("{field}.session"), "is required"))?;
    let ttl = match raw.remaining_ttl {
        Some(ttl) => Duration::try_from(ttl)
            .map_err(|_| invalid(&format!("{field}.remaining_ttl"), "must not be negative"))?,
        None => policy.default_ttl,
    };
    let messages = stored_messages(session.messages, &format!("{field}.session.messages"))?;
    let system_messages = stored_messages(
        session.system_messages,
        &format!("{field}.session.system_messages"),
    )?;
    let now = SystemTime::now();
    let session = Session {
        // Checked with the rest by `import::checked_session` below.
        id: SessionId::new(session.session_id),
        message_count: messages.len() as u64,
        usage_total: crate::domain::UsageTotal::of(messages.iter().map(|m| &m.body)),
        messages,
        system_messages,
        state: session
            .state
            .map(|s| convert::struct_to_json(s, &format!("{field}.session.state")))
            .transpose()?
            .unwrap_or_default(),
        version: 0,
        create_time: now,
        update_time: now,
        expire_time: now + ttl,
    };
    Ok(import::checked_session(session, ttl, policy, field)?)
}

/// Proto messages as stored messages: an unset seq is its position, an unset time now.
fn stored_messages(list: Vec<pb::Message>, field: &str) -> Result<Vec<Message>, Status> {
    list.into_iter()
        .enumerate()
        .map(|(i, m)| {
            let field = format!("{field}[{i}]");
            let seq = if m.seq == 0 { i as u64 + 1 } else { m.seq };
            let time = match m.create_time {
                None => SystemTime::now(),
                Some(t) => SystemTime::try_from(t)
                    .map_err(|_| invalid(&format!("{field}.create_time"), "is not a valid time"))?,
            };
            Ok(convert::message_body(m, &field)?.stored(seq, time))
        })
        .collect()
}
