//! WatchSession and WatchSessions at the edge: requests checked and scoped to the caller's
//! tenant, the service layer's feeds (service::watch) turned into proto events.

use crate::domain::Tenant;
use crate::grpc::convert::{self, timestamp};
use crate::grpc::errors::status_of;
use crate::grpc::pb;
use crate::service::validate;
use crate::service::watch::{
    self, SessionChange, SessionEvent, SessionPosition, SummaryEvent, SummaryKind, WatchError,
};
use crate::store::SessionStore;
use crate::store::changes::ChangeHub;
use crate::store::changes::hub::RegisterError;
use crate::store::decorators::tenant::{stored_id, unscoped_id};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::sync::Arc;
use tonic::Status;

/// A stream of proto events.
pub type Events<T> = BoxStream<'static, Result<T, Status>>;

fn status_of_watch(error: WatchError) -> Status {
    match error {
        WatchError::Invalid(error) => error.into(),
        WatchError::Register(RegisterError::TooManyWatchers(limit)) => {
            Status::resource_exhausted(format!(
                "{limit} watch streams are open on this sidecar (watch_max_watchers); \
                 close one or retry later"
            ))
        }
        WatchError::Register(RegisterError::Closed) | WatchError::Closing => Status::unavailable(
            "the sidecar is shutting down; watch again (another replica) with the last resume_token",
        ),
        WatchError::Store(error) => status_of(error),
        WatchError::FellBehind { limit } => Status::resource_exhausted(format!(
            "more than {limit} sessions changed before this stream read them (watch_buffer); \
             watch again with the resume_token of the FELL_BEHIND event"
        )),
    }
}

/// WatchSession for the caller `tenant`, over its scoped `store`.
pub fn watch_session(
    hub: &Arc<ChangeHub>,
    store: Arc<dyn SessionStore>,
    tenant: Option<&Tenant>,
    request: pb::WatchSessionRequest,
) -> Result<Events<pb::SessionEvent>, Status> {
    let id = convert::session_id(&request.session_id, "session_id")?;
    let from = if request.resume_token.is_empty() {
        SessionPosition::new(request.version, request.after_seq)
    } else {
        SessionPosition::parse(&request.resume_token)?
    };
    let stored = stored_id(tenant.map(|t| t.0.as_str()), id.as_str());
    let events = watch::watch_session(hub, store, id, &stored, from).map_err(status_of_watch)?;
    Ok(events
        .map(|event| event.map(session_event).map_err(status_of_watch))
        .boxed())
}

fn messages(messages: Vec<crate::domain::Message>) -> pb::MessageList {
    pb::MessageList {
        messages: messages
            .into_iter()
            .map(convert::message_to_proto)
            .collect(),
    }
}

fn session_event(event: SessionEvent) -> pb::SessionEvent {
    use pb::session_event::Change;
    let change = match event.change {
        SessionChange::Appended(list) => Change::Appended(messages(list)),
        SessionChange::Replaced(list) => Change::Replaced(messages(list)),
        SessionChange::SystemMessages(list) => Change::SystemMessages(messages(list)),
        SessionChange::State(state) => Change::State(convert::json_to_struct(state)),
        SessionChange::Touched => Change::Touched(true),
        SessionChange::Deleted => Change::Deleted(true),
        SessionChange::Expired => Change::Expired(true),
        SessionChange::CaughtUp => Change::CaughtUp(true),
    };
    pb::SessionEvent {
        version: event.version,
        resume_token: event.resume_token,
        expire_time: event.expire_time.map(timestamp),
        change: Some(change),
    }
}

/// WatchSessions for the caller `tenant`, over its scoped `store`.
pub fn watch_sessions(
    hub: &Arc<ChangeHub>,
    store: Arc<dyn SessionStore>,
    tenant: Option<&Tenant>,
    buffer: usize,
    request: pb::WatchSessionsRequest,
) -> Result<Events<pb::SessionSummaryEvent>, Status> {
    validate::id_prefix(&request.id_prefix, "id_prefix")?;
    let resume_from = match request.resume_token.as_str() {
        "" => None,
        token => Some(watch::parse_prefix_token(token)?),
    };
    let tenant = tenant.map(|t| t.0.clone());
    let stored_prefix = stored_id(tenant.as_deref(), &request.id_prefix);
    let unscoped = Arc::new(move |stored: &str| unscoped_id(tenant.as_deref(), stored));
    let events = watch::watch_sessions(
        hub,
        store,
        request.id_prefix,
        &stored_prefix,
        unscoped,
        resume_from,
        buffer,
    )
    .map_err(status_of_watch)?;
    Ok(events
        .map(|event| event.map(summary_event).map_err(status_of_watch))
        .boxed())
}

fn summary_event(event: SummaryEvent) -> pb::SessionSummaryEvent {
    use pb::SessionChangeKind as Kind;
    let kind = match event.kind {
        SummaryKind::Created => Kind::Created,
        SummaryKind::Appended => Kind::Appended,
        SummaryKind::Replaced => Kind::Replaced,
        SummaryKind::SystemMessages => Kind::SystemMessages,
        SummaryKind::State => Kind::State,
        SummaryKind::Touched => Kind::Touched,
        SummaryKind::Deleted => Kind::Deleted,
        SummaryKind::Expired => Kind::Expired,
        SummaryKind::Changed => Kind::Changed,
        SummaryKind::CaughtUp => Kind::CaughtUp,
        SummaryKind::FellBehind => Kind::FellBehind,
    };
    pb::SessionSummaryEvent {
        kind: kind as i32,
        session_id: event.session_id,
        version: event.version,
        message_count: event.message_count.unwrap_or(0),
        expire_time: event.expire_time.map(timestamp),
        resume_token: event.resume_token,
    }
}
