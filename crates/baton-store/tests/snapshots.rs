//! Snapshot persistence rules that openraft leaves to the storage.

use std::path::Path;

use baton_state::{ClientRequest, Command, Limits, Operation, PrimitiveKey, StateMachine};
use baton_store::{LogCommand, TypeConfig};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, SnapshotMeta, StoredMembership};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn join_entry(index: u64, client: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(LogCommand::single(
            1_000 + index,
            Command::Client(ClientRequest {
                client_id: client.into(),
                request_id: 0,
                operation: Operation::Join { latch: "l".into() },
            }),
        )),
    }
}

/// What a leader whose state machine applied `entries` sends: the metadata
/// and bytes of its snapshot.
async fn leader_snapshot(
    entries: Vec<Entry<TypeConfig>>,
) -> (SnapshotMeta<u64, openraft::BasicNode>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut leader) = baton_store::open(dir.path(), Limits::default()).unwrap();
    leader.apply(entries).await.unwrap();
    let mut built = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut data = Vec::new();
    built.snapshot.read_to_end(&mut data).await.unwrap();
    (built.meta, data)
}

/// openraft may build a snapshot from an older state while it installs a
/// newer one from the leader; the older build must not replace the newer
/// snapshot on disk (the log behind the newer one may already be purged).
#[tokio::test]
async fn an_older_snapshot_build_never_replaces_a_newer_installed_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = baton_store::open(dir.path(), Limits::default()).unwrap();
    sm.apply([join_entry(1, "a"), join_entry(2, "b")])
        .await
        .unwrap();
    let mut old_builder = sm.get_snapshot_builder().await;

    // The leader sends a snapshot at index 10 (another state machine).
    let leader_dir = tempfile::tempdir().unwrap();
    let (_l, mut leader) = baton_store::open(leader_dir.path(), Limits::default()).unwrap();
    leader
        .apply((1..=10).map(|i| join_entry(i, &format!("c{i}"))))
        .await
        .unwrap();
    let mut newer = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(newer.meta.last_log_id, Some(log_id(10)));
    let meta = SnapshotMeta {
        last_log_id: newer.meta.last_log_id,
        last_membership: StoredMembership::default(),
        snapshot_id: newer.meta.snapshot_id.clone(),
    };
    let mut data = Vec::new();
    newer.snapshot.read_to_end(&mut data).await.unwrap();
    let mut receiving = sm.begin_receiving_snapshot().await.unwrap();
    receiving.write_all(&data).await.unwrap();
    sm.install_snapshot(&meta, receiving).await.unwrap();

    // Now the stale build finishes.
    old_builder.build_snapshot().await.unwrap();
    let stored = sm.stored_snapshot().unwrap().expect("a snapshot is stored");
    assert_eq!(stored.meta.last_log_id, Some(log_id(10)));
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id, Some(log_id(10)));
}

/// The files in a data directory's snapshot directory.
fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn members(sm: &baton_store::StateMachineStore, latch: &str) -> Vec<String> {
    sm.handle()
        .read(|machine, _| machine.primitive(&PrimitiveKey::latch(latch)).members)
}

/// Each snapshot replaces the file of the one before; what a crash left
/// (a file no snapshot names) is gone after a restart, and the node starts
/// from the snapshot it stored.
#[tokio::test]
async fn only_the_stored_snapshot_keeps_a_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_log, mut sm) = baton_store::open(dir.path(), Limits::default()).unwrap();
        for i in 1..=3 {
            sm.apply([join_entry(i, &format!("c{i}"))]).await.unwrap();
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            assert_eq!(snapshot_files(dir.path()).len(), 1, "after snapshot {i}");
        }
        std::fs::write(
            dir.path().join("snapshots").join("99999999999999999999"),
            b"{",
        )
        .unwrap();
        std::fs::write(dir.path().join("snapshots").join("half-written"), b"{").unwrap();
    }
    let kept = snapshot_files(dir.path());
    assert_eq!(kept.len(), 3);

    let (_log, sm) = baton_store::open(dir.path(), Limits::default()).unwrap();
    let left = snapshot_files(dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(kept.contains(&left[0]));
    assert_eq!(members(&sm, "l"), ["c1", "c2", "c3"]);
    assert_eq!(sm.handle().applied_index(), Some(3));
}

/// A transfer openraft abandons (another one began) leaves no file behind.
#[tokio::test]
async fn an_abandoned_transfer_leaves_no_file() {
    let (meta, data) = leader_snapshot(vec![join_entry(1, "a")]).await;

    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = baton_store::open(dir.path(), Limits::default()).unwrap();
    let mut abandoned = sm.begin_receiving_snapshot().await.unwrap();
    abandoned.write_all(&data[..data.len() / 2]).await.unwrap();
    let mut receiving = sm.begin_receiving_snapshot().await.unwrap();
    receiving.write_all(&data).await.unwrap();
    drop(abandoned);
    sm.install_snapshot(&meta, receiving).await.unwrap();

    assert_eq!(snapshot_files(dir.path()).len(), 1);
    assert_eq!(members(&sm, "l"), ["a"]);
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, meta);
}

/// A snapshot the leader sends that does not decode is refused, leaves no
/// file, and the state and stored snapshot stay as they were.
#[tokio::test]
async fn a_snapshot_that_does_not_decode_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = baton_store::open(dir.path(), Limits::default()).unwrap();
    sm.apply([join_entry(1, "a")]).await.unwrap();
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let before = snapshot_files(dir.path());

    let mut receiving = sm.begin_receiving_snapshot().await.unwrap();
    receiving.write_all(b"{\"limits\":").await.unwrap();
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(5)),
        last_membership: StoredMembership::default(),
        snapshot_id: "broken".into(),
    };
    assert!(sm.install_snapshot(&meta, receiving).await.is_err());

    assert_eq!(snapshot_files(dir.path()), before);
    assert_eq!(members(&sm, "l"), ["a"]);
    let stored = sm.stored_snapshot().unwrap().unwrap();
    assert_eq!(stored.meta.last_log_id, Some(log_id(1)));
}

