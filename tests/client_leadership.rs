//! Issue 9: the client library's leaders stop before anyone else can start.
//! Real `baton serve` nodes; campaigners are real `baton election campaign`
//! processes (paused with SIGSTOP, killed with SIGKILL, stopped with SIGINT)
//! or in-test `baton_client` clients.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use baton_client::{Client, Ended};
use common::*;

/// Session timeout of the campaigners: short, so hand-overs are quick, and
/// longer than the ~3 s in which a node notices a stopped client's
/// connection (its Events stream would keep the session alive till then).
const SESSION_TIMEOUT: Duration = Duration::from_secs(3);

/// One line a campaigner printed, or its exit.
#[derive(Debug)]
enum Said {
    Leading { epoch: u64 },
    Exited { success: bool },
}

/// A `baton election campaign` process and what it says, timestamped.
struct Campaigner {
    name: String,
    child: Child,
    said: mpsc::Receiver<(Instant, Said)>,
}

impl Campaigner {
    fn start(cluster: &Cluster, election: &str, name: &str) -> Campaigner {
        let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["--endpoints", &cluster.endpoints().join(",")])
            .args(["--client-id", name])
            .args(["election", "campaign", election])
            .args([
                "--session-timeout-ms",
                &SESSION_TIMEOUT.as_millis().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn baton election campaign");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, said) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(epoch) = line.strip_prefix("leading with epoch ") {
                    let epoch = epoch.trim().parse().expect("epoch");
                    let _ = tx.send((Instant::now(), Said::Leading { epoch }));
                }
            }
        });
        Campaigner {
            name: name.to_owned(),
            child,
            said,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on a child we own.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// What it said so far, plus its exit if it has exited.
    fn drain(&mut self) -> Vec<(Instant, Said)> {
        let mut said: Vec<_> = self.said.try_iter().collect();
        if let Ok(Some(status)) = self.child.try_wait() {
            said.push((
                Instant::now(),
                Said::Exited {
                    success: status.success(),
                },
            ));
        }
        said
    }
}

