//! Node failures against a real three-node cluster: kill -9 of the leader,
//! restart and catch-up (from the log kept behind snapshots), a wiped node
//! rejoining from a snapshot, all nodes killed and restarted, a node whose
//! disk fills up, and sessions that lapse or close.

mod common;

use std::time::{Duration, Instant};

use baton::proto::atomix::primitive::leader as la;
use baton::proto::baton::v1::CloseSessionRequest;
use common::*;
use tokio_stream::StreamExt;

const LONG_SESSION_MS: u64 = 300_000;
/// What a node logs when it receives a snapshot instead of log entries.
const INSTALLED_SNAPSHOT: &str = "installed a snapshot from the leader";

/// Joins `count` writers (with long sessions) to `latch` and returns them.
async fn acknowledged_joins(
    cluster: &Cluster,
    node: u64,
    latch: &str,
    prefix: &str,
    count: usize,
) -> Vec<String> {
    let mut joined = Vec::new();
    for i in 0..count {
        let client = format!("{prefix}{i}");
        open_session(cluster, node, &client, LONG_SESSION_MS)
            .await
            .unwrap();
        join(cluster, node, &client, latch).await.unwrap();
        joined.push(client);
    }
    joined
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_the_leader_then_restart_it() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let followers = cluster.followers_of(leader);
    let acknowledged = acknowledged_joins(&cluster, followers[0], "durable", "w", 10).await;

    let mut stream = latch_events(&cluster, followers[1], "watcher", "durable")
        .await
        .unwrap();
    let initial = stream
        .next()
        .await
        .unwrap()
        .unwrap()
        .output
        .unwrap()
        .latch
        .unwrap();
    assert_eq!(initial.participants, acknowledged);

    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);

    // Writes succeed again, through either survivor.
    open_session(&cluster, followers[0], "after", LONG_SESSION_MS)
        .await
        .ok();
    until_ok("a write after failover", || {
        join(&cluster, followers[0], "after", "durable")
    })
    .await;
    let latch = until_ok("a read after failover", || {
        get_latch(&cluster, followers[1], "durable")
    })
    .await;
    let mut expected = acknowledged.clone();
    expected.push("after".into());
    assert_eq!(latch.members, expected, "no acknowledged write lost");

    // The stream on a surviving node kept going and saw the new member.
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = stream.next().await {
            let latch = event
                .expect("stream survives the leader's death")
                .output
                .unwrap()
                .latch
                .unwrap();
            if latch.participants.contains(&"after".to_string()) {
                return latch;
            }
        }
        panic!("stream ended");
    })
    .await
    .expect("the change arrives on the surviving stream");
    assert_eq!(seen.participants, expected);

    // The killed node comes back and catches up.
    cluster.restart(leader);
    let (index, _) = cluster.wait_converged().await;
    let status = cluster.status(leader).await.unwrap();
    // The surviving stream's session renewals keep adding entries: one may
    // have been applied since the nodes were seen converged.
    assert!(
        status.applied_index >= index,
        "{} < {index}",
        status.applied_index
    );
    assert_eq!(
        get_latch(&cluster, leader, "durable")
            .await
            .unwrap()
            .members,
        expected
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_node_rejoins_from_a_snapshot() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(&["--snapshot-every", "10", "--keep-log-entries", "2"]).await;
    let leader = cluster.wait_for_leader().await;
    let acknowledged = acknowledged_joins(&cluster, leader, "snap", "s", 15).await;
    let victim = cluster.followers_of(leader)[0];
    let purged = eventually(
        Duration::from_secs(10),
        "the leader purges its log",
        || async {
            let status = cluster.status(leader).await?;
            (status.purged_index > 0).then_some(status.purged_index)
        },
    )
    .await;

    cluster.kill(victim);
    cluster.wipe(victim);
    cluster.restart(victim);
    cluster.wait_converged().await;
    let status = cluster.status(victim).await.unwrap();
    assert!(
        status.snapshot_index >= purged,
        "the wiped node got a snapshot covering the purged log ({} < {purged})",
        status.snapshot_index
    );
    assert!(cluster.log(victim).contains(INSTALLED_SNAPSHOT));
    let latch = get_latch(&cluster, victim, "snap").await.unwrap();
    assert_eq!(latch.members, acknowledged);
}

