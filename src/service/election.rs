//! `atomix.primitive.election.LeaderElectionService`.

use baton_state::{Operation, PrimitiveKind};
use tonic::{Request, Response, Status};

use super::{Context, EventStream};
use crate::convert::{
    deadline, stream_header, term_snapshot, term_to_proto, unary_header, Addressed,
};
use crate::error::ApiError;
use crate::proto::atomix::primitive::election::leader_election_service_server::LeaderElectionService;
use crate::proto::atomix::primitive::election::{
    events_output, AnointOutput, AnointRequest, AnointResponse, EnterOutput, EnterRequest,
    EnterResponse, EventsOutput, EventsRequest, EventsResponse, EvictOutput, EvictRequest,
    EvictResponse, GetTermOutput, GetTermRequest, GetTermResponse, PromoteOutput, PromoteRequest,
    PromoteResponse, RestoreRequest, RestoreResponse, Snapshot, SnapshotRequest, SnapshotResponse,
    Term, WithdrawOutput, WithdrawRequest, WithdrawResponse,
};

/// Serves the leader election API.
pub struct ElectionApi {
    context: Context,
}

impl ElectionApi {
    /// An election service over `context`.
    pub fn new(context: Context) -> Self {
        ElectionApi { context }
    }

    /// Applies an election operation built from the caller's election name
    /// and returns the new term.
    async fn change<T: Addressed>(
        &self,
        request: Request<T>,
        operation: impl FnOnce(String, &T) -> Operation,
    ) -> Result<Term, Status> {
        let deadline = deadline(&request);
        let caller = self.context.caller(&request, PrimitiveKind::Election)?;
        let operation = operation(caller.key.name.clone(), request.get_ref());
        let term = self.context.operate(&caller, operation, deadline).await?;
        Ok(term_to_proto(&term))
    }
}

fn candidate<I: CandidateInput>(input: &Option<I>) -> String {
    input
        .as_ref()
        .map(|i| i.candidate_id().to_owned())
        .unwrap_or_default()
}

/// Inputs that name a candidate.
trait CandidateInput {
    fn candidate_id(&self) -> &str;
}
impl CandidateInput for crate::proto::atomix::primitive::election::AnointInput {
    fn candidate_id(&self) -> &str {
        &self.candidate_id
    }
}
impl CandidateInput for crate::proto::atomix::primitive::election::PromoteInput {
    fn candidate_id(&self) -> &str {
        &self.candidate_id
    }
}
impl CandidateInput for crate::proto::atomix::primitive::election::EvictInput {
    fn candidate_id(&self) -> &str {
        &self.candidate_id
    }
}

#[tonic::async_trait]
impl LeaderElectionService for ElectionApi {
    async fn enter(
        &self,
        request: Request<EnterRequest>,
    ) -> Result<Response<EnterResponse>, Status> {
        let term = self
            .change(request, |election, _| Operation::Enter { election })
            .await?;
        Ok(Response::new(EnterResponse {
            header: unary_header(),
            output: Some(EnterOutput { term: Some(term) }),
        }))
    }

    async fn withdraw(
        &self,
        request: Request<WithdrawRequest>,
    ) -> Result<Response<WithdrawResponse>, Status> {
        let term = self
            .change(request, |election, _| Operation::Withdraw { election })
            .await?;
        Ok(Response::new(WithdrawResponse {
            header: unary_header(),
            output: Some(WithdrawOutput { term: Some(term) }),
        }))
    }

    async fn anoint(
        &self,
        request: Request<AnointRequest>,
    ) -> Result<Response<AnointResponse>, Status> {
        let term = self
            .change(request, |election, r| Operation::Anoint {
                election,
                candidate: candidate(&r.input),
            })
            .await?;
        Ok(Response::new(AnointResponse {
            header: unary_header(),
            output: Some(AnointOutput { term: Some(term) }),
        }))
    }

    async fn promote(
        &self,
        request: Request<PromoteRequest>,
    ) -> Result<Response<PromoteResponse>, Status> {
        let term = self
            .change(request, |election, r| Operation::Promote {
                election,
                candidate: candidate(&r.input),
            })
            .await?;
        Ok(Response::new(PromoteResponse {
            header: unary_header(),
            output: Some(PromoteOutput { term: Some(term) }),
        }))
    }

    async fn evict(
        &self,
        request: Request<EvictRequest>,
    ) -> Result<Response<EvictResponse>, Status> {
        let term = self
            .change(request, |election, r| Operation::Evict {
                election,
                candidate: candidate(&r.input),
            })
            .await?;
        Ok(Response::new(EvictResponse {
            header: unary_header(),
            output: Some(EvictOutput { term: Some(term) }),
        }))
    }

    async fn get_term(
        &self,
        request: Request<GetTermRequest>,
    ) -> Result<Response<GetTermResponse>, Status> {
        let deadline = deadline(&request);
        let caller = self.context.caller(&request, PrimitiveKind::Election)?;
        let term = self.context.read_primitive(&caller, deadline).await?;
        Ok(Response::new(GetTermResponse {
            header: unary_header(),
            output: Some(GetTermOutput {
                term: Some(term_to_proto(&term)),
            }),
        }))
    }

    type EventsStream = EventStream<EventsResponse>;

    async fn events(
        &self,
        request: Request<EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let caller = self.context.caller(&request, PrimitiveKind::Election)?;
        let stream = self.context.events(&caller, |initial, term| {
            let kind = if initial {
                events_output::Type::None
            } else {
                events_output::Type::Changed
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
                    term: Some(term_to_proto(term)),
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
        let caller = self.context.caller(&request, PrimitiveKind::Election)?;
        let term = self.context.read_primitive(&caller, deadline).await?;
        Ok(Response::new(SnapshotResponse {
            header: unary_header(),
            snapshot: Some(Snapshot {
                term: Some(term_to_proto(&term)),
            }),
        }))
    }

    async fn restore(
        &self,
        request: Request<RestoreRequest>,
    ) -> Result<Response<RestoreResponse>, Status> {
        let deadline = deadline(&request);
        let caller = self.context.caller(&request, PrimitiveKind::Election)?;
        let request = request.into_inner();
        let operation = Operation::Restore {
            key: caller.key.clone(),
            snapshot: term_snapshot(request.snapshot).map_err(ApiError::from)?,
        };
        self.context.operate(&caller, operation, deadline).await?;
        Ok(Response::new(RestoreResponse {
            header: unary_header(),
        }))
    }
}
