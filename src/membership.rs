//! Changing who is in the cluster: a node is added as a learner, promoted to
//! voter once it has caught up (openraft `add_learner` + `change_membership`),
//! and removed only if the voters left can still form a quorum with the
//! nodes that answer now. Only the leader changes membership; a follower
//! passes a request on to it (once, on the peer port), and a node without a
//! leader answers UNAVAILABLE.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use baton_store::NodeId;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};

use crate::error::{ApiError, ReplicationError};
use crate::network::PeerChannels;
use crate::node::AskToJoin;
use crate::proto::baton::v1::raft_service_client::RaftServiceClient;
use crate::proto::baton::v1::{JoinRequest, Members, RemoveRequest};
use crate::replication::Replicator;
use tonic::transport::Channel;

/// The membership as this node knows it: (voters, learners).
pub fn members(replicator: &Replicator) -> (Vec<NodeId>, Vec<NodeId>) {
    let metrics = replicator.raft().metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    (
        membership.voter_ids().collect(),
        membership.learner_ids().collect(),
    )
}

fn not_leader(replicator: &Replicator) -> Result<(), ApiError> {
    if replicator.current_leader() == Some(replicator.id()) {
        return Ok(());
    }
    Err(ReplicationError::Unavailable {
        reason: "membership changes are made by the Raft leader".into(),
        hint: replicator.leader_hint(),
    }
    .into())
}

fn write_error(
    replicator: &Replicator,
    error: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
) -> ApiError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            ReplicationError::Unavailable {
                reason: "leadership moved during the membership change".into(),
                hint: replicator.leader_hint(),
            }
            .into()
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(error)) => {
            ApiError::Precondition(error.to_string())
        }
        RaftError::Fatal(fatal) => ReplicationError::Unavailable {
            reason: fatal.to_string(),
            hint: replicator.leader_hint(),
        }
        .into(),
    }
}

/// Longest peer address accepted (a DNS name is at most 253 bytes).
const MAX_PEER_ADDRESS_BYTES: usize = 260;

/// `addr` as `host:port`, or why it is not one.
fn check_peer_address(addr: &str) -> Result<(), ApiError> {
    let authority = (addr.len() <= MAX_PEER_ADDRESS_BYTES)
        .then(|| addr.parse::<http::uri::Authority>().ok())
        .flatten();
    match authority {
        Some(authority)
            if authority.port_u16().is_some()
                && !authority.host().is_empty()
                && !addr.contains('@') =>
        {
            Ok(())
        }
        _ => Err(ApiError::InvalidInput(format!(
            "the peer address must be host:port (at most {MAX_PEER_ADDRESS_BYTES} bytes), not {:?}",
            addr.chars().take(64).collect::<String>()
        ))),
    }
}

/// Adds node `id` at `peer_addr`: a learner until it has the log, then a
/// voter. Adding a voter again at its address changes nothing. The node
/// must answer there, as node `id`, before anything changes: openraft
/// takes any address, and made a voter of one where nothing listened.
pub async fn add_node(
    replicator: &Replicator,
    id: NodeId,
    peer_addr: &str,
    deadline: Instant,
) -> Result<(Vec<NodeId>, Vec<NodeId>), ApiError> {
    if id == 0 {
        return Err(ApiError::InvalidInput(
            "add-node needs a non-zero node id".into(),
        ));
    }
    check_peer_address(peer_addr)?;
    not_leader(replicator)?;
    // openraft keeps a member's address (voter or learner): one given anew
    // would be ignored.
    if let Some(known) = address_of(replicator, id) {
        if known != peer_addr {
            return Err(ApiError::Precondition(format!(
                "node {id} is a member at {known}; remove it before adding it at {peer_addr}"
            )));
        }
    }
    let (voters, _) = members(replicator);
    if voters.contains(&id) {
        return Ok(members(replicator));
    }
    let _changing = tokio::time::timeout_at(deadline, replicator.membership_changes())
        .await
        .map_err(|_| {
            ApiError::from(ReplicationError::DeadlineExceeded(
                "another membership change took all the time there was".into(),
            ))
        })?;
    // The rules level as committed, not as applied so far: a new leader
    // may not have applied an adoption its predecessor committed.
    replicator.linearizable_barrier(deadline).await?;
    let adopted = adopted_rules(replicator);
    match probe(replicator, peer_addr, deadline).await {
        None => {
            return Err(ApiError::Precondition(format!(
                "no Baton node answers at {peer_addr}; start node {id} there (with --join) first"
            )))
        }
        Some(info) if info.node_id != id => {
            return Err(ApiError::Precondition(format!(
                "the node at {peer_addr} is node {}, not node {id}",
                info.node_id
            )))
        }
        Some(info) if info.rules < adopted => {
            return Err(ApiError::Precondition(format!(
                "node {id} runs a version that applies state-machine rules up to level {}, and the cluster has adopted level {adopted}: upgrade it first",
                info.rules
            )))
        }
        Some(_) => {}
    }
    let node = BasicNode {
        addr: peer_addr.to_owned(),
    };
    let too_late = || {
        ApiError::from(ReplicationError::DeadlineExceeded(format!(
            "node {id} is a learner and still catching up; run add-node again to make it a voter"
        )))
    };
    // Blocks until the learner has caught up with the leader's log.
    tokio::time::timeout_at(deadline, replicator.raft().add_learner(id, node, true))
        .await
        .map_err(|_| too_late())?
        .map_err(|e| write_error(replicator, e))?;
    tokio::time::timeout_at(
        deadline,
        replicator
            .raft()
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false),
    )
    .await
    .map_err(|_| too_late())?
    .map_err(|e| write_error(replicator, e))?;
    Ok(members(replicator))
}

