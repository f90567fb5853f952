//! Issue 11 (operations): the Prometheus endpoint of a node under load, and
//! a healthy start that logs no WARN or ERROR line.

mod common;

use std::time::Duration;

use baton_bench::metrics::{self, sample};
use baton_client::Client;
use common::*;

/// One node's `/metrics` text.
async fn scrape(addr: &str) -> String {
    metrics::scrape(addr)
        .await
        .unwrap_or_else(|e| panic!("scraping {addr}: {e}"))
}

/// Methods the client port does not serve, even under a served service's
/// name, are counted under one label: a scanner calling made-up methods
/// must not grow the metrics (and the node's memory) without bound.
#[tokio::test(flavor = "multi_thread")]
async fn calls_to_unknown_methods_share_one_metric_label() {
    use tonic::codegen::http::uri::PathAndQuery;

    let _serial = serial().await;
    let cluster = Cluster::start_with_metrics().await;
    let leader = cluster.wait_for_leader().await;
    let mut grpc = tonic::client::Grpc::new(cluster.channel(leader));
    for i in 0..20 {
        for path in [
            format!("/atomix.primitive.PrimitiveService/Made{i}Up"),
            format!("/baton.v1.Made{i}Up/Call"),
        ] {
            grpc.ready().await.expect("ready");
            let status = grpc
                .unary(
                    tonic::Request::new(()),
                    PathAndQuery::try_from(path.as_str()).expect("path"),
                    tonic::codec::ProstCodec::<(), ()>::default(),
                )
                .await
                .expect_err("an unknown method");
            assert_eq!(status.code(), tonic::Code::Unimplemented, "{path}");
        }
    }
    let text = scrape(&cluster.node(leader).metrics_addr).await;
    assert!(
        !text.contains("Made"),
        "unknown methods got labels:\n{text}"
    );
    assert!(
        text.contains(r#"baton_rpc_requests_total{method="other",code="Unimplemented"} 40"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_under_load_exports_its_metrics_and_they_move() {
    let _serial = serial().await;
    let cluster = Cluster::start_with_metrics().await;
    let metrics_addrs: Vec<String> = cluster
        .nodes
        .iter()
        .map(|node| node.metrics_addr.clone())
        .collect();
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers_of(leader)[0];
    let follower_metrics = &metrics_addrs[follower as usize - 1];
    let scrape_all = || async {
        let mut all = Vec::new();
        for addr in &metrics_addrs {
            all.push(scrape(addr).await);
        }
        all
    };
    let before = scrape(follower_metrics).await;
    let before_all = scrape_all().await;

    // Raw writes to the follower: it must forward them.
    for i in 0..5 {
        let request = baton::proto::atomix::primitive::election::EnterRequest {
            header: election_header("raw", &format!("forwarded-{i}")),
            input: None,
        };
        cluster
            .election(follower)
            .enter(request)
            .await
            .expect("enter on the follower");
    }
    // Library load, starting on the follower (it may move to the leader if
    // the follower ever answers UNAVAILABLE, so RPC counts are summed over
    // every node below).
    let client = Client::builder(&[cluster.node(follower).client_addr.as_str()])
        .client_id("loader")
        .session_timeout(Duration::from_secs(1))
        .connect()
        .await
        .expect("connect");
    for i in 0..20 {
        let election = client.election(format!("metrics-{i}"));
        election.enter().await.expect("enter");
        election.term().await.expect("term");
        election.withdraw().await.expect("withdraw");
    }
    let mut watch = client.latch("watched").observe();
    client.latch("watched").join().await.expect("join");
    let first = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut watch),
    )
    .await
    .expect("the watch's first message within 10 s");
    assert!(matches!(first, Some(Ok(_))), "the watch opened: {first:?}");
    let missing = client.election("metrics-0").evict("nobody").await;
    assert!(missing.is_err());
    let after = scrape(follower_metrics).await;
    let after_all = scrape_all().await;

    for name in [
        "baton_raft_term",
        "baton_raft_leader_id",
        "baton_raft_is_leader",
        "baton_raft_commit_index",
        "baton_raft_applied_index",
        "baton_raft_last_log_index",
        "baton_raft_flushed_index",
        "baton_raft_snapshot_index",
        "baton_raft_log_entries_since_snapshot",
        "baton_sessions",
        "baton_primitives",
        "baton_open_streams",
        "baton_rpc_requests_total",
        "baton_rpc_duration_seconds_bucket",
        "baton_forwarded_writes_total",
        "baton_sessions_expired_total",
        "baton_entry_commands_bucket",
        "baton_storage_flush_duration_seconds_bucket",
        "baton_raft_leader_changes_total",
        "baton_primitive_leader_changes_total",
    ] {
        assert!(
            after.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{after}"
        );
    }
    assert_eq!(sample(&after, "baton_raft_leader_id"), Some(leader as f64));
    assert_eq!(sample(&after, "baton_raft_is_leader"), Some(0.0));
    let moved = |name: &str| {
        let (b, a) = (
            sample(&before, name).unwrap_or(0.0),
            sample(&after, name).unwrap_or(0.0),
        );
        assert!(a > b, "{name} did not move: {b} -> {a}");
    };
    moved("baton_raft_commit_index");
    moved("baton_raft_applied_index");
    moved("baton_raft_last_log_index");
    moved("baton_raft_flushed_index");
    moved("baton_forwarded_writes_total");
    // A follower flushes every entry it appends.
    moved("baton_storage_flush_duration_seconds_count");
    moved("baton_primitive_leader_changes_total");
    let total = |scrapes: &[String], name: &str| -> f64 {
        scrapes.iter().map(|t| sample(t, name).unwrap_or(0.0)).sum()
    };
    for name in [
        r#"baton_rpc_requests_total{method="/atomix.primitive.election.LeaderElectionService/Enter",code="Ok"}"#,
        r#"baton_rpc_requests_total{method="/atomix.primitive.election.LeaderElectionService/Evict",code="FailedPrecondition"}"#,
        r#"baton_rpc_duration_seconds_count{method="/atomix.primitive.election.LeaderElectionService/GetTerm"}"#,
    ] {
        let (b, a) = (total(&before_all, name), total(&after_all, name));
        assert!(a > b, "{name} did not move on any node: {b} -> {a}");
    }
    assert_eq!(total(&after_all, "baton_open_streams"), 1.0);
    assert!(sample(&after, "baton_sessions").unwrap_or(0.0) >= 2.0);

    // The watch's stream ends when the client lets go of it; some node
    // (it may have moved) counts that end.
    drop(watch);
    let closed_by_client = r#"baton_stream_ends_total{kind="latch",code="Ok"}"#;
    eventually(
        Duration::from_secs(10),
        "a node counts the stream's end",
        || async { (total(&scrape_all().await, closed_by_client) >= 1.0).then_some(()) },
    )
    .await;
    // The leader expires the lapsed session and counts it (whichever node
    // leads by then).
    drop(client);
    eventually(
        Duration::from_secs(10),
        "the leader counts the expiry",
        || async {
            let expired = total(&scrape_all().await, "baton_sessions_expired_total");
            (expired >= 1.0).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_start_logs_no_warning_or_error() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let client = Client::connect(&cluster.endpoints())
        .await
        .expect("connect");
    client.latch("quiet").join().await.expect("join");
    client.close().await.expect("close");
    let _ = leader;
    for id in 1..=3 {
        let log = cluster.log(id);
        let noisy: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        assert!(noisy.is_empty(), "node {id} logged:\n{}", noisy.join("\n"));
        assert!(!log.trim().is_empty(), "node {id} logged nothing at all");
    }
}

/// A restarted node replays the log behind its snapshot before it serves;
/// the leadership changes in it happened before, and counting them again
/// made every restart look like a burst of changes to `rate()` (until
/// session 13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_count_replayed_leader_changes() {
    let _serial = serial().await;
    let mut cluster = Cluster::start_with_metrics().await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers_of(leader)[0];
    for i in 0..5 {
        enter(&cluster, leader, "c", &format!("replayed-{i}"))
            .await
            .expect("enter");
    }
    cluster.wait_converged().await;
    let addr = cluster.node(follower).metrics_addr.clone();
    let counted = |text: &str| sample(text, "baton_primitive_leader_changes_total");
    assert_eq!(counted(&scrape(&addr).await), Some(5.0));
    cluster.kill(follower);
    cluster.restart(follower);
    cluster.wait_converged().await;
    let after = eventually(Duration::from_secs(10), "the node serves metrics", || {
        let addr = addr.clone();
        async move { metrics::scrape(&addr).await.ok() }
    })
    .await;
    assert_eq!(
        counted(&after),
        Some(0.0),
        "nothing changed since the restart"
    );
    enter(&cluster, leader, "c", "after-restart")
        .await
        .expect("enter");
    cluster.wait_converged().await;
    assert_eq!(counted(&scrape(&addr).await), Some(1.0));
}

/// `GET /ready` on the metrics port says what gRPC health says (the
/// manifest's readiness probe): 200 while the node serves, 503 once it has
/// no working leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ready_endpoint_follows_the_nodes_health() {
    let _serial = serial().await;
    let mut cluster = Cluster::start_with_metrics().await;
    let leader = cluster.wait_for_leader().await;
    for id in 1..=3 {
        eventually(Duration::from_secs(10), "every node ready", || async {
            (cluster.readiness(id).await == Some(200)).then_some(())
        })
        .await;
    }
    let survivor = cluster.followers_of(leader)[0];
    for id in [1, 2, 3].into_iter().filter(|id| *id != survivor) {
        cluster.kill(id);
    }
    eventually(
        Duration::from_secs(10),
        "the survivor is not ready",
        || async { (cluster.readiness(survivor).await == Some(503)).then_some(()) },
    )
    .await;
}

/// A node whose metrics port is taken stops with an error: left running,
/// it served clients while its readiness probe, on that port, could never
/// answer (one log line said why).
#[tokio::test]
async fn a_node_whose_metrics_port_is_taken_does_not_start() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let ports = free_ports(2);
    let (client, peer) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    let mut node = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args([
            "serve",
            "--id",
            "1",
            "--listen",
            &client,
            "--peer-listen",
            &peer,
        ])
        .args(["--peers", &format!("1={peer}")])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--metrics-listen", &taken.local_addr().unwrap().to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn baton serve");
    let exit = wait_exit(&mut node, Duration::from_secs(20));
    let _ = node.kill();
    let _ = node.wait();
    let exit = exit.expect("the node stops");
    assert!(!exit.success(), "{exit:?}");
}
