//! Raft snapshots as files beside sled's database.
//!
//! A snapshot used to be built as a deep copy of the whole state, encoded
//! into one buffer and stored as a sled value (sled copies it again): at
//! 100,000 sessions and primitives that was ~170 MB on top of the ~200 MB
//! the node holds, every 10,000 commands. Now the copy shares the state's
//! persistent maps, it is encoded straight into a file, and only the file's
//! name and openraft's metadata go into sled; openraft reads and writes
//! snapshot data through [`SnapshotFile`], so sending one to a follower or
//! receiving one never holds it in memory either.
//!
//! Files are named by a number that only grows (`00000000000000000042`)
//! and are never rewritten: a file is complete and synced before sled
//! names it, and the file sled named before is removed only after that.
//! Anything else in the directory is left over from a crash or an aborted
//! transfer and removed at startup.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// The directory inside the data directory.
const DIR: &str = "snapshots";
/// Encoding writes go out in pieces this large.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// The snapshot directory of one node.
#[derive(Clone)]
pub(crate) struct SnapshotFiles {
    dir: Arc<PathBuf>,
    next: Arc<AtomicU64>,
}

impl SnapshotFiles {
    /// Opens (or creates) the directory inside `data_dir`. New files are
    /// numbered after every file already there.
    pub(crate) fn open(data_dir: &Path) -> io::Result<Self> {
        let dir = data_dir.join(DIR);
        if !dir.exists() {
            std::fs::create_dir(&dir)?;
            File::open(data_dir)?.sync_all()?;
        }
        let mut next = 0;
        for entry in std::fs::read_dir(&dir)? {
            if let Some(number) = number_of(&entry?.file_name().to_string_lossy()) {
                next = next.max(number.saturating_add(1));
            }
        }
        Ok(SnapshotFiles {
            dir: Arc::new(dir),
            next: Arc::new(AtomicU64::new(next)),
        })
    }

    /// A name no file has had.
    fn new_name(&self) -> String {
        format!("{:020}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Where the file called `name` is.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `value` as JSON into a new file (not yet synced) and returns
    /// its name; a file that could not be written whole is removed.
    pub(crate) fn write_json<T: serde::Serialize>(&self, value: &T) -> io::Result<String> {
        self.write_new(|writer| Ok(serde_json::to_writer(writer, value)?))
    }

    /// Writes `bytes` into a new file (not yet synced) and returns its name.
    pub(crate) fn write_bytes(&self, bytes: &[u8]) -> io::Result<String> {
        self.write_new(|writer| writer.write_all(bytes))
    }

    fn write_new(
        &self,
        write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
    ) -> io::Result<String> {
        let name = self.new_name();
        let written = File::create(self.path(&name)).and_then(|file| {
            let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
            write(&mut writer)?;
            writer.flush()
        });
        match written {
            Ok(()) => Ok(name),
            Err(error) => {
                self.remove_or_warn(&name);
                Err(error)
            }
        }
    }

    /// Makes the file called `name`, and its entry in the directory, durable.
    pub(crate) fn sync(&self, name: &str) -> io::Result<()> {
        File::open(self.path(name))?.sync_all()?;
        File::open(self.dir.as_path())?.sync_all()
    }

    /// The whole content of the file called `name`.
    pub(crate) fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(name))
            .map_err(|e| io::Error::new(e.kind(), format!("snapshot file {name}: {e}")))
    }

    /// Removes the file called `name`; one that is already gone is fine.
    fn remove(&self, name: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(name)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// Removes the file called `name`, or says why it could not: the
    /// snapshot that replaced it is stored either way, and a file left
    /// behind is removed at the next start.
    pub(crate) fn remove_or_warn(&self, name: &str) {
        if let Err(error) = self.remove(name) {
            tracing::warn!(%error, file = %name, "cannot remove a snapshot file");
        }
    }

    /// Removes every file but `keep`: what a crash or an aborted transfer
    /// left behind.
    pub(crate) fn remove_all_but(&self, keep: Option<&str>) -> io::Result<()> {
        for entry in std::fs::read_dir(self.dir.as_path())? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if Some(name.as_ref()) != keep {
                tracing::info!(file = %name, "removing a snapshot file no snapshot refers to");
                self.remove(&name)?;
            }
        }
        Ok(())
    }

    /// Opens the file called `name` for openraft to read.
    pub(crate) async fn open_file(&self, name: &str) -> io::Result<SnapshotFile> {
        let path = self.path(name);
        Ok(SnapshotFile {
            file: tokio::fs::File::open(&path).await?,
            path,
        })
    }

    /// Creates a new, empty file for openraft to write a received snapshot into.
    pub(crate) async fn create_file(&self) -> io::Result<SnapshotFile> {
        let path = self.path(&self.new_name());
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok(SnapshotFile { file, path })
    }

    /// The name of `file` if it is in this directory (openraft may hand
    /// over any snapshot data it holds, not only what it received here).
    pub(crate) fn name_of(&self, file: &SnapshotFile) -> Option<String> {
        if file.path.parent() != Some(self.dir.as_path()) {
            return None;
        }
        Some(file.path.file_name()?.to_string_lossy().into_owned())
    }
}

/// The number a snapshot file is named by (digits only, so that a name
/// can only be a file in the snapshot directory).
fn number_of(name: &str) -> Option<u64> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// A snapshot file name as stored (in sled), checked to be one this
/// directory gives out.
pub(crate) fn stored_name(stored: &[u8]) -> io::Result<String> {
    match std::str::from_utf8(stored)
        .ok()
        .filter(|name| number_of(name).is_some())
    {
        Some(name) => Ok(name.to_owned()),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("stored snapshot file name {stored:?} is not a number"),
        )),
    }
}

/// openraft's snapshot data: one file in the snapshot directory, read when
/// a snapshot is sent to a follower and written while one is received.
#[derive(Debug)]
pub struct SnapshotFile {
    file: tokio::fs::File,
    path: PathBuf,
}

impl SnapshotFile {
    /// Everything in the file, once what openraft wrote into it is written out.
    pub(crate) async fn read_all(&mut self) -> io::Result<Vec<u8>> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
        self.file.flush().await?;
        self.file.seek(io::SeekFrom::Start(0)).await?;
        let mut data = Vec::new();
        self.file.read_to_end(&mut data).await?;
        Ok(data)
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}
