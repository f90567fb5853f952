//! `baton-bench`: runs the election workloads against Baton and etcd.
//!
//!     baton-bench quick --endpoints a,b,c          # seconds, Baton only
//!     baton-bench run --system baton --endpoints a,b,c --workload churn --clients 16
//!     baton-bench compare --baton-bin target/release/baton --etcd-bin /usr/bin/etcd
//!
//! `vs-etcd.sh` beside this crate installs etcd, builds Baton in release
//! mode and runs `compare`.

use std::path::PathBuf;
use std::time::Duration;

use baton_bench::cluster::{LocalCluster, System};
use baton_bench::workload::{self, FailoverReport};
use baton_bench::{Outcome, Target};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(about = "Leader-election benchmark: Baton against etcd")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum SystemName {
    Baton,
    Etcd,
}

#[derive(Clone, Copy, ValueEnum)]
enum WorkloadName {
    Churn,
    Contend,
}

#[derive(Subcommand)]
enum Cmd {
    /// A few seconds of every workload against a Baton cluster.
    Quick {
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
    },
    /// One workload against running endpoints.
    Run {
        #[arg(long, value_enum)]
        system: SystemName,
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        #[arg(long, value_enum)]
        workload: WorkloadName,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// Baton only: load N primitives and sessions, report RSS per node and
    /// the time from a full restart to the first linearizable read.
    Scale {
        #[arg(long)]
        baton_bin: PathBuf,
        #[arg(long, default_value_t = 100_000)]
        items: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Extra `baton serve` argument (repeatable), e.g. --snapshot-every=10000
        #[arg(long = "baton-arg", allow_hyphen_values = true)]
        baton_args: Vec<String>,
    },
    /// Starts a Baton and an etcd cluster, one after the other, runs every
    /// workload on each and prints a table with the ratios.
    Compare {
        #[arg(long)]
        baton_bin: PathBuf,
        #[arg(long)]
        etcd_bin: PathBuf,
        /// Seconds per throughput workload.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Extra `baton serve` argument (repeatable), e.g. timing flags.
        #[arg(long = "baton-arg", allow_hyphen_values = true)]
        baton_args: Vec<String>,
        /// Skip etcd (figures for Baton only).
        #[arg(long)]
        baton_only: bool,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = match Args::parse().command {
        Cmd::Quick { endpoints } => baton_bench::quick(&endpoints).await.map(|lines| {
            for line in lines {
                println!("{line}");
            }
        }),
        Cmd::Run {
            system,
            endpoints,
            workload,
            clients,
            secs,
        } => {
            let target = match system {
                SystemName::Baton => Target::Baton(endpoints),
                SystemName::Etcd => Target::Etcd(endpoints),
            };
            let duration = Duration::from_secs(secs);
            let outcome = match workload {
                WorkloadName::Churn => workload::churn(&target, clients, duration).await,
                WorkloadName::Contend => workload::contend(&target, clients, duration).await,
            };
            println!("{} {clients}: {}", target.name(), outcome.summary());
            Ok(())
        }
        Cmd::Scale {
            baton_bin,
            items,
            clients,
            baton_args,
        } => scale(baton_bin, baton_args, items, clients).await,
        Cmd::Compare {
            baton_bin,
            etcd_bin,
            secs,
            baton_args,
            baton_only,
        } => {
            let baton = System::Baton(baton_bin, baton_args);
            let duration = Duration::from_secs(secs);
            if baton_only {
                measure(baton, duration).await.map(|_| ())
            } else {
                compare(baton, System::Etcd(etcd_bin), duration).await
            }
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("baton-bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn scale(
    baton_bin: PathBuf,
    baton_args: Vec<String>,
    items: usize,
    clients: usize,
) -> Result<(), String> {
    let mut cluster = LocalCluster::start(System::Baton(baton_bin, baton_args)).await?;
    let report = workload::scale(&mut cluster, items, clients).await?;
    println!(
        "{} primitives + sessions loaded in {:.1} s ({} UNAVAILABLE retried); RSS per node: {}; full restart to a linearizable read: {} ms",
        report.items,
        report.load.as_secs_f64(),
        report.retries,
        report
            .rss_bytes
            .iter()
            .map(|b| format!("{:.0} MB", *b as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", "),
        report.restart_to_read.as_millis()
    );
    Ok(())
}

struct Results {
    churn: Vec<(usize, Outcome)>,
    contend: Outcome,
    failover: FailoverReport,
}

async fn measure(system: System, duration: Duration) -> Result<Results, String> {
    let mut churn = Vec::new();
    let cluster = LocalCluster::start(system.clone()).await?;
    let target = cluster.target();
    // Warm up connections and the leader's caches.
    let _ = workload::churn(&target, 4, Duration::from_secs(1)).await;
    for clients in [1, 16, 64] {
        let outcome = workload::churn(&target, clients, duration).await;
        eprintln!("{} churn {clients}: {}", target.name(), outcome.summary());
        churn.push((clients, outcome));
    }
    let contend = workload::contend(&target, 16, duration).await;
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
        churn,
        contend,
        failover,
    })
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}

async fn compare(baton: System, etcd: System, duration: Duration) -> Result<(), String> {
    let etcd = measure(etcd, duration).await?;
    let baton = measure(baton, duration).await?;
    println!("| workload | etcd | baton | baton / etcd |\n|---|---|---|---|");
    for ((clients, e), (_, b)) in etcd.churn.iter().zip(&baton.churn) {
        println!(
            "| churn {clients}: cycles/s | {:.0} | {:.0} | {:.2}× |",
            e.rate(),
            b.rate(),
            b.rate() / e.rate().max(1e-9)
        );
        for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
            let (eq, bq) = (e.quantile(q), b.quantile(q));
            let ratio = match (eq, bq) {
                (Some(eq), Some(bq)) => format!("{:.2}×", bq.as_secs_f64() / eq.as_secs_f64()),
                _ => "-".into(),
            };
            println!(
                "| churn {clients}: cycle {label} | {} | {} | {ratio} |",
                ms(eq),
                ms(bq)
            );
        }
    }
    println!(
        "| contend 16: hand-overs/s | {:.0} | {:.0} | {:.2}× |",
        etcd.contend.rate(),
        baton.contend.rate(),
        baton.contend.rate() / etcd.contend.rate().max(1e-9)
    );
    for (name, pick) in [
        (
            "failover: longest gap",
            (|f: &FailoverReport| Some(f.longest_gap)) as fn(&FailoverReport) -> Option<Duration>,
        ),
        ("failover: election began (detection)", |f| {
            f.election_started_after
        }),
        ("failover: new leader (election)", |f| f.new_leader_after),
        ("failover: its first commit", |f| f.first_commit_after),
        ("failover: first write acked (redirect)", |f| {
            f.first_write_after
        }),
    ] {
        let (e, b) = (pick(&etcd.failover), pick(&baton.failover));
        let ratio = match (e, b) {
            (Some(e), Some(b)) => format!("{:.2}×", b.as_secs_f64() / e.as_secs_f64()),
            _ => "-".into(),
        };
        println!("| {name} | {} | {} | {ratio} |", ms(e), ms(b));
    }
    Ok(())
}
