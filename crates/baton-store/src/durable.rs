//! Durable flushes of the sled database. sled 0.34 ends a flush on Linux
//! with `sync_file_range`, which writes the data out but neither the file's
//! metadata (its size, as the log file grows) nor the device's write cache,
//! and it writes large values into `blobs/` files without syncing them at
//! all: enough to survive a crash of the process, not a power loss. Every
//! flush here follows sled's with `fdatasync` of its file and an `fsync` of
//! every blob file not yet synced, so what Raft is told is on disk is.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// sled's log file and blob directory inside its data directory.
const SLED_FILE: &str = "db";
const BLOB_DIR: &str = "blobs";

/// A handle that flushes the database durably.
#[derive(Clone)]
pub(crate) struct Durable {
    db: sled::Db,
    inner: Arc<Inner>,
}

struct Inner {
    file: File,
    blob_dir: PathBuf,
    /// Blob files synced so far, with the length they had: a blob still
    /// being written when listed is synced again once it has grown.
    synced_blobs: Mutex<HashSet<(PathBuf, u64)>>,
    seconds: Histogram,
    /// The first flush that failed. Every later flush fails with it: after
    /// a failed fsync the kernel may have dropped the pages it could not
    /// write and marked them clean, so a later fsync that succeeds says
    /// nothing of them, and nothing written before may be vouched for.
    failed: Mutex<Option<String>>,
}

impl Durable {
    /// Wraps `db`, opened in `dir`. Syncs the directory and its parent
    /// once, so a freshly created database (its files, and the directory's
    /// own entry) survives a power loss too.
    pub(crate) fn open(dir: &Path, db: &sled::Db) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).open(dir.join(SLED_FILE))?;
        File::open(dir)?.sync_all()?;
        let parent = match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        // Only a fresh directory needs its entry synced, and a parent the
        // node may not read (a volume's mount point) must not stop it.
        if let Err(error) = File::open(parent).and_then(|parent| parent.sync_all()) {
            tracing::warn!(%error, parent = %parent.display(), "cannot sync the data directory's parent");
        }
        Ok(Durable {
            db: db.clone(),
            inner: Arc::new(Inner {
                file,
                blob_dir: dir.join(BLOB_DIR),
                synced_blobs: Mutex::new(HashSet::new()),
                seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
                failed: Mutex::new(None),
            }),
        })
    }

    /// Flushes everything written so far to stable storage.
    pub(crate) fn flush_blocking(&self) -> io::Result<()> {
        let began = Instant::now();
        let flushed = self.flush_once();
        let mut failed = self
            .inner
            .failed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match (&flushed, failed.as_ref()) {
            (_, Some(failure)) => Err(io::Error::other(format!(
                "an earlier durable flush failed: {failure}"
            ))),
            (Ok(()), None) => {
                self.inner.seconds.observe(began.elapsed().as_secs_f64());
                Ok(())
            }
            (Err(error), None) => {
                *failed = Some(error.to_string());
                flushed
            }
        }
    }

    fn flush_once(&self) -> io::Result<()> {
        // Blobs first: a durable log record must not point at a blob that
        // is not on disk yet. sled writes a blob before the record that
        // points at it, so those of everything written so far are there to
        // sync; until session 14 they were synced after sled's flush, which
        // had already sent the records to the disk.
        self.sync_new_blobs()?;
        self.db.flush().map_err(io::Error::from)?;
        self.inner.file.sync_data()
    }

    /// How long durable flushes took (seconds, 50 µs … 1.6 s).
    pub(crate) fn seconds(&self) -> Histogram {
        self.inner.seconds.clone()
    }

    /// [`Durable::flush_blocking`] from async code. On a multi-threaded
    /// runtime the flush runs in place, its worker's other tasks moving to
    /// another thread: the caller (openraft's core) waits for it anyway, and
    /// handing it to the blocking pool cost ~0.1 ms of thread wake-ups per
    /// flush. A single-threaded runtime cannot do that and uses the pool.
    pub(crate) async fn flush(&self) -> io::Result<()> {
        let this = self.clone();
        let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
        if matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::MultiThread)) {
            return tokio::task::block_in_place(move || this.flush_blocking());
        }
        tokio::task::spawn_blocking(move || this.flush_blocking())
            .await
            .map_err(io::Error::other)?
    }

    fn sync_new_blobs(&self) -> io::Result<()> {
        let entries = match std::fs::read_dir(&self.inner.blob_dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        let mut synced = self
            .inner
            .synced_blobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut present = HashSet::new();
        for entry in entries {
            let entry = entry?;
            match entry.metadata() {
                Ok(metadata) => {
                    present.insert((entry.path(), metadata.len()));
                }
                // sled may remove an obsolete blob at any time.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        // Blobs sled has deleted are forgotten, so the set stays small.
        synced.retain(|blob| present.contains(blob));
        let mut any_new = false;
        for blob in present {
            if synced.contains(&blob) {
                continue;
            }
            match File::open(&blob.0) {
                Ok(file) => file.sync_all()?,
                // sled may remove an obsolete blob at any time.
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            }
            synced.insert(blob);
            any_new = true;
        }
        if any_new {
            File::open(&self.inner.blob_dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_failed_flush_every_flush_fails() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let durable = Durable::open(dir.path(), &db).unwrap();
        durable.flush_blocking().unwrap();
        // As a failed fdatasync leaves it (EIO: pages dropped, marked clean).
        *durable.inner.failed.lock().unwrap() = Some("Input/output error".into());
        db.insert(b"k", b"v").unwrap();
        let error = durable.flush_blocking().unwrap_err();
        assert!(
            error.to_string().contains("earlier durable flush failed"),
            "{error}"
        );
    }
}
