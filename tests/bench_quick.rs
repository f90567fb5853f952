//! Keeps the benchmark working: every workload runs for a moment against a
//! real cluster and must make progress. Speed is not asserted here; it is
//! measured by `crates/baton-bench/vs-etcd.sh`.

mod common;

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
