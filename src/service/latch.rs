//! `atomix.primitive.leader.LeaderLatchService`.

use baton_state::{Operation, PrimitiveKind};
use tonic::{Request, Response, Status};

use super::{Context, EventStream};
use crate::convert::{deadline, latch_snapshot, latch_to_proto, stream_header, unary_header};
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

#[tonic::async_trait]
impl LeaderLatchService for LatchApi {
    async fn latch(
        &self,
        request: Request<LatchRequest>,
    ) -> Result<Response<LatchResponse>, Status> {
        let deadline = deadline(&request);
        let caller = self.context.caller(&request, PrimitiveKind::Latch)?;
        let operation = Operation::Join {
            latch: caller.key.name.clone(),
        };
        let latch = self.context.operate(&caller, operation, deadline).await?;
        Ok(Response::new(LatchResponse {
            header: unary_header(),
            output: Some(LatchOutput {
                latch: Some(latch_to_proto(&latch)),
            }),
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let deadline = deadline(&request);
        let caller = self.context.caller(&request, PrimitiveKind::Latch)?;
        let latch = self.context.read_primitive(&caller, deadline).await?;
        Ok(Response::new(GetResponse {
            header: unary_header(),
            output: Some(GetOutput {
                latch: Some(latch_to_proto(&latch)),
            }),
        }))
    }

    type EventsStream = EventStream<EventsResponse>;

    async fn events(
        &self,
        request: Request<EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let caller = self.context.caller(&request, PrimitiveKind::Latch)?;
        let stream = self.context.events(&caller, |initial, latch| {
            let kind = if initial {
                events_output::Type::None
            } else {
                events_output::Type::Change
            };
            EventsResponse {
                // The handshake convention of WIRE.md: RESPONSE_STREAM once.
                header: if initial {
                    stream_header()
                } else {
                    unary_header()
                },
                output: Some(EventsOutput {
                    r#type: kind as i32,
                    latch: Some(latch_to_proto(latch)),
                }),
            }
        });
        Ok(Response::new(stream))
    }

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotResponse>, Status> {
        let deadline = deadline(&request);
        let caller = self.context.caller(&request, PrimitiveKind::Latch)?;
        let latch = self.context.read_primitive(&caller, deadline).await?;
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
        let caller = self.context.caller(&request, PrimitiveKind::Latch)?;
        let request = request.into_inner();
        let operation = Operation::Restore {
            key: caller.key.clone(),
            snapshot: latch_snapshot(request.snapshot).map_err(ApiError::from)?,
        };
        self.context.operate(&caller, operation, deadline).await?;
        Ok(Response::new(RestoreResponse {
            header: unary_header(),
        }))
    }
}