/// With the log purged up to every snapshot, a follower down for a moment
/// was sent the whole state once a snapshot had been taken meanwhile
/// (every 10,000 commands by default: seconds under load).
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_that_missed_a_few_entries_catches_up_from_the_log() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(&["--snapshot-every", "10"]).await;
    let leader = cluster.wait_for_leader().await;
    let victim = cluster.followers_of(leader)[0];
    cluster.kill(victim);
    let acknowledged = acknowledged_joins(&cluster, leader, "kept", "k", 30).await;
    let leader_status = eventually(
        Duration::from_secs(10),
        "the leader takes snapshots while the follower is down",
        || async {
            let status = cluster.status(leader).await?;
            (status.snapshot_index >= 30).then_some(status)
        },
    )
    .await;
    assert_eq!(
        leader_status.purged_index, 0,
        "the log behind the snapshot is kept"
    );

    cluster.restart(victim);
    cluster.wait_converged().await;
    assert!(
        cluster.log(victim).contains("node started"),
        "the node's info lines are logged (the check below needs them)"
    );
    assert!(
        !cluster.log(victim).contains(INSTALLED_SNAPSHOT),
        "the follower was sent a snapshot:\n{}",
        cluster.log(victim)
    );
    let latch = get_latch(&cluster, victim, "kept").await.unwrap();
    assert_eq!(latch.members, acknowledged);
}

