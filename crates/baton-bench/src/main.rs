//! `baton-bench`: runs the election workloads against Baton and etcd.
//!
//!     baton-bench quick --endpoints a,b,c          # seconds, Baton only
//!     baton-bench run --system baton --endpoints a,b,c --workload churn --clients 16
//!     baton-bench compare --baton-bin target/release/baton --etcd-bin /usr/bin/etcd --rounds 3
//!     baton-bench disk --dir /var/lib/baton     # what one durable append costs there
//!
//! `vs-etcd.sh` beside this crate installs etcd, builds Baton in release
//! mode and runs `compare`.

use std::path::PathBuf;
use std::time::Duration;

use baton_bench::cluster::{LocalCluster, System};
use baton_bench::stats::quantile;
use baton_bench::workload;
use baton_bench::{report, Target};
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
        /// Idle watchers held open meanwhile (each leads an election of its
        /// own and streams its changes).
        #[arg(long, default_value_t = 0)]
        watchers: usize,
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
    /// What one durable append costs on a disk: a raw 4 KiB write +
    /// fdatasync, and an entry-sized append through Baton's storage (sled,
    /// then fdatasync), each many times in a row.
    Disk {
        /// A directory on the disk to measure (default: the temp directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 1000)]
        appends: usize,
        /// Bytes per append through Baton's storage (a one-command log entry
        /// is ~350).
        #[arg(long, default_value_t = 350)]
        bytes: usize,
    },
    /// Starts a Baton and an etcd cluster, both at once, runs every
    /// workload on one right after the other (alternating who goes first),
    /// then a failover on each, for `--rounds` rounds, and prints a table
    /// of the medians with the ratios.
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
        /// Rounds; the table shows each figure's median over them.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Skip etcd (figures for Baton only, on stderr; no table).
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
            watchers,
        } => {
            let target = match system {
                SystemName::Baton => Target::Baton(endpoints),
                SystemName::Etcd => Target::Etcd(endpoints),
            };
            let duration = Duration::from_secs(secs);
            let watchers = match workload::Watchers::open(&target, watchers).await {
                Ok(watchers) => watchers,
                Err(error) => {
                    eprintln!("baton-bench: {error}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            let outcome = match workload {
                WorkloadName::Churn => workload::churn(&target, clients, duration).await,
                WorkloadName::Contend => workload::contend(&target, clients, duration).await,
            };
            let closed = watchers.close().await;
            println!("{} {clients}: {}", target.name(), outcome.summary());
            if closed != workload::WatchersClosed::default() {
                println!("watchers: {closed:?}");
            }
            Ok(())
        }
        Cmd::Scale {
            baton_bin,
            items,
            clients,
            baton_args,
        } => scale(baton_bin, baton_args, items, clients).await,
        Cmd::Disk {
            dir,
            appends,
            bytes,
        } => disk(dir.unwrap_or_else(std::env::temp_dir), appends, bytes),
        Cmd::Compare {
            baton_bin,
            etcd_bin,
            secs,
            baton_args,
            rounds,
            baton_only,
        } => {
            let baton = System::Baton(baton_bin, baton_args);
            let duration = Duration::from_secs(secs);
            if baton_only {
                report::rounds(&[baton], duration, rounds.max(1))
                    .await
                    .map(|_| ())
            } else {
                compare(baton, System::Etcd(etcd_bin), duration, rounds).await
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

fn disk(dir: PathBuf, appends: usize, bytes: usize) -> Result<(), String> {
    let show = |name: &str, times: Vec<Duration>| {
        let ms = |q| quantile(&times, q).map_or(0.0, |d| d.as_secs_f64() * 1e3);
        println!(
            "{name}: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms ({} in a row)",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            times.len()
        );
    };
    let raw = baton_bench::disk::probe(&dir, appends).map_err(|e| e.to_string())?;
    show("4 KiB write + fdatasync", raw);
    let baton =
        baton_bench::disk::probe_baton_storage(&dir, appends, bytes).map_err(|e| e.to_string())?;
    show(
        &format!("Baton durable append of {bytes} B (sled + fdatasync)"),
        baton,
    );
    Ok(())
}

async fn scale(
    baton_bin: PathBuf,
    baton_args: Vec<String>,
    items: usize,
    clients: usize,
) -> Result<(), String> {
    let mut cluster = LocalCluster::start(System::Baton(baton_bin, baton_args)).await?;
    let report = workload::scale(&mut cluster, items, clients).await?;
    let megabytes = |bytes: &[u64]| {
        bytes
            .iter()
            .map(|b| format!("{:.0} MB", *b as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "{} primitives + sessions loaded in {:.1} s ({} UNAVAILABLE retried); RSS per node {} s after the load: {} (at its end: {}; peak: {}); full restart to a linearizable read: {} ms",
        report.items,
        report.load.as_secs_f64(),
        report.retries,
        workload::SETTLE.as_secs(),
        megabytes(&report.rss_bytes),
        megabytes(&report.rss_at_end_bytes),
        megabytes(&report.peak_rss_bytes),
        report.restart_to_read.as_millis()
    );
    Ok(())
}

async fn compare(
    baton: System,
    etcd: System,
    duration: Duration,
    rounds: usize,
) -> Result<(), String> {
    let rounds = report::rounds(&[etcd, baton], duration, rounds.max(1)).await?;
    let [etcd, baton] = &rounds[..] else {
        return Err(format!("{} systems' rounds for two systems", rounds.len()));
    };
    println!("{}", report::table(etcd, baton));
    Ok(())
}