impl Drop for Campaigner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until one of `campaigners` says it leads; returns its index, the
/// epoch and when it said so. Panics if any says anything else.
fn next_leader(campaigners: &mut [Campaigner], limit: Duration) -> (usize, u64, Instant) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        for (index, campaigner) in campaigners.iter_mut().enumerate() {
            if let Ok((at, said)) = campaigner.said.try_recv() {
                match said {
                    Said::Leading { epoch } => return (index, epoch, at),
                    other => panic!("{} said {other:?}", campaigner.name),
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no campaigner led within {limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_never_leads_again_and_exits_as_lost() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    cluster.wait_for_leader().await;
    let mut campaigners: Vec<_> = (1..=3)
        .map(|i| Campaigner::start(&cluster, "paused", &format!("job-{i}")))
        .collect();
    let (first, first_epoch, _) = next_leader(&mut campaigners, Duration::from_secs(20));

    campaigners[first].signal(libc::SIGSTOP);
    let paused_at = Instant::now();
    std::thread::sleep(2 * SESSION_TIMEOUT);
    campaigners[first].signal(libc::SIGCONT);
    let (second, second_epoch, led_at) = next_leader(&mut campaigners, Duration::from_secs(15));
    assert_ne!(second, first, "only another campaigner may lead next");
    assert!(
        second_epoch > first_epoch,
        "{second_epoch} after {first_epoch}"
    );
    eprintln!(
        "paused leader replaced {} ms after SIGSTOP (session timeout {} ms, pause {} ms)",
        (led_at - paused_at).as_millis(),
        SESSION_TIMEOUT.as_millis(),
        (2 * SESSION_TIMEOUT).as_millis()
    );

    let woke_at = paused_at + 2 * SESSION_TIMEOUT;
    let mut exited = None;
    while exited.is_none() && woke_at.elapsed() < Duration::from_secs(10) {
        for (_, said) in campaigners[first].drain() {
            match said {
                Said::Leading { epoch } => panic!("the paused process led again at epoch {epoch}"),
                Said::Exited { success } => exited = Some(success),
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(exited, Some(false), "the woken leader must exit as lost");
    for (index, campaigner) in campaigners.iter_mut().enumerate() {
        if index != first {
            for (_, said) in campaigner.drain() {
                assert!(
                    !matches!(said, Said::Exited { .. }),
                    "{} exited",
                    campaigner.name
                );
            }
        }
    }
}

/// A campaigner whose leadership is taken from it exits non-zero, and is
/// nobody's candidate any more by then: it closes its session on the way
/// out. Before, it stayed in line until its session expired, so that a
/// leader leaving meanwhile handed the election to a process that was gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaigner_that_lost_its_leadership_is_no_candidate_once_it_exits() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    cluster.wait_for_leader().await;
    let mut campaigners = vec![Campaigner::start(&cluster, "taken", "job-a")];
    next_leader(&mut campaigners, Duration::from_secs(20));
    let b = client_on(&cluster, 1, "b");
    b.election("taken").enter().await.expect("b enters");
    b.election("taken").anoint("b").await.expect("b takes over");
    let deadline = Instant::now() + Duration::from_secs(10);
    let success = loop {
        if let Some((_, Said::Exited { success })) = campaigners[0].drain().pop() {
            break success;
        }
        assert!(Instant::now() < deadline, "job-a did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!success, "losing leadership is a failure");
    let term = b.election("taken").term().await.expect("term");
    assert_eq!(term.members, ["b"], "{term:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_passes_on_when_the_leader_is_killed_or_resigns() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    cluster.wait_for_leader().await;
    let mut campaigners: Vec<_> = (1..=3)
        .map(|i| Campaigner::start(&cluster, "handover", &format!("job-{i}")))
        .collect();
    let (first, epoch, _) = next_leader(&mut campaigners, Duration::from_secs(20));

    let killed_at = Instant::now();
    campaigners[first].signal(libc::SIGKILL);
    let (second, after_kill, led_at) = next_leader(&mut campaigners, Duration::from_secs(10));
    let kill_handover = led_at - killed_at;
    assert!(second != first && after_kill > epoch);

    let resigned_at = Instant::now();
    campaigners[second].signal(libc::SIGINT);
    let (third, after_resign, led_at) = next_leader(&mut campaigners, Duration::from_secs(10));
    let resign_handover = led_at - resigned_at;
    assert!(third != first && third != second && after_resign > after_kill);
    let exit_deadline = Instant::now() + Duration::from_secs(10);
    let resigned = loop {
        if let Some((_, Said::Exited { success })) = campaigners[second].drain().pop() {
            break success;
        }
        assert!(
            Instant::now() < exit_deadline,
            "the resigning campaigner did not exit within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(resigned, "a resigning campaigner exits successfully");
    eprintln!(
        "hand-over: leader killed -> next leads in {} ms (session timeout {} ms); \
         leader resigned -> next leads in {} ms",
        kill_handover.as_millis(),
        SESSION_TIMEOUT.as_millis(),
        resign_handover.as_millis()
    );
    // Behaviour, with room for a loaded machine: the kill is noticed by the
    // session's expiry, the resignation at once (figures printed above).
    assert!(kill_handover < SESSION_TIMEOUT + Duration::from_secs(3));
    assert!(resign_handover < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_keeps_its_leadership_when_its_node_dies() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(&[]).await;
    let raft_leader = cluster.wait_for_leader().await;
    // The client talks to a follower first (it sticks to the endpoint that
    // answers), and that follower is then killed.
    let doomed = cluster.followers_of(raft_leader)[0];
    let mut endpoints = vec![cluster.nodes[doomed as usize - 1].client_addr.clone()];
    endpoints.extend(
        cluster
            .nodes
            .iter()
            .filter(|n| n.id != doomed)
            .map(|n| n.client_addr.clone()),
    );
    let client = Client::builder(&endpoints)
        .client_id("survivor")
        .session_timeout(Duration::from_secs(3))
        .connect()
        .await
        .expect("connect");
    let election = client.election("failover");
    let leadership = election.campaign().await.expect("campaign");
    let epoch = leadership.epoch();

    cluster.kill(doomed);
    // Longer than the session: only keep-alives through the other nodes can
    // have kept it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        leadership.is_leader(),
        "lost: {:?}",
        tokio::time::timeout(Duration::ZERO, leadership.lost()).await
    );
    let term = election.term().await.expect("term through another node");
    assert_eq!(term.epoch, epoch);
    assert_eq!(term.leader.as_deref(), Some("survivor"));
    assert_eq!(term.members, vec!["survivor".to_owned()], "entered once");

    // And it still hears of changes: another client is anointed.
    let other = Client::builder(&endpoints[1..])
        .client_id("other")
        .connect()
        .await
        .expect("connect");
    other.election("failover").enter().await.expect("enter");
    other
        .election("failover")
        .anoint("other")
        .await
        .expect("anoint");
    let why = tokio::time::timeout(Duration::from_secs(5), leadership.lost())
        .await
        .expect("told of the new leader");
    assert_eq!(why, Ended::Replaced);
    assert!(!leadership.is_leader());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_side_lease_ends_leadership_before_the_cluster_can_hand_it_on() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    cluster.wait_for_leader().await;
    let endpoints = cluster.endpoints();
    let client = Client::builder(&endpoints)
        .client_id("lease-holder")
        .session_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect");
    let leadership = client.election("lease").campaign().await.expect("campaign");
    let watcher = Client::builder(&endpoints)
        .client_id("watcher")
        .connect()
        .await
        .expect("connect");
    watcher.election("lease").enter().await.expect("enter");

    // Every node stops answering this client's keep-alives: pause them all
    // (SIGSTOP), so the cluster cannot expire the session either, then
    // resume and see who the cluster names.
    for node in cluster.running() {
        cluster.pause(node);
    }
    let paused_at = Instant::now();
    let why = tokio::time::timeout(Duration::from_secs(5), leadership.lost())
        .await
        .expect("the lease runs out while nobody answers");
    let lost_after = paused_at.elapsed();
    assert_eq!(why, Ended::LeaseExpired);
    assert!(!leadership.is_leader());
    for node in cluster.running() {
        cluster.resume(node);
    }
    eprintln!(
        "client-side lease ended leadership {} ms into the outage",
        lost_after.as_millis()
    );
    assert!(
        lost_after < Duration::from_secs(2),
        "before the session timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_leadership_is_released_before_the_next_campaign_joins() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    cluster.wait_for_leader().await;
    let endpoints = cluster.endpoints();
    let connect = |id: &'static str| {
        Client::builder(&endpoints)
            .client_id(id)
            .session_timeout(Duration::from_secs(5))
            .connect()
    };
    let (a, b) = (
        connect("a").await.expect("a"),
        connect("b").await.expect("b"),
    );
    for round in 0..5 {
        let name = format!("redo-{round}");
        let leadership = a.election(&name).campaign().await.expect("a leads");
        b.election(&name).enter().await.expect("b enters");
        // Dropping lets go (a withdraw in the background); campaigning
        // again at once must not win a leadership that withdraw then ends.
        drop(leadership);
        let again = a
            .election(&name)
            .campaign_for(Some(Duration::from_millis(500)))
            .await
            .expect("campaign");
        let term = b.election(&name).term().await.expect("term");
        assert_eq!(term.leader.as_deref(), Some("b"), "round {round}: {term:?}");
        if let Some(again) = again {
            panic!(
                "round {round}: a was told it leads at epoch {} after letting go; b leads at {}",
                again.epoch(),
                term.epoch
            );
        }
    }
}

/// A dropped leadership is let go even when the cluster cannot take the
/// release at that moment: the library retries it until it lands (or the
/// session ends), or the client would stay first in line for as long as its
/// process keeps the session alive, and nobody else would ever lead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leadership_dropped_during_an_outage_is_released_once_the_cluster_is_back() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(&[]).await;
    cluster.wait_for_leader().await;
    let endpoints = cluster.endpoints();
    let connect = |id: &'static str| {
        Client::builder(&endpoints)
            .client_id(id)
            .session_timeout(Duration::from_secs(10))
            .call_timeout(Duration::from_secs(1))
            .connect()
    };
    let (a, b) = (
        connect("a").await.expect("a"),
        connect("b").await.expect("b"),
    );
    let leadership = a.election("outage").campaign().await.expect("a leads");
    b.election("outage").enter().await.expect("b enters");
    cluster.kill(2);
    cluster.kill(3);
    drop(leadership);
    // The release's first try runs out of time meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart(2);
    cluster.restart(3);
    cluster.wait_for_leader().await;
    eventually(Duration::from_secs(15), "b leads", || async {
        let term = b.election("outage").term().await.ok()?;
        (term.leader.as_deref() == Some("b")).then_some(())
    })
    .await;
    assert!(a.is_alive(), "a's session lived through the outage");
}

/// A leadership dropped inside a runtime that then shuts down (a sync
/// wrapper's own runtime, say) cancels its release; the client's later
/// writes must not wait for that release for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_cancelled_with_its_runtime_holds_up_no_later_write() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let (a, _b) = clients_a_and_b(&cluster).await;
    let leadership = a.election("cancelled").campaign().await.expect("a leads");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async move { drop(leadership) });
    })
    .join()
    .expect("the other runtime's thread");
    tokio::time::timeout(Duration::from_secs(10), a.election("other").campaign())
        .await
        .expect("a later campaign is not held up")
        .expect("a leads another election");
    tokio::time::timeout(Duration::from_secs(10), a.latch("other").join())
        .await
        .expect("a later write is not held up")
        .expect("join");
}

/// A write made straight after dropping a leadership (not through
/// `campaign`) comes after the release the drop sends in the background:
/// that release must neither undo the write nor make it be refused as
/// overtaken by a request the library numbered earlier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_straight_after_dropping_a_leadership_is_not_undone_by_its_release() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let (a, b) = clients_a_and_b(&cluster).await;
    for round in 0..8 {
        let name = format!("again-{round}");
        let leadership = a.election(&name).campaign().await.expect("a leads");
        b.election(&name).enter().await.expect("b enters");
        drop(leadership);
        a.election(&name).enter().await.expect("a enters again");

        let held = a
            .latch(&name)
            .acquire(Some(Duration::from_secs(5)))
            .await
            .expect("acquire")
            .expect("a leads the latch");
        b.latch(&name).join().await.expect("b joins");
        drop(held);
        a.latch(&name).join().await.expect("a joins again");

        // Time for a release that was sent late to land.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let term = b.election(&name).term().await.expect("term");
        assert_eq!(term.leader.as_deref(), Some("b"), "round {round}: {term:?}");
        assert!(
            term.members.iter().any(|m| m == "a"),
            "round {round}: a's second candidacy was undone: {term:?}"
        );
        let latch = b.latch(&name).get().await.expect("latch");
        assert_eq!(
            latch.leader.as_deref(),
            Some("b"),
            "round {round}: {latch:?}"
        );
        assert!(
            latch.members.iter().any(|m| m == "a"),
            "round {round}: a's second join was undone: {latch:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latch_is_acquired_released_observed_and_deleted_through_the_library() {
    use futures::StreamExt;
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let (a, b) = clients_a_and_b(&cluster).await;
    let mut views = b.latch("jobs").observe();

    let first = a
        .latch("jobs")
        .acquire(Some(Duration::from_secs(5)))
        .await
        .expect("acquire")
        .expect("a leads an empty latch");
    let waiting = b
        .latch("jobs")
        .acquire(Some(Duration::from_millis(300)))
        .await
        .expect("acquire");
    assert!(waiting.is_none(), "b waits behind a");
    let epoch = first.epoch();
    first.resign().await.expect("resign");
    assert!(a.is_alive(), "leaving a latch keeps the session");
    let second = b
        .latch("jobs")
        .acquire(Some(Duration::from_secs(5)))
        .await
        .expect("acquire")
        .expect("b leads once a left");
    assert_eq!(second.epoch(), epoch + 1);

    // The observer saw a lead, then b, never going back.
    let mut seen = Vec::new();
    while seen
        .last()
        .map(|v: &baton_client::View| v.leader.as_deref())
        != Some(Some("b"))
    {
        let view = tokio::time::timeout(Duration::from_secs(5), views.next())
            .await
            .expect("a view")
            .expect("open")
            .expect("ok");
        seen.push(view);
    }
    assert!(
        seen.windows(2).all(|w| w[0].epoch <= w[1].epoch),
        "{seen:?}"
    );

    drop(second);
    b.latch("jobs").delete().await.expect("delete");
    let again = b.latch("jobs").delete().await.expect_err("second delete");
    assert_eq!(again.code(), tonic::Code::NotFound);
    assert!(b.is_alive(), "a missing primitive is not a lost session");
    // Not even one whose name says "session": the answer's metadata, not
    // its message, tells the two NOT_FOUNDs apart.
    let missing = b
        .latch("user-sessions")
        .delete()
        .await
        .expect_err("delete of a missing primitive");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert!(
        b.is_alive(),
        "a missing \"user-sessions\" is not a lost session"
    );
    let fresh = b.latch("jobs").get().await.expect("get");
    assert_eq!((fresh.epoch, fresh.members.len()), (0, 0));

    // A session that really is gone (closed behind the library's back) is
    // noticed at its next keep-alive.
    let leader = cluster.wait_for_leader().await;
    cluster
        .sessions(leader)
        .close_session(baton::proto::baton::v1::CloseSessionRequest {
            client_id: "b".into(),
            request_id: 0,
        })
        .await
        .expect("close b's session");
    eventually(
        Duration::from_secs(10),
        "b notices its session is gone",
        || async { (!b.is_alive()).then_some(()) },
    )
    .await;
}

/// The same client id opened again with a shorter timeout (say, from the
/// CLI): the cluster renews the session by the shorter timeout from then
/// on, so the library's lease and keep-alive rate must follow the timeout
/// the cluster reports, not the one it asked for.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_reopened_with_a_shorter_timeout_is_kept_alive_by_it() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let leader = cluster.wait_for_leader().await;
    let client = Client::builder(&cluster.endpoints())
        .client_id("dup")
        .session_timeout(Duration::from_secs(7))
        .connect()
        .await
        .expect("connect");
    cluster
        .sessions(leader)
        .open_session(baton::proto::baton::v1::OpenSessionRequest {
            client_id: "dup".into(),
            timeout_ms: 1_000,
        })
        .await
        .expect("open again with 1 s");
    let reported = client.keep_alive().await.expect("keep-alive");
    assert_eq!(reported, Duration::from_secs(1));
    assert_eq!(client.session_timeout(), Duration::from_secs(1));
    // The cluster keeps the expiry the 7 s timeout gave (never shortened);
    // past it, keep-alives every 7 s / 6 would let a 1 s session expire.
    tokio::time::sleep(Duration::from_millis(9_500)).await;
    assert!(
        client.is_alive(),
        "the session expired: {:?}",
        client.ended()
    );
    keep_alive(&cluster, leader, "dup")
        .await
        .expect("the cluster still knows the session");
}

/// Delete starts a primitive's epochs again (DESIGN §6): a leader of the
/// deleted primitive must stop leading, or it would go on believing it
/// leads while the primitive, used again, names someone else at epoch 1.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_of_a_deleted_primitive_stops_leading() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let (a, b) = clients_a_and_b(&cluster).await;
    let leadership = a
        .latch("doomed")
        .acquire(Some(Duration::from_secs(5)))
        .await
        .expect("acquire")
        .expect("a leads an empty latch");
    // b waits behind a; the Delete takes its place in line too.
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move {
            b.latch("doomed")
                .acquire(Some(Duration::from_secs(30)))
                .await
        })
    };
    eventually(Duration::from_secs(5), "b is in line", || async {
        let latch = b.latch("doomed").get().await.ok()?;
        (latch.members.len() == 2).then_some(())
    })
    .await;
    b.latch("doomed").delete().await.expect("delete");
    let why = tokio::time::timeout(Duration::from_secs(10), leadership.lost())
        .await
        .expect("the leadership ends once the primitive is deleted");
    assert_eq!(why, Ended::Deleted);
    assert!(!leadership.is_leader());
    let waited = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("a waiter whose place was deleted is told so, not left waiting")
        .expect("join");
    assert_eq!(
        waited.map(|led| led.is_some()).unwrap_err().code(),
        tonic::Code::Aborted
    );
    // Used again, the latch starts from epoch 1 with its new leader.
    let next = b
        .latch("doomed")
        .acquire(Some(Duration::from_secs(5)))
        .await
        .expect("acquire")
        .expect("b leads the latch used again");
    assert_eq!(next.epoch(), 1);
}

/// A leadership's watch may open only after the primitive was deleted (its
/// Events stream is opened in the background while the join runs): then
/// its first state is the deleted primitive's, at a lower epoch than the
/// leadership's, and it must end the leadership, not pass for news from
/// before it. Otherwise a stops leading only when the primitive, used
/// again, passes its old epoch, and until then two clients lead.
#[tokio::test(flavor = "multi_thread")]
async fn a_leadership_whose_watch_opens_after_a_delete_ends() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let (a, b) = clients_a_and_b(&cluster).await;
    // Raise the election's epoch first, so that the epochs of its next
    // life stay below a's for a while.
    for _ in 0..3 {
        b.election("reused").enter().await.expect("b enters");
        b.election("reused").withdraw().await.expect("b withdraws");
    }
    cluster.delay_events(Duration::from_millis(1_500));
    let leadership = a
        .election("reused")
        .campaign_for(Some(Duration::from_secs(5)))
        .await
        .expect("campaign")
        .expect("a leads an election nobody else stands in");
    b.election("reused").delete().await.expect("delete");
    cluster.delay_events(Duration::ZERO);
    let next = b
        .election("reused")
        .campaign_for(Some(Duration::from_secs(5)))
        .await
        .expect("campaign")
        .expect("b leads the election used again");
    assert!(next.epoch() < leadership.epoch(), "the new life starts low");
    let why = tokio::time::timeout(Duration::from_secs(10), leadership.lost())
        .await
        .expect("the leadership ends once its watch sees the deleted election");
    assert_eq!(why, Ended::Deleted);
    assert!(!leadership.is_leader());
    assert!(next.is_leader());
}

