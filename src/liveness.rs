//! Whether this node can currently reach a working Raft leader (DESIGN §7).
//!
//! openraft 0.9 keeps a leader in office while it cannot reach a quorum and
//! keeps a follower pointing at a leader it no longer hears from. A node in
//! either state would take writes and reads only to let them hang until the
//! caller's deadline, and would keep Events streams open as if nothing had
//! happened. Here both are detected: a leader whose last quorum
//! acknowledgement is older than openraft's leader lease
//! (`election_timeout_max`), and a follower that has not had an
//! AppendEntries from its leader for as long. No other leader can be elected
//! sooner: followers refuse votes for the lease after their last heartbeat.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use baton_store::NodeId;
use openraft::{RaftMetrics, ServerState};
use tokio::time::Instant;

/// Whether these metrics show their node leading (it is in the leader state
/// and names itself as leader).
pub fn leads(metrics: &RaftMetrics<NodeId, openraft::BasicNode>) -> bool {
    metrics.state == ServerState::Leader && metrics.current_leader == Some(metrics.id)
}

/// Whether these metrics show their node leading in `term`.
pub fn leads_in(metrics: &RaftMetrics<NodeId, openraft::BasicNode>, term: u64) -> bool {
    leads(metrics) && metrics.current_term == term
}

/// Why no working leader can be reached from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LeaderLoss {
    /// No leader is known (an election is under way, or none can be won).
    #[error("no Raft leader is known")]
    NoLeader,
    /// This node is a follower that has not heard from its leader for an
    /// election timeout.
    #[error("lost contact with the Raft leader")]
    LostLeader,
    /// This node leads but has not heard from a quorum for an election
    /// timeout, so it may have been replaced.
    #[error("the Raft leader lost its quorum")]
    LostQuorum,
}

/// Tracks contact with the leader (on followers) and the start of this
/// node's own leadership (on the leader).
#[derive(Debug)]
pub struct Liveness {
    /// How long without contact counts as lost: the leader lease, after
    /// which the rest of the cluster may be electing someone else.
    lost_after: Duration,
    /// The leader that last sent this node an AppendEntries it accepted.
    contact: Mutex<Option<(NodeId, Instant)>>,
    /// When this node was first seen leading in a term; a new leader has no
    /// quorum acknowledgement yet and gets `lost_after` to obtain one.
    leading_since: Mutex<Option<(u64, Instant)>>,
    /// The longest time without a quorum acknowledgement seen while this
    /// node, leading, was found without its quorum (and so refused writes,
    /// keep-alives included), in ms; taken by the leader's duties, which
    /// renew every session after a long one before expiring any.
    quorum_lost_ms: AtomicU64,
}

impl Liveness {
    /// A tracker that declares contact lost after `lost_after`.
    pub fn new(lost_after: Duration) -> Self {
        Liveness {
            lost_after,
            contact: Mutex::new(None),
            leading_since: Mutex::new(None),
            quorum_lost_ms: AtomicU64::new(0),
        }
    }

    /// How long without contact counts as lost.
    pub fn lost_after(&self) -> Duration {
        self.lost_after
    }

    /// Records an AppendEntries (heartbeat or entries) accepted from `leader`.
    pub fn heard_from(&self, leader: NodeId) {
        *self.contact.lock().unwrap_or_else(|p| p.into_inner()) = Some((leader, Instant::now()));
    }

    /// When this node last accepted an AppendEntries from any leader.
    pub fn last_contact(&self) -> Option<Instant> {
        self.contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|(_, at)| at)
    }

    /// The leader this node can work with now, judged from openraft's
    /// latest metrics.
    pub fn working_leader(
        &self,
        metrics: &RaftMetrics<NodeId, openraft::BasicNode>,
    ) -> Result<NodeId, LeaderLoss> {
        let leader = metrics.current_leader.ok_or(LeaderLoss::NoLeader)?;
        if leader == metrics.id {
            if metrics.state != ServerState::Leader {
                return Err(LeaderLoss::NoLeader);
            }
            let without_ack = match metrics.millis_since_quorum_ack {
                Some(ms) => Duration::from_millis(ms),
                None => self.leading_for(metrics.current_term),
            };
            return if without_ack <= self.lost_after {
                Ok(leader)
            } else {
                let ms = u64::try_from(without_ack.as_millis()).unwrap_or(u64::MAX);
                self.quorum_lost_ms.fetch_max(ms, Ordering::Relaxed);
                Err(LeaderLoss::LostQuorum)
            };
        }
        let contact = *self.contact.lock().unwrap_or_else(|p| p.into_inner());
        match contact {
            Some((from, at)) if from == leader && at.elapsed() <= self.lost_after => Ok(leader),
            _ => Err(LeaderLoss::LostLeader),
        }
    }

    /// The longest time this node, leading, was seen without a quorum
    /// acknowledgement (once past the leader lease) since the last call:
    /// clients were refused keep-alives for about that long.
    pub fn take_quorum_loss(&self) -> Duration {
        Duration::from_millis(self.quorum_lost_ms.swap(0, Ordering::Relaxed))
    }

    fn leading_for(&self, term: u64) -> Duration {
        let mut since = self.leading_since.lock().unwrap_or_else(|p| p.into_inner());
        match *since {
            Some((t, at)) if t == term => at.elapsed(),
            _ => {
                *since = Some((term, Instant::now()));
                Duration::ZERO
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leading(without_ack_ms: u64) -> RaftMetrics<NodeId, openraft::BasicNode> {
        let mut metrics = RaftMetrics::new_initial(1);
        metrics.state = ServerState::Leader;
        metrics.current_leader = Some(1);
        metrics.millis_since_quorum_ack = Some(without_ack_ms);
        metrics
    }

    #[test]
    fn a_quorum_loss_is_measured_by_its_longest_lapse_and_taken_once() {
        let liveness = Liveness::new(Duration::from_millis(200));
        assert_eq!(liveness.working_leader(&leading(150)), Ok(1));
        assert_eq!(
            liveness.take_quorum_loss(),
            Duration::ZERO,
            "within the lease"
        );
        for ms in [250, 900, 600] {
            assert_eq!(
                liveness.working_leader(&leading(ms)),
                Err(LeaderLoss::LostQuorum)
            );
        }
        assert_eq!(liveness.take_quorum_loss(), Duration::from_millis(900));
        assert_eq!(liveness.take_quorum_loss(), Duration::ZERO);
    }
}