/// A follower that was down while many clients wrote comes back to a log
/// of large entries (group commit packs many commands into each) and
/// catches up from it: openraft sends up to 300 entries at a time and
/// gives each AppendEntries one heartbeat interval.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_far_behind_a_busy_log_catches_up_from_it() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let victim = cluster.followers_of(leader)[0];
    cluster.kill(victim);
    let (writers, rounds) = (64, 40);
    futures::future::join_all((0..writers).map(|w| {
        let client = client_on(&cluster, leader, &long_id(w));
        async move {
            let election = client.election(format!("{}-{w}", "e".repeat(200)));
            for _ in 0..rounds {
                election.enter().await.expect("enter");
                election.withdraw().await.expect("withdraw");
            }
        }
    }))
    .await;
    let before = cluster.status(leader).await.expect("status");
    assert_eq!(before.purged_index, 0, "no snapshot yet: the log is whole");

    cluster.restart(victim);
    cluster.wait_converged().await;
    assert!(
        !cluster.log(victim).contains(INSTALLED_SNAPSHOT),
        "the follower was sent a snapshot:\n{}",
        cluster.log(victim)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_all_three_and_restart_them() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let acknowledged = acknowledged_joins(&cluster, leader, "all", "k", 8).await;
    let term_before = cluster.status(leader).await.unwrap().term;
    for c in ["e1", "e2"] {
        open_session(&cluster, leader, c, LONG_SESSION_MS)
            .await
            .unwrap();
        enter(&cluster, leader, c, "vote").await.unwrap();
    }
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    let leader = cluster.wait_for_leader().await;
    // The old leader must not lead its old term again: entries it reported
    // before flushing them may be lost, and a follower may hold them
    // (`baton-store/src/flushed.rs`); only a new term overwrites those.
    let term_after = cluster.status(leader).await.unwrap().term;
    assert!(
        term_after > term_before,
        "node {leader} leads term {term_after} after a full restart, as before it"
    );
    let latch = until_ok("a read after a full restart", || {
        get_latch(&cluster, leader, "all")
    })
    .await;
    assert_eq!(latch.members, acknowledged);
    assert_eq!(latch.epoch, 1);
    // Read at once: the new leader must not serve a stale read.
    let term = get_term(&cluster, leader, "vote").await.unwrap();
    assert_eq!(
        term.members,
        ["e1", "e2"],
        "a read right after restart misses an acknowledged write"
    );
    cluster.wait_converged().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lapsed_session_hands_over_and_a_closed_one_hands_over_at_once() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let node = cluster.followers_of(leader)[0];

    // 2 s: a renewal refused for a moment on a loaded machine must not
    // end it (1 s did not leave that room).
    open_session(&cluster, node, "short", 2_000).await.unwrap();
    open_session(&cluster, node, "next", LONG_SESSION_MS)
        .await
        .unwrap();
    join(&cluster, node, "short", "lease").await.unwrap();
    let latch = join(&cluster, node, "next", "lease").await.unwrap();
    assert_eq!((latch.leader.as_deref(), latch.epoch), (Some("short"), 1));

    // Kept alive by explicit keep-alives for two timeouts: keeps its place.
    let started = Instant::now();
    let mut stopped = started;
    while started.elapsed() < Duration::from_secs(4) {
        keep_alive(&cluster, node, "short").await.unwrap();
        stopped = Instant::now();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        get_latch(&cluster, node, "lease")
            .await
            .unwrap()
            .leader
            .as_deref(),
        Some("short")
    );

    // Then it stops (its last renewal was confirmed at `stopped`): the next
    // in line leads, with the epoch raised by one.
    let latch = eventually(
        Duration::from_secs(10),
        "the lapsed leader is replaced",
        || async {
            let latch = get_latch(&cluster, node, "lease").await.ok()?;
            (latch.leader.as_deref() == Some("next")).then_some(latch)
        },
    )
    .await;
    assert!(
        stopped.elapsed() >= Duration::from_millis(1_000),
        "expired before its timeout"
    );
    assert_eq!(latch.members, ["next"]);
    assert_eq!(latch.epoch, 2);

    // A client whose only sign of life is an open Events stream stays, for
    // two session timeouts. (With 1 s, a debug-built node under a loaded
    // CI machine once took longer than the stream's lease — a third of the
    // timeout — to commit a renewal, and rightly ended the stream.)
    open_session(&cluster, node, "streamer", 3_000)
        .await
        .unwrap();
    enter(&cluster, node, "streamer", "watched").await.unwrap();
    let mut stream = cluster
        .election(node)
        .events(baton::proto::atomix::primitive::election::EventsRequest {
            header: election_header("streamer", "watched"),
            input: None,
        })
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let term = get_term(&cluster, node, "watched").await.unwrap();
    assert_eq!(
        term.leader.as_deref(),
        Some("streamer"),
        "the open stream kept the session alive"
    );
    drop(stream);

    // Closing hands over at once: the very next read sees the successor.
    open_session(&cluster, node, "closer", LONG_SESSION_MS)
        .await
        .unwrap();
    join(&cluster, node, "closer", "handover").await.unwrap();
    join(&cluster, node, "next", "handover").await.unwrap();
    cluster
        .sessions(leader)
        .close_session(CloseSessionRequest {
            client_id: "closer".into(),
            request_id: 0,
        })
        .await
        .unwrap();
    let latch = get_latch(&cluster, node, "handover").await.unwrap();
    assert_eq!((latch.leader.as_deref(), latch.epoch), (Some("next"), 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_quorum_requests_fail_unavailable_within_the_deadline() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let survivor = cluster.followers_of(leader)[0];
    join(&cluster, survivor, "a", "q").await.unwrap();
    for id in cluster.followers_of(survivor) {
        cluster.kill(id);
    }
    let mut write = tonic::Request::new(la::LatchRequest {
        header: latch_header("b", "q"),
        input: None,
    });
    write.set_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let status = cluster.latch(survivor).latch(write).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the call hung past its deadline"
    );
    let mut read = tonic::Request::new(la::GetRequest {
        header: latch_header("b", "q"),
        input: None,
    });
    read.set_timeout(Duration::from_secs(2));
    let status = cluster.latch(survivor).get(read).await.unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::Unavailable,
        "a lone node serves no linearizable read"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_end_with_unavailable_when_their_node_shuts_down() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let node = cluster.followers_of(leader)[0];
    let mut stream = latch_events(&cluster, node, "w", "s").await.unwrap();
    stream.next().await.unwrap().unwrap();
    cluster.stop(node);
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream ends promptly");
    match end {
        Some(Err(status)) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
}

/// A filesystem of `size` mounted on `dir` for the test's lifetime.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount(8)");
        assert!(
            mounted.success(),
            "THIS TEST NEEDS ROOT: it mounts a small tmpfs to fill a node's disk"
        );
        SmallDisk {
            dir: dir.to_path_buf(),
        }
    }

    /// Takes every free byte, so the next write on it fails with ENOSPC.
    fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.dir.join("filler")).unwrap();
        // Large blocks first, then single bytes for what a block left over.
        while file.write_all(&[0u8; 64 * 1024]).is_ok() {}
        while file.write_all(&[0u8]).is_ok() {}
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// A node whose disk fills up cannot append, and openraft stops its core
/// for good on that storage error. The node must not linger with a dead
/// core (it would answer status with its last role forever, a leader
/// included, and never catch up again): it stops and exits non-zero, so
/// its supervisor restarts it from its data directory. The other two carry
/// on. (The chaos soak met the same dead core from an openraft race, a
/// leader sending a snapshot on a replication stream that had just ended.)
#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_raft_stops_on_a_storage_error_exits() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let victim = cluster.followers_of(leader)[0];
    // The victim's data moves onto a small disk of its own.
    cluster.stop(victim);
    let data_dir = cluster.node(victim).data_dir.clone();
    let saved = data_dir.with_extension("saved");
    std::fs::rename(&data_dir, &saved).unwrap();
    let disk = SmallDisk::mount(&data_dir, "64m");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", saved.display()))
        .arg(&data_dir)
        .status()
        .expect("cp");
    assert!(copied.success());
    cluster.restart(victim);
    eventually(
        Duration::from_secs(20),
        "the victim follows again",
        || async {
            cluster
                .status(victim)
                .await
                .filter(|s| s.has_leader && s.applied_index > 0)
        },
    )
    .await;

    disk.fill();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    let status = loop {
        if let Some(status) = cluster.exited(victim) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "node {victim} still running 60 s after its disk filled: {:?}\n{}",
            cluster.status(victim).await,
            cluster.log(victim)
        );
        // Writes the victim must append (and fail to), large enough to
        // take sled past the space its log file already has.
        let writes = (0..16).map(|i| {
            let client = long_id(round * 16 + i);
            let cluster = &cluster;
            async move { open_session(cluster, leader, &client, LONG_SESSION_MS).await }
        });
        futures::future::join_all(writes).await;
        round += 1;
    };
    assert!(!status.success(), "exited {status:?}");
    let log = cluster.log(victim);
    assert!(log.contains("Raft stopped"), "{log}");

    // The other two still commit.
    let survivor = cluster
        .running()
        .into_iter()
        .find(|id| *id != victim)
        .unwrap();
    until_ok("a write on the survivors", || {
        open_session(&cluster, survivor, "after-the-full-disk", LONG_SESSION_MS)
    })
    .await;
    drop(disk);
}

