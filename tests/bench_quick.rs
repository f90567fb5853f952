//! Keeps the benchmark working: every workload runs for a moment against a
//! real cluster and must make progress, and the comparison's own cluster
//! runs produce every figure. Speed is not asserted here; it is measured by
//! `crates/baton-bench/vs-etcd.sh`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use baton_bench::cluster::System;
use baton_bench::report;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn every_benchmark_workload_makes_progress() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let lines = baton_bench::quick(&cluster.endpoints())
        .await
        .unwrap_or_else(|e| panic!("benchmark made no progress: {e}"));
    for line in lines {
        println!("{line}");
    }
}

/// `baton-bench compare` on clusters it starts itself (here Baton against
/// Baton, with the real binary): both clusters at once, two rounds so both
/// orders run, the disk probe, every workload, the failovers, the members'
/// own flush histograms and CPU time read around each workload, and the
/// table.
#[tokio::test(flavor = "multi_thread")]
async fn a_comparison_reports_the_disk_and_every_members_flushes_and_cpu() {
    let _serial = serial().await;
    let baton = System::Baton(PathBuf::from(env!("CARGO_BIN_EXE_baton")), Vec::new());
    // Every workload of the comparison, but 100 watchers instead of 1,000:
    // two debug-built clusters on two vCPUs.
    let mut workloads = report::WORKLOADS;
    for workload in &mut workloads {
        if let report::Workload::Watched { watchers, .. } = workload {
            *watchers = 100;
        }
    }
    let rounds = report::rounds_of(
        &[baton.clone(), baton],
        &workloads,
        Duration::from_millis(500),
        2,
    )
    .await
    .unwrap_or_else(|e| panic!("benchmark run failed: {e}"));
    let [first, second] = &rounds[..] else {
        panic!("{} systems' rounds", rounds.len());
    };
    assert_eq!((first.len(), second.len()), (2, 2));
    for round in first.iter().chain(second) {
        assert!(round.disk > Duration::ZERO);
        let ran: Vec<_> = round.runs.iter().map(|(w, _)| *w).collect();
        assert_eq!(ran, workloads);
        let (_, one) = &round.runs[0];
        assert!(one.outcome.ops > 0, "{}", one.summary());
        let flushes = one
            .flushes
            .expect("the members' flush histograms were read");
        // One client's cycles are sequential: each of a cycle's two commits
        // is its own entry, flushed by the leader and at least one follower
        // before it is acknowledged.
        assert!(
            flushes.count >= 4.0 * one.outcome.ops as f64,
            "{} flushes for {} cycles",
            flushes.count,
            one.outcome.ops
        );
        assert!(flushes.mean().is_some_and(|mean| mean > Duration::ZERO));
        let cpu = one.cpu.expect("the members' CPU time was read");
        assert!(
            cpu.members > Duration::ZERO && one.cpu_per_op().is_some(),
            "{}",
            one.summary()
        );
        assert!(
            cpu.machine_busy > 0.0 && cpu.machine_busy <= 1.0,
            "{}",
            one.summary()
        );
        let (watched, run) = round.runs.last().expect("workloads ran");
        assert!(
            matches!(watched, report::Workload::Watched { .. })
                && run.outcome.ops > 0
                && run.outcome.errors == 0,
            "{watched}: {}",
            run.summary()
        );
        assert!(round.failover.as_ref().is_some_and(|f| f.writes > 0));
    }
    let table = report::table(first, second);
    for label in [
        "churn 1: durable flush mean",
        "churn 1: server CPU per op, all members",
    ] {
        let row = table
            .lines()
            .find(|line| line.starts_with(&format!("| {label} |")))
            .unwrap_or_else(|| panic!("no {label} row in:\n{table}"));
        assert!(
            row.matches(" ms |").count() == 2,
            "both columns have a figure: {row}"
        );
    }
}
