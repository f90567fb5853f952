//! Snapshot persistence rules that openraft leaves to the storage.

use std::io::Cursor;

use baton_state::{ClientRequest, Command, Limits, Operation};
use baton_store::{LogCommand, TypeConfig};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, SnapshotMeta, StoredMembership};

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
    let newer = leader
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
    sm.install_snapshot(&meta, Box::new(Cursor::new(newer.snapshot.into_inner())))
        .await
        .unwrap();

    // Now the stale build finishes.
    old_builder.build_snapshot().await.unwrap();
    let stored = sm.stored_snapshot().unwrap().expect("a snapshot is stored");
    assert_eq!(stored.meta.last_log_id, Some(log_id(10)));
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id, Some(log_id(10)));
}
