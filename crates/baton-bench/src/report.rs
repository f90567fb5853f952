//! One system's figures from clusters the benchmark starts itself, and the
//! table that sets two systems' figures side by side.
//!
//! The disk of a shared virtual machine can change speed by 2–4× from one
//! minute to the next, so a comparison runs both clusters at once and
//! alternates them workload by workload (etcd first in one round, Baton
//! first in the next), and its table shows the median of the rounds.
//! Baton alone is the same with one system.

use std::fmt;
use std::time::Duration;

use crate::cluster::{LocalCluster, System};
use crate::cpu::CpuUse;
use crate::disk;
use crate::metrics::Flushes;
use crate::stats::{quantile, Outcome};
use crate::workload::{self, FailoverReport};

/// Writes the disk probe times before each system's workloads.
const PROBE_WRITES: usize = 200;

/// The throughput workloads, in the order they run (the watched one last:
/// its watchers' sessions expire after it).
pub const WORKLOADS: [Workload; 5] = [
    Workload::Churn(1),
    Workload::Churn(16),
    Workload::Churn(64),
    Workload::Contend(16),
    Workload::Watched {
        clients: 16,
        watchers: 1_000,
    },
];

/// A throughput workload and its number of clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Each client cycles on its own election.
    Churn(usize),
    /// All clients on one election; each leader hands over at once.
    Contend(usize),
    /// Churn while other clients each watch an election of their own that
    /// nothing changes ([`workload::Watchers`]).
    Watched {
        /// Clients cycling.
        clients: usize,
        /// Idle watchers.
        watchers: usize,
    },
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Churn(n) => write!(f, "churn {n}"),
            Workload::Contend(n) => write!(f, "contend {n}"),
            Workload::Watched { clients, watchers } => {
                write!(f, "churn {clients} + {watchers} watchers")
            }
        }
    }
}

impl Workload {
    async fn run(self, cluster: &LocalCluster, duration: Duration) -> WorkloadRun {
        let target = cluster.target();
        let watchers = match self {
            Workload::Watched { watchers, .. } => {
                match workload::Watchers::open(&target, watchers).await {
                    Ok(watchers) => Some(watchers),
                    Err(error) => {
                        eprintln!("{} {self}: {error}", target.name());
                        return WorkloadRun {
                            outcome: Outcome {
                                errors: 1,
                                ..Outcome::default()
                            },
                            flushes: None,
                            cpu: None,
                        };
                    }
                }
            }
            _ => None,
        };
        let before = cluster.flushes().await;
        let cpu_before = cluster.cpu_reading();
        let outcome = match self {
            Workload::Churn(n) => workload::churn(&target, n, duration).await,
            Workload::Contend(n) => workload::contend(&target, n, duration).await,
            Workload::Watched { clients, .. } => workload::churn(&target, clients, duration).await,
        };
        let cpu = cpu_before
            .zip(cluster.cpu_reading())
            .and_then(|(before, after)| after.since(&before));
        let after = cluster.flushes().await;
        let mut outcome = outcome;
        if let Some(watchers) = watchers {
            let closed = watchers.close().await;
            if closed != workload::WatchersClosed::default() {
                eprintln!("{} {self}: watchers {closed:?}", target.name());
            }
            // A watcher that stopped watching made the run look cheaper.
            outcome.errors += (closed.ended_early + closed.close_failures) as u64;
        }
        let flushes = match (before, after) {
            (Ok(before), Ok(after)) => Some(after.since(&before)),
            (Err(error), _) | (_, Err(error)) => {
                eprintln!("cannot read the members' flush metrics: {error}");
                None
            }
        };
        let run = WorkloadRun {
            outcome,
            flushes,
            cpu,
        };
        eprintln!("{} {self}: {}", target.name(), run.summary());
        run
    }
}

/// A throughput workload's outcome and the durable flushes the cluster
/// made while it ran.
#[derive(Debug, Clone)]
pub struct WorkloadRun {
    /// Operations, errors, latencies.
    pub outcome: Outcome,
    /// The members' flushes during the workload, summed; `None` if their
    /// metrics could not be read.
    pub flushes: Option<Flushes>,
    /// The CPU the members used and how busy the machine was; `None` if
    /// `/proc` could not be read.
    pub cpu: Option<CpuUse>,
}

impl WorkloadRun {
    /// Durable flushes, over all members, per completed operation.
    pub fn flushes_per_op(&self) -> Option<f64> {
        let flushes = self.flushes?;
        (self.outcome.ops > 0).then(|| flushes.count / self.outcome.ops as f64)
    }

    /// The members' CPU time per completed operation.
    pub fn cpu_per_op(&self) -> Option<Duration> {
        let cpu = self.cpu?;
        (self.outcome.ops > 0).then(|| cpu.members.div_f64(self.outcome.ops as f64))
    }

