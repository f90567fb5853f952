//! Issue 7: no client is told, or left believing, that it leads while the
//! cluster may already have handed leadership on. Real processes, real
//! gRPC; pauses are SIGSTOP, so sockets stay open and silent.

mod common;

use std::time::{Duration, Instant};

use baton::proto::atomix::primitive::leader as la;
use common::*;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn health(cluster: &Cluster, node: u64) -> Option<ServingStatus> {
    let mut client = HealthClient::new(cluster.channel(node));
    let call = client.check(HealthCheckRequest {
        service: String::new(),
    });
    let reply = tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .ok()?
        .ok()?;
    ServingStatus::try_from(reply.into_inner().status).ok()
}

/// DESIGN §4: the first Events message is a linearizable read. A follower
/// that has not yet applied an acknowledged join must not show the latch
/// without it.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_events_message_includes_every_acknowledged_write() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let lagging = cluster.followers_of(leader)[0];
    for round in 0..3 {
        let name = format!("fresh-{round}");
        cluster.pause(lagging);
        let client = format!("a{round}");
        join(&cluster, leader, &client, &name).await.unwrap();
        cluster.resume(lagging);
        // Just resumed, the follower may not have heard from its leader
        // for the lease yet, and refuses (UNAVAILABLE) until it has.
        let first = retry_unavailable(|| async {
            let mut stream = latch_events(&cluster, lagging, "watcher", &name).await?;
            stream.next().await.expect("a first message or an error")
        })
        .await
        .unwrap();
        assert_eq!(
            participants(&first),
            [client],
            "round {round}: the first message missed an acknowledged join"
        );
    }
}

/// DESIGN §4 and §7: a node cut off from the quorum ends its streams with
/// UNAVAILABLE within a third of the session timeout, answers writes and
/// reads UNAVAILABLE promptly instead of hanging to the deadline, and says
/// NOT_SERVING; a leader without a quorum stops taking writes too.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_cut_off_from_the_quorum_tells_its_clients_at_once() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let isolated = cluster.followers_of(leader)[0];
    let others = cluster.followers_of(isolated);
    const SESSION_MS: u64 = 6_000;

    open_session(&cluster, isolated, "a", SESSION_MS)
        .await
        .unwrap();
    join(&cluster, isolated, "a", "job").await.unwrap();
    let mut stream = latch_events(&cluster, isolated, "a", "job").await.unwrap();
    assert_eq!(participants(&stream.next().await.unwrap().unwrap()), ["a"]);
    // Health is sampled every 100 ms; a node of a cluster that has just
    // formed may still be catching up.
    let serving = tokio::time::timeout(Duration::from_secs(10), async {
        while health(&cluster, isolated).await != Some(ServingStatus::Serving) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        serving.is_ok(),
        "node {isolated} is not SERVING in a healthy cluster: {:?}",
        cluster.status(isolated).await
    );

    for id in &others {
        cluster.pause(*id);
    }
    let cut = Instant::now();
    let end = tokio::time::timeout(Duration::from_millis(SESSION_MS), stream.next()).await;
    let ended_after = cut.elapsed();
    match end {
        Ok(Some(Err(status))) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(other) => panic!("expected the stream to end with UNAVAILABLE, got {other:?}"),
        Err(_) => panic!("the stream stayed open for a whole session timeout"),
    }
    println!("stream ended {ended_after:?} after the cut");
    assert!(
        ended_after < Duration::from_millis(SESSION_MS / 2),
        "ended only after {ended_after:?}: the majority could have moved on"
    );

    let mut write = tonic::Request::new(la::LatchRequest {
        header: latch_header("b", "job"),
        input: None,
    });
    write.set_timeout(Duration::from_secs(5));
    let started = Instant::now();
    let status = cluster.latch(isolated).latch(write).await.unwrap_err();
    let answered_after = started.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        answered_after < Duration::from_millis(2_500),
        "the write hung for {answered_after:?} instead of failing promptly"
    );
    let mut read = tonic::Request::new(la::GetRequest {
        header: latch_header("b", "job"),
        input: None,
    });
    read.set_timeout(Duration::from_secs(5));
    let started = Instant::now();
    let status = cluster.latch(isolated).get(read).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_millis(2_500));
    assert_eq!(
        health(&cluster, isolated).await,
        Some(ServingStatus::NotServing)
    );
    let reopened = match latch_events(&cluster, isolated, "a", "job").await {
        Ok(mut stream) => stream.next().await.and_then(|m| m.err()),
        Err(status) => Some(status),
    };
    assert_eq!(
        reopened.map(|s| s.code()),
        Some(Code::Unavailable),
        "a new stream on the cut-off node must not show a state"
    );

    // Heal; then cut off the leader from both followers the same way.
    for id in &others {
        cluster.resume(*id);
    }
    let leader = cluster.wait_for_leader().await;
    until_ok("writes resume", || join(&cluster, leader, "c", "job")).await;
    eventually(Duration::from_secs(10), "all nodes serve again", || async {
        for id in [1, 2, 3] {
            if health(&cluster, id).await != Some(ServingStatus::Serving) {
                return None;
            }
        }
        Some(())
    })
    .await;
    let followers = cluster.followers_of(leader);
    for id in &followers {
        cluster.pause(*id);
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut write = tonic::Request::new(la::LatchRequest {
        header: latch_header("d", "job"),
        input: None,
    });
    write.set_timeout(Duration::from_secs(5));
    let started = Instant::now();
    let status = cluster.latch(leader).latch(write).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "a leader without a quorum held the write for {:?}",
        started.elapsed()
    );
    for id in &followers {
        cluster.resume(*id);
    }
}

