//! Baton's Raft storage: an openraft (storage-v2) log store and state
//! machine, persisted in sled under one data directory.
//!
//! The log store makes every append and vote durable (sled flush, then
//! fdatasync: see `durable.rs`) before openraft is told so. The state
//! machine keeps the deterministic [`baton_state::StateMachine`] in memory
//! and persists it as Raft snapshots, files beside sled's that sled names
//! (`snapshot_files.rs`); after a restart it loads the latest
//! snapshot and openraft re-applies the committed log behind it. This crate
//! knows nothing of gRPC: the server reads state through [`StateHandle`]
//! and watches one primitive's changes through [`KeyChanges`].

#![warn(missing_docs)]
// openraft's trait signatures fix the (large) StorageError type.
#![allow(clippy::result_large_err)]

mod durable;
mod feeds;
mod flushed;
mod log_store;
mod snapshot_files;
mod state_store;
mod types;

/// How far the stored snapshot reaches, and whether one is being received
/// from the leader (from its first chunk until it is stored).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Coverage {
    /// The last log index the stored snapshot covers.
    reach: Option<u64>,
    /// A snapshot is being received or installed.
    receiving: bool,
}

impl Coverage {
    /// Whether log entries up to `index` may be purged now: a stored
    /// snapshot covers them, or no install is under way whose purge could
    /// overtake it (openraft purges only what a snapshot covers, except
    /// there).
    fn allows_purge(&self, index: u64) -> bool {
        self.reach.is_some_and(|reach| reach >= index) || !self.receiving
    }
}

use std::path::Path;

pub mod backup;
pub mod probe;

pub use feeds::{KeyChange, KeyChanges};
pub use flushed::FlushedLog;
pub use log_store::LogStore;
pub use snapshot_files::SnapshotFile;
pub use state_store::{StateHandle, StateMachineStore, StoredSnapshot};
pub use types::{CommandOutcome, LogCommand, NodeId, TypeConfig};

/// Why the data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// sled could not open or read the database.
    #[error("cannot open the data directory: {0}")]
    Sled(#[from] sled::Error),
    /// The database files could not be opened for syncing.
    #[error("cannot open the data directory: {0}")]
    Io(#[from] std::io::Error),
    /// The stored Raft log could not be read.
    #[error("stored Raft log is unreadable: {0}")]
    CorruptLog(String),
    /// A stored snapshot could not be decoded.
    #[error("stored snapshot is corrupt: {0}")]
    CorruptSnapshot(#[from] serde_json::Error),
    /// sled gave up on the directory's contents by panicking (it unwraps
    /// some of what it reads at open).
    #[error("the data directory is unreadable: {0}")]
    Unreadable(String),
    /// A restore into the directory did not finish.
    #[error("a restore into {0} did not finish: empty the directory and restore again")]
    RestoreUnfinished(String),
}

/// The file a restore keeps in the data directory while it writes the
/// seed ([`backup::seed`]).
const RESTORING: &str = "restoring";

/// sled's page cache. Its default (1 GiB) let a node holding 100,000
/// sessions and primitives grow past 400 MB; the hot data here is the
/// log's tail and one snapshot, and the state itself lives in memory.
const PAGE_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Whether `dir` exists and holds anything: a directory a new database
/// (a seeded node, a probe) must not be written into. A `lost+found` is
/// not counted: the root of a freshly formatted ext4 volume (a Kubernetes
/// volume claim mounted as the data directory) holds one.
fn holds_files(dir: &Path) -> std::io::Result<bool> {
    if !dir.exists() {
        return Ok(false);
    }
    for entry in std::fs::read_dir(dir)? {
        if entry?.file_name() != "lost+found" {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The one sled configuration, for the node's storage and the probe.
/// sled's own flusher (every 500 ms by default) is off: every flush that
/// matters is made, durably, by `durable.rs`, which syncs blob files before
/// the records that point at them; sled's would write such records out
/// on its own schedule.
fn sled_config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .cache_capacity(PAGE_CACHE_BYTES)
        .flush_every_ms(None)
}

/// Opens sled in `dir`. sled 0.34 unwraps some of what it reads at open
/// (a blob file name that is not UTF-8 panicked the node), and what is on
/// the disk must end in an error, not a panic.
fn open_sled(dir: &Path) -> Result<sled::Db, OpenError> {
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sled_config(dir).open()));
    match opened {
        Ok(db) => Ok(db?),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "sled panicked".to_owned());
            Err(OpenError::Unreadable(why))
        }
    }
}

/// Opens (or creates) the node's storage in `dir`: the log store and the
/// state machine store share one sled database.
pub fn open(
    dir: &Path,
    limits: baton_state::Limits,
) -> Result<(LogStore, StateMachineStore), OpenError> {
    if dir.join(RESTORING).exists() {
        return Err(OpenError::RestoreUnfinished(dir.display().to_string()));
    }
    let db = open_sled(dir)?;
    let durable = durable::Durable::open(dir, &db)?;
    // How far the stored snapshot reaches, and whether one is on its way
    // from the leader: the state machine store says, the log store waits
    // on it before it purges.
    let (covered, coverage) = tokio::sync::watch::channel(Coverage::default());
    let log = LogStore::new(&db, durable.clone(), coverage)?;
    let logged = log
        .last_log_id()
        .map_err(|e| OpenError::CorruptLog(e.to_string()))?
        .map_or(0, |id| id.index);
    let state = StateMachineStore::new(
        dir,
        &db,
        durable,
        log.flushed_log(),
        covered,
        limits,
        logged,
    )?;
    Ok((log, state))
}

/// Makes a data directory seeded from a backup the founding snapshot of
/// the cluster this node forms with `members` (see
/// [`StateMachineStore`]'s seed handling in `state_store.rs`); call it
/// before starting Raft on the stores. True if it did.
pub async fn found_on_seed(
    log: &LogStore,
    state: &StateMachineStore,
    members: std::collections::BTreeMap<NodeId, openraft::BasicNode>,
) -> Result<bool, OpenError> {
    state.found_on_seed(members, log.is_pristine()?).await
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    /// sled 0.34 unwraps file names in its blob directory at open: a name
    /// that is not UTF-8 (a stray file, a damaged directory) panicked the
    /// node. Such disk contents must end in an error instead.
    #[test]
    fn a_data_directory_that_makes_sled_panic_is_an_error() {
        let dir = tempfile::tempdir().expect("dir");
        drop(open(dir.path(), baton_state::Limits::default()).expect("a new store"));
        let stray = dir
            .path()
            .join("blobs")
            .join(std::ffi::OsStr::from_bytes(b"\xff"));
        std::fs::write(stray, b"x").expect("a stray blob");
        match open(dir.path(), baton_state::Limits::default()) {
            Err(OpenError::Unreadable(why)) => assert!(!why.is_empty()),
            Err(other) => panic!("another error: {other}"),
            Ok(_) => panic!("opened"),
        }
    }
}
