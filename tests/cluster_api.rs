//! Every RPC of the latch, election and session services, sent to each node
//! in turn (leader and followers) of a real three-node cluster; Events from a
//! follower; bad input gets the right status and changes nothing.

mod common;

use std::time::Duration;

use baton::proto::atomix::primitive::election as el;
use baton::proto::atomix::primitive::leader as la;
use baton::proto::atomix::primitive::meta::{Epoch, ObjectMeta, Revision};
use baton::proto::atomix::primitive::primitive_service_client::PrimitiveServiceClient;
use baton::proto::atomix::primitive::{CreateRequest, PrimitiveId, RequestHeader, ResponseType};
use baton::proto::baton::v1::{CloseSessionRequest, KeepAliveRequest, OpenSessionRequest};
use common::*;
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn every_rpc_on_every_node() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let mut order = vec![leader];
    order.extend(cluster.followers_of(leader));

    for node in order {
        let latch_name = format!("latch-{node}");
        let election_name = format!("election-{node}");

        // Latch: join twice (idempotent), a second participant, get.
        let latch = join(&cluster, node, "a", &latch_name).await.unwrap();
        assert_eq!((latch.leader.as_deref(), latch.epoch), (Some("a"), 1));
        join(&cluster, node, "a", &latch_name).await.unwrap();
        let latch = join(&cluster, node, "b", &latch_name).await.unwrap();
        assert_eq!(latch.members, ["a", "b"]);
        let read = get_latch(&cluster, node, &latch_name).await.unwrap();
        assert_eq!(read, latch, "Get on node {node} sees the write");
        let response = cluster
            .latch(node)
            .get(la::GetRequest {
                header: latch_header("r", &latch_name),
                input: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.header.unwrap().response_type,
            ResponseType::Response as i32
        );

        // Latch snapshot and restore.
        let snapshot = cluster
            .latch(node)
            .snapshot(la::SnapshotRequest {
                header: latch_header("op", &latch_name),
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert_eq!(snapshot.latch.as_ref().unwrap().participants, ["a", "b"]);
        let restored = la::Latch {
            meta: Some(ObjectMeta {
                revision: Some(Revision { num: 5 }),
                timestamp: None,
            }),
            leader: "b".into(),
            participants: vec!["b".into(), "a".into()],
        };
        cluster
            .latch(node)
            .restore(la::RestoreRequest {
                header: latch_header("op", &latch_name),
                snapshot: Some(la::Snapshot {
                    latch: Some(restored),
                }),
            })
            .await
            .unwrap();
        let read = get_latch(&cluster, node, &latch_name).await.unwrap();
        assert_eq!(
            (read.leader.as_deref(), read.epoch),
            (Some("b"), 6),
            "epoch above restored 5"
        );

        // Election: enter, withdraw, anoint, promote, evict, term.
        for c in ["x", "y", "z"] {
            enter(&cluster, node, c, &election_name).await.unwrap();
        }
        let term = get_term(&cluster, node, &election_name).await.unwrap();
        assert_eq!(
            (term.leader.as_deref(), term.members.clone(), term.epoch),
            (Some("x"), vec!["x".to_string(), "y".into(), "z".into()], 1)
        );
        let mut election = cluster.election(node);
        let term = election
            .anoint(el::AnointRequest {
                header: election_header("admin", &election_name),
                input: Some(el::AnointInput {
                    candidate_id: "z".into(),
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .output
            .unwrap()
            .term
            .unwrap();
        assert_eq!((term.leader.as_str(), epoch_of_term(&term)), ("z", 2));
        let term = election
            .promote(el::PromoteRequest {
                header: election_header("admin", &election_name),
                input: Some(el::PromoteInput {
                    candidate_id: "y".into(),
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .output
            .unwrap()
            .term
            .unwrap();
        assert_eq!(term.candidates, ["z", "y", "x"]);
        let term = election
            .evict(el::EvictRequest {
                header: election_header("admin", &election_name),
                input: Some(el::EvictInput {
                    candidate_id: "x".into(),
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .output
            .unwrap()
            .term
            .unwrap();
        assert_eq!(term.candidates, ["z", "y"]);
        let term = election
            .withdraw(el::WithdrawRequest {
                header: election_header("z", &election_name),
                input: None,
            })
            .await
            .unwrap()
            .into_inner()
            .output
            .unwrap()
            .term
            .unwrap();
        assert_eq!((term.leader.as_str(), epoch_of_term(&term)), ("y", 3));

        // Election snapshot and restore.
        let snapshot = election
            .snapshot(el::SnapshotRequest {
                header: election_header("op", &election_name),
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert_eq!(snapshot.term.as_ref().unwrap().candidates, ["y"]);
        election
            .restore(el::RestoreRequest {
                header: election_header("op", &election_name),
                snapshot: Some(el::Snapshot {
                    term: Some(el::Term {
                        id: Some(Epoch { num: 1 }),
                        timestamp: None,
                        leader: "q".into(),
                        candidates: vec!["q".into(), "y".into()],
                    }),
                }),
            })
            .await
            .unwrap();
        let term = get_term(&cluster, node, &election_name).await.unwrap();
        assert_eq!(
            (term.leader.as_deref(), term.epoch),
            (Some("q"), 4),
            "epoch above current 3"
        );

        // Sessions: open with a timeout, keep alive, close (hands over).
        let session_client = format!("s-{node}");
        let mut sessions = cluster.sessions(node);
        let opened = sessions
            .open_session(OpenSessionRequest {
                client_id: session_client.clone(),
                timeout_ms: 30_000,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(opened.timeout_ms, 30_000);
        join(&cluster, node, &session_client, &latch_name)
            .await
            .unwrap();
        let kept = sessions
            .keep_alive(KeepAliveRequest {
                client_id: session_client.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(kept.timeout_ms, 30_000);
        sessions
            .close_session(CloseSessionRequest {
                client_id: session_client.clone(),
                request_id: 0,
            })
            .await
            .unwrap();
        let read = get_latch(&cluster, node, &latch_name).await.unwrap();
        assert!(!read.members.contains(&session_client));
        let gone = sessions
            .keep_alive(KeepAliveRequest {
                client_id: session_client.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
    }
    cluster.wait_converged().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_from_a_follower_see_the_initial_state_and_each_change_in_order() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers_of(leader)[0];
    join(&cluster, leader, "first", "watched").await.unwrap();

    let mut stream = latch_events(&cluster, follower, "watcher", "watched")
        .await
        .unwrap();
    let initial = next(&mut stream).await;
    assert_eq!(
        initial.header.unwrap().response_type,
        ResponseType::ResponseStream as i32
    );
    let output = initial.output.unwrap();
    assert_eq!(output.r#type, la::events_output::Type::None as i32);
    assert_eq!(output.latch.unwrap().participants, ["first"]);

    for (i, client) in ["second", "third"].iter().enumerate() {
        join(&cluster, leader, client, "watched").await.unwrap();
        let event = next(&mut stream).await.output.unwrap();
        assert_eq!(event.r#type, la::events_output::Type::Change as i32);
        assert_eq!(event.latch.unwrap().participants.len(), i + 2);
    }
    cluster
        .sessions(leader)
        .close_session(CloseSessionRequest {
            client_id: "first".into(),
            request_id: 0,
        })
        .await
        .unwrap();
    let event = next(&mut stream).await.output.unwrap().latch.unwrap();
    assert_eq!(
        (event.leader.as_str(), epoch_of_latch(&event)),
        ("second", 2)
    );

    // Election events too, from the other follower.
    let other = cluster.followers_of(leader)[1];
    let mut terms = cluster
        .election(other)
        .events(el::EventsRequest {
            header: election_header("watcher", "vote"),
            input: None,
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), terms.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first.output.unwrap().r#type,
        el::events_output::Type::None as i32
    );
    enter(&cluster, leader, "cand", "vote").await.unwrap();
    let change = tokio::time::timeout(Duration::from_secs(10), terms.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let change = change.output.unwrap();
    assert_eq!(change.r#type, el::events_output::Type::Changed as i32);
    assert_eq!(change.term.unwrap().leader, "cand");
}

async fn next(stream: &mut tonic::Streaming<la::EventsResponse>) -> la::EventsResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event in time")
        .expect("stream open")
        .expect("event ok")
}

fn header_with(client: &str, type_name: &str, name: &str) -> Option<RequestHeader> {
    Some(RequestHeader {
        client_id: client.into(),
        primitive_id: Some(PrimitiveId {
            r#type: type_name.into(),
            name: name.into(),
        }),
        request_id: 0,
        request_type: 0,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_the_right_status_and_changes_nothing() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let node = cluster.followers_of(leader)[0];
    join(&cluster, node, "a", "l").await.unwrap();
    enter(&cluster, node, "a", "e").await.unwrap();
    let latch_before = get_latch(&cluster, node, "l").await.unwrap();
    let term_before = get_term(&cluster, node, "e").await.unwrap();

    let long = "x".repeat(257);
    let mut latch = cluster.latch(node);
    let bad_latch_headers = [
        (None, "missing header"),
        // An empty client id is not bad input: the caller gets its
        // connection's identity (tests/atomix_compat.rs).
        (
            header_with(&long, "LeaderLatch", "l"),
            "oversized client id",
        ),
        (header_with("a", "LeaderLatch", ""), "empty name"),
        (header_with("a", "LeaderLatch", &long), "oversized name"),
        (header_with("a", "Election", "l"), "wrong primitive type"),
        (header_with("a", "Map", "l"), "unknown primitive type"),
        (
            header_with("conn-1-00c0ffee-0", "LeaderLatch", "l"),
            "a client id only the cluster gives",
        ),
    ];
    for (header, what) in bad_latch_headers {
        let status = latch
            .latch(la::LatchRequest {
                header,
                input: None,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    // A message above the 1 MiB limit, on every client service: the limit
    // is a resource bound (DESIGN §8), not an argument error.
    let huge = "x".repeat(2 * 1024 * 1024);
    let status = latch
        .latch(la::LatchRequest {
            header: header_with(&huge, "LeaderLatch", "l"),
            input: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let status = PrimitiveServiceClient::new(cluster.channel(node))
        .create(CreateRequest {
            header: header_with(&huge, "LeaderLatch", "l"),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let mut election = cluster.election(node);
    let status = election
        .enter(el::EnterRequest {
            header: header_with("a", "LeaderLatch", "e"),
            input: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = election
        .anoint(el::AnointRequest {
            header: election_header("admin", "e"),
            input: Some(el::AnointInput {
                candidate_id: "nobody".into(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = election
        .anoint(el::AnointRequest {
            header: election_header("admin", "e"),
            input: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "anoint without a candidate id"
    );

    let malformed = [
        None,
        Some(la::Snapshot { latch: None }),
        Some(la::Snapshot {
            latch: Some(la::Latch {
                meta: None,
                leader: "b".into(),
                participants: vec!["a".into(), "b".into()],
            }),
        }),
        Some(la::Snapshot {
            latch: Some(la::Latch {
                meta: None,
                leader: "".into(),
                participants: vec!["a".into(), "a".into()],
            }),
        }),
    ];
    for snapshot in malformed {
        let status = latch
            .restore(la::RestoreRequest {
                header: latch_header("op", "l"),
                snapshot: snapshot.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "malformed restore {snapshot:?}"
        );
    }
    let status = cluster
        .sessions(node)
        .open_session(OpenSessionRequest {
            client_id: "t".into(),
            timeout_ms: 10,
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "session timeout below 1 s"
    );
    let status = cluster
        .sessions(node)
        .close_session(CloseSessionRequest {
            client_id: "conn-1-00c0ffee-0".into(),
            request_id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "closing a session only the cluster names"
    );

    // Nothing changed, on any node.
    for id in cluster.running() {
        assert_eq!(
            get_latch(&cluster, id, "l").await.unwrap(),
            latch_before,
            "latch on node {id}"
        );
        assert_eq!(
            get_term(&cluster, id, "e").await.unwrap(),
            term_before,
            "election on node {id}"
        );
        assert_eq!(
            get_latch(&cluster, id, &long[..256])
                .await
                .unwrap()
                .members
                .len(),
            0
        );
    }
    cluster.wait_converged().await;
}

/// `baton session open` once read its session timeout from the same flag
/// as every command's call deadline (`--timeout-ms`): without the flag the
/// call had no time at all and failed at once, with it both meant the same.
#[tokio::test]
async fn the_cli_opens_sessions_with_the_default_or_a_given_timeout() {
    let _serial = serial().await;
    let c = Cluster::start(&[]).await;
    c.wait_for_leader().await;
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["--endpoints", &c.endpoints().join(",")])
            .args(args)
            .output()
            .expect("baton runs");
        assert!(output.status.success(), "baton {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let default = cli(&["--client-id", "cli-a", "session", "open"]);
    assert!(default.contains("timeout 10000 ms"), "{default}");
    let given = cli(&[
        "--client-id",
        "cli-b",
        "session",
        "open",
        "--session-timeout-ms",
        "3000",
    ]);
    assert!(given.contains("timeout 3000 ms"), "{given}");
    // A short call deadline and a longer session are two things.
    let both = cli(&[
        "--timeout-ms",
        "2000",
        "--client-id",
        "cli-c",
        "session",
        "open",
        "--session-timeout-ms",
        "20000",
    ]);
    assert!(both.contains("timeout 20000 ms"), "{both}");
    // Acting as a client without naming it would change nothing (a
    // generated id leaves, closes or renews nothing) or leave a place that
    // nobody keeps alive behind.
    for args in [
        &["latch", "close", "l"][..],
        &["latch", "join", "l"],
        &["election", "withdraw", "e"],
        &["election", "enter", "e"],
        &["session", "close"],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["--endpoints", &c.endpoints().join(",")])
            .args(args)
            .env_remove("BATON_CLIENT_ID")
            .output()
            .expect("baton runs");
        assert!(!output.status.success(), "baton {args:?}: {output:?}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains("--client-id"), "baton {args:?}: {said}");
    }
}

/// `baton cluster status` prints what it found and exits 1 when no node
/// answered or none knows a leader, so a script can use it as a check
/// (until session 13 it exited 0 either way).
#[tokio::test]
async fn cluster_status_fails_when_the_cluster_does_not_serve() {
    let _serial = serial().await;
    let mut c = Cluster::start(&[]).await;
    let leader = c.wait_for_leader().await;
    let status = |endpoints: &[String]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["--endpoints", &endpoints.join(",")])
            .args(["cluster", "status"])
            .output()
            .expect("baton runs")
    };
    // Right after an election the leader may not count a quorum's
    // acknowledgement within its lease yet.
    eventually(
        Duration::from_secs(10),
        "status names the leader",
        || async {
            let serving = status(&c.endpoints());
            (serving.status.success()
                && String::from_utf8_lossy(&serving.stdout).contains(&format!("leader: {leader}")))
            .then_some(())
        },
    )
    .await;

    let nobody = status(&["127.0.0.1:1".to_owned()]);
    assert!(!nobody.status.success(), "{nobody:?}");
    assert!(
        String::from_utf8_lossy(&nobody.stderr).contains("no node answered"),
        "{nobody:?}"
    );

    let survivor = c.followers_of(leader)[0];
    for id in [1, 2, 3].into_iter().filter(|id| *id != survivor) {
        c.kill(id);
    }
    let alone = [c.node(survivor).client_addr.clone()];
    let leaderless = eventually(
        Duration::from_secs(10),
        "the survivor knows no leader",
        || async {
            let output = status(&alone);
            (!output.status.success()).then_some(output)
        },
    )
    .await;
    assert!(
        String::from_utf8_lossy(&leaderless.stderr).contains("no node knows a leader"),
        "{leaderless:?}"
    );
    assert!(
        String::from_utf8_lossy(&leaderless.stdout).contains("leader: none"),
        "{leaderless:?}"
    );
}

/// The cluster adopts the state-machine rules level its nodes apply, and
/// from then on one client's requests on one primitive are ordered by
/// their ids: an Enter the client gave up on (outcome unknown) that
/// arrives after its Withdraw is refused, not applied over it (until
/// session 13 it was applied: the client was a candidate again, perhaps
/// the leader, after it had withdrawn, until its session ended).
#[tokio::test]
async fn a_late_request_overtaken_on_its_primitive_is_not_applied() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    for node in 1..=3 {
        eventually(
            Duration::from_secs(10),
            "the rules level adopted",
            || async { (cluster.status(node).await?.rules == baton_state::RULES).then_some(()) },
        )
        .await;
    }
    open_session(&cluster, leader, "w", 60_000).await.unwrap();
    let header = |request_id| {
        baton_client::request_header("w", baton_client::Kind::Election, "ordered", request_id)
    };
    let mut election = cluster.election(leader);
    let withdrawn = election
        .withdraw(el::WithdrawRequest {
            header: header(8),
            input: None,
        })
        .await;
    assert!(withdrawn.is_ok(), "{withdrawn:?}");
    let late = election
        .enter(el::EnterRequest {
            header: header(7),
            input: None,
        })
        .await
        .expect_err("an overtaken request is refused");
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert!(late.message().contains("overtaken"), "{late:?}");
    let term = get_term(&cluster, leader, "ordered").await.unwrap();
    assert!(term.members.is_empty(), "{term:?}");
    // On another primitive the same id is a request of its own.
    let other = baton_client::request_header("w", baton_client::Kind::Election, "elsewhere", 7);
    election
        .enter(el::EnterRequest {
            header: other,
            input: None,
        })
        .await
        .expect("id 7 on another primitive");
}

/// A Restore is bounded before it is proposed: a list of members over the
/// per-primitive limit, or names that JSON escapes six bytes for one (control
/// characters), would otherwise make a log entry of several MB that a
/// follower cannot take within one AppendEntries' time, and every write
/// after it would wait behind it for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_too_large_for_the_log_is_refused_and_the_cluster_goes_on() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let node = cluster.followers_of(leader)[0];
    let escaped = |i: usize| format!("{i:08}{}", "\u{1}".repeat(240));
    for (count, what) in [
        (4_000, "over the member limit"),
        (1_024, "at the member limit"),
    ] {
        let members: Vec<String> = (0..count).map(escaped).collect();
        let status = cluster
            .latch(node)
            .restore(la::RestoreRequest {
                header: latch_header("op", "huge"),
                snapshot: Some(la::Snapshot {
                    latch: Some(la::Latch {
                        meta: None,
                        leader: members[0].clone(),
                        participants: members,
                    }),
                }),
            })
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::ResourceExhausted, "{what}: {status:?}");
    }
    // Nothing of it reached the log: writes go on, on every node.
    tokio::time::timeout(Duration::from_secs(5), join(&cluster, node, "a", "after"))
        .await
        .expect("a write after the refused restores is answered in time")
        .expect("the write succeeds");
    cluster.wait_converged().await;
    let after = get_latch(&cluster, leader, "huge").await.unwrap();
    assert!(after.members.is_empty(), "{after:?}");
}

/// The peer port's Propose takes only what a follower forwards (client
/// commands and keep-alives), checked as the follower checks them: a
/// leader's own duties sent there, such as adopting rules no node has, or a
/// bad client command, are refused with nothing applied.
#[tokio::test(flavor = "multi_thread")]
async fn the_peer_port_proposes_only_what_a_follower_forwards() {
    use baton::network::{decode, encode};
    use baton::proto::baton::v1::raft_service_client::RaftServiceClient;
    use baton::replication::ProposeReply;
    use baton_state::Command;

    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    eventually(Duration::from_secs(10), "rules adopted", || async {
        (cluster.status(leader).await?.rules == baton_state::RULES).then_some(())
    })
    .await;
    let before = cluster.wait_converged().await;
    let mut peer = RaftServiceClient::connect(format!("http://{}", cluster.node(leader).peer_addr))
        .await
        .expect("the leader's peer port");
    let duties = [
        Command::AdoptRules { level: u32::MAX },
        Command::LeaderGrace,
        Command::ExpireDue,
        Command::OpenSession {
            client_id: String::new(),
            timeout_ms: 0,
        },
        Command::KeepAlive {
            client_ids: vec!["x".repeat(300)],
        },
    ];
    for command in duties {
        let reply = peer
            .propose(encode(&command).expect("encode"))
            .await
            .expect("an answer")
            .into_inner();
        let reply: ProposeReply = decode(&reply).expect("decode");
        assert!(
            matches!(reply, Err(_) | Ok(Err(_))),
            "{command:?} was applied: {reply:?}"
        );
    }
    let status = cluster.status(leader).await.expect("status");
    assert_eq!(status.rules, baton_state::RULES, "{status:?}");
    assert_eq!(
        cluster.wait_converged().await,
        before,
        "something was applied"
    );
}
