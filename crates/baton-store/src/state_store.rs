//! The Raft state machine: the deterministic [`StateMachine`] in memory,
//! persisted as Raft snapshots (files named in sled: `snapshot_files.rs`).

use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use baton_state::{ChangeEvent, Limits, PrimitiveKey, StateMachine};
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::durable::Durable;
use crate::feeds::{ChangeFeeds, KeyChanges};
use crate::flushed::FlushedLog;
use crate::snapshot_files::{stored_name, SnapshotFile, SnapshotFiles};
use crate::types::{CommandOutcome, NodeId, TypeConfig};
use crate::{Coverage, OpenError};

/// Snapshot metadata (JSON) and the name of the file holding the serialized
/// state machine, written together in one sled batch.
const SNAPSHOT_META: &[u8] = b"meta";
const SNAPSHOT_FILE: &[u8] = b"file";
/// Earlier layouts, converted to a file when found at startup: the state
/// as a sled value beside the metadata, and before that the whole
/// `StoredSnapshot` as JSON under one key.
const SNAPSHOT_DATA: &[u8] = b"data";
const LEGACY_SNAPSHOT: &[u8] = b"current";

type StorageResult<T> = Result<T, StorageError<NodeId>>;
type Meta = SnapshotMeta<NodeId, BasicNode>;

/// A Raft snapshot read back whole: openraft's metadata plus the serialized
/// [`StateMachine`] (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSnapshot {
    /// Last log id and membership covered by the snapshot.
    pub meta: SnapshotMeta<NodeId, BasicNode>,
    /// The state machine, serialized with serde_json.
    pub data: Vec<u8>,
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
    /// Leadership changes of primitives applied since this process started,
    /// in entries past `logged_before_start`.
    leader_changes: AtomicU64,
    /// The last log index on disk when the node started: applying entries
    /// up to it replays what happened before (openraft re-applies the log
    /// behind the snapshot, and the entries past the commit marker last
    /// saved follow once the leader confirms them).
    logged_before_start: u64,
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

    /// A copy of the applied state with the index of the last applied
    /// entry. Cheap: it shares the state's maps, so encoding it (a backup,
    /// a digest) holds no lock while entries go on being applied.
    pub fn copy(&self) -> (Option<u64>, StateMachine) {
        let guard = self.read_guard();
        (guard.last_applied.map(|id| id.index), guard.machine.clone())
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
    /// this process started, snapshots installed included, not counting
    /// the log it replayed.
    pub fn leader_changes(&self) -> u64 {
        self.shared.leader_changes.load(Ordering::Relaxed)
    }

    /// Subscribes to `key`'s changes applied from now on.
    pub fn watch(&self, key: &PrimitiveKey) -> KeyChanges {
        self.shared.feeds.subscribe(key)
    }

    /// The leadership changes among `events`, applied from log index
    /// `index`, that count as news: none if the entry was on disk when the
    /// node started (a replay of what happened before).
    fn news(&self, index: u64, events: &[ChangeEvent]) -> u64 {
        if index <= self.shared.logged_before_start {
            return 0;
        }
        events.iter().filter(|e| e.leader_changed()).count() as u64
    }

    fn count_leader_changes(&self, changes: u64) {
        if changes > 0 {
            self.shared
                .leader_changes
                .fetch_add(changes, Ordering::Relaxed);
        }
    }

    /// Hands changes applied up to `index` to their watchers.
    fn publish(&self, index: u64, events: Vec<ChangeEvent>) {
        self.shared.feeds.publish(index, events);
    }

    /// A stable digest (FNV-1a, hex) of the serialized state machine, with the
    /// applied index it belongs to. Converged replicas report equal digests
    /// at equal indexes.
    pub fn digest(&self) -> (Option<u64>, String) {
        let (applied, machine) = self.copy();
        // Hashed as it is encoded: a large state is never held twice.
        let mut hash = Fnv1a(0xcbf2_9ce4_8422_2325);
        // Writing into a hash cannot fail, and the state always encodes.
        let _ = serde_json::to_writer(&mut hash, &machine);
        (applied, format!("{:016x}", hash.0))
    }
}

