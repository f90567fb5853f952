//! One system's figures from clusters the benchmark starts itself, and the
//! table that sets two systems' figures side by side.

use std::time::Duration;

use crate::cluster::{LocalCluster, System};
use crate::disk::{self, Flushes};
use crate::stats::Outcome;
use crate::workload::{self, FailoverReport};

/// Writes the disk probe times before each system's run.
const PROBE_WRITES: usize = 200;

/// A throughput workload's outcome and the durable flushes the cluster
/// made while it ran.
#[derive(Debug, Clone)]
pub struct WorkloadRun {
    /// Operations, errors, latencies.
    pub outcome: Outcome,
    /// The members' flushes during the workload, summed; `None` if their
    /// metrics could not be read.
    pub flushes: Option<Flushes>,
}

impl WorkloadRun {
    /// Durable flushes, over all members, per completed operation.
    pub fn flushes_per_op(&self) -> Option<f64> {
        let flushes = self.flushes?;
        (self.outcome.ops > 0).then(|| flushes.count / self.outcome.ops as f64)
    }

    /// "1234/s, p50 …; 6.0 flushes per op, mean 0.37 ms".
    pub fn summary(&self) -> String {
        let disk = match (self.flushes_per_op(), self.flushes.and_then(|f| f.mean())) {
            (Some(per_op), Some(mean)) => format!(
                "; {per_op:.1} durable flushes per op (all members), mean {:.2} ms",
                mean.as_secs_f64() * 1e3
            ),
            _ => String::new(),
        };
        format!("{}{disk}", self.outcome.summary())
    }
}

/// Everything [`measure`] found for one system.
#[derive(Debug, Clone)]
pub struct Results {
    /// Median of 4 KiB write + `fdatasync` in the cluster's directory,
    /// probed just before the workloads.
    pub disk: Duration,
    /// `churn N` for N = 1, 16, 64.
    pub churn: Vec<(usize, WorkloadRun)>,
    /// `contend 16`.
    pub contend: WorkloadRun,
    /// Leader SIGKILL under a write loop (on a fresh cluster).
    pub failover: FailoverReport,
}

async fn run_with_flushes<F: std::future::Future<Output = Outcome>>(
    cluster: &LocalCluster,
    workload: F,
) -> WorkloadRun {
    let before = cluster.flushes().await;
    let outcome = workload.await;
    let after = cluster.flushes().await;
    let flushes = match (before, after) {
        (Ok(before), Ok(after)) => Some(after.since(&before)),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("cannot read the members' flush metrics: {error}");
            None
        }
    };
    WorkloadRun { outcome, flushes }
}

/// Starts a cluster of `system`, probes its disk, runs churn 1/16/64 and
/// contend 16 for `duration` each, then the failover on a fresh cluster.
/// Prints each figure to stderr as it comes.
pub async fn measure(system: System, duration: Duration) -> Result<Results, String> {
    let cluster = LocalCluster::start(system.clone()).await?;
    let target = cluster.target();
    let dir = cluster.dir().to_path_buf();
    let disk = tokio::task::spawn_blocking(move || disk::probe(&dir, PROBE_WRITES))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("disk probe: {e}"))?;
    eprintln!(
        "{} disk: 4 KiB write + fdatasync p50 {:.3} ms",
        target.name(),
        disk.as_secs_f64() * 1e3
    );
    // Warm up connections and the leader's caches.
    let _ = workload::churn(&target, 4, Duration::from_secs(1)).await;
    let mut churn = Vec::new();
    for clients in [1, 16, 64] {
        let run = run_with_flushes(&cluster, workload::churn(&target, clients, duration)).await;
        eprintln!("{} churn {clients}: {}", target.name(), run.summary());
        churn.push((clients, run));
    }
    let contend = run_with_flushes(&cluster, workload::contend(&target, 16, duration)).await;
    eprintln!("{} contend 16: {}", target.name(), contend.summary());
    drop(cluster);
    let mut cluster = LocalCluster::start(system).await?;
    let target = cluster.target();
    let failover = workload::failover(
        &mut cluster,
        &target,
        Duration::from_secs(2),
        Duration::from_secs(4),
    )
    .await?;
    eprintln!("{} failover: {failover:?}", target.name());
    Ok(Results {
        disk,
        churn,
        contend,
        failover,
    })
}

