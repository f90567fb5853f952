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

/// `baton-bench compare` on clusters it starts itself (here Baton's, with
/// the real binary): the disk probe, every workload, the failover, and the
/// members' own flush histograms read around each workload.
#[tokio::test(flavor = "multi_thread")]
async fn a_comparison_run_reports_the_disk_and_every_members_flushes() {
    let _serial = serial().await;
    let baton = System::Baton(PathBuf::from(env!("CARGO_BIN_EXE_baton")), Vec::new());
    let results = report::measure(baton, Duration::from_millis(700))
        .await
        .unwrap_or_else(|e| panic!("benchmark run failed: {e}"));
    assert!(results.disk > Duration::ZERO);
    let (workload, one) = &results.runs[0];
    assert_eq!(*workload, report::Workload::Churn(1));
    assert!(one.outcome.ops > 0, "{}", one.summary());
    let flushes = one
        .flushes
        .expect("the members' flush histograms were read");
    // One client's cycles are sequential: each of a cycle's two commits is
    // its own entry, flushed by the leader and at least one follower before
    // it is acknowledged.
    assert!(
        flushes.count >= 4.0 * one.outcome.ops as f64,
        "{} flushes for {} cycles",
        flushes.count,
        one.outcome.ops
    );
    assert!(flushes.mean().is_some_and(|mean| mean > Duration::ZERO));
    assert!(results.failover.writes > 0);
    let table = report::table(
        std::slice::from_ref(&results),
        std::slice::from_ref(&results),
    );
    assert!(table.contains("| churn 1: durable flush mean |"), "{table}");
}