/// A data directory written by an earlier version kept the state as a sled
/// value beside the metadata; it opens with that state, moved into a file.
#[tokio::test]
async fn a_snapshot_stored_by_an_earlier_version_is_moved_into_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut machine = StateMachine::new(Limits::default());
    let join = |client: &str| {
        Command::Client(ClientRequest {
            client_id: client.into(),
            request_id: 0,
            operation: Operation::Join { latch: "l".into() },
        })
    };
    machine.apply(&join("x"), 1_000);
    machine.apply(&join("y"), 1_001);
    let meta = SnapshotMeta::<u64, openraft::BasicNode> {
        last_log_id: Some(log_id(7)),
        last_membership: StoredMembership::default(),
        snapshot_id: "old".into(),
    };
    {
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("snapshot").unwrap();
        tree.insert(b"meta", serde_json::to_vec(&meta).unwrap())
            .unwrap();
        tree.insert(b"data", serde_json::to_vec(&machine).unwrap())
            .unwrap();
        db.flush().unwrap();
    }

    for _ in 0..2 {
        let (_log, mut sm) = baton_store::open(dir.path(), Limits::default()).unwrap();
        assert_eq!(members(&sm, "l"), ["x", "y"]);
        assert_eq!(sm.handle().applied_index(), Some(7));
        assert_eq!(snapshot_files(dir.path()).len(), 1);
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, meta);
    }
}

/// openraft purges the log an installed snapshot covers as soon as it has
/// handed the install to the state machine, without waiting for it to be
/// on disk. A crash in between left neither those entries nor a snapshot in
/// their place, and the node could not start again (it had to re-apply
/// committed entries that were gone). While a snapshot is being received,
/// a purge past the stored one therefore waits until one covers it.
#[tokio::test]
async fn a_purge_past_the_stored_snapshot_waits_until_one_covers_it() {
    use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};

    let dir = tempfile::tempdir().unwrap();
    let (mut log, mut sm) = baton_store::open(dir.path(), Limits::default()).unwrap();
    let entries = || (1..=10).map(|i| join_entry(i, &format!("c{i}")));
    log.blocking_append(entries()).await.unwrap();
    // A snapshot from the leader is on its way (its first chunk came).
    let receiving = sm.begin_receiving_snapshot().await.unwrap();

    let mut purging = log.clone();
    let purge = tokio::spawn(async move { purging.purge(log_id(10)).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !purge.is_finished(),
        "purged entries that no stored snapshot covers"
    );
    // Were the node killed now, its log would still be whole.
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, None);
    assert_eq!(log.try_get_log_entries(1..11).await.unwrap().len(), 10);

    // The leader's snapshot, covering index 10, is installed: the purge
    // goes ahead.
    let (meta, data) = leader_snapshot(entries().collect()).await;
    let mut receiving = receiving;
    receiving.write_all(&data).await.unwrap();
    sm.install_snapshot(&meta, receiving).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), purge)
        .await
        .expect("the purge went ahead once a snapshot covered it")
        .unwrap()
        .unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(10)));
}

/// A purge writes its marker first and removes the entries after; a crash
/// in between leaves entries at or below the marker. They are not part of
/// the log: the store must not report one of them as its last entry (the
/// log would end before it began, for openraft and for the pre-vote).
#[tokio::test]
async fn entries_left_behind_by_an_interrupted_purge_are_not_the_log() {
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt};

    let dir = tempfile::tempdir().unwrap();
    let leftover = join_entry(5, "c5");
    {
        let (mut log, _sm) = baton_store::open(dir.path(), Limits::default()).unwrap();
        log.blocking_append((1..=8).map(|i| join_entry(i, &format!("c{i}"))))
            .await
            .unwrap();
        // No snapshot is on its way, so the purge goes ahead at once.
        log.purge(log_id(10)).await.unwrap();
    }
    // The crash came between the marker and the removal of entry 5.
    {
        let db = sled::open(dir.path()).unwrap();
        let entries = db.open_tree("log").unwrap();
        entries
            .insert(5u64.to_be_bytes(), serde_json::to_vec(&leftover).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let (mut log, _sm) = baton_store::open(dir.path(), Limits::default()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(10)));
    assert_eq!(state.last_log_id, Some(log_id(10)), "{state:?}");
}

/// A chunk the leader sends again (its first copy timed out) makes openraft
/// seek back in the file being received right after writing. tokio's file
/// refuses to start a seek while a write is in flight ("other file
/// operation is pending"); the seek openraft uses waits for the write
/// first, and `SnapshotFile` must keep it that way (a review suspected it
/// did not: it does, and this holds it).
#[tokio::test]
async fn a_received_chunk_sent_again_is_written_over_the_first_copy() {
    use tokio::io::AsyncSeekExt;

    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = baton_store::open(dir.path(), Limits::default()).unwrap();
    let mut file = sm.begin_receiving_snapshot().await.unwrap();
    let chunk = vec![b'x'; 3 * 1024 * 1024];
    for _ in 0..20 {
        file.write_all(&chunk).await.unwrap();
        file.seek(std::io::SeekFrom::Start(0)).await.unwrap();
    }
    file.write_all(b"end").await.unwrap();
    file.flush().await.unwrap();
    let mut written = Vec::new();
    file.seek(std::io::SeekFrom::Start(0)).await.unwrap();
    file.read_to_end(&mut written).await.unwrap();
    assert_eq!(written.len(), chunk.len());
    assert_eq!(&written[..3], b"end");
}
