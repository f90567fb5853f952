//! `baton.v1.SessionService`: explicit session control.

use baton_state::{Command, CommandError, Response as CommandResponse};
use tonic::{Request, Response, Status};

use super::Context;
use crate::convert::deadline;
use crate::error::ApiError;
use crate::identity::refuse_reserved;
use crate::proto::baton::v1::session_service_server::SessionService;
use crate::proto::baton::v1::{
    CloseSessionRequest, CloseSessionResponse, KeepAliveRequest, KeepAliveResponse,
    OpenSessionRequest, OpenSessionResponse,
};

/// Serves the session API.
pub struct SessionApi {
    context: Context,
}

impl SessionApi {
    /// A session service over `context`.
    pub fn new(context: Context) -> Self {
        SessionApi { context }
    }
}

fn unexpected(response: CommandResponse) -> Status {
    ApiError::Internal(format!("unexpected state machine answer: {response:?}")).into()
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    async fn open_session(
        &self,
        request: Request<OpenSessionRequest>,
    ) -> Result<Response<OpenSessionResponse>, Status> {
        let deadline = deadline(&request);
        let request = request.into_inner();
        refuse_reserved(&request.client_id)?;
        let command = Command::OpenSession {
            client_id: request.client_id,
            timeout_ms: request.timeout_ms,
        };
        match self.context.apply(command, deadline).await? {
            CommandResponse::SessionOpen { timeout_ms } => {
                Ok(Response::new(OpenSessionResponse { timeout_ms }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn keep_alive(
        &self,
        request: Request<KeepAliveRequest>,
    ) -> Result<Response<KeepAliveResponse>, Status> {
        let deadline = deadline(&request);
        let client_id = request.into_inner().client_id;
        refuse_reserved(&client_id)?;
        let command = Command::KeepAlive {
            client_ids: vec![client_id.clone()],
        };
        // The timeout comes from the applied entry's answer, not from this
        // node's state, which may not have applied it yet.
        match self.context.apply(command, deadline).await? {
            CommandResponse::KeptAlive { renewed, .. } => match renewed.first() {
                Some((_, timeout_ms)) => Ok(Response::new(KeepAliveResponse {
                    timeout_ms: *timeout_ms,
                })),
                None => Err(ApiError::from(CommandError::SessionNotFound { client_id }).into()),
            },
            other => Err(unexpected(other)),
        }
    }

    async fn close_session(
        &self,
        request: Request<CloseSessionRequest>,
    ) -> Result<Response<CloseSessionResponse>, Status> {
        let deadline = deadline(&request);
        let CloseSessionRequest {
            client_id,
            request_id,
        } = request.into_inner();
        refuse_reserved(&client_id)?;
        let command = Command::CloseSession {
            client_id,
            request_id,
        };
        match self.context.apply(command, deadline).await? {
            CommandResponse::SessionClosed { .. } => Ok(Response::new(CloseSessionResponse {})),
            other => Err(unexpected(other)),
        }
    }
}