/// FNV-1a over everything written into it.
struct Fnv1a(u64);

impl io::Write for Fnv1a {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
    files: SnapshotFiles,
    /// The file a snapshot from the leader is being received into, if any:
    /// openraft abandons it when another one starts.
    receiving: Arc<Mutex<Option<String>>>,
    snapshot_counter: Arc<AtomicU64>,
    /// Serializes snapshot writes: openraft may finish building a snapshot
    /// of an older state while it installs a newer one from the leader.
    persist_lock: Arc<tokio::sync::Mutex<()>>,
    /// Tells the log store how far the stored snapshot reaches, so that it
    /// purges nothing a snapshot does not cover yet.
    covered: Arc<watch::Sender<Coverage>>,
}

impl StateMachineStore {
    pub(crate) fn new(
        dir: &Path,
        db: &sled::Db,
        durable: Durable,
        flushed: FlushedLog,
        covered: watch::Sender<Coverage>,
        limits: Limits,
        logged_before_start: u64,
    ) -> Result<Self, OpenError> {
        let snapshots = db.open_tree("snapshot")?;
        let files = SnapshotFiles::open(dir)?;
        let stored = match stored_file(&snapshots)? {
            Some((meta, name)) => Some((meta, name.clone(), files.read(&name)?)),
            None => match read_earlier_layout(&snapshots)? {
                Some(earlier) => Some(convert_to_file(&snapshots, &files, &durable, earlier)?),
                None => None,
            },
        };
        files.remove_all_but(stored.as_ref().map(|(_, name, _)| name.as_str()))?;
        covered.send_replace(Coverage {
            reach: stored
                .as_ref()
                .and_then(|(meta, _, _)| meta.last_log_id)
                .map(|id| id.index),
            receiving: false,
        });
        let applied = match stored {
            Some((meta, _, data)) => AppliedState {
                machine: serde_json::from_slice(&data)?,
                last_applied: meta.last_log_id,
                membership: meta.last_membership,
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
                    logged_before_start,
                }),
            },
            durable,
            flushed,
            snapshots,
            files,
            receiving: Arc::default(),
            snapshot_counter: Arc::new(AtomicU64::new(0)),
            persist_lock: Arc::new(tokio::sync::Mutex::new(())),
            covered: Arc::new(covered),
        })
    }

    /// A handle for reading the applied state and watching its changes.
    pub fn handle(&self) -> StateHandle {
        self.handle.clone()
    }

    /// Whether this directory was seeded from a backup and has not founded
    /// a cluster on it yet.
    pub fn is_seeded(&self) -> Result<bool, OpenError> {
        Ok(self.snapshots.contains_key(crate::backup::SEED)?)
    }

    /// Turns a seed (`backup::seed`) into the founding Raft snapshot of the
    /// cluster this node forms with `members`: the snapshot sits at the
    /// very first log id, where openraft's `initialize` would put the
    /// membership, and openraft purges the (empty) log up to it when it
    /// starts. A node that joins later, or a member whose disk is wiped,
    /// then receives the seed's state as a snapshot; left a seed, it was
    /// sent the log from index 0 and replayed it onto an empty state.
    /// Every member seeded from the same file with the same `--peers`
    /// founds the same snapshot, as they would all initialize the same
    /// membership. Does nothing (false) unless the directory holds a seed,
    /// no snapshot and `log_is_empty`; a seed that a stored snapshot has
    /// superseded is dropped.
    pub(crate) async fn found_on_seed(
        &self,
        members: std::collections::BTreeMap<NodeId, BasicNode>,
        log_is_empty: bool,
    ) -> Result<bool, OpenError> {
        let Some(seed) = self.snapshots.get(crate::backup::SEED)? else {
            return Ok(false);
        };
        let founded = stored_file(&self.snapshots)?.is_none();
        if founded && !log_is_empty {
            // Formed by an earlier version, which kept the seed as the
            // state under the log: it still is.
            return Ok(false);
        }
        if founded {
            let first = LogId::default();
            let voters: BTreeSet<NodeId> = members.keys().copied().collect();
            let meta = SnapshotMeta {
                last_log_id: Some(first),
                last_membership: StoredMembership::new(
                    Some(first),
                    openraft::Membership::new(vec![voters], members),
                ),
                snapshot_id: "seed".to_owned(),
            };
            let name = self.files.write_bytes(&seed)?;
            self.persist(&meta, &name)
                .await
                .map_err(|e| io::Error::other(e.to_string()))?;
            let mut applied = self.handle.write_guard();
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership;
        }
        // A snapshot holds the seed's state from now on, or a later one.
        self.snapshots.remove(crate::backup::SEED)?;
        self.durable.flush().await?;
        Ok(founded)
    }

    /// The snapshot currently stored on disk, if any.
    pub fn stored_snapshot(&self) -> Result<Option<StoredSnapshot>, OpenError> {
        match stored_file(&self.snapshots)? {
            Some((meta, name)) => Ok(Some(StoredSnapshot {
                meta,
                data: self.files.read(&name)?,
            })),
            None => Ok(None),
        }
    }

    /// Makes the snapshot in file `name` the stored one, unless the stored
    /// one already covers as much of the log (an older snapshot must never
    /// replace a newer one, whose log may already be purged); the file that
    /// loses is removed. The file is synced before sled names it.
    async fn persist(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        name: &str,
    ) -> StorageResult<()> {
        let _serialized = self.persist_lock.lock().await;
        let signature = || Some(meta.signature());
        let stored = stored_file(&self.snapshots)
            .map_err(|e| StorageIOError::read_snapshot(signature(), &e))?;
        if let Some((stored_meta, _)) = &stored {
            if stored_meta.last_log_id >= meta.last_log_id {
                self.files.remove_or_warn(name);
                return Ok(());
            }
        }
        let files = self.files.clone();
        let synced = name.to_owned();
        tokio::task::spawn_blocking(move || files.sync(&synced))
            .await
            .map_err(|e| StorageIOError::write_snapshot(signature(), &e))?
            .map_err(|e| StorageIOError::write_snapshot(signature(), &e))?;
        let encoded_meta = serde_json::to_vec(meta)
            .map_err(|e| StorageIOError::write_snapshot(signature(), &e))?;
        let mut batch = sled::Batch::default();
        batch.insert(SNAPSHOT_META, encoded_meta);
        batch.insert(SNAPSHOT_FILE, name.as_bytes());
        self.snapshots
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_snapshot(signature(), &e))?;
        self.durable
            .flush()
            .await
            .map_err(|e| StorageIOError::write_snapshot(signature(), &e))?;
        let reach = meta.last_log_id.map(|id| id.index);
        self.covered.send_if_modified(|coverage| {
            let further = reach > coverage.reach;
            if further {
                coverage.reach = reach;
            }
            further
        });
        if let Some((_, replaced)) = stored {
            if replaced != name {
                self.files.remove_or_warn(&replaced);
            }
        }
        Ok(())
    }
}

