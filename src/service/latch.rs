//! `atomix.primitive.leader.LeaderLatchService`.

use std::pin::Pin;

use baton_state::{Operation, PrimitiveKind, Response as CommandResponse};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::Context;
use crate::convert::{
    caller, deadline, latch_snapshot, latch_to_proto, stream_header, unary_header,
};
use crate::error::ApiError;
use crate::proto::atomix::primitive::leader::leader_latch_service_server::LeaderLatchService;
use crate::proto::atomix::primitive::leader::{
    events_output, EventsOutput, EventsRequest, EventsResponse, GetOutput, GetRequest, GetResponse,
    LatchOutput, LatchRequest, LatchResponse, RestoreRequest, RestoreResponse, Snapshot,
    SnapshotRequest, SnapshotResponse,
};

/// Serves the leader latch API.
pub struct LatchApi {
    context: Context,
}

impl LatchApi {
    /// A latch service over `context`.
    pub fn new(context: Context) -> Self {
        LatchApi { context }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<EventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl LeaderLatchService for LatchApi {
    async fn latch(
        &self,
        request: Request<LatchRequest>,
    ) -> Result<Response<LatchResponse>, Status> {
        let deadline = deadline(&request);
        let caller = caller(request.get_ref().header.as_ref(), PrimitiveKind::Latch)
            .map_err(ApiError::from)?;
        let operation = Operation::Join {
            latch: caller.key.name.clone(),
        };
        let latch = self
            .context
            .operate_on_primitive(&caller, operation, deadline)
            .await?;
        Ok(Response::new(LatchResponse {
            header: unary_header(),
            output: Some(LatchOutput {
                latch: Some(latch_to_proto(&latch)),
            }),
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let deadline = deadline(&request);
        let caller = caller(request.get_ref().header.as_ref(), PrimitiveKind::Latch)
            .map_err(ApiError::from)?;
        let latch = self
            .context
            .read(&caller.client_id, deadline, |m| m.primitive(&caller.key))
            .await?;
        Ok(Response::new(GetResponse {
            header: unary_header(),
            output: Some(GetOutput {
                latch: Some(latch_to_proto(&latch)),
            }),
        }))
    }

    type EventsStream = EventStream;

    async fn events(
        &self,
        request: Request<EventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = caller(request.get_ref().header.as_ref(), PrimitiveKind::Latch)
            .map_err(ApiError::from)?;
        let stream = self.context.watch(&caller).map(|update| {
            update.map(|update| {
                let kind = if update.initial {
                    events_output::Type::None
                } else {
                    events_output::Type::Change
                };
                EventsResponse {
                    header: stream_header(),
                    output: Some(EventsOutput {
                        r#type: kind as i32,
                        latch: Some(latch_to_proto(&update.state)),
                    }),
                }
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotResponse>, Status> {
        let deadline = deadline(&request);
        let caller = caller(request.get_ref().header.as_ref(), PrimitiveKind::Latch)
            .map_err(ApiError::from)?;
        let latch = self
            .context
            .read(&caller.client_id, deadline, |m| m.primitive(&caller.key))
            .await?;
        Ok(Response::new(SnapshotResponse {
            header: unary_header(),
            snapshot: Some(Snapshot {
                latch: Some(latch_to_proto(&latch)),
            }),
        }))
    }

    async fn restore(
        &self,
        request: Request<RestoreRequest>,
    ) -> Result<Response<RestoreResponse>, Status> {
        let deadline = deadline(&request);
        let request = request.into_inner();
        let caller =
            caller(request.header.as_ref(), PrimitiveKind::Latch).map_err(ApiError::from)?;
        let snapshot = latch_snapshot(request.snapshot).map_err(ApiError::from)?;
        let operation = Operation::Restore {
            key: caller.key.clone(),
            snapshot,
        };
        match self.context.operate(&caller, operation, deadline).await? {
            CommandResponse::Restored | CommandResponse::Primitive(_) => {
                Ok(Response::new(RestoreResponse {
                    header: unary_header(),
                }))
            }
            other => Err(Status::internal(format!(
                "unexpected answer to restore: {other:?}"
            ))),
        }
    }
}