/// A candidate waiting for its turn that is evicted has no turn coming: its
/// campaign ends with ABORTED instead of waiting for ever.
#[tokio::test(flavor = "multi_thread")]
async fn an_evicted_candidate_stops_waiting_to_lead() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let (a, b) = clients_a_and_b(&cluster).await;
    let leadership = a
        .election("crowded")
        .campaign_for(Some(Duration::from_secs(5)))
        .await
        .expect("campaign")
        .expect("a leads an election nobody else stands in");
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.election("crowded").campaign_for(None).await })
    };
    eventually(Duration::from_secs(5), "b stands", || async {
        let term = a.election("crowded").term().await.ok()?;
        (term.members.len() == 2).then_some(())
    })
    .await;
    a.election("crowded").evict("b").await.expect("evict b");
    let waited = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("an evicted candidate is told so, not left waiting")
        .expect("join");
    assert_eq!(
        waited.map(|led| led.is_some()).unwrap_err().code(),
        tonic::Code::Aborted
    );
    assert!(leadership.is_leader());
}

/// A node that stops answering without closing its connections (frozen by
/// SIGSTOP, a VM pause, a black-holed link) must cost a client neither its
/// leadership nor its news. Keep-alives, first sent to that node, must move
/// on to the others before the lease runs out; and the leadership's feed,
/// open on that node, must notice the silence and reopen elsewhere, so that
/// an eviction made meanwhile ends the leadership.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_node_costs_a_leader_neither_its_lease_nor_its_news() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let raft_leader = cluster.wait_for_leader().await;
    let frozen = cluster.followers_of(raft_leader)[0];
    // The frozen node first: the one every call and the feed start with.
    let first = cluster.node(frozen).client_addr.clone();
    let mut endpoints = cluster.endpoints();
    endpoints.retain(|e| *e != first);
    endpoints.insert(0, first);
    let a = Client::builder(&endpoints)
        .client_id("a")
        .session_timeout(Duration::from_secs(3))
        .connect()
        .await
        .expect("a connects");
    let b = Client::builder(&[cluster.node(raft_leader).client_addr.as_str()])
        .client_id("b")
        .connect()
        .await
        .expect("b connects");
    let leadership = a
        .election("frozen")
        .campaign_for(Some(Duration::from_secs(5)))
        .await
        .expect("campaign")
        .expect("a leads an election nobody else stands in");
    cluster.pause(frozen);
    // Twice the session timeout: the lease would have run out by now had
    // the keep-alives stayed with the frozen node.
    let kept = tokio::time::timeout(Duration::from_secs(6), leadership.lost()).await;
    if let Ok(why) = kept {
        cluster.resume(frozen);
        panic!("a lost its leadership while one node was frozen: {why}");
    }
    b.election("frozen").evict("a").await.expect("b evicts a");
    let told = tokio::time::timeout(Duration::from_secs(8), leadership.lost()).await;
    cluster.resume(frozen);
    let why =
        told.expect("the eviction reaches a's leadership though its feed was on the frozen node");
    assert_eq!(why, Ended::Replaced);
    assert!(!leadership.is_leader());
}

