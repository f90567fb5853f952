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
                report::measure(baton, duration).await.map(|_| ())
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

async fn compare(baton: System, etcd: System, duration: Duration) -> Result<(), String> {
    let etcd = report::measure(etcd, duration).await?;
    let baton = report::measure(baton, duration).await?;
    println!("{}", report::table(&etcd, &baton));
    Ok(())
}
