//! gRPC health that tells the truth: a node is SERVING only while it can
//! reach a working leader and is not rejoining after a wipe, so a load
//! balancer or a Kubernetes readiness probe stops sending clients to a node
//! that could only answer UNAVAILABLE. The same loop keeps the leader's
//! client address cached, so error replies carry the hint at once.

use std::time::Duration;

use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::replication::Replicator;

/// How often health is re-evaluated.
const HEALTH_INTERVAL: Duration = Duration::from_millis(100);

/// Updates `services` (and the server-wide "" entry) in `reporter` until
/// `shutdown` turns true.
pub async fn run(
    replicator: Replicator,
    mut reporter: HealthReporter,
    services: Vec<&'static str>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reported = None;
    let mut ticker = tokio::time::interval(HEALTH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let leader = replicator.working_leader();
        let serving = leader.is_ok() && !replicator.is_rejoining();
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if reported != Some(status) {
            for service in services.iter().copied().chain([""]) {
                reporter.set_service_status(service, status).await;
            }
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
