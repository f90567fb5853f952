//! The Raft log, vote and commit marker in sled. Every write that openraft
//! must be able to rely on after a crash is flushed before it is reported.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogId, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use crate::durable::Durable;
use crate::flushed::FlushedLog;
use crate::types::{NodeId, TypeConfig};
use crate::{Coverage, OpenError};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The Raft log: entries keyed by big-endian index in tree `log`, and the
/// vote, commit marker and purge marker in tree `log_meta`.
#[derive(Clone)]
pub struct LogStore {
    durable: Durable,
    entries: sled::Tree,
    meta: sled::Tree,
    flushed: FlushedLog,
    /// This node, once known: its own entries, appended while it leads,
    /// are reported before their flush ends (`flushed.rs`).
    node: Option<NodeId>,
    /// The vote as last saved or read.
    vote: Arc<Mutex<Option<Vote<NodeId>>>>,
    /// How far the stored snapshot reaches (see [`Coverage`]).
    covered: watch::Receiver<Coverage>,
}

/// How long a purge waits for a snapshot to cover it (one being installed
/// from the leader) before it gives up, as a storage error that stops the
/// node: nothing is purged then, so it starts again from a whole log.
const PURGE_PATIENCE: Duration = Duration::from_secs(60);

impl LogStore {
    pub(crate) fn new(
        db: &sled::Db,
        durable: Durable,
        covered: watch::Receiver<Coverage>,
    ) -> Result<Self, OpenError> {
        let mut store = LogStore {
            durable: durable.clone(),
            entries: db.open_tree("log")?,
            meta: db.open_tree("log_meta")?,
            flushed: FlushedLog::new(None),
            node: None,
            vote: Arc::default(),
            covered,
        };
        // A purge cut short by a crash (its marker written, not all of its
        // entries removed) is finished first: entries at or below the
        // marker are not part of the log.
        if let Some(purged) = store
            .read_meta::<LogId<NodeId>>(LAST_PURGED)
            .map_err(|e| OpenError::CorruptLog(e.to_string()))?
        {
            store
                .remove_range(..=purged.index.to_be_bytes())
                .map_err(|e| OpenError::CorruptLog(e.to_string()))?;
        }
        // What a killed process left in the page cache is on disk only
        // after a flush; then all of the log is.
        durable.flush_blocking()?;
        let last = store
            .last_log_id()
            .map_err(|e| OpenError::CorruptLog(e.to_string()))?;
        store.flushed = FlushedLog::new(last);
        Ok(store)
    }

    /// The same log, belonging to node `node`: while it leads, its own new
    /// entries are reported to openraft as soon as they are written and
    /// flushed in the background, so replication does not wait for the
    /// leader's flush. Safe only together with the two rules in
    /// [`FlushedLog`]: the state machine applies nothing unflushed (this
    /// crate's), and the Raft network clamps the commit index it sends to
    /// [`LogStore::flushed_log`] (the server's).
    pub fn for_node(mut self, node: NodeId) -> Self {
        self.node = Some(node);
        self.flushed.overlap();
        self
    }

    /// How much of this log is on disk.
    pub fn flushed_log(&self) -> FlushedLog {
        self.flushed.clone()
    }

    /// Flushes everything written so far and records it as on disk.
    async fn flush(&self) -> StorageResult<()> {
        flush_recorded(&self.durable, &self.flushed)
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    /// Whether `entries` may be reported before their flush: this node's
    /// own, appended while it leads with a vote a quorum granted, and no
    /// membership change among them. openraft starts a membership change
    /// once the previous one is committed; flushed before it is reported,
    /// a membership entry counts as committed only once a majority has it
    /// on disk, and so does everything before it.
    fn reported_early(&self, entries: &[Entry<TypeConfig>]) -> bool {
        let Some(node) = self.node else {
            return false;
        };
        let vote = *self
            .vote
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(vote) = vote.filter(|v| v.is_committed() && v.leader_id().node_id == node) else {
            return false;
        };
        entries.iter().all(|entry| {
            entry.get_log_id().leader_id == *vote.leader_id()
                && !matches!(entry.payload, EntryPayload::Membership(_))
        })
    }

    /// The id of the last entry in the log (the last purged one if the log
    /// is empty), as openraft's vote compares logs.
    pub fn last_log_id(&self) -> StorageResult<Option<LogId<NodeId>>> {
        let last = self
            .entries
            .last()
            .map_err(|e| StorageIOError::read_logs(&e))?;
        match last {
            Some((_, value)) => Ok(Some(*Self::decode(&value)?.get_log_id())),
            None => self.read_meta(LAST_PURGED),
        }
    }

    /// Whether nothing was ever written here: no entry, no purge, no vote.
    pub(crate) fn is_pristine(&self) -> Result<bool, OpenError> {
        let corrupt = |e: StorageError<NodeId>| OpenError::CorruptLog(e.to_string());
        Ok(self.last_log_id().map_err(corrupt)?.is_none()
            && self
                .read_meta::<Vote<NodeId>>(VOTE)
                .map_err(corrupt)?
                .is_none())
    }

    /// How long this node's durable flushes took (log appends, votes,
    /// snapshots): the time every write waits for the disk, twice (leader
    /// and follower) before it commits.
    pub fn flush_seconds(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.durable.seconds()
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        let bytes = self
            .meta
            .get(key)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        bytes
            .map(|b| serde_json::from_slice(&b).map_err(|e| StorageIOError::read_logs(&e).into()))
            .transpose()
    }

    fn write_meta<T: Serialize>(&self, key: &[u8], value: &T) -> StorageResult<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| StorageIOError::write_logs(&e))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    fn decode(bytes: &[u8]) -> StorageResult<Entry<TypeConfig>> {
        serde_json::from_slice(bytes).map_err(|e| StorageIOError::read_logs(&e).into())
    }

