//! gRPC health that tells the truth: a node is SERVING only while it can
//! reach a working leader, is not rejoining after a wipe, and has applied
//! the log to within `MAX_APPLY_LAG` entries of the leader's commit index
//! (a node catching up after a restart would make every read wait), so a load
//! balancer or a Kubernetes readiness probe stops sending clients to a node
//! that could only answer UNAVAILABLE. The same loop keeps the leader's
//! client address cached, so error replies carry the hint at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::replication::Replicator;

/// How often health is re-evaluated.
const HEALTH_INTERVAL: Duration = Duration::from_millis(100);

/// How many committed entries a node may still have to apply and serve: a
/// node applies this many in well under a second, so reads would not stall.
pub const MAX_APPLY_LAG: u64 = 1_000;

/// How often a follower asks its leader for the commit index (every fifth
/// health tick).
const LEADER_COMMIT_EVERY: u32 = 5;

/// What `leader_commit` holds until the leader has been asked: a node that
/// does not know how far behind it is does not say SERVING (until session
/// 13 it started from 0, and a follower far behind said SERVING for the
/// first round trip after it heard from a leader).
const UNKNOWN: u64 = u64::MAX;

/// Whether a node in this state should say SERVING (`leader_commit`:
/// [`UNKNOWN`] until known).
pub fn serving(
    has_working_leader: bool,
    rejoining: bool,
    applied: u64,
    leader_commit: u64,
) -> bool {
    has_working_leader
        && !rejoining
        && leader_commit != UNKNOWN
        && applied.saturating_add(MAX_APPLY_LAG) >= leader_commit
}

/// Updates `services` (and the server-wide "" entry) in `reporter`, and
/// `ready` with the same verdict (the metrics port's `/ready`), until
/// `shutdown` turns true.
pub async fn run(
    replicator: Replicator,
    mut reporter: HealthReporter,
    services: Vec<&'static str>,
    ready: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reported = None;
    let leader_commit = Arc::new(AtomicU64::new(UNKNOWN));
    let mut ticks = 0u32;
    let mut ticker = tokio::time::interval(HEALTH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let leader = replicator.working_leader();
        let applied = replicator.state().applied_index().unwrap_or(0);
        if let Ok(leader) = leader {
            ticks = ticks.wrapping_add(1);
            if leader == replicator.id() {
                leader_commit.store(applied, Ordering::Relaxed);
            } else if ticks % LEADER_COMMIT_EVERY == 1 {
                // Asked aside, so a slow leader never delays the update.
                let (replicator, leader_commit) = (replicator.clone(), leader_commit.clone());
                tokio::spawn(async move {
                    if let Some(info) = replicator.node_info_of(leader).await {
                        leader_commit.store(info.commit_index, Ordering::Relaxed);
                    }
                });
            }
        }
        let serving = serving(
            leader.is_ok(),
            replicator.is_rejoining(),
            applied,
            leader_commit.load(Ordering::Relaxed),
        );
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if reported != Some(status) {
            for service in services.iter().copied().chain([""]) {
                reporter.set_service_status(service, status).await;
            }
            ready.send_replace(serving);
            reported = Some(status);
        }
        let uncached = leader
            .ok()
            .filter(|id| replicator.cached_client_addr(*id).is_none());
        if let Some(leader) = uncached.filter(|id| *id != replicator.id()) {
            // Cached after the first success; looked up aside, so a slow
            // peer never delays the health update.
            let replicator = replicator.clone();
            tokio::spawn(async move { replicator.client_addr_of(leader).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_serves_only_with_a_leader_not_rejoining_and_nearly_caught_up() {
        assert!(serving(true, false, 5_000, 5_000));
        assert!(serving(true, false, 4_000, 4_000 + MAX_APPLY_LAG));
        assert!(!serving(true, false, 4_000, 4_001 + MAX_APPLY_LAG));
        assert!(!serving(false, false, 5_000, 5_000));
        assert!(!serving(true, true, 5_000, 5_000));
        assert!(serving(true, false, 0, 0), "a fresh cluster serves");
        assert!(
            !serving(true, false, 5_000, UNKNOWN),
            "not before the leader's commit index is known"
        );
    }
}
