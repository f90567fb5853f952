//! `baton.v1.AdminService`: what this node knows of the cluster.

use openraft::ServerState;
use tonic::{Request, Response, Status};

use super::Context;
use crate::convert::deadline;
use crate::error::ApiError;
use crate::membership;
use crate::proto::baton::v1::admin_service_server::AdminService;
use crate::proto::baton::v1::{
    AddNodeRequest, JoinRequest, Members, MembershipResponse, RemoveNodeRequest, RemoveRequest,
    SaveSnapshotRequest, SnapshotChunk, StatusRequest, StatusResponse,
};

/// Serves the admin API.
pub struct AdminApi {
    context: Context,
}

impl AdminApi {
    /// An admin service over `context`.
    pub fn new(context: Context) -> Self {
        AdminApi { context }
    }
}

/// The role name `cluster status` prints for a Raft server state.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let replicator = &self.context.replicator;
        let metrics = replicator.raft().metrics().borrow().clone();
        let committed = replicator.committed_index().await;
        let (applied, digest) = replicator.state().digest();
        let (sessions, primitives, rules) = replicator.state().read(|machine, _| {
            (
                machine.session_count(),
                machine.primitive_count(),
                machine.rules(),
            )
        });
        let (voters, learners) = membership::members(replicator);
        // A leader this node works with now (heard from within the leader
        // lease, or itself with a quorum): after the leader dies a follower
        // keeps openraft's `current_leader` until an election, which a
        // minority never starts.
        let leader = replicator.working_leader().ok();
        let leader_client_addr = match leader {
            Some(id) => replicator.client_addr_of(id).await.unwrap_or_default(),
            None => String::new(),
        };
        Ok(Response::new(StatusResponse {
            node_id: replicator.id(),
            role: role_name(metrics.state).to_owned(),
            term: metrics.current_term,
            has_leader: leader.is_some(),
            leader_id: leader.unwrap_or_default(),
            commit_index: committed,
            applied_index: applied.unwrap_or_default(),
            client_addr: replicator.client_addr().to_owned(),
            leader_client_addr,
            state_digest: digest,
            snapshot_index: metrics.snapshot.map(|id| id.index).unwrap_or_default(),
            purged_index: metrics.purged.map(|id| id.index).unwrap_or_default(),
            sessions: sessions as u64,
            primitives: primitives as u64,
            tracked_clients: self.context.sessions.tracked() as u64,
            open_streams: self.context.sessions.open_streams() as u64,
            voters,
            learners,
            last_log_index: metrics.last_log_index.unwrap_or_default(),
            flushed_index: self.context.flushed.upto_index(),
            rules,
        }))
    }

    async fn add_node(
        &self,
        request: Request<AddNodeRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let deadline = deadline(&request);
        let AddNodeRequest { id, peer_addr } = request.into_inner();
        let join = JoinRequest {
            id,
            peer_addr,
            passed_on: false,
        };
        let Members { voters, learners } =
            membership::join(&self.context.replicator, join, deadline).await?;
        Ok(Response::new(MembershipResponse { voters, learners }))
    }

    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let deadline = deadline(&request);
        let remove = RemoveRequest {
            id: request.into_inner().id,
            passed_on: false,
        };
        let Members { voters, learners } =
            membership::remove(&self.context.replicator, remove, deadline).await?;
        Ok(Response::new(MembershipResponse { voters, learners }))
    }

    type SaveSnapshotStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

    /// A backup of the applied state after a linearizable barrier, so it
    /// holds every write acknowledged before the call.
    async fn save_snapshot(
        &self,
        request: Request<SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        let replicator = &self.context.replicator;
        replicator
            .linearizable_barrier(deadline(&request))
            .await
            .map_err(|e| Status::from(ApiError::from(e)))?;
        let (index, machine) = replicator.state().copy();
        let state = tokio::task::spawn_blocking(move || serde_json::to_vec(&machine))
            .await
            .map_err(|e| Status::internal(format!("encoding the state: {e}")))?
            .map_err(|e| Status::internal(format!("encoding the state: {e}")))?;
        let index = index.unwrap_or(0);
        let (voters, _) = membership::members(replicator);
        let mut nodes: Vec<String> = voters
            .iter()
            .map(|id| format!("{id}={}", replicator.peer_addr_of(*id).unwrap_or_default()))
            .collect();
        nodes.sort();
        let cluster_id = format!("{:08x}", crc32fast::hash(nodes.join(",").as_bytes()));
        let file = baton_store::backup::encode(&cluster_id, index, &state);
        let chunks: Vec<Result<SnapshotChunk, Status>> = file
            .chunks(SNAPSHOT_CHUNK_BYTES)
            .map(|chunk| {
                Ok(SnapshotChunk {
                    data: chunk.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}

/// Backup chunks stay well under the client's 4 MiB message limit.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
