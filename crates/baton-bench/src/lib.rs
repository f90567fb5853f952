//! Baton's benchmark: the same leader-election workloads against a Baton
//! cluster and an etcd cluster, with throughput, latency percentiles and
//! failover gaps, and a table of ratios (issue 8).
//!
//! Workloads (one *cycle* = enter + withdraw on one's own election; for
//! etcd, campaign + resign under a lease):
//! - `churn N`: N clients, each cycling on its own election;
//! - `contend N`: N clients on one election; each leader withdraws and
//!   re-enters at once; counts hand-overs;
//! - `churn N + W watchers`: churn while W other clients each lead an
//!   election of their own and stream its changes (Events; etcd: Observe),
//!   as Atomix candidates do: what idle watchers cost a busy cluster;
//! - `failover`: one writer (300 ms per call, rotating endpoints on error)
//!   while the Raft leader is SIGKILLed; the longest gap between
//!   acknowledged writes, and when the new leader and the first write came.
//!
//! Speed lives here, not in timed tests: the suite only runs [`quick`] to
//! keep this code working.

#![warn(missing_docs)]

pub mod cluster;
pub mod cpu;
pub mod disk;
pub mod metrics;
pub mod report;
pub mod stats;
pub mod target;
pub mod workload;

/// Generated clients for the etcd API subset in `proto/`.
#[allow(missing_docs, clippy::all)]
pub mod etcd {
    /// `etcdserverpb`: KV, Lease, Maintenance.
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    /// `v3electionpb`: the election service.
    pub mod v3electionpb {
        tonic::include_proto!("v3electionpb");
    }
}

pub use stats::Outcome;
pub use target::Target;

use std::time::Duration;

/// Runs every workload briefly against a Baton cluster and fails if any of
/// them made no progress. The test suite runs this so the benchmark never
/// rots; it asserts nothing about speed.
pub async fn quick(endpoints: &[String]) -> Result<Vec<String>, String> {
    let target = Target::Baton(endpoints.to_vec());
    let secs = Duration::from_millis(1_500);
    let mut lines = Vec::new();
    for clients in [1, 4] {
        let outcome = workload::churn(&target, clients, secs).await;
        if outcome.ops == 0 {
            return Err(format!(
                "churn {clients}: no cycle completed ({} errors)",
                outcome.errors
            ));
        }
        lines.push(format!("churn {clients}: {}", outcome.summary()));
    }
    let handoffs = workload::contend(&target, 4, secs).await;
    if handoffs.ops == 0 {
        return Err("contend 4: no hand-over".into());
    }
    lines.push(format!("contend 4: {}", handoffs.summary()));
    let watchers = workload::Watchers::open(&target, 50).await?;
    let watched = workload::churn(&target, 4, secs).await;
    let closed = watchers.close().await;
    if watched.ops == 0 || closed != workload::WatchersClosed::default() {
        return Err(format!(
            "churn 4 + 50 watchers: {} cycles, watchers {closed:?}",
            watched.ops
        ));
    }
    lines.push(format!("churn 4 + 50 watchers: {}", watched.summary()));
    Ok(lines)
}