/// A client that closes its session must not leave an observer's Events
/// stream open: the stream would keep the session alive on the cluster
/// (a node renews the sessions of its streams) and never say it ended.
#[tokio::test(flavor = "multi_thread")]
async fn closing_a_client_ends_its_observers_and_their_streams() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let (a, _b) = clients_a_and_b(&cluster).await;
    let mut views = entered_and_observed(&a, "observed").await;
    a.close().await.expect("close");
    let end = end_of(&mut views, Duration::from_secs(5))
        .await
        .expect("the observer ends once its client closed the session");
    assert!(matches!(end, Some(Err(_))), "{end:?}");
    no_stream_left_open(&cluster).await;
}

/// An observer nobody reads fills its buffer; closing the client must end
/// its Events stream all the same, or the node would keep the closed
/// client's session alive for it (had the close not reached the cluster)
/// or hold the stream until its lease ran out.
#[tokio::test(flavor = "multi_thread")]
async fn closing_a_client_ends_an_observer_nobody_reads() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    cluster.wait_for_leader().await;
    let a = Client::builder(&cluster.endpoints())
        .client_id("a")
        .session_timeout(Duration::from_secs(60))
        .connect()
        .await
        .expect("a");
    let b = client_on(&cluster, 1, "b");
    let mut views = entered_and_observed(&a, "unread").await;
    for _ in 0..25 {
        b.election("unread").enter().await.expect("b enters");
        b.election("unread").withdraw().await.expect("b withdraws");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.close().await.expect("close");
    no_stream_left_open(&cluster).await;
    let end = end_of(&mut views, Duration::from_secs(5))
        .await
        .expect("the observer ends");
    assert!(matches!(end, Some(Err(_))), "{end:?}");
}

