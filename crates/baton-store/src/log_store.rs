//! The Raft log, vote and commit marker in sled. Every write that openraft
//! must be able to rely on after a crash is flushed before it is reported.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, OptionalSend, RaftLogId, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::durable::Durable;
use crate::types::{NodeId, TypeConfig};

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
}

impl LogStore {
    pub(crate) fn new(db: &sled::Db, durable: Durable) -> Result<Self, sled::Error> {
        Ok(LogStore {
            durable,
            entries: db.open_tree("log")?,
            meta: db.open_tree("log_meta")?,
        })
    }

    async fn flush(&self) -> StorageResult<()> {
        self.durable
            .flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
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
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_meta(LAST_PURGED)?;
        let last = self
            .entries
            .last()
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let last_log_id = match last {
            Some((_, value)) => Some(*Self::decode(&value)?.get_log_id()),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.write_meta(VOTE, vote)?;
        self.flush().await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.read_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not flushed: Raft does not need a durable commit index, and an
        // fsync per commit on every node doubled the cost of a write. After
        // a crash the marker may lag; a leader restored in its old term then
        // serves reads only after its grace entry of that term is applied
        // (the server's read index), which covers every acknowledged write.
        // The marker is never ahead of the flushed log: appends are flushed
        // before they can be committed, and sled persists writes in order.
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
        // Plain inserts, not a sled batch: a crash may keep a prefix of the
        // entries, which Raft allows (they are reported only once flushed),
        // and a batch would switch sled to its global write lock for good.
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            self.entries
                .insert(entry.get_log_id().index.to_be_bytes(), bytes)
                .map_err(|e| StorageIOError::write_logs(&e))?;
        }
        let flushed = self.durable.flush().await;
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.remove_range(log_id.index.to_be_bytes()..)?;
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // The marker first: if we crash between the two writes, the log
        // still reads as purged up to here and the leftover entries are
        // ignored and purged again.
        self.write_meta(LAST_PURGED, &log_id)?;
        self.flush().await?;
        self.remove_range(..=log_id.index.to_be_bytes())?;
        self.flush().await
    }
}
