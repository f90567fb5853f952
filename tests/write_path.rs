//! The write path on real nodes: concurrent writes share log entries (group
//! commit) and each still gets its own answer; and every acknowledged write
//! was made durable with fdatasync on every node, not only with sled's
//! sync_file_range, which survives a process crash but not a power loss.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use futures::StreamExt;

/// Runs every `(node, client)` write at once, each through its own client
/// pinned to `node`; answers in input order.
async fn all_at_once<T, Write>(
    c: &Cluster,
    writers: impl Iterator<Item = (u64, String)>,
    write: impl Fn(baton_client::Client) -> Write,
) -> Vec<T>
where
    T: Send + 'static,
    Write: std::future::Future<Output = T> + Send + 'static,
{
    let handles: Vec<_> = writers
        .map(|(node, client)| tokio::spawn(write(client_on(c, node, &client))))
        .collect();
    let mut answers = Vec::new();
    for handle in handles {
        answers.push(handle.await.expect("writer"));
    }
    answers
}

/// [`all_at_once`], where every write must succeed.
async fn all_succeed<T, E, Write>(
    c: &Cluster,
    writers: impl Iterator<Item = (u64, String)>,
    write: impl Fn(baton_client::Client) -> Write,
) where
    T: Send + 'static,
    E: std::fmt::Debug + Send + 'static,
    Write: std::future::Future<Output = Result<T, E>> + Send + 'static,
{
    for (i, answer) in all_at_once(c, writers, write).await.into_iter().enumerate() {
        if let Err(error) = answer {
            panic!("write {i}: {error:?}");
        }
    }
}

/// Opens every writer's session, all at once.
async fn open_sessions(c: &Cluster, writers: impl Iterator<Item = (u64, String)>) {
    all_succeed(
        c,
        writers,
        |client| async move { client.open_session().await },
    )
    .await;
}

#[tokio::test]
async fn concurrent_writes_share_log_entries_and_each_gets_its_own_answer() {
    let _serial = serial().await;
    let c = Cluster::start(&[]).await;
    let leader = c.wait_for_leader().await;
    let follower = c.followers_of(leader)[0];
    const WRITES: usize = 200;
    // Half through the leader, half forwarded by a follower.
    let writers = || {
        (0..WRITES).map(move |i| {
            let node = if i % 2 == 0 { leader } else { follower };
            (node, format!("client-{i}"))
        })
    };
    open_sessions(&c, writers()).await;

    let before = c.status(leader).await.expect("status").commit_index;
    let answers = all_at_once(&c, writers(), |client| async move {
        client.latch("shared").join().await
    })
    .await;
    let after = c.status(leader).await.expect("status").commit_index;

    // Every join is answered with a state that has its joiner. (Which
    // state exactly: the one its own command left, unless the library had
    // to retry and read; the store's tests pin the per-command answers.)
    for (i, answer) in answers.into_iter().enumerate() {
        let view = answer.unwrap_or_else(|e| panic!("join {i}: {e}"));
        assert!(
            view.members.contains(&format!("client-{i}")),
            "join {i} was answered with a state without its client: {view:?}"
        );
    }

    let entries = after - before;
    eprintln!("{WRITES} concurrent writes took {entries} log entries");
    assert!(
        entries < WRITES as u64,
        "{WRITES} concurrent writes took {entries} entries: no two shared one"
    );
    let view = get_latch(&c, follower, "shared").await.expect("read");
    assert_eq!(view.members.len(), WRITES);
}

#[tokio::test]
async fn a_watcher_sees_every_change_even_when_several_share_an_entry() {
    let _serial = serial().await;
    let c = Cluster::start(&[]).await;
    let leader = c.wait_for_leader().await;
    let follower = c.followers_of(leader)[0];
    const JOINERS: usize = 60;
    let writers = || (0..JOINERS).map(|i| (leader, format!("joiner-{i}")));
    open_sessions(&c, writers()).await;
    // The watcher is on a follower: it applies the same entries.
    let watcher = client_on(&c, follower, "watcher");
    let mut changes = Box::pin(watcher.latch("watched").observe());
    let initial = tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await
        .expect("initial state in time")
        .expect("stream open")
        .expect("initial state");
    assert!(initial.members.is_empty());

    let before = c.status(leader).await.expect("status").commit_index;
    all_succeed(&c, writers(), |client| async move {
        client.latch("watched").join().await
    })
    .await;
    let entries = c.status(leader).await.expect("status").commit_index - before;

    let mut sizes = Vec::new();
    while sizes.last() != Some(&JOINERS) {
        let view = tokio::time::timeout(Duration::from_secs(10), changes.next())
            .await
            .unwrap_or_else(|_| panic!("changes stopped after member counts {sizes:?}"))
            .expect("stream open")
            .expect("change");
        sizes.push(view.members.len());
    }
    eprintln!("{JOINERS} joins in {entries} entries");
    assert_eq!(
        sizes,
        (1..=JOINERS).collect::<Vec<_>>(),
        "the watcher must see every change, one by one ({JOINERS} joins took {entries} entries)"
    );
}

