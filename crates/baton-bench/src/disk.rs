//! What the disk costs each system: the raw floor of this machine's disk,
//! probed right before a cluster starts, and the durable flushes each
//! system reports about itself (Baton's `baton_storage_flush_duration_seconds`,
//! etcd's `etcd_disk_wal_fsync_duration_seconds`).
//!
//! On shared virtual disks the flush latency moves by 2–4× from one minute
//! to the next, so a ratio between two runs means little without the disk
//! figures measured with it.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::metrics;

/// The block the probe writes: one page, like a small log append.
const PROBE_BLOCK: usize = 4096;

/// The times of `writes` sequential 4 KiB writes, each followed by
/// `fdatasync`, into a preallocated file in `dir` (removed afterwards):
/// the least one durable log append costs on this disk now.
pub fn probe(dir: &Path, writes: usize) -> io::Result<Vec<Duration>> {
    let path = dir.join("baton-bench-disk-probe");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
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
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(times)
}

/// The times of `appends` durable appends of `bytes` bytes through Baton's
/// own storage (sled, then `fdatasync`), in a scratch database under `dir`
/// (removed afterwards).
pub fn probe_baton_storage(dir: &Path, appends: usize, bytes: usize) -> io::Result<Vec<Duration>> {
    let scratch = tempfile::tempdir_in(dir)?;
    baton_store::probe::durable_appends(scratch.path(), appends, bytes).map_err(io::Error::other)
}

/// Durable flushes a cluster reported, summed over its members.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Flushes {
    /// How many.
    pub count: f64,
    /// Their total duration, in seconds.
    pub seconds: f64,
}

impl Flushes {
    /// The flushes made between `earlier` and `self`.
    pub fn since(&self, earlier: &Flushes) -> Flushes {
        Flushes {
            count: self.count - earlier.count,
            seconds: self.seconds - earlier.seconds,
        }
    }

    /// Their mean duration.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0.0).then(|| Duration::from_secs_f64(self.seconds / self.count))
    }

    /// Adds one member's histogram, read from its Prometheus text.
    pub fn add_histogram(&mut self, text: &str, name: &str) -> Option<()> {
        self.count += metrics::sample(text, &format!("{name}_count"))?;
        self.seconds += metrics::sample(text, &format!("{name}_sum"))?;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::TEXT;

    #[test]
    fn flushes_add_up_and_subtract() {
        let mut before = Flushes::default();
        before.add_histogram(TEXT, "x_seconds").expect("present");
        let mut after = before;
        after.add_histogram(TEXT, "x_seconds").expect("present");
        let delta = after.since(&before);
        assert_eq!(delta.count, 7.0);
        let mean = delta.mean().expect("flushes").as_secs_f64();
        assert!((mean - 0.0006).abs() < 1e-9, "{mean}");
        assert_eq!(Flushes::default().mean(), None);
        assert!(before.add_histogram(TEXT, "missing").is_none());
    }

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