    /// Removes every entry whose index lies in `range`, as one sled batch so
    /// a crash cannot leave a hole in the log.
    fn remove_range(&self, range: impl RangeBounds<[u8; 8]>) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        for item in self.entries.range(range) {
            let (key, _) = item.map_err(|e| StorageIOError::write_logs(&e))?;
            batch.remove(key);
        }
        self.entries
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

/// Flushes everything written so far and records in `flushed` what that
/// covered (everything written when it began).
async fn flush_recorded(durable: &Durable, flushed: &FlushedLog) -> std::io::Result<()> {
    let ticket = flushed.ticket();
    let result = durable.flush().await;
    flushed.flushed(ticket, &result);
    result
}

fn index_key(bound: Bound<&u64>) -> Bound<[u8; 8]> {
    match bound {
        Bound::Included(i) => Bound::Included(i.to_be_bytes()),
        Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let keys = (index_key(range.start_bound()), index_key(range.end_bound()));
        self.entries
            .range(keys)
            .map(|item| {
                let (_, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                Self::decode(&value)
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        Ok(LogState {
            last_purged_log_id: self.read_meta(LAST_PURGED)?,
            last_log_id: self.last_log_id()?,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.write_meta(VOTE, vote)?;
        // Flushes every entry written before it too: a leader that stops
        // leading saves a new vote before it answers a new leader, so it
        // never vouches for an entry it reported early and has not flushed.
        self.flush().await?;
        *self
            .vote
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        let mut vote: Option<Vote<NodeId>> = self.read_meta(VOTE)?;
        // openraft 0.9 restores a node whose stored vote is its own
        // committed one as leader of that term at once. But a leader's own
        // entries reported before their flush may be lost in a crash while
        // a follower holds them durably; leading that term again, it would
        // write different entries under the same log ids, and the follower
        // would keep its own (same id: no conflict seen). So the vote is
        // read back as not yet granted, and the node leads again only after
        // winning a new term, whose leader overwrites such entries.
        if let (Some(node), Some(stored)) = (self.node, vote.as_mut()) {
            if stored.is_committed() && stored.leader_id().node_id == node {
                *stored = Vote::new(stored.leader_id().term, node);
            }
        }
        *self
            .vote
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = vote;
        Ok(vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not flushed: Raft does not need a durable commit index, and an
        // fsync per commit on every node doubled the cost of a write. After
        // a crash the marker may lag; a restarted node leads only after
        // winning a new term (see `read_vote`) and then serves reads only
        // after its grace entry of that term is applied (the server's read
        // index), which covers every acknowledged write. The marker may be
        // ahead of a leader's own flushed entries (they count as committed
        // before their flush), but sled persists writes in order, so a
        // marker that survives a crash has its entries too.
        self.write_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|entry| *entry.get_log_id()) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let early = self.reported_early(&entries);
        // Plain inserts, not a sled batch: a crash may keep a prefix of the
        // entries, which Raft allows (they count as durable only once
        // flushed), and a batch would switch sled to its global write lock
        // for good.
        for entry in &entries {
            let bytes = serde_json::to_vec(entry).map_err(|e| StorageIOError::write_logs(&e))?;
            self.entries
                .insert(entry.get_log_id().index.to_be_bytes(), bytes)
                .map_err(|e| StorageIOError::write_logs(&e))?;
        }
        self.flushed.appended(last);
        if early {
            let (durable, flushed) = (self.durable.clone(), self.flushed.clone());
            tokio::spawn(async move {
                if let Err(error) = flush_recorded(&durable, &flushed).await {
                    tracing::error!(%error, "flushing the leader's own entries failed");
                }
            });
            callback.log_io_completed(Ok(()));
        } else {
            callback.log_io_completed(flush_recorded(&self.durable, &self.flushed).await);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let kept = match log_id.index.checked_sub(1) {
            Some(index) => match self
                .entries
                .get(index.to_be_bytes())
                .map_err(|e| StorageIOError::read_logs(&e))?
            {
                Some(value) => Some(*Self::decode(&value)?.get_log_id()),
                None => self
                    .read_meta::<LogId<NodeId>>(LAST_PURGED)?
                    .filter(|purged| purged.index == index),
            },
            None => None,
        };
        self.remove_range(log_id.index.to_be_bytes()..)?;
        self.flushed.truncated(kept);
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // openraft purges what an installed snapshot covers as soon as it
        // has handed the install to the state machine, without waiting for
        // it: a crash before the snapshot is on disk would leave neither
        // these entries nor a snapshot in their place. So while a snapshot
        // is on its way, the purge (and openraft's core with it) waits for
        // it to be stored.
        let index = log_id.index;
        let mut covered = self.covered.clone();
        let reached = tokio::time::timeout(
            PURGE_PATIENCE,
            covered.wait_for(|coverage| coverage.allows_purge(index)),
        )
        .await
        .is_ok_and(|waited| waited.is_ok());
        if !reached {
            let why = std::io::Error::other(format!(
                "no stored snapshot covers log index {index} within {PURGE_PATIENCE:?}; nothing purged"
            ));
            return Err(StorageIOError::write_logs(&why).into());
        }
        // The marker first: if we crash between the two writes, the log
        // still reads as purged up to here and the leftover entries are
        // ignored and purged again.
        self.write_meta(LAST_PURGED, &log_id)?;
        self.flush().await?;
        self.remove_range(..=log_id.index.to_be_bytes())?;
        self.flush().await
    }
}
