//! The SessionStore gRPC service: converts requests and hands them to the service layer.

use crate::domain::Tenant;
use crate::domain::{Append, ListQuery, SessionId, StateUpdate, Window, WriteOptions};
use crate::grpc::convert::{self, timestamp};
use crate::grpc::errors::status_of;
use crate::grpc::pb;
use crate::grpc::pb::session_store_server::SessionStore as SessionStoreRpc;
use crate::grpc::{export_import, record_rpcs, watch_rpcs};
use crate::service::Policy;
use crate::service::sessions::{Read, SessionService};
use crate::service::validate;
use crate::store::SessionStore;
use crate::store::changes::ChangeHub;
use crate::store::decorators::tenant::TenantStore;
use crate::store::stats_cache::StatsCache;
use futures::stream::BoxStream;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

/// A write's options: the requested TTL (else the default) within the limits.
fn write_options(
    policy: &Policy,
    expected_version: Option<u64>,
    ttl: Option<prost_types::Duration>,
) -> Result<WriteOptions, Status> {
    Ok(WriteOptions {
        expected_version,
        ttl: convert::ttl(ttl, policy.default_ttl, &policy.limits, "ttl")?,
    })
}

/// The SessionStore service over any store.
pub struct SessionStoreService {
    store: Arc<dyn SessionStore>,
    stats: Arc<StatsCache>,
    feeds: Feeds,
    service: SessionService,
}

/// What the watch RPCs need: the hub the store's writes signal, and each WatchSessions
/// stream's buffer.
#[derive(Clone)]
pub struct Feeds {
    pub hub: Arc<ChangeHub>,
    pub buffer: usize,
}

impl SessionStoreService {
    /// Serves `store` with `policy`; tenants' stats take the whole store's figures from
    /// `stats`; watchers wait on `feeds`.
    pub fn new(
        store: Arc<dyn SessionStore>,
        stats: Arc<StatsCache>,
        policy: Policy,
        feeds: Feeds,
    ) -> Self {
        Self {
            store,
            stats,
            service: SessionService::new(policy),
            feeds,
        }
    }

    fn policy(&self) -> &Policy {
        self.service.policy()
    }

    /// The store as the request's tenant sees it (the whole store without authentication).
    fn store_for<T>(&self, request: &Request<T>) -> Arc<dyn SessionStore> {
        scoped_store(&self.store, Some(&self.stats), request)
    }
}

/// `store` as the tenant of an authenticated request sees it; a tenant's stats take the
/// whole store's figures from `stats` when given.
pub fn scoped_store<T>(
    store: &Arc<dyn SessionStore>,
    stats: Option<&Arc<StatsCache>>,
    request: &Request<T>,
) -> Arc<dyn SessionStore> {
    match request.extensions().get::<Tenant>() {
        Some(Tenant(tenant)) => {
            let scoped = TenantStore::new(store.clone(), tenant);
            Arc::new(match stats {
                Some(stats) => scoped.with_whole_stats(stats.clone()),
                None => scoped,
            })
        }
        None => store.clone(),
    }
}

fn session_id(raw: &str) -> Result<SessionId, Status> {
    convert::session_id(raw, "session_id")
}

fn write_response(outcome: crate::domain::WriteOutcome) -> pb::WriteResponse {
    pb::WriteResponse {
        version: outcome.version,
        expire_time: Some(timestamp(outcome.expire_time)),
    }
}