/// DESIGN §4: a stream whose lease runs out ends with UNAVAILABLE, also
/// when its reader is slow and its buffers are full. The watcher here reads
/// nothing while its latch grows by 300 joins of ~250-byte ids, then its
/// node is cut off from the quorum; read long after, the stream must end
/// with UNAVAILABLE, not cleanly (before session 7, the closing error
/// waited 5 s for room behind the buffered updates and was then dropped,
/// and the stream ended as if the server had nothing more to say).
/// A stream's first message is held to its lease like every other: a node
/// that got its read index but was slow to send the state it read (a
/// paused or starved process) and meanwhile lost its quorum must not tell
/// a client it leads after the majority may have expired its session; the
/// stream ends UNAVAILABLE instead. (Held back here with the debug builds'
/// hook between the read index and the read.)
#[tokio::test(flavor = "multi_thread")]
async fn a_first_message_due_after_the_lease_ran_out_is_never_sent() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let isolated = cluster.followers_of(leader)[0];
    let others = cluster.followers_of(isolated);
    const SESSION_MS: u64 = 3_000;
    open_session(&cluster, isolated, "a", SESSION_MS)
        .await
        .unwrap();
    join(&cluster, isolated, "a", "job").await.unwrap();
    cluster.delay_events(Duration::from_millis(3_000));
    let opened = latch_events(&cluster, isolated, "a", "job");
    let cut = async {
        // The stream has renewed its session and holds its read index.
        tokio::time::sleep(Duration::from_millis(800)).await;
        for id in &others {
            cluster.pause(*id);
        }
    };
    let (opened, ()) = tokio::join!(opened, cut);
    let first = match opened {
        Ok(mut stream) => tokio::time::timeout(Duration::from_secs(10), stream.next()).await,
        Err(status) => Ok(Some(Err(status))),
    };
    for id in &others {
        cluster.resume(*id);
    }
    cluster.delay_events(Duration::ZERO);
    match first {
        Ok(Some(Err(status))) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(Some(Ok(message))) => panic!(
            "the node told the watcher {:?} after its lease had run out",
            participants(&message)
        ),
        other => panic!("the stream neither ended nor spoke: {other:?}"),
    }
}

/// A streaming client that reopens its session with a longer timeout keeps
/// its stream: the node renews it by the short timeout its stream's lease
/// still runs on until a renewal confirms the long one. Before, the node
/// waited a sixth of the long timeout, and the lease ran out first.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_reopened_with_a_longer_timeout_keeps_its_stream() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let node = cluster.followers_of(leader)[0];
    // 3 s, not less: the stream must live on a lease of a third of it
    // through whatever stalls a loaded machine's disk (1 s, a 333 ms lease,
    // ended once in six fresh CI runs); the bug needs only short → long.
    open_session(&cluster, node, "w", 3_000).await.unwrap();
    let mut stream = latch_events(&cluster, node, "w", "kept").await.unwrap();
    assert!(participants(&stream.next().await.unwrap().unwrap()).is_empty());
    open_session(&cluster, node, "w", 120_000).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(3), stream.next()).await {
        Err(_) => {}
        Ok(ended) => panic!("the stream ended after the session was reopened: {ended:?}"),
    }
}

