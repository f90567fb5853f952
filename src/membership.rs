//! Changing who is in the cluster: a node is added as a learner, promoted to
//! voter once it has caught up (openraft `add_learner` + `change_membership`),
//! and removed only if the voters left can still form a quorum with the
//! nodes that answer now. Only the leader changes membership; others answer
//! UNAVAILABLE with its address.

use std::collections::BTreeSet;
use std::time::Duration;

use baton_store::NodeId;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};

use crate::error::{ApiError, ReplicationError};
use crate::replication::Replicator;

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

/// Adds node `id` at `peer_addr`: a learner until it has the log, then a
/// voter. Adding a voter again changes nothing.
pub async fn add_node(
    replicator: &Replicator,
    id: NodeId,
    peer_addr: &str,
) -> Result<(Vec<NodeId>, Vec<NodeId>), ApiError> {
    if id == 0 || peer_addr.is_empty() {
        return Err(ApiError::InvalidInput(
            "add-node needs a non-zero id and the node's peer address".into(),
        ));
    }
    not_leader(replicator)?;
    let (voters, _) = members(replicator);
    if voters.contains(&id) {
        return Ok(members(replicator));
    }
    let node = BasicNode {
        addr: peer_addr.to_owned(),
    };
    // Blocks until the learner has caught up with the leader's log.
    replicator
        .raft()
        .add_learner(id, node, true)
        .await
        .map_err(|e| write_error(replicator, e))?;
    replicator
        .raft()
        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
        .await
        .map_err(|e| write_error(replicator, e))?;
    Ok(members(replicator))
}

/// Removes node `id` (voter or learner), unless the voters left could not
/// form a quorum with the nodes that answer now.
pub async fn remove_node(
    replicator: &Replicator,
    id: NodeId,
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
    replicator
        .raft()
        .change_membership(change, false)
        .await
        .map_err(|e| write_error(replicator, e))?;
    Ok(members(replicator))
}
