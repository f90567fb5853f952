//! Whole-cluster backups (`baton cluster snapshot save/restore`): the state
//! machine at a committed index in a file with a checked header, and the
//! seeding of a new node's data directory from such a file.
//!
//! File layout: one line of JSON (the [`BackupHeader`]), a newline, then
//! `length` bytes of the state machine (the same JSON a Raft snapshot
//! holds). The CRC-32 covers those bytes.

use std::path::Path;

use baton_state::StateMachine;
use serde::{Deserialize, Serialize};

/// What the file says it is.
pub const FORMAT: &str = "baton-backup";
/// The layout version this code writes and reads.
pub const VERSION: u32 = 1;
/// Key of the seed in the `snapshot` tree of a restored data directory.
pub(crate) const SEED: &[u8] = b"seed";

/// The first line of a backup file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// Always [`FORMAT`].
    pub format: String,
    /// Layout version ([`VERSION`]).
    pub version: u32,
    /// Identifies the cluster the backup came from: a CRC-32 of its
    /// membership (node ids and peer addresses) when it was saved.
    pub cluster_id: String,
    /// The Raft log index the state includes.
    pub index: u64,
    /// Length of the state in bytes.
    pub length: u64,
    /// CRC-32 (IEEE) of the state bytes.
    pub crc32: u32,
}

/// Why a backup could not be read or restored; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file does not start with a valid header line.
    #[error("not a Baton backup (bad header): {0}")]
    BadHeader(String),
    /// The header names another format or a version this code cannot read.
    #[error("unsupported backup: format {format:?} version {version}")]
    Unsupported {
        /// The format found.
        format: String,
        /// The version found.
        version: u32,
    },
    /// Fewer or more state bytes than the header promises.
    #[error(
        "backup is truncated or has trailing bytes: {found} state bytes, header says {expected}"
    )]
    Length {
        /// Bytes found.
        found: u64,
        /// Bytes promised.
        expected: u64,
    },
    /// The state bytes do not match the checksum.
    #[error("backup is corrupt: CRC-32 {found:08x}, header says {expected:08x}")]
    Checksum {
        /// Checksum of the bytes found.
        found: u32,
        /// Checksum in the header.
        expected: u32,
    },
    /// The state bytes do not decode.
    #[error("backup state does not decode: {0}")]
    State(#[from] serde_json::Error),
    /// The target data directory is not empty.
    #[error("{0} is not empty: a restore only seeds a new node's data directory")]
    NotEmpty(String),
    /// Reading or writing failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The new data directory could not be created.
    #[error("cannot create the data directory: {0}")]
    Sled(#[from] sled::Error),
}

/// A backup file's bytes: header line, newline, `state`.
pub fn encode(cluster_id: &str, index: u64, state: &[u8]) -> Vec<u8> {
    let header = BackupHeader {
        format: FORMAT.to_owned(),
        version: VERSION,
        cluster_id: cluster_id.to_owned(),
        index,
        length: state.len() as u64,
        crc32: crc32fast::hash(state),
    };
    let mut bytes = serde_json::to_vec(&header).unwrap_or_default();
    bytes.push(b'\n');
    bytes.extend_from_slice(state);
    bytes
}

/// Checks a backup file's header, length and checksum (not whether the
/// state decodes) and returns the header and the state bytes.
pub fn check(bytes: &[u8]) -> Result<(BackupHeader, &[u8]), BackupError> {
    let newline = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| BackupError::BadHeader("no header line".into()))?;
    let header: BackupHeader = serde_json::from_slice(&bytes[..newline])
        .map_err(|e| BackupError::BadHeader(e.to_string()))?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(BackupError::Unsupported {
            format: header.format,
            version: header.version,
        });
    }
    let state = &bytes[newline + 1..];
    if state.len() as u64 != header.length {
        return Err(BackupError::Length {
            found: state.len() as u64,
            expected: header.length,
        });
    }
    let found = crc32fast::hash(state);
    if found != header.crc32 {
        return Err(BackupError::Checksum {
            found,
            expected: header.crc32,
        });
    }
    Ok((header, state))
}

/// Checks a backup file's bytes and returns its header and state.
pub fn decode(bytes: &[u8]) -> Result<(BackupHeader, StateMachine), BackupError> {
    let (header, state) = check(bytes)?;
    Ok((header, serde_json::from_slice(state)?))
}

