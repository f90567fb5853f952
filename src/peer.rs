//! The peer service (peer port): Raft RPCs into the local openraft node, and
//! the leader's side of forwarded writes and read-index requests.

use baton_state::Command;
use baton_store::TypeConfig;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use crate::elector::log_id_of;
use crate::network::{decode, encode};
use crate::node::stopped;
use crate::proto::baton::v1::raft_service_server::RaftService;
use crate::proto::baton::v1::{
    JoinRequest, Members, NodeInfoRequest, NodeInfoResponse, PreVoteRequest, PreVoteResponse,
    RaftPayload, ReadIndexRequest, ReadIndexResponse, RemoveRequest, TaggedPayload,
};
use crate::replication::{admit, ProposeRejection, ProposeReply, Replicator};

/// Serves [`RaftService`] for one node.
pub struct PeerService {
    replicator: Replicator,
    /// Turns true when the node stops: the peer streams then take no more
    /// requests and end once those in progress are answered, so that the
    /// server's graceful shutdown is not left waiting on streams the peers
    /// would keep open.
    stop: watch::Receiver<bool>,
}

impl PeerService {
    /// A peer service in front of `replicator`'s Raft node, until `stop`.
    pub fn new(replicator: Replicator, stop: watch::Receiver<bool>) -> Self {
        PeerService { replicator, stop }
    }
}

fn bad_payload(error: serde_json::Error) -> Status {
    Status::invalid_argument(format!("undecodable peer message: {error}"))
}

fn encoded<T: serde::Serialize>(value: &T) -> Result<RaftPayload, Status> {
    encode(value).map_err(|e| Status::internal(format!("cannot encode reply: {e}")))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    encoded(value).map(Response::new)
}

/// Debug builds' test hook: while the file named by
/// `BATON_TEST_PEER_DEAF_FILE` exists, the node refuses the Raft messages
/// it is sent (AppendEntries, votes, pre-votes) as if cut off from its
/// peers, while its own calls to them still go out.
fn deaf_in_tests() -> Result<(), Status> {
    match crate::test_hooks::read("BATON_TEST_PEER_DEAF_FILE") {
        Some(_) => Err(Status::unavailable("deaf (test hook)")),
        None => Ok(()),
    }
}

/// Hands one AppendEntries to the local Raft node and encodes its answer.
async fn append_entries(
    replicator: &Replicator,
    payload: &RaftPayload,
) -> Result<RaftPayload, Status> {
    deaf_in_tests()?;
    let rpc: AppendEntriesRequest<TypeConfig> = decode(payload).map_err(bad_payload)?;
    let leader = rpc.vote.leader_id().voted_for();
    let response = replicator.raft().append_entries(rpc).await;
    // Accepted from the current leader (a higher vote means the sender
    // is stale): this node is in contact with its leader.
    if let (Ok(accepted), Some(leader)) = (&response, leader) {
        if !matches!(accepted, AppendEntriesResponse::HigherVote(_)) {
            replicator.liveness().heard_from(leader);
        }
    }
    encoded(&response)
}

type PayloadStream = Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send>>;
type TaggedStream = Pin<Box<dyn Stream<Item = Result<TaggedPayload, Status>> + Send>>;

/// Forwarded writes one follower's stream may have in progress at once;
/// past that the leader reads no more of it until some finish.
const FORWARDED_IN_FLIGHT: usize = 4096;

/// Proposes a command forwarded on a stream; one that cannot be decoded (a
/// follower of another version) is refused with nothing applied, in its
/// reply: a status would end the stream for every write on it (the unary
/// `Propose` answers INVALID_ARGUMENT instead).
async fn proposed(replicator: &Replicator, payload: &RaftPayload) -> ProposeReply {
    match decode::<Command>(payload) {
        Ok(command) => propose_forwarded(replicator, command).await,
        Err(error) => Err(ProposeRejection::Unknown(format!(
            "undecodable forwarded command: {error}"
        ))),
    }
}

/// Proposes what a follower may forward: the commands its clients'
/// requests and its keep-alives make, checked as the follower checked them
/// (a peer of another version, or anything else on the peer port, gets no
/// more). The leader's own duties are refused, and nothing is applied.
async fn propose_forwarded(replicator: &Replicator, command: Command) -> ProposeReply {
    match command {
        Command::Client(_)
        | Command::OpenSession { .. }
        | Command::CloseSession { .. }
        | Command::KeepAlive { .. } => {}
        Command::ExpireDue | Command::LeaderGrace | Command::AdoptRules { .. } => {
            return Err(ProposeRejection::Unknown(
                "a leader's own duty cannot be forwarded".into(),
            ))
        }
    }
    if let Err(refused) = admit(&command, replicator.state()) {
        return Ok(Err(refused));
    }
    replicator.propose_as_leader(command).await
}

#[tonic::async_trait]
impl RaftService for PeerService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        append_entries(&self.replicator, request.get_ref())
            .await
            .map(Response::new)
    }

    type AppendEntriesStreamStream = PayloadStream;

    /// Answers each request before reading the next, in the order sent;
    /// the stream ends at the first failure (tonic sends an error as the
    /// stream's closing status).
    async fn append_entries_stream(
        &self,
        request: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<PayloadStream>, Status> {
        let replicator = self.replicator.clone();
        let replies = request
            .into_inner()
            .take_until(stopped(self.stop.clone()))
            .then(move |request| {
                let replicator = replicator.clone();
                async move { append_entries(&replicator, &request?).await }
            });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        if self.replicator.is_rejoining() {
            return Err(Status::unavailable(
                "rejoining after a data wipe: not voting until caught up",
            ));
        }
        deaf_in_tests()?;
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
        reply(&propose_forwarded(&self.replicator, command).await)
    }

    type ProposeStreamStream = TaggedStream;

    /// Takes forwarded writes as they come, up to [`FORWARDED_IN_FLIGHT`]
    /// at once, and answers each as it finishes.
    async fn propose_stream(
        &self,
        request: Request<Streaming<TaggedPayload>>,
    ) -> Result<Response<TaggedStream>, Status> {
        let replicator = self.replicator.clone();
        let replies = request
            .into_inner()
            .take_until(stopped(self.stop.clone()))
            .map(move |request| {
                let replicator = replicator.clone();
                async move {
                    let TaggedPayload { id, payload } = request?;
                    let outcome = proposed(&replicator, &RaftPayload { payload }).await;
                    Ok(TaggedPayload {
                        id,
                        payload: encoded(&outcome)?.payload,
                    })
                }
            })
            .buffer_unordered(FORWARDED_IN_FLIGHT);
        Ok(Response::new(Box::pin(replies)))
    }

    async fn pre_vote(
        &self,
        request: Request<PreVoteRequest>,
    ) -> Result<Response<PreVoteResponse>, Status> {
        deaf_in_tests()?;
        let candidate_log = request.get_ref().last_log.as_ref().map(log_id_of);
        Ok(Response::new(PreVoteResponse {
            granted: self.replicator.grants_pre_vote(candidate_log),
        }))
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
            rules: baton_state::RULES,
        }))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<Members>, Status> {
        let deadline = crate::convert::deadline(&request);
        crate::membership::join(&self.replicator, request.into_inner(), deadline)
            .await
            .map(Response::new)
    }

    async fn remove(&self, request: Request<RemoveRequest>) -> Result<Response<Members>, Status> {
        let deadline = crate::convert::deadline(&request);
        crate::membership::remove(&self.replicator, request.into_inner(), deadline)
            .await
            .map(Response::new)
    }
}