/// A client cut off for longer than its session timeout has lost its
/// session: the library says so (`session_ended`, an error on `observe()`)
/// and never opens the session again behind the caller's back. Before, the
/// feed reopened Events as soon as the node answered again, the node opened
/// a new, empty session for the client id, and the next keep-alive
/// succeeded: the client carried on as if nothing had happened.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_that_expired_while_cut_off_is_reported_not_reopened() {
    let _serial = serial().await;
    let cluster = Cluster::start(&[]).await;
    let raft_leader = cluster.wait_for_leader().await;
    let only = cluster.followers_of(raft_leader)[0];
    let a = Client::builder(&[cluster.node(only).client_addr.as_str()])
        .client_id("a")
        .session_timeout(Duration::from_secs(1))
        .connect()
        .await
        .expect("a connects");
    let mut views = entered_and_observed(&a, "cut-off").await;
    // The only node a knows is frozen; the other two expire a's session.
    cluster.pause(only);
    eventually(Duration::from_secs(10), "a's session expires", || async {
        let term = get_term(&cluster, raft_leader, "cut-off").await.ok()?;
        term.members.is_empty().then_some(())
    })
    .await;
    cluster.resume(only);
    let ended = tokio::time::timeout(Duration::from_secs(10), a.session_ended()).await;
    let end = end_of(&mut views, Duration::from_secs(10)).await;
    let reopened = cluster
        .status(raft_leader)
        .await
        .map(|status| status.sessions);
    assert!(
        matches!(ended, Ok(Ended::SessionLost(_))),
        "the library did not report the lost session: {ended:?} (sessions on the cluster: {reopened:?})"
    );
    assert!(
        matches!(end, Ok(Some(Err(_)))),
        "observe() went on: {end:?}"
    );
    assert!(!a.is_alive());
}