/// The metadata and file name of the snapshot stored in `tree`, if any.
fn stored_file(tree: &sled::Tree) -> Result<Option<(Meta, String)>, OpenError> {
    match (tree.get(SNAPSHOT_META)?, tree.get(SNAPSHOT_FILE)?) {
        (Some(meta), Some(name)) => Ok(Some((serde_json::from_slice(&meta)?, stored_name(&name)?))),
        _ => Ok(None),
    }
}

/// A snapshot stored in `tree` by an earlier version, in either of its
/// layouts.
fn read_earlier_layout(tree: &sled::Tree) -> Result<Option<StoredSnapshot>, OpenError> {
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

/// Moves a snapshot stored in an earlier layout into a file; returns its
/// metadata, the file's name and the state.
fn convert_to_file(
    tree: &sled::Tree,
    files: &SnapshotFiles,
    durable: &Durable,
    earlier: StoredSnapshot,
) -> Result<(Meta, String, Vec<u8>), OpenError> {
    let name = files.write_bytes(&earlier.data)?;
    files.sync(&name)?;
    let mut batch = sled::Batch::default();
    batch.insert(SNAPSHOT_META, serde_json::to_vec(&earlier.meta)?);
    batch.insert(SNAPSHOT_FILE, name.as_bytes());
    batch.remove(SNAPSHOT_DATA);
    batch.remove(LEGACY_SNAPSHOT);
    tree.apply_batch(batch)?;
    durable.flush_blocking()?;
    tracing::info!(file = %name, "moved the stored snapshot into a file");
    Ok((earlier.meta, name, earlier.data))
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
        // Another copy that shares the maps: encoding it on a blocking
        // thread, off the async workers, lets heartbeats and client
        // requests flow meanwhile.
        let machine = self.machine.clone();
        let files = self.store.files.clone();
        let name = tokio::task::spawn_blocking(move || files.write_json(&machine))
            .await
            .map_err(io::Error::other)
            .and_then(|written| written)
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        let counter = self.store.snapshot_counter.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}-{counter}", id.leader_id, id.index),
            None => format!("empty-{counter}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        // Opened before it is stored: if a newer snapshot wins, the file
        // is removed, but this one is still what openraft asked for.
        let file = self
            .store
            .files
            .open_file(&name)
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.store.persist(&meta, &name).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
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
        let mut leader_changes = 0;
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
                            leader_changes += self.handle.news(entry.log_id.index, &applied.events);
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
        self.handle.count_leader_changes(leader_changes);
        self.handle.publish(last_index, changes);
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // A copy of the state shares its maps with the live one (they are
        // persistent maps): taking it costs nothing, and entries go on being
        // applied while it is encoded (what they change is copied then).
        let guard = self.handle.read_guard();
        SnapshotBuilder {
            store: self.clone(),
            machine: guard.machine.clone(),
            last_applied: guard.last_applied,
            membership: guard.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<SnapshotFile>> {
        let file = self
            .files
            .create_file()
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let abandoned = std::mem::replace(
            &mut *self
                .receiving
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            self.files.name_of(&file),
        );
        if let Some(abandoned) = abandoned {
            self.files.remove_or_warn(&abandoned);
        }
        self.covered
            .send_modify(|coverage| coverage.receiving = true);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        mut snapshot: Box<SnapshotFile>,
    ) -> StorageResult<()> {
        let signature = Some(meta.signature());
        let own = self.files.name_of(&snapshot);
        {
            let mut receiving = self
                .receiving
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if *receiving == own {
                *receiving = None;
            }
        }
        let data = snapshot
            .read_all()
            .await
            .map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        drop(snapshot);
        let machine = match serde_json::from_slice::<StateMachine>(&data) {
            Ok(machine) => machine,
            Err(error) => {
                if let Some(own) = &own {
                    self.files.remove_or_warn(own);
                }
                return Err(StorageIOError::read_snapshot(signature, &error).into());
            }
        };
        let bytes = data.len();
        let name = match own {
            Some(own) => own,
            None => self
                .files
                .write_bytes(&data)
                .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?,
        };
        drop(data);
        self.persist(meta, &name).await?;
        // Stored: a purge of what it covers may go ahead. (Until then, and
        // for good if the install failed, an uncovered purge waits: the
        // node stops on the failure anyway, with its log whole.)
        self.covered
            .send_modify(|coverage| coverage.receiving = false);
        tracing::info!(
            index = meta.last_log_id.map(|id| id.index),
            bytes,
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
            self.handle
                .count_leader_changes(self.handle.news(id.index, &events));
            self.handle.publish(id.index, events);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        // Held so that the file is not replaced between naming and opening.
        let _serialized = self.persist_lock.lock().await;
        let Some((meta, name)) =
            stored_file(&self.snapshots).map_err(|e| StorageIOError::read_snapshot(None, &e))?
        else {
            return Ok(None);
        };
        let file = self
            .files
            .open_file(&name)
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}
