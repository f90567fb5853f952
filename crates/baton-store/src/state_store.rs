//! The Raft state machine: the deterministic [`StateMachine`] in memory,
//! persisted as Raft snapshots in sled.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use baton_state::{ChangeEvent, Limits, PrimitiveKey, StateMachine};
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::durable::Durable;
use crate::feeds::{ChangeFeeds, KeyChanges};
use crate::flushed::FlushedLog;
use crate::types::{CommandOutcome, NodeId, TypeConfig};
use crate::OpenError;

/// Snapshot metadata (JSON) and the serialized state machine (raw bytes),
/// written together in one sled batch. Kept apart so that checking which
/// snapshot is stored does not decode the state, and the state is not
/// re-encoded as a JSON array of numbers.
const SNAPSHOT_META: &[u8] = b"meta";
const SNAPSHOT_DATA: &[u8] = b"data";
/// The layout before: the whole `StoredSnapshot` as JSON under one key.
const LEGACY_SNAPSHOT: &[u8] = b"current";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// A Raft snapshot as stored on disk and as shipped to a follower: openraft's
/// metadata plus the serialized [`StateMachine`] (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSnapshot {
    /// Last log id and membership covered by the snapshot.
    pub meta: SnapshotMeta<NodeId, BasicNode>,
    /// The state machine, serialized with serde_json.
    pub data: Vec<u8>,
}

impl StoredSnapshot {
    /// Decodes the state machine held in this snapshot.
    pub fn state(&self) -> Result<StateMachine, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }
}

struct AppliedState {
    machine: StateMachine,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
}

struct Shared {
    applied: RwLock<AppliedState>,
    feeds: Arc<ChangeFeeds>,
    /// Commands applied since this process started (an entry may carry
    /// many: group commit).
    commands_applied: AtomicU64,
    /// Leadership changes of primitives applied since this process started.
    leader_changes: AtomicU64,
}

/// Read access to the applied state, shared with the server.
#[derive(Clone)]
pub struct StateHandle {
    shared: Arc<Shared>,
}

impl StateHandle {
    fn read_guard(&self) -> RwLockReadGuard<'_, AppliedState> {
        // A panic cannot leave the state half-applied (apply never panics on
        // input), so a poisoned lock still guards a consistent state.
        self.shared
            .applied
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_guard(&self) -> RwLockWriteGuard<'_, AppliedState> {
        self.shared
            .applied
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the applied state machine and the index of the last
    /// applied entry (`None` before anything was applied).
    pub fn read<T>(&self, f: impl FnOnce(&StateMachine, Option<u64>) -> T) -> T {
        let guard = self.read_guard();
        f(&guard.machine, guard.last_applied.map(|id| id.index))
    }

    /// Index of the last applied entry.
    pub fn applied_index(&self) -> Option<u64> {
        self.read_guard().last_applied.map(|id| id.index)
    }

    /// Commands applied since this process started.
    pub fn commands_applied(&self) -> u64 {
        self.shared.commands_applied.load(Ordering::Relaxed)
    }

    /// Leadership changes (epoch increases) of primitives applied since
    /// this process started, snapshots installed included.
    pub fn leader_changes(&self) -> u64 {
        self.shared.leader_changes.load(Ordering::Relaxed)
    }

    /// Subscribes to `key`'s changes applied from now on.
    pub fn watch(&self, key: &PrimitiveKey) -> KeyChanges {
        self.shared.feeds.subscribe(key)
    }

    /// Hands changes applied up to `index` to their watchers and counts the
    /// leadership changes among them.
    fn publish(&self, index: u64, events: Vec<ChangeEvent>) {
        let led = events.iter().filter(|e| e.leader_changed()).count();
        self.shared
            .leader_changes
            .fetch_add(led as u64, Ordering::Relaxed);
        self.shared.feeds.publish(index, events);
    }