/// DESIGN §3: a cluster outage never expires healthy clients. Here the
/// outage keeps its leader: both followers die, so for longer than the
/// session timeout the leader refuses every keep-alive (it has no quorum),
/// and they come back without an election (their election timeout is
/// longer than the leader takes to reach them). A leader change would
/// renew every session with its grace entry; the same leader regaining
/// its quorum must do so too, before it expires anyone.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_that_keeps_its_leader_expires_no_session() {
    let _serial = serial().await;
    // Lease (and quorum-loss detection) 2 s; a restarted follower waits
    // 1–2 s before it campaigns, the leader retries it every 0.5 s.
    let mut cluster = Cluster::start(&["--election-timeout-ms", "1000"]).await;
    let leader = cluster.wait_for_leader().await;
    const TIMEOUT_MS: u64 = 2_500;
    open_session(&cluster, leader, "healthy", TIMEOUT_MS)
        .await
        .unwrap();
    join(&cluster, leader, "healthy", "outage").await.unwrap();
    keep_alive(&cluster, leader, "healthy").await.unwrap();
    let term_before = cluster.status(leader).await.expect("status").term;

    let followers = cluster.followers_of(leader);
    for &id in &followers {
        cluster.kill(id);
    }
    // Every keep-alive in this window is refused: the leader has had no
    // quorum for its lease, longer than the session's timeout.
    tokio::time::sleep(Duration::from_millis(2 * TIMEOUT_MS)).await;
    let refused = cluster
        .sessions(leader)
        .keep_alive(baton::proto::baton::v1::KeepAliveRequest {
            client_id: "healthy".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    for &id in &followers {
        cluster.restart(id);
    }
    until_ok("a read once the quorum is back", || {
        get_latch(&cluster, leader, "outage")
    })
    .await;
    let status = cluster.status(leader).await.expect("status");
    assert!(
        status.role == "leader" && status.term == term_before,
        "the scenario needs the same leader in the same term: {status:?} (term before {term_before})"
    );
    // The leader's expiry check runs every 100 ms; give it ten rounds,
    // well inside a fresh timeout.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let latch = get_latch(&cluster, leader, "outage").await.unwrap();
    assert_eq!(
        latch.members,
        ["healthy"],
        "a client whose keep-alives the outage refused was expired"
    );
    keep_alive(&cluster, leader, "healthy")
        .await
        .expect("the session lives on");
}

/// Pre-vote (`src/elector.rs`): a follower that hears nothing from its
/// peers for many election timeouts does not raise the term, so when it
/// hears them again the leader stays (openraft 0.9 alone: the follower
/// campaigned every timeout, and its higher term deposed the leader).
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_cut_off_for_a_while_does_not_depose_its_leader_when_it_comes_back() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let term = cluster.status(leader).await.expect("leader status").term;
    let follower = cluster.followers_of(leader)[0];
    cluster.deafen(follower, true);
    // Many election timeouts (100-200 ms by default).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.deafen(follower, false);
    let back = cluster.wait_for_leader().await;
    // Give a deposition time to happen.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let status = cluster.status(leader).await.expect("leader status");
    assert_eq!(
        (back, status.role.as_str(), status.term),
        (leader, "leader", term),
        "the leader was deposed by a follower that came back"
    );
    let follower_status = cluster.status(follower).await.expect("follower status");
    assert_eq!(
        follower_status.term, term,
        "the cut-off follower raised the term"
    );
}