/// `client`'s feed of election `name`, which it has entered; its first view
/// taken.
async fn entered_and_observed(
    client: &Client,
    name: &str,
) -> std::pin::Pin<Box<impl futures::Stream<Item = baton_client::Result<baton_client::View>>>> {
    let mut views = Box::pin(client.election(name).observe());
    client.election(name).enter().await.expect("enter");
    let first = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut views))
        .await
        .expect("a first view");
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    views
}

/// How `views` ends, past the views it still delivers, if it ends within
/// `limit`.
async fn end_of(
    views: &mut (impl futures::Stream<Item = baton_client::Result<baton_client::View>> + Unpin),
    limit: Duration,
) -> Result<Option<baton_client::Result<baton_client::View>>, tokio::time::error::Elapsed> {
    tokio::time::timeout(limit, async {
        loop {
            match futures::StreamExt::next(views).await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
}

/// Waits until no node holds an Events stream open.
async fn no_stream_left_open(cluster: &Cluster) {
    eventually(Duration::from_secs(5), "no stream left open", || async {
        for id in [1, 2, 3] {
            if cluster.status(id).await?.open_streams != 0 {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// Library clients "a" and "b", each with its own session, on all nodes.
async fn clients_a_and_b(cluster: &Cluster) -> (Client, Client) {
    cluster.wait_for_leader().await;
    let endpoints = cluster.endpoints();
    let connect = |id: &'static str| Client::builder(&endpoints).client_id(id).connect();
    (
        connect("a").await.expect("a"),
        connect("b").await.expect("b"),
    )
}
