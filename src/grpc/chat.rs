//! The Chat service: runs turns in the unary form (Exec) and the streaming form (ExecStream).

use crate::chat::completion::Delta;
use crate::chat::turn::{Bot, ChatEngine, ToolResult, TurnError};
use crate::domain::ToolCall;
use crate::grpc::chat_convert::{self, Form, exec_response};
use crate::grpc::convert::tool_call_to_proto;
use crate::grpc::errors::status_of_turn;
use crate::grpc::pb::chat_server::Chat;
use crate::grpc::pb::exec_stream_request::Kind as Inbound;
use crate::grpc::pb::exec_stream_response::Kind as Outbound;
use crate::grpc::pb::{
    ContentDelta, ExecRequest, ExecResponse, ExecStreamRequest, ExecStreamResponse,
};
use crate::grpc::session_store::scoped_store;
use crate::service::Policy;
use crate::store::SessionStore;
use async_trait::async_trait;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// The Chat service over a turn engine.
pub struct ChatService {
    engine: Arc<ChatEngine>,
    store: Arc<dyn SessionStore>,
    policy: Policy,
}

impl ChatService {
    /// Serves turns of `engine` over `store` with the request `policy` of the
    /// SessionStore service.
    pub fn new(engine: Arc<ChatEngine>, store: Arc<dyn SessionStore>, policy: Policy) -> Self {
        Self {
            engine,
            store,
            policy,
        }
    }
}

/// The unary form's bot: it answers tool calls in its next Exec call.
struct UnaryBot;

#[async_trait]
impl Bot for UnaryBot {
    fn streams(&self) -> bool {
        false
    }

    fn delta(&mut self, _delta: Delta) {}

    async fn run_tools(
        &mut self,
        _calls: &[ToolCall],
    ) -> Result<Option<Vec<ToolResult>>, TurnError> {
        Ok(None)
    }
}

/// The streaming form's bot: deltas and tool calls go out, tool results come in.
struct StreamBot {
    inbound: Streaming<ExecStreamRequest>,
    outbound: UnboundedSender<Result<ExecStreamResponse, Status>>,
    tool_timeout: Duration,
    policy: Policy,
}

impl StreamBot {
    fn send(&self, kind: Outbound) {
        // A closed channel means the bot left; the turn is dropped by the select in exec_stream.
        let _ = self
            .outbound
            .send(Ok(ExecStreamResponse { kind: Some(kind) }));
    }
}

#[async_trait]
impl Bot for StreamBot {
    fn streams(&self) -> bool {
        true
    }

    fn delta(&mut self, delta: Delta) {
        let delta = match delta {
            Delta::Content(content) => ContentDelta {
                content,
                reasoning_content: String::new(),
            },
            Delta::Reasoning(reasoning_content) => ContentDelta {
                content: String::new(),
                reasoning_content,
            },
        };
        self.send(Outbound::Delta(delta));
    }

    async fn run_tools(
        &mut self,
        calls: &[ToolCall],
    ) -> Result<Option<Vec<ToolResult>>, TurnError> {
        for call in calls {
            self.send(Outbound::ToolCall(tool_call_to_proto(call.clone())));
        }
        let mut waiting: Vec<&str> = calls.iter().map(|c| c.id.as_str()).collect();
        let mut results = Vec::with_capacity(calls.len());
        while let Some(&first) = waiting.first() {
            let next = tokio::time::timeout(self.tool_timeout, self.inbound.message()).await;
            let message = match next {
                Err(_) => {
                    return Err(TurnError::ToolTimeout {
                        call_id: first.to_string(),
                        after: self.tool_timeout,
                    });
                }
                Ok(Err(status)) => return Err(TurnError::Cancelled(status.message().to_string())),
                Ok(Ok(None)) => {
                    return Err(TurnError::Cancelled(format!(
                        "the bot closed its side of the stream before answering tool call {first}"
                    )));
                }
                Ok(Ok(Some(message))) => message,
            };
            let Some(Inbound::ToolResult(raw)) = message.kind else {
                return Err(TurnError::Invalid(
                    "only tool_result messages may follow start on ExecStream".into(),
                ));
            };
            let result = chat_convert::tool_result(raw, &self.policy, "tool_result")
                .map_err(|status| TurnError::Invalid(status.message().to_string()))?;
            let Some(position) = waiting.iter().position(|id| *id == result.tool_call_id) else {
                return Err(TurnError::Invalid(format!(
                    "tool_result.tool_call_id: {:?} is not a tool call this turn is waiting for; waiting for: {}",
                    result.tool_call_id,
                    waiting.join(", ")
                )));
            };
            waiting.remove(position);
            results.push(result);
        }
        Ok(Some(results))
    }
}