/// Reads one phase of a failover report.
type PhasePick = fn(&FailoverReport) -> Option<Duration>;

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}

fn ratio(ours: Option<f64>, theirs: Option<f64>) -> String {
    match (ours, theirs) {
        (Some(ours), Some(theirs)) if theirs > 0.0 => format!("{:.2}×", ours / theirs),
        _ => "-".into(),
    }
}

fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

/// One row per figure: `| what | etcd | baton | baton / etcd |`.
pub fn table(etcd: &Results, baton: &Results) -> String {
    let mut rows = vec![
        "| workload | etcd | baton | baton / etcd |".to_owned(),
        "|---|---|---|---|".to_owned(),
    ];
    let mut row = |name: &str, e: String, b: String, r: String| {
        rows.push(format!("| {name} | {e} | {b} | {r} |"));
    };
    let flush_rows = |row: &mut dyn FnMut(&str, String, String, String),
                      name: &str,
                      e: &WorkloadRun,
                      b: &WorkloadRun| {
        let (ep, bp) = (e.flushes_per_op(), b.flushes_per_op());
        let show = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.1}"));
        row(
            &format!("{name}: durable flushes per op, all members"),
            show(ep),
            show(bp),
            ratio(bp, ep),
        );
        let (em, bm) = (
            e.flushes.and_then(|f| f.mean()),
            b.flushes.and_then(|f| f.mean()),
        );
        row(
            &format!("{name}: durable flush mean"),
            ms_fine(em),
            ms_fine(bm),
            ratio(secs(bm), secs(em)),
        );
    };
    row(
        "disk: 4 KiB write + fdatasync p50 (probed before the run)",
        ms_fine(Some(etcd.disk)),
        ms_fine(Some(baton.disk)),
        ratio(secs(Some(baton.disk)), secs(Some(etcd.disk))),
    );
    for ((clients, e), (_, b)) in etcd.churn.iter().zip(&baton.churn) {
        row(
            &format!("churn {clients}: cycles/s"),
            format!("{:.0}", e.outcome.rate()),
            format!("{:.0}", b.outcome.rate()),
            ratio(Some(b.outcome.rate()), Some(e.outcome.rate())),
        );
        for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
            let (eq, bq) = (e.outcome.quantile(q), b.outcome.quantile(q));
            row(
                &format!("churn {clients}: cycle {label}"),
                ms(eq),
                ms(bq),
                ratio(secs(bq), secs(eq)),
            );
        }
        flush_rows(&mut row, &format!("churn {clients}"), e, b);
    }
    row(
        "contend 16: hand-overs/s",
        format!("{:.0}", etcd.contend.outcome.rate()),
        format!("{:.0}", baton.contend.outcome.rate()),
        ratio(
            Some(baton.contend.outcome.rate()),
            Some(etcd.contend.outcome.rate()),
        ),
    );
    flush_rows(&mut row, "contend 16", &etcd.contend, &baton.contend);
    let phases: [(&str, PhasePick); 5] = [
        ("failover: longest gap", |f| Some(f.longest_gap)),
        ("failover: election began (detection)", |f| {
            f.election_started_after
        }),
        ("failover: new leader (election)", |f| f.new_leader_after),
        ("failover: its first commit", |f| f.first_commit_after),
        ("failover: first write acked (redirect)", |f| {
            f.first_write_after
        }),
    ];
    for (name, pick) in phases {
        let (e, b) = (pick(&etcd.failover), pick(&baton.failover));
        row(name, ms(e), ms(b), ratio(secs(b), secs(e)));
    }
    rows.join("\n")
}

/// Milliseconds with two decimals, for sub-millisecond disk figures.
fn ms_fine(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}
