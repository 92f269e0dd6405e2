//! The Chat service. Not implemented yet: every RPC answers UNIMPLEMENTED.

use crate::grpc::pb::chat_server::Chat;
use crate::grpc::pb::{ExecRequest, ExecResponse, ExecStreamRequest, ExecStreamResponse};
use futures::stream::BoxStream;
use tonic::{Request, Response, Status, Streaming};

/// Placeholder until chat turns are built; its health status stays NOT_SERVING.
#[derive(Debug, Default)]
pub struct ChatService;

fn unimplemented() -> Status {
    Status::unimplemented(
        "csai.v1.Chat is not implemented in this version of csai-sidecar; use csai.v1.SessionStore",
    )
}

#[tonic::async_trait]
impl Chat for ChatService {
    async fn exec(&self, _request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        Err(unimplemented())
    }

    type ExecStreamStream = BoxStream<'static, Result<ExecStreamResponse, Status>>;

    async fn exec_stream(
        &self,
        _request: Request<Streaming<ExecStreamRequest>>,
    ) -> Result<Response<Self::ExecStreamStream>, Status> {
        Err(unimplemented())
    }
}