/// Pre-vote with logs: a voter left without a leader says yes only to a
/// candidate whose log is at least as far as its own, as openraft's vote
/// would (before, a candidate whose log was behind passed the pre-vote,
/// raised its term and was refused the vote). A candidate of an earlier
/// version, which does not say where its log is, still gets a yes.
#[tokio::test(flavor = "multi_thread")]
async fn a_leaderless_voter_refuses_a_pre_vote_to_a_candidate_whose_log_is_behind() {
    use baton::proto::baton::v1::raft_service_client::RaftServiceClient;
    use baton::proto::baton::v1::{LogPosition, PreVoteRequest};

    let _serial = serial().await;
    let mut cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    acknowledged_joins(&cluster, leader, "pre-vote", "w", 3).await;
    let voter = cluster.followers_of(leader)[0];
    for other in [1, 2, 3].into_iter().filter(|id| *id != voter) {
        cluster.stop(other);
    }
    let mut peer = RaftServiceClient::connect(format!("http://{}", cluster.node(voter).peer_addr))
        .await
        .expect("peer service");
    let candidate = if voter == 1 { 2 } else { 1 };
    let pre_vote = move |last_log: Option<LogPosition>| PreVoteRequest {
        candidate,
        last_log,
    };
    let ahead = LogPosition {
        term: 1_000,
        node_id: candidate,
        index: 1_000_000,
    };
    let behind = LogPosition {
        term: 0,
        node_id: 0,
        index: 0,
    };
    // Once the voter has heard from no leader for the lease.
    eventually(
        Duration::from_secs(10),
        "a yes for a candidate ahead",
        || {
            let mut peer = peer.clone();
            async move {
                let granted = peer.pre_vote(pre_vote(Some(ahead))).await.ok()?;
                granted.into_inner().granted.then_some(())
            }
        },
    )
    .await;
    let answer = peer
        .pre_vote(pre_vote(Some(behind)))
        .await
        .expect("pre-vote");
    assert!(!answer.into_inner().granted, "a candidate behind got a yes");
    let answer = peer.pre_vote(pre_vote(None)).await.expect("pre-vote");
    assert!(
        answer.into_inner().granted,
        "a candidate that did not say got a no"
    );
}