    /// "1234/s, p50 …; 6.0 durable flushes per op …, mean 0.37 ms; CPU
    /// 0.61 ms per op (all members), machine 93 % busy".
    pub fn summary(&self) -> String {
        let disk = match (self.flushes_per_op(), self.flushes.and_then(|f| f.mean())) {
            (Some(per_op), Some(mean)) => format!(
                "; {per_op:.1} durable flushes per op (all members), mean {:.2} ms",
                mean.as_secs_f64() * 1e3
            ),
            _ => String::new(),
        };
        let cpu = match (self.cpu_per_op(), self.cpu) {
            (Some(per_op), Some(cpu)) => format!(
                "; CPU {:.2} ms per op (all members), machine {:.0} % busy",
                per_op.as_secs_f64() * 1e3,
                cpu.machine_busy * 100.0
            ),
            _ => String::new(),
        };
        format!("{}{disk}{cpu}", self.outcome.summary())
    }
}

/// One round of one system: every throughput workload on one cluster, then
/// the failover on a fresh one.
#[derive(Debug, Clone)]
pub struct Results {
    /// p50 of 4 KiB write + `fdatasync` in the cluster's directory, probed
    /// just before its workloads.
    pub disk: Duration,
    /// The [`WORKLOADS`], in order.
    pub runs: Vec<(Workload, WorkloadRun)>,
    /// Leader SIGKILL under a write loop; `None` if that run failed (the
    /// reason is printed; the other figures are kept).
    pub failover: Option<FailoverReport>,
}

impl Results {
    fn run(&self, workload: Workload) -> Option<&WorkloadRun> {
        self.runs
            .iter()
            .find(|(w, _)| *w == workload)
            .map(|(_, run)| run)
    }
}

async fn probe_disk(cluster: &LocalCluster) -> Result<Duration, String> {
    let dir = cluster.dir().to_path_buf();
    let times = tokio::task::spawn_blocking(move || disk::probe(&dir, PROBE_WRITES))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("disk probe: {e}"))?;
    let disk = quantile(&times, 0.5).unwrap_or_default();
    eprintln!(
        "{} disk: 4 KiB write + fdatasync p50 {:.3} ms",
        cluster.target().name(),
        disk.as_secs_f64() * 1e3
    );
    Ok(disk)
}

/// Started, with connections and the leader's caches warmed up.
async fn warm_cluster(system: &System) -> Result<LocalCluster, String> {
    let cluster = LocalCluster::start(system.clone()).await?;
    let _ = workload::churn(&cluster.target(), 4, Duration::from_secs(1)).await;
    Ok(cluster)
}

async fn failover(system: &System) -> Option<FailoverReport> {
    let mut cluster = match LocalCluster::start(system.clone()).await {
        Ok(cluster) => cluster,
        Err(error) => {
            eprintln!("failover: no cluster: {error}");
            return None;
        }
    };
    let target = cluster.target();
    let report = workload::failover(
        &mut cluster,
        &target,
        Duration::from_secs(2),
        Duration::from_secs(4),
    )
    .await;
    match report {
        Ok(report) => {
            eprintln!("{} failover: {report:?}", target.name());
            Some(report)
        }
        Err(error) => {
            eprintln!("{} failover failed: {error}", target.name());
            None
        }
    }
}

/// `rounds` rounds of every system in `systems`. A round starts a cluster
/// of each, all at once, probes their disks, runs each workload on one
/// cluster after the other (who goes first rotates by round), then a
/// failover on a fresh cluster of each, one at a time. Returns each
/// system's rounds, in the order of `systems`; prints every figure to
/// stderr as it comes.
pub async fn rounds(
    systems: &[System],
    duration: Duration,
    rounds: usize,
) -> Result<Vec<Vec<Results>>, String> {
    rounds_of(systems, &WORKLOADS, duration, rounds).await
}

/// [`rounds`] of other `workloads` than [`WORKLOADS`] (the table shows
/// only the rows of [`WORKLOADS`]).
pub async fn rounds_of(
    systems: &[System],
    workloads: &[Workload],
    duration: Duration,
    rounds: usize,
) -> Result<Vec<Vec<Results>>, String> {
    let mut results: Vec<Vec<Results>> = systems.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        let mut clusters = Vec::new();
        for system in systems {
            clusters.push(warm_cluster(system).await?);
        }
        let mut disks = Vec::new();
        for cluster in &clusters {
            disks.push(probe_disk(cluster).await?);
        }
        let mut runs: Vec<Vec<(Workload, WorkloadRun)>> =
            systems.iter().map(|_| Vec::new()).collect();
        for &workload in workloads {
            for turn in 0..clusters.len() {
                let i = (turn + round) % clusters.len();
                runs[i].push((workload, workload.run(&clusters[i], duration).await));
            }
        }
        drop(clusters);
        for (i, (system, runs)) in systems.iter().zip(runs).enumerate() {
            results[i].push(Results {
                disk: disks[i],
                runs,
                failover: failover(system).await,
            });
        }
    }
    Ok(results)
}