/// Seeds a new node's data directory `dir` from a backup file's bytes: the
/// node starts from that state, with an empty Raft log, and forms a new
/// cluster with the nodes seeded from the same file. Checked first; on any
/// error nothing is written.
pub fn seed(dir: &Path, bytes: &[u8]) -> Result<BackupHeader, BackupError> {
    let (header, state) = check(bytes)?;
    // Decoded only to refuse a state that would not load; stored as it is.
    serde_json::from_slice::<StateMachine>(state)?;
    if crate::holds_files(dir)? {
        return Err(BackupError::NotEmpty(dir.display().to_string()));
    }
    // Marked unfinished first, unmarked last: a restore cut short leaves a
    // directory no node starts from (it would have started empty and
    // founded a cluster without the restored state).
    std::fs::create_dir_all(dir)?;
    let marker = dir.join(crate::RESTORING);
    std::fs::File::create(&marker)?.sync_all()?;
    std::fs::File::open(dir)?.sync_all()?;
    let db = crate::sled_config(dir).open()?;
    db.open_tree("snapshot")?.insert(SEED, state)?;
    crate::durable::Durable::open(dir, &db)?.flush_blocking()?;
    drop(db);
    std::fs::remove_file(&marker)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_round_trips_and_any_damage_is_refused() {
        let state = serde_json::to_vec(&StateMachine::default()).expect("state");
        let bytes = encode("cafe0001", 42, &state);
        let (header, _) = decode(&bytes).expect("decodes");
        assert_eq!((header.index, header.cluster_id.as_str()), (42, "cafe0001"));

        let mut flipped = bytes.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x01;
        assert!(matches!(
            decode(&flipped),
            Err(BackupError::Checksum { .. })
        ));
        let truncated = &bytes[..bytes.len() - 3];
        assert!(matches!(decode(truncated), Err(BackupError::Length { .. })));
        assert!(matches!(decode(b"garbage"), Err(BackupError::BadHeader(_))));
        let other = String::from_utf8_lossy(&bytes).replace(FORMAT, "something-else");
        assert!(matches!(
            decode(other.as_bytes()),
            Err(BackupError::Unsupported { .. })
        ));
    }

    /// A restore cut short (the process killed while it wrote the seed)
    /// leaves its marker, and no node starts from such a directory: before
    /// session 14 one started empty and could found a cluster without the
    /// restored state.
    #[test]
    fn a_directory_whose_restore_did_not_finish_is_not_opened() {
        let state = serde_json::to_vec(&StateMachine::default()).expect("state");
        let bytes = encode("cafe0001", 42, &state);
        let done = tempfile::tempdir().expect("dir");
        seed(done.path(), &bytes).expect("seeded");
        assert!(!done.path().join(crate::RESTORING).exists());
        crate::open(done.path(), baton_state::Limits::default()).expect("a finished restore opens");

        let cut_short = tempfile::tempdir().expect("dir");
        std::fs::write(cut_short.path().join(crate::RESTORING), b"").expect("marker");
        drop(crate::sled_config(cut_short.path()).open().expect("sled"));
        assert!(matches!(
            crate::open(cut_short.path(), baton_state::Limits::default()),
            Err(crate::OpenError::RestoreUnfinished(_))
        ));
    }

    /// A freshly formatted volume's root holds `lost+found`: seeding it is
    /// fine (refused until session 13); a directory with anything else in
    /// it is refused.
    #[test]
    fn a_seed_goes_into_a_fresh_volume_but_never_over_data() {
        let state = serde_json::to_vec(&StateMachine::default()).expect("state");
        let bytes = encode("cafe0001", 42, &state);
        let volume = tempfile::tempdir().expect("dir");
        std::fs::create_dir(volume.path().join("lost+found")).expect("lost+found");
        seed(volume.path(), &bytes).expect("a fresh volume is seeded");
        let used = tempfile::tempdir().expect("dir");
        std::fs::write(used.path().join("db"), b"x").expect("a file");
        assert!(matches!(
            seed(used.path(), &bytes),
            Err(BackupError::NotEmpty(_))
        ));
    }
}