/// A streaming client that closes its session and opens it again with a
/// shorter timeout may be expired that much sooner: its stream's lease must
/// shrink with it, and the stream end on time once its node is cut off.
/// Before, the stream waited for the end its first, long, renewal had
/// given (a third of 30 s) while the session could expire 3 s after its
/// last renewal.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_reopened_with_a_shorter_timeout_shortens_its_streams_lease() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let node = cluster.followers_of(leader)[0];
    let others = cluster.followers_of(node);
    open_session(&cluster, node, "s", 30_000).await.unwrap();
    let mut stream = latch_events(&cluster, node, "s", "shrinks").await.unwrap();
    assert!(participants(&stream.next().await.unwrap().unwrap()).is_empty());
    cluster
        .sessions(node)
        .close_session(baton::proto::baton::v1::CloseSessionRequest {
            client_id: "s".into(),
            request_id: 0,
        })
        .await
        .unwrap();
    open_session(&cluster, node, "s", 3_000).await.unwrap();
    // Renewals by the new timeout have been confirmed meanwhile.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let cut = Instant::now();
    for id in &others {
        cluster.pause(*id);
    }
    let ended = tokio::time::timeout(Duration::from_secs(12), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    let after = cut.elapsed();
    for id in &others {
        cluster.resume(*id);
    }
    match ended {
        Ok(Some(Err(status))) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        other => panic!("the stream did not end with its lease: {other:?}"),
    }
    // The lease is a third of 3 s past the last renewal confirmed before
    // the cut; the session could expire 3 s after it.
    assert!(
        after < Duration::from_millis(2_000),
        "the stream ended {after:?} after its node was cut off"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_whose_lease_runs_out_is_told_unavailable() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let isolated = cluster.followers_of(leader)[0];
    let others = cluster.followers_of(isolated);
    const SESSION_MS: u64 = 6_000;
    const JOINERS: usize = 300;

    open_session(&cluster, isolated, "w", SESSION_MS)
        .await
        .unwrap();
    let mut stream = latch_events(&cluster, isolated, "w", "big").await.unwrap();
    assert!(participants(&stream.next().await.unwrap().unwrap()).is_empty());
    join_long_ids(&cluster, leader, "big", JOINERS).await;

    for id in &others {
        cluster.pause(*id);
    }
    // Long past the lease (a third of the session) and the old 5 s wait.
    tokio::time::sleep(Duration::from_millis(SESSION_MS + 2_000)).await;
    let mut received = 0;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(_))) => received += 1,
            Ok(other) => break other,
            Err(_) => panic!("the stream stayed open after {received} messages"),
        }
    };
    for id in &others {
        cluster.resume(*id);
    }
    match end {
        Some(Err(status)) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        other => panic!("after {received} messages the stream ended with {other:?}"),
    }
    assert!(
        received < JOINERS,
        "the reader never fell behind ({received} messages)"
    );
}

/// A leader reports its own new entries to openraft before its flush of
/// them ends, so replication overlaps that flush (`baton-store/src/flushed.rs`).
/// When the leader's disk stalls, its entries must still reach the
/// followers, but nothing may be acknowledged, applied or shown on any node
/// until the leader's copy is on disk as well; then everything is.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_disk_stalls_replicates_but_shows_nothing_until_its_own_flush() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let followers = cluster.followers_of(leader);
    let watched = followers[0];
    for client in ["writer", "watcher"] {
        open_session(&cluster, watched, client, 60_000)
            .await
            .unwrap();
    }
    let mut stream = latch_events(&cluster, watched, "watcher", "stalled")
        .await
        .unwrap();
    assert!(participants(&stream.next().await.unwrap().unwrap()).is_empty());
    let before = eventually(
        Duration::from_secs(5),
        "the leader's log is on disk",
        || async {
            let status = cluster.status(leader).await?;
            (status.flushed_index == status.last_log_index).then_some(status)
        },
    )
    .await;

    let stall = DiskStall::start(cluster.pid(leader), &cluster.node(leader).data_dir);
    let mut latch = cluster.latch(watched);
    let join = tokio::spawn(async move {
        latch
            .latch(la::LatchRequest {
                header: latch_header("writer", "stalled"),
                input: Some(la::LatchInput {}),
            })
            .await
    });
    let flushed = eventually(
        Duration::from_secs(5),
        "the followers hold entries the leader has not flushed",
        || async {
            let status = cluster.status(leader).await?;
            if status.last_log_index <= before.last_log_index
                || status.flushed_index >= status.last_log_index
            {
                return None;
            }
            for id in &followers {
                let follower = cluster.status(*id).await?;
                if follower.last_log_index < status.last_log_index {
                    return None;
                }
            }
            Some(status.flushed_index)
        },
    )
    .await;

    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        for id in cluster.running() {
            let status = cluster.status(id).await.unwrap();
            assert!(
                status.applied_index <= flushed,
                "node {id} applied {} while the leader had flushed only {flushed}",
                status.applied_index
            );
        }
        assert!(!join.is_finished(), "the join was answered: {join:?}");
        if let Ok(message) = tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
            panic!("the watcher was shown {message:?}");
        }
    }

    drop(stall);
    let joined = tokio::time::timeout(Duration::from_secs(10), join)
        .await
        .expect("the join is answered once the leader's disk is back")
        .unwrap();
    assert!(joined.is_ok(), "{joined:?}");
    let shown = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the watcher is shown the join")
        .unwrap()
        .unwrap();
    assert_eq!(participants(&shown), ["writer"]);
    cluster.wait_converged().await;
}