/// The tenant an authenticated request belongs to.
fn tenant_of<T>(request: &Request<T>) -> Option<String> {
    request
        .extensions()
        .get::<crate::domain::Tenant>()
        .map(|tenant| tenant.0.clone())
}

#[tonic::async_trait]
impl Chat for ChatService {
    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        let store = scoped_store(&self.store, None, &request);
        let tenant = tenant_of(&request);
        let mut turn = chat_convert::turn_request(request.into_inner(), &self.policy, Form::Unary)?;
        turn.tenant = tenant;
        let outcome = self
            .engine
            .run(store.as_ref(), turn, &mut UnaryBot)
            .await
            .map_err(status_of_turn)?;
        Ok(Response::new(exec_response(outcome)))
    }

    async fn compact_session(
        &self,
        request: Request<crate::grpc::pb::CompactSessionRequest>,
    ) -> Result<Response<crate::grpc::pb::CompactSessionResponse>, Status> {
        let store = scoped_store(&self.store, None, &request);
        let request = request.into_inner();
        let id = crate::grpc::convert::session_id(&request.session_id, "session_id")?;
        let budget = match (request.max_tokens, self.engine.limits().history_tokens) {
            (0, 0) => {
                return Err(Status::invalid_argument(
                    "max_tokens: required, since chat_history_tokens is not configured",
                ));
            }
            (0, configured) => configured,
            (requested, _) => requested,
        };
        let provider = Some(request.provider).filter(|p| !p.is_empty());
        let compacted = self
            .engine
            .compact(store.as_ref(), &id, provider.as_deref(), budget)
            .await
            .map_err(status_of_turn)?;
        // What the session holds now: the new summary, or the one it had.
        let summary = match compacted.clone() {
            Some(summary) => Some(summary),
            None => match store.get(&id, crate::domain::Window::HEADER).await {
                Ok(header) => crate::chat::compaction::Summary::of_state(&header.state),
                Err(crate::store::StoreError::NotFound(_)) => None,
                Err(error) => return Err(crate::grpc::errors::status_of(error)),
            },
        };
        Ok(Response::new(crate::grpc::pb::CompactSessionResponse {
            compacted: compacted.is_some(),
            summary: summary.as_ref().map(|s| s.text.clone()).unwrap_or_default(),
            through_seq: summary.map_or(0, |s| s.through_seq),
        }))
    }

    type ExecStreamStream = BoxStream<'static, Result<ExecStreamResponse, Status>>;

    async fn exec_stream(
        &self,
        request: Request<Streaming<ExecStreamRequest>>,
    ) -> Result<Response<Self::ExecStreamStream>, Status> {
        let store = scoped_store(&self.store, None, &request);
        let tenant = tenant_of(&request);
        let mut inbound = request.into_inner();
        let start = match inbound.message().await? {
            Some(ExecStreamRequest {
                kind: Some(Inbound::Start(start)),
            }) => start,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of ExecStream must be `start`",
                ));
            }
            None => {
                return Err(Status::invalid_argument(
                    "ExecStream ended before its first message (`start`)",
                ));
            }
        };
        let mut turn = chat_convert::turn_request(start, &self.policy, Form::Streaming)?;
        turn.tenant = tenant;
        let (outbound, responses) = tokio::sync::mpsc::unbounded_channel();
        let engine = self.engine.clone();
        let mut bot = StreamBot {
            inbound,
            outbound: outbound.clone(),
            tool_timeout: engine.limits().tool_timeout,
            policy: self.policy.clone(),
        };
        let turn_task = async move {
            let session = turn.session.clone();
            // When the bot goes away, dropping the turn aborts the model request, and
            // nothing of the turn is stored: its one append comes last.
            tokio::select! {
                result = engine.run(store.as_ref(), turn, &mut bot) => {
                    let last = result
                        .map(|outcome| ExecStreamResponse { kind: Some(Outbound::Done(exec_response(outcome))) })
                        .map_err(status_of_turn);
                    let _ = outbound.send(last);
                }
                () = outbound.closed() => {
                    tracing::info!(session = %crate::observability::telemetry::logged(session.as_str()), "the bot left ExecStream; the turn was dropped and nothing stored");
                }
            }
        };
        // The turn outlives this call's future: it keeps the RPC's span by hand.
        tokio::spawn(turn_task.in_current_span());
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(
            responses,
        ))))
    }
}
