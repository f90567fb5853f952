//! The peer service (peer port): Raft RPCs into the local openraft node, and
//! the leader's side of forwarded writes and read-index requests.

use baton_state::Command;
use baton_store::TypeConfig;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use tonic::{Request, Response, Status};

use crate::network::{decode, encode};
use crate::proto::baton::v1::raft_service_server::RaftService;
use crate::proto::baton::v1::{
    NodeInfoRequest, NodeInfoResponse, RaftPayload, ReadIndexRequest, ReadIndexResponse,
};
use crate::replication::{ProposeRejection, ProposeReply, Replicator};

/// Serves [`RaftService`] for one node.
pub struct PeerService {
    replicator: Replicator,
}

impl PeerService {
    /// A peer service in front of `replicator`'s Raft node.
    pub fn new(replicator: Replicator) -> Self {
        PeerService { replicator }
    }
}

fn bad_payload(error: serde_json::Error) -> Status {
    Status::invalid_argument(format!("undecodable peer message: {error}"))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    encode(value)
        .map(Response::new)
        .map_err(|e| Status::internal(format!("cannot encode reply: {e}")))
}

#[tonic::async_trait]
impl RaftService for PeerService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode(request.get_ref()).map_err(bad_payload)?;
        let leader = rpc.vote.leader_id().voted_for();
        let response = self.replicator.raft().append_entries(rpc).await;
        // Accepted from the current leader (a higher vote means the sender
        // is stale): this node is in contact with its leader.
        if let (Ok(accepted), Some(leader)) = (&response, leader) {
            if !matches!(accepted, AppendEntriesResponse::HigherVote(_)) {
                self.replicator.liveness().heard_from(leader);
            }
        }
        reply(&response)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        if self.replicator.is_rejoining() {
            return Err(Status::unavailable(
                "rejoining after a data wipe: not voting until caught up",
            ));
        }
        let rpc: VoteRequest<u64> = decode(request.get_ref()).map_err(bad_payload)?;
        reply(&self.replicator.raft().vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> =
            decode(request.get_ref()).map_err(bad_payload)?;
        reply(&self.replicator.raft().install_snapshot(rpc).await)
    }

    async fn propose(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let command: Command = decode(request.get_ref()).map_err(bad_payload)?;
        let outcome: ProposeReply = self.replicator.propose_as_leader(command).await;
        reply(&outcome)
    }

    async fn read_index(
        &self,
        _request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        let response = match self.replicator.read_index_as_leader().await {
            Ok(index) => ReadIndexResponse {
                is_leader: true,
                has_index: index.is_some(),
                index: index.unwrap_or(0),
                no_quorum: false,
            },
            Err(ProposeRejection::NoQuorum(_)) => ReadIndexResponse {
                no_quorum: true,
                ..ReadIndexResponse::default()
            },
            Err(_) => ReadIndexResponse::default(),
        };
        Ok(Response::new(response))
    }

    async fn node_info(
        &self,
        _request: Request<NodeInfoRequest>,
    ) -> Result<Response<NodeInfoResponse>, Status> {
        let initialized = self
            .replicator
            .raft()
            .is_initialized()
            .await
            .unwrap_or(true);
        let commit_index = self.replicator.committed_index().await;
        Ok(Response::new(NodeInfoResponse {
            node_id: self.replicator.id(),
            client_addr: self.replicator.client_addr().to_owned(),
            initialized,
            applied_index: self.replicator.state().applied_index().unwrap_or(0),
            commit_index,
        }))
    }
}
