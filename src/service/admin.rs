//! `baton.v1.AdminService`: what this node knows of the cluster.

use openraft::ServerState;
use tonic::{Request, Response, Status};

use super::Context;
use crate::proto::baton::v1::admin_service_server::AdminService;
use crate::proto::baton::v1::{StatusRequest, StatusResponse};

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
        let committed = replicator
            .raft()
            .with_raft_state(|state| state.committed.map(|id| id.index))
            .await
            .ok()
            .flatten();
        let (applied, digest) = replicator.state().digest();
        let (sessions, primitives) = replicator
            .state()
            .read(|machine, _| (machine.session_count(), machine.primitive_count()));
        let leader_client_addr = match metrics.current_leader {
            Some(id) => replicator.client_addr_of(id).await.unwrap_or_default(),
            None => String::new(),
        };
        Ok(Response::new(StatusResponse {
            node_id: replicator.id(),
            role: role_name(metrics.state).to_owned(),
            term: metrics.current_term,
            has_leader: metrics.current_leader.is_some(),
            leader_id: metrics.current_leader.unwrap_or_default(),
            commit_index: committed.unwrap_or_default(),
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
        }))
    }
}
