//! Elections with a pre-vote. openraft 0.9 has no pre-vote: a follower cut
//! off from a working leader (a partition of its own, a stalled network)
//! keeps campaigning and raising its term, and when it comes back its
//! higher term deposes the leader: a needless election and a window
//! without writes. Here openraft's own election timer is off
//! (`Config::enable_elect`), and a node campaigns only once a majority of
//! the voters, itself included, say they would vote (`PreVote`): none of
//! them leads or has heard from a leader for the leader lease, and none has
//! a log ahead of the candidate's (openraft's vote would refuse it for that,
//! after the candidate had raised its term for nothing). Votes stay
//! openraft's; this only decides when to ask for them.

use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rand::Rng;
use tokio::time::Instant;

use baton_store::NodeId;
use openraft::{CommittedLeaderId, LogId};

use crate::liveness::leads;
use crate::proto::baton::v1::{LogPosition, PreVoteRequest};
use crate::replication::Replicator;

/// Runs this node's elections until the task is aborted. `lease` is the
/// leader lease (openraft's `election_timeout_max`: how long after the last
/// heartbeat its followers refuse votes), `spread` the random part of the
/// wait (`election_timeout_min`), so that candidates rarely collide.
pub async fn run(replicator: Replicator, lease: Duration, spread: Duration) {
    let started = Instant::now();
    let mut last_attempt = started;
    loop {
        let wait = lease + spread.mul_f64(rand::thread_rng().gen::<f64>());
        let quiet_since = || {
            let contact = replicator.liveness().last_contact().unwrap_or(started);
            contact.max(last_attempt)
        };
        tokio::time::sleep_until(quiet_since() + wait).await;
        // A leader may have been heard from while this task slept.
        if quiet_since().elapsed() < wait {
            continue;
        }
        last_attempt = Instant::now();
        let stands = may_campaign(&replicator) && majority_would_vote(&replicator, spread).await;
        // The core has stopped: nothing left to elect.
        if stands && replicator.raft().trigger().elect().await.is_err() {
            return;
        }
    }
}

/// Whether this node may stand: a voter, not leading, not rejoining.
fn may_campaign(replicator: &Replicator) -> bool {
    if replicator.is_rejoining() {
        return false;
    }
    let metrics = replicator.raft().metrics();
    let metrics = metrics.borrow();
    !leads(&metrics)
        && metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == metrics.id)
}

/// Asks the other voters (each within `patience`) whether they would vote
/// for this node; true once a majority, this node included, said yes. A
/// peer of an older version, without `PreVote`, counts as a yes: it would
/// have let the election go ahead.
async fn majority_would_vote(replicator: &Replicator, patience: Duration) -> bool {
    let (me, voters): (u64, Vec<u64>) = {
        let metrics = replicator.raft().metrics();
        let metrics = metrics.borrow();
        let voters = metrics.membership_config.membership().voter_ids().collect();
        (metrics.id, voters)
    };
    let needed = voters.len() / 2 + 1;
    let mut yes = 1;
    if yes >= needed {
        return true;
    }
    let Some(last_log) = replicator.last_log_id() else {
        return false;
    };
    let last_log = last_log.map(position_of);
    let mut answers: FuturesUnordered<_> = voters
        .into_iter()
        .filter(|id| *id != me)
        .filter_map(|id| replicator.peer_client(id))
        .map(|mut client| async move {
            let ask = client.pre_vote(PreVoteRequest {
                candidate: me,
                last_log,
            });
            match tokio::time::timeout(patience, ask).await {
                Ok(Ok(answer)) => answer.into_inner().granted,
                Ok(Err(status)) => status.code() == tonic::Code::Unimplemented,
                Err(_) => false,
            }
        })
        .collect();
    while let Some(granted) = answers.next().await {
        if granted {
            yes += 1;
            if yes >= needed {
                return true;
            }
        }
    }
    false
}

/// `id` as the pre-vote carries it.
pub(crate) fn position_of(id: LogId<NodeId>) -> LogPosition {
    LogPosition {
        term: id.leader_id.term,
        node_id: id.leader_id.node_id,
        index: id.index,
    }
}

/// The log id a pre-vote carries.
pub(crate) fn log_id_of(position: &LogPosition) -> LogId<NodeId> {
    LogId::new(
        CommittedLeaderId::new(position.term, position.node_id),
        position.index,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_position_carries_the_log_id_unchanged() {
        let id = LogId::new(CommittedLeaderId::new(7, 3), 1_234);
        assert_eq!(log_id_of(&position_of(id)), id);
    }

    /// The comparison a voter makes is openraft's: a later term is ahead
    /// whatever its index.
    #[test]
    fn a_later_term_is_ahead_of_a_longer_log() {
        let longer = log_id_of(&LogPosition {
            term: 2,
            node_id: 1,
            index: 900,
        });
        let later = log_id_of(&LogPosition {
            term: 3,
            node_id: 2,
            index: 10,
        });
        assert!(later > longer);
    }
}