/// The median of `values` (the mean of the middle two for an even count);
/// `None` if there are none.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// Reads one figure of a round, where it has one.
type Figure = Box<dyn Fn(&Results) -> Option<f64>>;

/// Reads one phase of a failover report.
type PhasePick = fn(&FailoverReport) -> Option<Duration>;

/// One row of the table.
struct Row {
    label: String,
    figure: Figure,
    show: fn(f64) -> String,
}

impl Row {
    fn new(label: String, figure: Figure, show: fn(f64) -> String) -> Row {
        Row {
            label,
            figure,
            show,
        }
    }

    /// The median of the figure over the `rounds` that have it.
    fn across(&self, rounds: &[Results]) -> Option<f64> {
        median(rounds.iter().filter_map(&self.figure).collect())
    }
}

fn ratio(ours: Option<f64>, theirs: Option<f64>) -> String {
    match (ours, theirs) {
        (Some(ours), Some(theirs)) if theirs > 0.0 => format!("{:.2}×", ours / theirs),
        _ => "-".into(),
    }
}

/// The rows of the table.
fn rows() -> Vec<Row> {
    let count = |x: f64| format!("{x:.0}");
    let one_decimal = |x: f64| format!("{x:.1}");
    let millis = |x: f64| format!("{:.1} ms", x * 1e3);
    let fine_millis = |x: f64| format!("{:.2} ms", x * 1e3);
    let percent = |x: f64| format!("{:.0} %", x * 100.0);
    let mut rows = vec![Row::new(
        "disk: 4 KiB write + fdatasync p50 (probed before the workloads)".into(),
        Box::new(|r: &Results| Some(r.disk.as_secs_f64())),
        fine_millis,
    )];
    for workload in WORKLOADS {
        let unit = match workload {
            Workload::Churn(_) | Workload::Watched { .. } => "cycles/s",
            Workload::Contend(_) => "hand-overs/s",
        };
        rows.push(Row::new(
            format!("{workload}: {unit}"),
            Box::new(move |r: &Results| r.run(workload).map(|w| w.outcome.rate())),
            count,
        ));
        // Contend latencies are not alike (etcd: from campaigning, queue
        // included; Baton: from being told it leads), so only rates compare.
        let quantiles: &[(&str, f64)] = match workload {
            Workload::Churn(_) | Workload::Watched { .. } => &[("p50", 0.5), ("p99", 0.99)],
            Workload::Contend(_) => &[],
        };
        for &(label, q) in quantiles {
            rows.push(Row::new(
                format!("{workload}: {label}"),
                Box::new(move |r: &Results| {
                    r.run(workload)?
                        .outcome
                        .quantile(q)
                        .map(|d| d.as_secs_f64())
                }),
                millis,
            ));
        }
        rows.push(Row::new(
            format!("{workload}: durable flushes per op, all members (etcd: WAL fsyncs)"),
            Box::new(move |r: &Results| r.run(workload)?.flushes_per_op()),
            one_decimal,
        ));
        rows.push(Row::new(
            format!("{workload}: durable flush mean"),
            Box::new(move |r: &Results| r.run(workload)?.flushes?.mean().map(|d| d.as_secs_f64())),
            fine_millis,
        ));
        rows.push(Row::new(
            format!("{workload}: server CPU per op, all members"),
            Box::new(move |r: &Results| r.run(workload)?.cpu_per_op().map(|d| d.as_secs_f64())),
            fine_millis,
        ));
        rows.push(Row::new(
            format!("{workload}: machine CPU busy (clients included)"),
            Box::new(move |r: &Results| Some(r.run(workload)?.cpu?.machine_busy)),
            percent,
        ));
    }
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
    for (label, phase) in phases {
        rows.push(Row::new(
            label.into(),
            Box::new(move |r: &Results| {
                r.failover.as_ref().and_then(phase).map(|d| d.as_secs_f64())
            }),
            millis,
        ));
    }
    rows
}

/// `| figure | etcd | baton | baton / etcd |`, each figure the median of
/// the rounds given.
pub fn table(etcd: &[Results], baton: &[Results]) -> String {
    let mut lines = vec![
        format!(
            "| figure (median of {} round(s)) | etcd | baton | baton / etcd |",
            etcd.len().min(baton.len())
        ),
        "|---|---|---|---|".to_owned(),
    ];
    for row in rows() {
        let (e, b) = (row.across(etcd), row.across(baton));
        let shown = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), row.show);
        lines.push(format!(
            "| {} | {} | {} | {} |",
            row.label,
            shown(e),
            shown(b),
            ratio(b, e)
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