/// DESIGN §3: within a term the leader's log time follows its monotonic
/// clock. A wall-clock step forward on the leader must not expire healthy
/// sessions; a step back must not keep dead ones alive.
#[tokio::test(flavor = "multi_thread")]
async fn a_wall_clock_step_on_the_leader_neither_expires_nor_prolongs_sessions() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let node = cluster.followers_of(leader)[0];
    open_session(&cluster, node, "healthy", 10_000)
        .await
        .unwrap();
    join(&cluster, node, "healthy", "lease").await.unwrap();

    cluster.step_clock(leader, 60_000);
    // Quiet for a while: a leader that followed its wall clock would find
    // the session 50 s overdue and expire it now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let kept = keep_alive(&cluster, node, "healthy").await;
        assert!(kept.is_ok(), "the healthy session expired: {kept:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let latch = get_latch(&cluster, node, "lease").await.unwrap();
    assert_eq!((latch.leader.as_deref(), latch.epoch), (Some("healthy"), 1));

    cluster.step_clock(leader, -120_000);
    open_session(&cluster, node, "dead", 1_000).await.unwrap();
    join(&cluster, node, "dead", "gone").await.unwrap();
    eventually(
        Duration::from_secs(8),
        "the dead client's 1 s session expires",
        || async {
            let latch = get_latch(&cluster, node, "gone").await.ok()?;
            latch.members.is_empty().then_some(())
        },
    )
    .await;
}

/// Issue 7, item 10: clients that go away leave nothing behind: their
/// sessions expire, and the node forgets their streams and renewals.
#[tokio::test(flavor = "multi_thread")]
async fn clients_that_leave_leave_nothing_behind() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let node = cluster.followers_of(leader)[0];
    let mut streams = Vec::new();
    // 3 s sessions: a stream's lease is a third of its session, and with
    // 1 s sessions a stall of 333 ms anywhere in the 20 setups (a loaded CI
    // machine) rightly ended streams before they were counted (1 of 14 runs
    // under two CPU hogs; 0 of 14 with 3 s). What is tested is what is
    // left after the clients go, which does not depend on the timeout.
    for i in 0..20 {
        let client = format!("gone-{i}");
        open_session(&cluster, node, &client, 3_000).await.unwrap();
        join(&cluster, node, &client, "shared").await.unwrap();
        let mut read = cluster.latch(node);
        read.get(la::GetRequest {
            header: latch_header(&client, "shared"),
            input: None,
        })
        .await
        .unwrap();
        let mut stream = latch_events(&cluster, node, &client, "shared")
            .await
            .unwrap();
        stream.next().await.unwrap().unwrap();
        streams.push(stream);
    }
    let status = cluster.status(node).await.unwrap();
    assert_eq!(status.open_streams, 20);
    assert!(status.tracked_clients >= 20, "{status:?}");
    drop(streams);
    eventually(
        Duration::from_secs(15),
        "sessions, streams and renewal records are gone on every node",
        || async {
            for id in [1, 2, 3] {
                let s = cluster.status(id).await?;
                if s.sessions != 0 || s.open_streams != 0 || s.tracked_clients != 0 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let latch = get_latch(&cluster, node, "shared").await.unwrap();
    assert!(latch.members.is_empty(), "{latch:?}");
}
