//! Issue 12: growing, shrinking and replacing nodes under load, refusing a
//! removal that would lose the quorum, and backing up the whole cluster and
//! restoring it into a new one. Real processes.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton::proto::baton::v1::admin_service_client::AdminServiceClient;
use baton::proto::baton::v1::raft_service_client::RaftServiceClient;
use baton::proto::baton::v1::{AddNodeRequest, JoinRequest, RemoveNodeRequest};
use baton_client::Client;
use common::*;

/// An admin client (no session) for the cluster's first three nodes.
fn admin(cluster: &Cluster, nodes: &[u64]) -> Client {
    let endpoints: Vec<String> = nodes
        .iter()
        .map(|id| cluster.node(*id).client_addr.clone())
        .collect();
    Client::builder(&endpoints)
        .call_timeout(Duration::from_secs(60))
        .attach()
        .expect("admin client")
}

/// Enters and withdraws in a loop until stopped; counts writes and failures.
fn write_load(
    client: Client,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let election = client.election("membership-load");
        let (mut writes, mut failures) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            for result in [election.enter().await, election.withdraw().await] {
                match result {
                    Ok(_) => writes += 1,
                    Err(error) => failures.push(error.to_string()),
                }
            }
        }
        (writes, failures)
    })
}

async fn voters_everywhere(cluster: &Cluster, nodes: &[u64], voters: &[u64]) {
    eventually(
        Duration::from_secs(20),
        "every node sees the new membership",
        || async {
            for id in nodes {
                let status = cluster.status(*id).await?;
                if status.voters != voters || !status.learners.is_empty() || !status.has_leader {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_five_survive_two_kills_and_shrink_back_under_load() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(&[]).await;
    cluster.wait_for_leader().await;
    let loader = Client::builder(&cluster.endpoints())
        .client_id("loader")
        .session_timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let load = write_load(loader.clone(), stop.clone());

    // The admin client knows one follower only: it must follow the leader
    // hint to an address it was not given.
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers_of(leader)[0];
    // Node 4 through a follower's AdminService, a plain gRPC client that
    // follows no leader hint: the follower passes it on (DESIGN §1: any
    // node answers any request; until session 13 it answered UNAVAILABLE).
    cluster.launch_joiner(4);
    let peer = cluster.node(4).peer_addr.clone();
    let mut follower_admin = AdminServiceClient::new(cluster.channel(follower));
    let added = follower_admin
        .add_node(AddNodeRequest {
            id: 4,
            peer_addr: peer,
        })
        .await
        .expect("add node through a follower")
        .into_inner();
    assert!(
        added.voters.contains(&4) && added.learners.is_empty(),
        "{added:?}"
    );
    // Node 5 asks to join itself, as a scaled-up pod does, and asks a
    // follower: it passes the request on to the leader.
    cluster.launch_joiner(5);
    let mut peer_port =
        RaftServiceClient::connect(format!("http://{}", cluster.node(follower).peer_addr))
            .await
            .expect("a follower's peer port");
    let joined = peer_port
        .join(JoinRequest {
            id: 5,
            peer_addr: cluster.node(5).peer_addr.clone(),
            passed_on: false,
        })
        .await
        .expect("joined through a follower")
        .into_inner();
    assert!(
        joined.voters.contains(&5) && joined.learners.is_empty(),
        "{joined:?}"
    );
    voters_everywhere(&cluster, &[1, 2, 3, 4, 5], &[1, 2, 3, 4, 5]).await;

    // Five nodes survive two kills, the leader among them.
    let leader = cluster.wait_for_leader().await;
    let other = [1, 2, 3, 4, 5]
        .into_iter()
        .find(|id| *id != leader)
        .expect("other");
    cluster.kill(leader);
    cluster.kill(other);
    let survivors: Vec<u64> = (1..=5).filter(|id| *id != leader && *id != other).collect();
    let term = enter(&cluster, survivors[0], "after-two-kills", "e").await;
    let term = match term {
        Ok(term) => term,
        Err(_) => {
            until_ok("a write with two of five down", || {
                enter(&cluster, survivors[0], "after-two-kills", "e")
            })
            .await
        }
    };
    assert_eq!(term.leader.as_deref(), Some("after-two-kills"));
    cluster.restart(leader);
    cluster.restart(other);
    voters_everywhere(&cluster, &[1, 2, 3, 4, 5], &[1, 2, 3, 4, 5]).await;

    // Shrink back to three: node 5 through a follower's AdminService.
    let leader = cluster.wait_for_leader().await;
    let follower = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let removed = AdminServiceClient::new(cluster.channel(follower))
        .remove_node(RemoveNodeRequest { id: 5 })
        .await
        .expect("remove node through a follower")
        .into_inner();
    assert!(!removed.voters.contains(&5), "{removed:?}");
    cluster.stop(5);
    let (voters, _) = admin(&cluster, &[1, 2, 3])
        .remove_node(4)
        .await
        .expect("remove node");
    assert!(!voters.contains(&4));
    cluster.stop(4);
    voters_everywhere(&cluster, &[1, 2, 3], &[1, 2, 3]).await;

    stop.store(true, Ordering::Relaxed);
    let (writes, failures) = load.await.expect("load");
    eprintln!(
        "membership changes under load: {writes} writes, {} failed",
        failures.len()
    );
    assert!(writes > 0);
    assert!(failures.is_empty(), "failed writes: {failures:?}");
    loader.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_replaced_and_a_removal_that_would_lose_the_quorum_is_refused() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    join(&cluster, leader, "before", "kept")
        .await
        .expect("join");
    let dead = cluster.followers_of(leader)[0];
    let alive = cluster.followers_of(leader)[1];
    cluster.kill(dead);

    // With one of three down, removing another live voter would leave one
    // answering voter of two.
    let refused = admin(&cluster, &[leader, alive])
        .remove_node(alive)
        .await
        .expect_err("must be refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    assert!(refused.to_string().contains("quorum"), "{refused}");
    let status = cluster.status(leader).await.expect("status");
    assert_eq!(status.voters, vec![1, 2, 3], "nothing changed");

    // Replace the dead machine: remove it, add a new node on an empty disk.
    admin(&cluster, &[leader, alive])
        .remove_node(dead)
        .await
        .expect("remove the dead node");
    cluster.launch_joiner(4);
    let peer = cluster.node(4).peer_addr.clone();
    admin(&cluster, &[leader, alive])
        .add_node(4, &peer)
        .await
        .expect("add the replacement");
    let mut voters = vec![leader, alive, 4];
    voters.sort();
    voters_everywhere(&cluster, &[leader, alive, 4], &voters).await;
    let latch = get_latch(&cluster, 4, "kept")
        .await
        .expect("read on the new node");
    assert_eq!(latch.members, vec!["before".to_owned()]);
    // The replacement holds the whole state: converged digests.
    eventually(
        Duration::from_secs(10),
        "the replacement converges",
        || async {
            let a = cluster.status(leader).await?;
            let b = cluster.status(4).await?;
            (a.applied_index == b.applied_index && a.state_digest == b.state_digest).then_some(())
        },
    )
    .await;

    // The leader removes itself: it steps down once the change is
    // committed, and the two left elect a leader and take writes.
    let nodes = [leader, alive, 4];
    let (voters, _) = admin(&cluster, &nodes)
        .remove_node(leader)
        .await
        .expect("the leader removes itself");
    assert!(!voters.contains(&leader), "{voters:?}");
    let rest: Vec<u64> = nodes.into_iter().filter(|id| *id != leader).collect();
    let mut expected = rest.clone();
    expected.sort();
    voters_everywhere(&cluster, &rest, &expected).await;
    eventually(
        Duration::from_secs(10),
        "a leader among the rest",
        || async {
            let status = cluster.status(rest[0]).await?;
            (status.has_leader && rest.contains(&status.leader_id)).then_some(())
        },
    )
    .await;
    until_ok("a write after the leader left", || {
        join(&cluster, rest[0], "after", "kept")
    })
    .await;

    // Both stop at once (a power cut) and start again with the command
    // lines they had: the replacement's still says `--join`. A node that
    // joined long ago holds its vote on disk and may vote; until session
    // 13 `--join` kept it from campaigning or voting until it heard from
    // a leader, and no leader could be elected.
    for id in &rest {
        cluster.kill(*id);
    }
    for id in &rest {
        cluster.restart(*id);
    }
    until_ok("a write after both restarted", || {
        join(&cluster, rest[0], "after-restart", "kept")
    })
    .await;
}

/// AddNode with an address that is malformed, that nobody answers on, or
/// whose node says it has another id is refused at once with a clear error,
/// and the membership stays as it was. Before, any non-empty address was
/// made a learner, and the call then waited for it to catch up for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_node_that_is_not_there_is_refused_and_changes_nothing() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let admin = Client::builder(&cluster.endpoints())
        .call_timeout(Duration::from_secs(10))
        .attach()
        .expect("admin client");
    let refusals = [
        ("nonsense", tonic::Code::InvalidArgument),
        ("host name with spaces:7000", tonic::Code::InvalidArgument),
        // A port nobody listens on.
        ("127.0.0.1:1", tonic::Code::FailedPrecondition),
    ];
    for (address, code) in refusals {
        let refused = tokio::time::timeout(Duration::from_secs(15), admin.add_node(4, address))
            .await
            .unwrap_or_else(|_| panic!("add-node {address:?} hung"))
            .expect_err("refused");
        assert_eq!(refused.code(), code, "{address:?}: {refused}");
    }
    // A live node that is not node 4.
    cluster.launch_joiner(4);
    let peer_of_4 = cluster.node(4).peer_addr.clone();
    eventually(Duration::from_secs(10), "node 4 is up", || async {
        cluster.status(4).await.map(|_| ())
    })
    .await;
    let refused = tokio::time::timeout(Duration::from_secs(15), admin.add_node(5, &peer_of_4))
        .await
        .expect("add-node of the wrong id hung")
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    assert!(refused.to_string().contains("node 4"), "{refused}");
    let status = cluster.status(leader).await.expect("status");
    assert_eq!(status.voters, vec![1, 2, 3], "{status:?}");
    assert!(status.learners.is_empty(), "{status:?}");
    // The right id at that address is added.
    admin.add_node(4, &peer_of_4).await.expect("add node 4");
    voters_everywhere(&cluster, &[1, 2, 3, 4], &[1, 2, 3, 4]).await;
    cluster.kill(4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_cluster_is_restored_into_a_new_one_with_every_write_and_epoch() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("cluster.backup");
    let (latches, terms, sessions) = {
        let mut cluster = Cluster::start(&[]).await;
        let leader = cluster.wait_for_leader().await;
        open_session(&cluster, leader, "keeper", 300_000)
            .await
            .expect("session");
        for i in 0..5 {
            join(&cluster, leader, "keeper", &format!("latch-{i}"))
                .await
                .expect("join");
        }
        for candidate in ["x", "y", "z"] {
            open_session(&cluster, leader, candidate, 300_000)
                .await
                .expect("session");
            enter(&cluster, leader, candidate, "vote")
                .await
                .expect("enter");
        }
        // Raise the election's epoch: anoint z, then y.
        for candidate in ["z", "y"] {
            client_on(&cluster, leader, "x")
                .election("vote")
                .anoint(candidate)
                .await
                .expect("anoint");
        }
        // Save through the CLI (atomic write) ...
        let saved = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["--endpoints", &cluster.endpoints().join(",")])
            .args(["cluster", "snapshot", "save"])
            .arg(&file)
            .output()
            .expect("baton cluster snapshot save");
        assert!(saved.status.success(), "{saved:?}");
        let mut latches = Vec::new();
        for i in 0..5 {
            latches.push(
                get_latch(&cluster, leader, &format!("latch-{i}"))
                    .await
                    .expect("get"),
            );
        }
        let terms = get_term(&cluster, leader, "vote").await.expect("term");
        assert_eq!((terms.leader.as_deref(), terms.epoch), (Some("y"), 3));
        let sessions = cluster.status(leader).await.expect("status").sessions;
        // ... then lose every node and its disk.
        for id in 1..=3 {
            cluster.kill(id);
            cluster.wipe(id);
        }
        (latches, terms, sessions)
    };

    // A corrupt or truncated file is refused and writes nothing.
    let bytes = std::fs::read(&file).expect("backup");
    for (what, damaged) in [
        ("truncated", bytes[..bytes.len() - 10].to_vec()),
        ("flipped", {
            let mut b = bytes.clone();
            let at = b.len() - 5;
            b[at] ^= 0x20;
            b
        }),
    ] {
        let bad = dir.path().join(format!("{what}.backup"));
        std::fs::write(&bad, damaged).expect("write");
        let target = dir.path().join(format!("{what}-data"));
        let restored = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["cluster", "snapshot", "restore"])
            .arg(&bad)
            .arg("--data-dir")
            .arg(&target)
            .output()
            .expect("restore");
        assert!(!restored.status.success(), "{what} backup accepted");
        let message = String::from_utf8_lossy(&restored.stderr);
        assert!(
            message.contains("truncated") || message.contains("corrupt"),
            "{what}: {message}"
        );
        assert!(!target.exists(), "{what}: nothing may be written");
    }

    // Three new nodes seeded from the file form a cluster with everything.
    let restored = Cluster::start_seeded(&file).await;
    let leader = restored.wait_for_leader().await;
    for (i, before) in latches.iter().enumerate() {
        let after = get_latch(&restored, leader, &format!("latch-{i}"))
            .await
            .expect("get");
        assert_eq!(
            (&after.members, after.epoch),
            (&before.members, before.epoch)
        );
    }
    let after = get_term(&restored, leader, "vote").await.expect("term");
    assert_eq!(
        (&after.members, after.epoch, &after.leader),
        (&terms.members, terms.epoch, &terms.leader)
    );
    assert_eq!(
        restored.status(leader).await.expect("status").sessions,
        sessions
    );
    // And it keeps working: the next change raises the epoch further.
    let next = client_on(&restored, leader, "x")
        .election("vote")
        .anoint("x")
        .await
        .expect("anoint after restore");
    assert_eq!(next.epoch, terms.epoch + 1);

    // A member that loses its disk rejoins with the restored state, not by
    // replaying the new cluster's short log onto an empty one (until
    // session 13 it did: it served the latches empty, at epoch 0).
    let mut restored = restored;
    let wiped = restored.followers_of(leader)[0];
    restored.kill(wiped);
    restored.wipe(wiped);
    restored.restart(wiped);
    restored.wait_converged().await;
    let latch = eventually(
        Duration::from_secs(20),
        "the wiped member serves the restored latch",
        || async { get_latch(&restored, wiped, "latch-0").await.ok() },
    )
    .await;
    assert_eq!(
        (&latch.members, latch.epoch),
        (&latches[0].members, latches[0].epoch),
        "the wiped member's copy of latch-0"
    );
    let term = get_term(&restored, wiped, "vote").await.expect("term");
    assert_eq!(
        (term.epoch, term.leader.as_deref()),
        (next.epoch, Some("x"))
    );

    // A seeded directory started to join a cluster would lay that
    // cluster's log over the seed: refused, clearly.
    let seeded = dir.path().join("seeded-joiner");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["cluster", "snapshot", "restore"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&seeded)
        .output()
        .expect("restore");
    assert!(status.status.success(), "{status:?}");
    let ports = free_ports(2);
    let mut joiner = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["serve", "--id", "7"])
        .args(["--listen", &format!("127.0.0.1:{}", ports[0])])
        .args(["--peer-listen", &format!("127.0.0.1:{}", ports[1])])
        .args(["--join", &restored.endpoints().join(",")])
        .arg("--data-dir")
        .arg(&seeded)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("baton serve");
    let exit = wait_exit(&mut joiner, Duration::from_secs(10));
    let _ = joiner.kill();
    assert!(exit.is_some_and(|s| !s.success()), "{exit:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut joiner.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(stderr.contains("seeded from a backup"), "{stderr}");
}

/// A backup is disk input: a crafted one may hold a session whose timeout
/// no OpenSession could ask for. The nodes seeded from it must serve that
/// client's Events stream (its lease capped, not overflowing) rather than
/// panic.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_with_an_absurd_session_timeout_does_not_crash_a_node() {
    use baton_state::{ClientRequest, Command, Operation, StateMachine};
    use futures::StreamExt;
    let _serial = serial().await;
    let mut machine = StateMachine::default();
    let now = 1_700_000_000_000;
    machine.apply(
        &Command::OpenSession {
            client_id: "forever".into(),
            timeout_ms: 60_000,
        },
        now,
    );
    let joined = machine.apply(
        &Command::Client(ClientRequest {
            client_id: "forever".into(),
            request_id: 0,
            operation: Operation::Join {
                latch: "held".into(),
            },
        }),
        now,
    );
    assert!(joined.result.is_ok());
    let mut state = serde_json::to_value(&machine).expect("state");
    let session = &mut state["sessions"]["forever"];
    session["timeout_ms"] = u64::MAX.into();
    session["expires_at_ms"] = u64::MAX.into();
    let state = serde_json::to_vec(&state).expect("state");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("crafted.backup");
    std::fs::write(&file, baton_store::backup::encode("crafted", 1, &state)).expect("write");

    let mut cluster = Cluster::start_seeded(&file).await;
    let leader = cluster.wait_for_leader().await;
    for node in 1..=3 {
        let mut stream = latch_events(&cluster, node, "forever", "held")
            .await
            .expect("Events of the crafted session's latch");
        let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a first message");
        assert!(matches!(first, Some(Ok(_))), "node {node}: {first:?}");
    }
    // Renewals of that session (the nodes keep the streams' client alive)
    // go on for a while, then every node still runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node in 1..=3 {
        assert!(cluster.exited(node).is_none(), "node {node} exited");
        let log = cluster.log(node);
        assert!(!log.contains("panicked"), "node {node} panicked:\n{log}");
    }
    let latch = get_latch(&cluster, leader, "held").await.expect("get");
    assert_eq!(latch.members, ["forever"]);
}
