//! What a durable append costs on a disk: the raw floor (a 4 KiB write +
//! `fdatasync`), probed right before a cluster's workloads, and an append
//! through Baton's own storage.
//!
//! On shared virtual disks the flush latency moves by 2–4× from one minute
//! to the next, so a ratio between two runs means little without the disk
//! figures measured with it.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The block the probe writes: one page, like a small log append.
const PROBE_BLOCK: usize = 4096;

/// The times of `writes` sequential 4 KiB writes, each followed by
/// `fdatasync`, into a new preallocated file in `dir` (removed afterwards,
/// also on error): the least one durable log append costs on this disk now.
pub fn probe(dir: &Path, writes: usize) -> io::Result<Vec<Duration>> {
    let scratch = tempfile::NamedTempFile::new_in(dir)?;
    let file = scratch.as_file();
    // Preallocated and synced first, so each timed write changes data only,
    // not the file's size (which would add a metadata write).
    let size = PROBE_BLOCK * writes.max(1);
    file.write_all_at(&vec![0u8; size], 0)?;
    file.sync_all()?;
    let block = vec![0xA5u8; PROBE_BLOCK];
    let mut times = Vec::with_capacity(writes);
    for i in 0..writes {
        let began = Instant::now();
        file.write_all_at(&block, (i * PROBE_BLOCK) as u64)?;
        file.sync_data()?;
        times.push(began.elapsed());
    }
    scratch.close()?;
    Ok(times)
}

/// The times of `appends` durable appends of `bytes` bytes through Baton's
/// own storage (sled, then `fdatasync`), in a scratch database under `dir`
/// (removed afterwards).
pub fn probe_baton_storage(dir: &Path, appends: usize, bytes: usize) -> io::Result<Vec<Duration>> {
    let scratch = tempfile::tempdir_in(dir)?;
    baton_store::probe::durable_appends(scratch.path(), appends, bytes).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_measures_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let times = probe(dir.path(), 8).expect("probe");
        assert_eq!(times.len(), 8);
        assert!(times.iter().all(|t| *t > Duration::ZERO));
        let times = probe_baton_storage(dir.path(), 8, 350).expect("probe");
        assert_eq!(times.len(), 8);
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }
}