/// DESIGN §4: a watcher that falls behind may have intermediate states
/// coalesced, never the latest one dropped — and never sees a state older
/// than one it was already sent. The watcher here reads nothing while the
/// latch grows by 400 joins of ~250-byte ids (each message carries every
/// member, so the stream's buffers fill after ~190); then it reads
/// everything. Before session 7's fix, a stream that fell behind sent the
/// latest state and then the older ones its feed still held.
#[tokio::test]
async fn a_slow_watcher_skips_ahead_to_the_latest_state_and_never_back() {
    let _serial = serial().await;
    let c = Cluster::start(&[]).await;
    let leader = c.wait_for_leader().await;
    const JOINERS: usize = 400;
    let mut stream = latch_events(&c, leader, "watcher", "growing")
        .await
        .expect("stream opens");
    let count = |message: Option<_>| participants(&message.expect("a message")).len();
    let first = stream.message().await.expect("stream open");
    assert_eq!(count(first), 0);

    join_long_ids(&c, leader, "growing", JOINERS).await;
    let mut counts = Vec::new();
    while counts.last() != Some(&JOINERS) {
        let Ok(message) = tokio::time::timeout(Duration::from_secs(10), stream.message()).await
        else {
            panic!("no message after counts {counts:?}");
        };
        counts.push(count(message.expect("stream open")));
    }
    // Nothing changes after the last join: any further message is stale.
    while let Ok(message) = tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
        counts.push(count(message.expect("stream open")));
    }
    assert!(
        counts.windows(2).all(|w| w[0] < w[1]),
        "the watcher went back: {counts:?}"
    );
    assert!(
        counts.len() < JOINERS,
        "the watcher never fell behind ({} messages): the test did not test coalescing",
        counts.len()
    );
}

/// fdatasync calls `pid` makes while `work` runs, counted by strace.
async fn fdatasyncs_during(
    pids: &[u32],
    work: impl std::future::Future<Output = ()>,
) -> Vec<usize> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tracers = Vec::new();
    for pid in pids {
        let out = dir.path().join(format!("{pid}.trace"));
        let tracer = Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=fdatasync", "-o"])
            .arg(&out)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace must be installed (.ci/run installs it)");
        tracers.push((tracer, out));
    }
    // strace writes nothing until a call is made: wait until every thread
    // of every node shows a tracer (new threads are traced by -f).
    let attached = |pid: &u32| {
        let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        threads.flatten().all(|thread| {
            std::fs::read_to_string(thread.path().join("status")).is_ok_and(|status| {
                status
                    .lines()
                    .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
            })
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !pids.iter().all(attached) {
        assert!(
            std::time::Instant::now() < deadline,
            "strace did not attach to every thread within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    work.await;
    let mut counts = Vec::new();
    for (mut tracer, out) in tracers {
        // SIGINT makes strace detach and flush its output.
        unsafe { libc::kill(tracer.id() as libc::pid_t, libc::SIGINT) };
        let status = tracer.wait().expect("strace exits");
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        assert!(
            status.success() || !text.is_empty(),
            "strace could not trace the node: {status}"
        );
        counts.push(text.lines().filter(|l| l.contains("fdatasync(")).count());
    }
    counts
}

#[tokio::test]
async fn every_acknowledged_write_is_fdatasynced_on_every_node() {
    let _serial = serial().await;
    let c = Cluster::start(&[]).await;
    let leader = c.wait_for_leader().await;
    open_session(&c, leader, "durable", 10_000)
        .await
        .expect("session");
    const WRITES: usize = 10;
    let pids: Vec<u32> = [1, 2, 3].iter().map(|id| c.pid(*id)).collect();
    let counts = fdatasyncs_during(&pids, async {
        // One after the other: each write is proposed only once the one
        // before was acknowledged, so no flush can cover two of them.
        for i in 0..WRITES {
            join(&c, leader, "durable", &format!("durable-{i}"))
                .await
                .expect("join");
        }
    })
    .await;
    eprintln!("fdatasync calls per node for {WRITES} writes: {counts:?} (leader {leader})");
    // The leader flushes each entry before it counts itself; each
    // acknowledged entry also took a flush on some follower (which one may
    // vary, and a lagging follower may flush two entries at once).
    let leader_count = counts[leader as usize - 1];
    assert!(
        leader_count >= WRITES,
        "the leader made {leader_count} fdatasync calls for {WRITES} acknowledged writes"
    );
    let followers: usize = c
        .followers_of(leader)
        .iter()
        .map(|id| counts[*id as usize - 1])
        .sum();
    assert!(
        followers >= WRITES,
        "the followers made {followers} fdatasync calls for {WRITES} acknowledged writes"
    );
}

/// Snapshots follow applied commands, not entries: with group commit an
/// entry may carry up to 128 commands, and the log a restart replays must
/// stay about `--snapshot-every` commands long.
#[tokio::test]
async fn a_snapshot_is_taken_after_snapshot_every_commands_even_in_few_entries() {
    let _serial = serial().await;
    let c = Cluster::start(&["--snapshot-every", "150"]).await;
    let leader = c.wait_for_leader().await;
    open_session(&c, leader, "snap", 10_000)
        .await
        .expect("session");
    const WRITES: usize = 200;
    // Raw requests with request id 0 (not exactly-once): one client's
    // concurrent calls, each on its own latch.
    let joins: Vec<_> = (0..WRITES)
        .map(|i| {
            let mut latch = c.latch(leader);
            let request = baton::proto::atomix::primitive::leader::LatchRequest {
                header: latch_header("snap", &format!("snap-{i}")),
                input: None,
            };
            tokio::spawn(async move { latch.latch(request).await })
        })
        .collect();
    for join in joins {
        join.await.expect("writer").expect("join");
    }
    let status = c.status(leader).await.expect("status");
    assert!(
        status.commit_index < 150,
        "the test needs fewer entries than --snapshot-every: {} entries",
        status.commit_index
    );
    let snapshot = eventually(
        Duration::from_secs(10),
        "a snapshot by commands",
        || async {
            let status = c.status(leader).await?;
            (status.snapshot_index > 0).then_some(status.snapshot_index)
        },
    )
    .await;
    eprintln!(
        "{WRITES} commands in {} entries; snapshot at {snapshot}",
        status.commit_index
    );
}