/// How long a node being added is given to start answering: started a
/// moment before `add-node`, it may not be listening yet.
const PROBE_PATIENCE: Duration = Duration::from_secs(5);

/// What the node at `peer_addr` says of itself, asked until it answers,
/// for at most [`PROBE_PATIENCE`] (and never past `deadline`).
async fn probe(
    replicator: &Replicator,
    peer_addr: &str,
    deadline: Instant,
) -> Option<crate::proto::baton::v1::NodeInfoResponse> {
    let give_up = deadline.min(Instant::now() + PROBE_PATIENCE);
    replicator.probe(peer_addr, give_up).await
}

/// The rules level the cluster's state has adopted.
fn adopted_rules(replicator: &Replicator) -> u32 {
    replicator.state().read(|machine, _| machine.rules())
}

/// How often a leader checks whether every member applies a rules level
/// the cluster has not adopted yet.
const RULES_CHECK: Duration = Duration::from_secs(2);

/// While this node leads, adopts the highest state-machine rules level
/// this version applies (`baton_state::RULES`) once every member (voters
/// and learners) reports that it applies it too (NodeInfo `rules`): until
/// then every replica applies the log by the rules all of them know, so a
/// cluster being upgraded one node at a time never diverges. Runs until
/// the level is adopted or the node stops.
pub async fn adopt_rules(replicator: Replicator, mut stop: tokio::sync::watch::Receiver<bool>) {
    let target = baton_state::RULES;
    loop {
        if adopted_rules(&replicator) >= target {
            return;
        }
        if replicator.is_leader() {
            // No member is admitted between the check and the adoption.
            let _changing = replicator.membership_changes().await;
            if every_member_applies(&replicator, target).await {
                let adopt = baton_state::Command::AdoptRules { level: target };
                match replicator.propose_as_leader(adopt).await {
                    Ok(Ok(_)) => {
                        tracing::info!(level = target, "the cluster adopted state-machine rules")
                    }
                    other => {
                        tracing::debug!(?other, "adopting the rules level did not commit yet")
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RULES_CHECK) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// Whether every member but this node answers NodeInfo with a rules level
/// of at least `level`.
async fn every_member_applies(replicator: &Replicator, level: u32) -> bool {
    let (voters, learners) = members(replicator);
    for id in voters.into_iter().chain(learners) {
        if id == replicator.id() {
            continue;
        }
        match replicator.node_info_of(id).await {
            Some(info) if info.node_id == id && info.rules >= level => {}
            _ => return false,
        }
    }
    true
}

/// The peer address the membership holds for node `id`.
fn address_of(replicator: &Replicator, id: NodeId) -> Option<String> {
    let metrics = replicator.raft().metrics();
    let address = metrics
        .borrow()
        .membership_config
        .membership()
        .get_node(&id)
        .map(|node| node.addr.clone());
    address
}

/// Removes node `id` (voter or learner), unless the voters left could not
/// form a quorum with the nodes that answer now.
pub async fn remove_node(
    replicator: &Replicator,
    id: NodeId,
    deadline: Instant,
) -> Result<(Vec<NodeId>, Vec<NodeId>), ApiError> {
    not_leader(replicator)?;
    let (voters, learners) = members(replicator);
    if !voters.contains(&id) && !learners.contains(&id) {
        return Err(ApiError::Precondition(format!("node {id} is not a member")));
    }
    if voters.contains(&id) {
        let remaining: Vec<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
        let mut reachable = 0;
        for voter in &remaining {
            let answers = *voter == replicator.id()
                || tokio::time::timeout(Duration::from_secs(1), replicator.node_info_of(*voter))
                    .await
                    .ok()
                    .flatten()
                    .is_some();
            reachable += usize::from(answers);
        }
        let quorum = remaining.len() / 2 + 1;
        if remaining.is_empty() || reachable < quorum {
            return Err(ApiError::Precondition(format!(
                "removing node {id} would leave {} voters of which {reachable} answer; a quorum needs {quorum}",
                remaining.len()
            )));
        }
    }
    let change = if voters.contains(&id) {
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    // retain = false: a removed voter does not stay on as a learner.
    tokio::time::timeout_at(deadline, replicator.raft().change_membership(change, false))
        .await
        .map_err(|_| {
            ApiError::from(ReplicationError::DeadlineExceeded(format!(
                "the removal of node {id} was not committed in time; it may still be"
            )))
        })?
        .map_err(|e| write_error(replicator, e))?;
    Ok(members(replicator))
}

/// Where a membership change is made: here (`None`), on this node's
/// leader (a client for it), or nowhere. A follower passes the request on
/// once, so any node answers it (DESIGN §1) and a node that knows only
/// some members (a scaled-up pod, the founding ones) reaches a leader
/// that is none of them.
fn change_on(
    replicator: &Replicator,
    passed_on: bool,
) -> Result<Option<RaftServiceClient<Channel>>, tonic::Status> {
    let leader = replicator.working_leader().ok();
    if passed_on || leader.is_none_or(|leader| leader == replicator.id()) {
        return Ok(None);
    }
    leader
        .and_then(|leader| replicator.peer_client(leader))
        .map(Some)
        .ok_or_else(|| tonic::Status::unavailable("no leader to pass the request on to"))
}

/// A request to another node, with what is left of `deadline`.
fn passed<T>(message: T, deadline: Instant) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    request
}

/// Adds a node (RaftService `Join`, AdminService `AddNode`), here or on
/// the leader.
pub async fn join(
    replicator: &Replicator,
    request: JoinRequest,
    deadline: Instant,
) -> Result<Members, tonic::Status> {
    match change_on(replicator, request.passed_on)? {
        Some(mut leader) => {
            let request = JoinRequest {
                passed_on: true,
                ..request
            };
            Ok(leader.join(passed(request, deadline)).await?.into_inner())
        }
        None => {
            let (voters, learners) = add_node(replicator, request.id, &request.peer_addr, deadline)
                .await
                .map_err(tonic::Status::from)?;
            Ok(Members { voters, learners })
        }
    }
}

/// Removes a member (RaftService `Remove`, AdminService `RemoveNode`),
/// here or on the leader.
pub async fn remove(
    replicator: &Replicator,
    request: RemoveRequest,
    deadline: Instant,
) -> Result<Members, tonic::Status> {
    match change_on(replicator, request.passed_on)? {
        Some(mut leader) => {
            let request = RemoveRequest {
                passed_on: true,
                ..request
            };
            Ok(leader.remove(passed(request, deadline)).await?.into_inner())
        }
        None => {
            let (voters, learners) = remove_node(replicator, request.id, deadline)
                .await
                .map_err(tonic::Status::from)?;
            Ok(Members { voters, learners })
        }
    }
}

/// How long one request to be added may take (the leader waits for the
/// new node to catch up before it promotes it).
const JOIN_CALL: Duration = Duration::from_secs(60);
/// Pause between rounds of asking every member.
const JOIN_RETRY: Duration = Duration::from_secs(2);

/// Asks `ask.members` in turn (their leader does it, the others refuse
/// with UNAVAILABLE) to add this node, until this node is a voter or the
/// node stops. A StatefulSet scaled up adds its new pods this way.
pub async fn ask_to_join(
    replicator: Replicator,
    channels: PeerChannels,
    ask: AskToJoin,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let id = replicator.id();
    tracing::info!(members = ?ask.members, peer_addr = %ask.peer_addr, "asking the cluster to add this node");
    loop {
        if members(&replicator).0.contains(&id) {
            return;
        }
        for member in &ask.members {
            let Ok(mut client) = channels.client(member) else {
                continue;
            };
            let request = JoinRequest {
                id,
                peer_addr: ask.peer_addr.clone(),
                passed_on: false,
            };
            let request = passed(request, Instant::now() + JOIN_CALL);
            match tokio::time::timeout(JOIN_CALL, client.join(request)).await {
                Ok(Ok(added)) => {
                    let added = added.into_inner();
                    tracing::info!(voters = ?added.voters, "added to the cluster");
                    return;
                }
                Ok(Err(status)) => {
                    tracing::info!(%member, code = ?status.code(), message = status.message(), "not added yet");
                }
                Err(_) => tracing::warn!(%member, "no answer to the request to be added"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(JOIN_RETRY) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}