    /// A stable digest (FNV-1a, hex) of the serialized state machine, with the
    /// applied index it belongs to. Converged replicas report equal digests
    /// at equal indexes.
    pub fn digest(&self) -> (Option<u64>, String) {
        let guard = self.read_guard();
        let bytes = serde_json::to_vec(&guard.machine).unwrap_or_default();
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        (
            guard.last_applied.map(|id| id.index),
            format!("{hash:016x}"),
        )
    }
}

/// openraft's state machine: applies entries to the [`StateMachine`] and
/// builds, stores and installs snapshots.
#[derive(Clone)]
pub struct StateMachineStore {
    handle: StateHandle,
    durable: Durable,
    /// Entries are applied only once flushed here (`flushed.rs`).
    flushed: FlushedLog,
    snapshots: sled::Tree,
    snapshot_counter: Arc<AtomicU64>,
    /// Serializes snapshot writes: openraft may finish building a snapshot
    /// of an older state while it installs a newer one from the leader.
    persist_lock: Arc<tokio::sync::Mutex<()>>,
}

impl StateMachineStore {
    pub(crate) fn new(
        db: &sled::Db,
        durable: Durable,
        flushed: FlushedLog,
        limits: Limits,
    ) -> Result<Self, OpenError> {
        let snapshots = db.open_tree("snapshot")?;
        let applied = match read_stored(&snapshots)? {
            Some(stored) => AppliedState {
                machine: stored.state()?,
                last_applied: stored.meta.last_log_id,
                membership: stored.meta.last_membership,
            },
            // A data directory seeded from a backup starts from that state
            // with an empty log; the cluster it forms builds on it.
            None => AppliedState {
                machine: match snapshots.get(crate::backup::SEED)? {
                    Some(seed) => serde_json::from_slice(&seed)?,
                    None => StateMachine::new(limits),
                },
                last_applied: None,
                membership: StoredMembership::default(),
            },
        };
        Ok(StateMachineStore {
            handle: StateHandle {
                shared: Arc::new(Shared {
                    applied: RwLock::new(applied),
                    feeds: Arc::default(),
                    commands_applied: AtomicU64::new(0),
                    leader_changes: AtomicU64::new(0),
                }),
            },
            durable,
            flushed,
            snapshots,
            snapshot_counter: Arc::new(AtomicU64::new(0)),
            persist_lock: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// A handle for reading the applied state and watching its changes.
    pub fn handle(&self) -> StateHandle {
        self.handle.clone()
    }

    /// The snapshot currently stored on disk, if any.
    pub fn stored_snapshot(&self) -> Result<Option<StoredSnapshot>, OpenError> {
        read_stored(&self.snapshots)
    }

    /// The metadata of the snapshot stored on disk, if any.
    fn stored_meta(&self) -> Result<Option<SnapshotMeta<NodeId, BasicNode>>, OpenError> {
        match self.snapshots.get(SNAPSHOT_META)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(read_stored(&self.snapshots)?.map(|s| s.meta)),
        }
    }

    /// Stores `snapshot` unless the stored one already covers as much of
    /// the log: an older snapshot must never replace a newer one, whose
    /// log may already be purged.
    async fn persist(&self, snapshot: &StoredSnapshot) -> StorageResult<()> {
        let _serialized = self.persist_lock.lock().await;
        let signature = Some(snapshot.meta.signature());
        let stored = self
            .stored_meta()
            .map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        if stored.is_some_and(|meta| meta.last_log_id >= snapshot.meta.last_log_id) {
            return Ok(());
        }
        let meta = serde_json::to_vec(&snapshot.meta)
            .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
        let mut batch = sled::Batch::default();
        batch.insert(SNAPSHOT_META, meta);
        batch.insert(SNAPSHOT_DATA, snapshot.data.as_slice());
        batch.remove(LEGACY_SNAPSHOT);
        self.snapshots
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
        self.durable
            .flush()
            .await
            .map_err(|e| StorageIOError::write_snapshot(signature, &e))?;
        Ok(())
    }
}

/// The snapshot stored in `tree`, in either layout.
fn read_stored(tree: &sled::Tree) -> Result<Option<StoredSnapshot>, OpenError> {
    if let (Some(meta), Some(data)) = (tree.get(SNAPSHOT_META)?, tree.get(SNAPSHOT_DATA)?) {
        return Ok(Some(StoredSnapshot {
            meta: serde_json::from_slice(&meta)?,
            data: data.to_vec(),
        }));
    }
    match tree.get(LEGACY_SNAPSHOT)? {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        None => Ok(None),
    }
}

/// Builds a snapshot from a copy of the state taken, in log order, when
/// openraft asked for a builder.
pub struct SnapshotBuilder {
    store: StateMachineStore,
    machine: StateMachine,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        // Encoding a large state takes a while: off the async workers, so
        // heartbeats and client requests keep flowing meanwhile.
        let machine = std::mem::take(&mut self.machine);
        let data = tokio::task::spawn_blocking(move || serde_json::to_vec(&machine))
            .await
            .map_err(|e| StorageIOError::read_state_machine(&e))?
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        let counter = self.store.snapshot_counter.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}-{counter}", id.leader_id, id.index),
            None => format!("empty-{counter}"),
        };
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id,
            },
            data,
        };
        self.store.persist(&stored).await?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let guard = self.handle.read_guard();
        Ok((guard.last_applied, guard.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandOutcome>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let Some(last_index) = entries.last().map(|entry| entry.log_id.index) else {
            return Ok(Vec::new());
        };
        self.flushed
            .reached(last_index)
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut outcomes = Vec::new();
        // Published once for the whole batch, at its last index: a read
        // sees all of the batch or none of it, and openraft may apply
        // hundreds of entries at once (a follower catching up), which must
        // not overflow a watcher's feed.
        let mut changes = Vec::new();
        {
            let mut guard = self.handle.write_guard();
            for entry in entries {
                guard.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => outcomes.push(CommandOutcome(Vec::new())),
                    EntryPayload::Normal(log_command) => {
                        self.handle
                            .shared
                            .commands_applied
                            .fetch_add(log_command.commands.len() as u64, Ordering::Relaxed);
                        let mut results = Vec::with_capacity(log_command.commands.len());
                        for command in &log_command.commands {
                            let applied = guard.machine.apply(command, log_command.stamp_ms);
                            changes.extend(applied.events);
                            results.push(applied.result);
                        }
                        outcomes.push(CommandOutcome(results));
                    }
                    EntryPayload::Membership(membership) => {
                        guard.membership = StoredMembership::new(Some(entry.log_id), membership);
                        outcomes.push(CommandOutcome(Vec::new()));
                    }
                }
            }
        }
        self.handle.publish(last_index, changes);
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let guard = self.handle.read_guard();
        SnapshotBuilder {
            store: self.clone(),
            machine: guard.machine.clone(),
            last_applied: guard.last_applied,
            membership: guard.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        let machine = stored
            .state()
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.persist(&stored).await?;
        tracing::info!(
            index = meta.last_log_id.map(|id| id.index),
            bytes = stored.data.len(),
            "installed a snapshot from the leader"
        );
        let events = {
            let mut guard = self.handle.write_guard();
            let keys: BTreeSet<PrimitiveKey> = guard
                .machine
                .primitives()
                .chain(machine.primitives())
                .map(|(key, _)| key.clone())
                .collect();
            let events: Vec<ChangeEvent> = keys
                .into_iter()
                .filter(|key| guard.machine.primitive(key) != machine.primitive(key))
                .map(|key| ChangeEvent {
                    state: machine.primitive(&key),
                    epoch_before: guard.machine.primitive(&key).epoch,
                    key,
                })
                .collect();
            guard.machine = machine;
            guard.last_applied = meta.last_log_id;
            guard.membership = meta.last_membership.clone();
            events
        };
        if let Some(id) = meta.last_log_id {
            self.handle.publish(id.index, events);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let stored = self
            .stored_snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
