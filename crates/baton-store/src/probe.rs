//! What one durable log append costs on a disk, without Raft or a network:
//! the same sled configuration and the same durable flush the log store
//! uses. For the benchmark, and for operators sizing a disk.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::durable::Durable;
use crate::OpenError;

/// Opens a scratch database in `dir` (which should be empty) and times
/// `appends` sequential appends of `bytes` bytes, each made durable before
/// the next, as the log store does for every entry.
pub fn durable_appends(
    dir: &Path,
    appends: usize,
    bytes: usize,
) -> Result<Vec<Duration>, OpenError> {
    let db = crate::sled_config(dir).open()?;
    let durable = Durable::open(dir, &db)?;
    let value = vec![0xA5u8; bytes];
    let mut times = Vec::with_capacity(appends);
    for index in 0..appends as u64 {
        let began = Instant::now();
        db.insert(index.to_be_bytes(), value.as_slice())?;
        durable.flush_blocking()?;
        times.push(began.elapsed());
    }
    Ok(times)
}