#[tonic::async_trait]
impl SessionStoreRpc for SessionStoreService {
    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let store = self.store_for(&request);
        let tenant = request.extensions().get::<Tenant>().cloned();
        let request = request.into_inner();
        let id = session_id(&request.session_id)?;
        let read = match request.window {
            None => Read::Messages(Window::All),
            Some(pb::get_session_request::Window::LastN(n)) => Read::Messages(Window::LastN(n)),
            Some(pb::get_session_request::Window::AfterSeq(seq)) => {
                Read::Messages(Window::AfterSeq(seq))
            }
            Some(pb::get_session_request::Window::MaxTokens(budget)) => Read::Tokens {
                budget,
                model: request.model,
                count_system_messages: request.count_system_messages,
            },
        };
        let tenant = tenant.as_ref().map(|t| t.0.as_str());
        let read = self.service.read(store.as_ref(), tenant, &id, read).await?;
        let usage_total = request
            .include_usage
            .then(|| convert::usage_total_to_proto(read.session.usage_total));
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(convert::session_to_proto(read.session)),
            usage_total,
            tokens: read.tokens,
            summary: read.summary.map(|(s, tokens)| pb::WindowSummary {
                text: s.text,
                through_seq: s.through_seq,
                tokens,
            }),
        }))
    }
    async fn append_messages(
        &self,
        request: Request<pb::AppendMessagesRequest>,
    ) -> Result<Response<pb::AppendMessagesResponse>, Status> {
        let store = self.store_for(&request);
        let request = request.into_inner();
        let id = session_id(&request.session_id)?;
        let messages = convert::new_messages(request.messages, &self.policy().limits, "messages")?;
        self.service
            .check_append(store.as_ref(), &id, &messages)
            .await?;
        let append = Append {
            messages,
            request_id: convert::request_id(request.request_id, "request_id")?,
            options: write_options(self.policy(), request.expected_version, request.ttl)?,
        };
        let outcome = store.append(&id, append).await.map_err(status_of)?;
        Ok(Response::new(pb::AppendMessagesResponse {
            seqs: outcome.seqs().collect(),
            version: outcome.version,
            expire_time: Some(timestamp(outcome.expire_time)),
            deduplicated: outcome.deduplicated,
        }))
    }

    async fn replace_messages(
        &self,
        request: Request<pb::ReplaceMessagesRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let store = self.store_for(&request);
        let request = request.into_inner();
        let id = session_id(&request.session_id)?;
        let messages = convert::new_messages(request.messages, &self.policy().limits, "messages")?;
        self.service.check_replace(&messages)?;
        let options = write_options(self.policy(), request.expected_version, request.ttl)?;
        let outcome = store
            .replace(&id, messages, options)
            .await
            .map_err(status_of)?;
        Ok(Response::new(write_response(outcome)))
    }

    async fn set_system_messages(
        &self,
        request: Request<pb::SetSystemMessagesRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let store = self.store_for(&request);
        let request = request.into_inner();
        let id = session_id(&request.session_id)?;
        let messages = convert::new_messages(
            request.system_messages,
            &self.policy().limits,
            "system_messages",
        )?;
        let options = write_options(self.policy(), request.expected_version, request.ttl)?;
        let outcome = store
            .set_system_messages(&id, messages, options)
            .await
            .map_err(status_of)?;
        Ok(Response::new(write_response(outcome)))
    }

    async fn update_state(
        &self,
        request: Request<pb::UpdateStateRequest>,
    ) -> Result<Response<pb::UpdateStateResponse>, Status> {
        let store = self.store_for(&request);
        let request = request.into_inner();
        let id = session_id(&request.session_id)?;
        let state = convert::struct_to_json(request.state.unwrap_or_default(), "state")?;
        let update = match pb::StateUpdateMode::try_from(request.mode) {
            Ok(pb::StateUpdateMode::Unspecified | pb::StateUpdateMode::Replace) => {
                StateUpdate::Replace(state)
            }
            Ok(pb::StateUpdateMode::Merge) => StateUpdate::Merge(state),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "mode: unknown value {}; use STATE_UPDATE_MODE_REPLACE or STATE_UPDATE_MODE_MERGE",
                    request.mode
                )));
            }
        };
        let options = write_options(self.policy(), request.expected_version, request.ttl)?;
        let outcome = store
            .update_state(&id, update, options)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::UpdateStateResponse {
            version: outcome.write.version,
            expire_time: Some(timestamp(outcome.write.expire_time)),
            state: Some(convert::json_to_struct(outcome.state)),
        }))
    }

    async fn touch_session(
        &self,
        request: Request<pb::TouchSessionRequest>,
    ) -> Result<Response<pb::TouchSessionResponse>, Status> {
        let store = self.store_for(&request);
        let request = request.into_inner();
        let id = session_id(&request.session_id)?;
        let ttl = convert::ttl(
            request.ttl,
            self.policy().default_ttl,
            &self.policy().limits,
            "ttl",
        )?;
        let outcome = store.touch(&id, ttl).await.map_err(status_of)?;
        Ok(Response::new(pb::TouchSessionResponse {
            version: outcome.version,
            expire_time: Some(timestamp(outcome.expire_time)),
        }))
    }

    async fn delete_session(
        &self,
        request: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::DeleteSessionResponse>, Status> {
        let store = self.store_for(&request);
        let request = request.into_inner();
        let id = session_id(&request.session_id)?;
        let deleted = store
            .delete(&id, request.expected_version)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::DeleteSessionResponse { deleted }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let store = self.store_for(&request);
        let request = request.into_inner();
        let page_size = self.policy().page_size(request.page_size)?;
        validate::id_prefix(&request.id_prefix, "id_prefix")?;
        let page = store
            .list(ListQuery {
                prefix: request.id_prefix,
                page_size,
                page_token: Some(request.page_token).filter(|t| !t.is_empty()),
            })
            .await
            .map_err(status_of)?;
        Ok(Response::new(convert::list_page_to_proto(page)))
    }

    async fn get_stats(
        &self,
        request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let store = self.store_for(&request);
        let stats = store.stats().await.map_err(status_of)?;
        Ok(Response::new(pb::GetStatsResponse {
            backend: stats.backend,
            active_sessions: stats.active_sessions,
            total_messages: stats.total_messages,
            approximate_bytes: stats.approximate_bytes,
            learning_records: stats.learning_records,
            security_logs: stats.security_logs,
            usage_total: Some(convert::usage_total_to_proto(stats.usage_total)),
        }))
    }

    async fn record_feedback(
        &self,
        request: Request<pb::RecordFeedbackRequest>,
    ) -> Result<Response<pb::LearningRecord>, Status> {
        let store = self.store_for(&request);
        record_rpcs::record_feedback(store.as_ref(), self.policy(), request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_learning_data(
        &self,
        request: Request<pb::ListLearningDataRequest>,
    ) -> Result<Response<pb::ListLearningDataResponse>, Status> {
        let store = self.store_for(&request);
        record_rpcs::list_learning(store.as_ref(), self.policy(), request.into_inner())
            .await
            .map(Response::new)
    }

    async fn record_security_log(
        &self,
        request: Request<pb::RecordSecurityLogRequest>,
    ) -> Result<Response<pb::SecurityLog>, Status> {
        let store = self.store_for(&request);
        record_rpcs::record_security(store.as_ref(), self.policy(), request.into_inner())
            .await
            .map(Response::new)
    }

    type ExportSessionsStream = BoxStream<'static, Result<pb::ExportedSession, Status>>;

    async fn export_sessions(
        &self,
        request: Request<pb::ExportSessionsRequest>,
    ) -> Result<Response<Self::ExportSessionsStream>, Status> {
        let store = self.store_for(&request);
        let prefix = request.into_inner().id_prefix;
        validate::id_prefix(&prefix, "id_prefix")?;
        Ok(Response::new(export_import::export(store.clone(), prefix)))
    }

    async fn import_sessions(
        &self,
        request: Request<Streaming<pb::ImportSessionsRequest>>,
    ) -> Result<Response<pb::ImportSessionsResponse>, Status> {
        let store = self.store_for(&request);
        export_import::import(store.as_ref(), self.policy(), request.into_inner())
            .await
            .map(Response::new)
    }

    type WatchSessionStream = watch_rpcs::Events<pb::SessionEvent>;

    async fn watch_session(
        &self,
        request: Request<pb::WatchSessionRequest>,
    ) -> Result<Response<Self::WatchSessionStream>, Status> {
        let store = self.store_for(&request);
        let tenant = request.extensions().get::<Tenant>().cloned();
        watch_rpcs::watch_session(
            &self.feeds.hub,
            store,
            tenant.as_ref(),
            request.into_inner(),
        )
        .map(Response::new)
    }

    type WatchSessionsStream = watch_rpcs::Events<pb::SessionSummaryEvent>;

    async fn watch_sessions(
        &self,
        request: Request<pb::WatchSessionsRequest>,
    ) -> Result<Response<Self::WatchSessionsStream>, Status> {
        let store = self.store_for(&request);
        let tenant = request.extensions().get::<Tenant>().cloned();
        watch_rpcs::watch_sessions(
            &self.feeds.hub,
            store,
            tenant.as_ref(),
            self.feeds.buffer,
            request.into_inner(),
        )
        .map(Response::new)
    }

    async fn list_security_logs(
        &self,
        request: Request<pb::ListSecurityLogsRequest>,
    ) -> Result<Response<pb::ListSecurityLogsResponse>, Status> {
        let store = self.store_for(&request);
        record_rpcs::list_security(store.as_ref(), self.policy(), request.into_inner())
            .await
            .map(Response::new)
    }
}
