//! How much of this node's Raft log is on disk.
//!
//! openraft 0.9 sends a leader's new entries to the followers only after the
//! leader's own flush of them has ended, so every write waits for two
//! flushes in series (the leader's, then a follower's). A leader's own
//! entries are therefore reported to openraft as soon as they are written,
//! and flushed in the background ([`crate::LogStore::for_node`]): the
//! leader's flush overlaps the followers' round trip. openraft then counts
//! the leader in a majority before the leader's copy is durable, so two
//! rules keep "nothing acknowledged, applied or shown before it is durable
//! on a majority":
//!
//! - an entry is applied (its answer sent, its events shown, reads served
//!   from it) only once this node has flushed it: the state machine waits
//!   for [`FlushedLog::reached`];
//! - a leader tells its followers a commit index no further than its own
//!   flushed log ([`FlushedLog::upto`]; the Raft network clamps
//!   `leader_commit`), so no follower applies what the leader could lose.
//!
//! An entry applied anywhere is then durable on the leader and on every
//! follower that acknowledged it, which openraft only does after its flush:
//! a majority. A leader that stops leading saves a new vote first, and that
//! flush covers every entry written before it, so a node never vouches for
//! an unflushed entry as a follower.

use std::io;
use std::sync::{Arc, Mutex};

use openraft::LogId;
use tokio::sync::watch;

use crate::types::NodeId;

/// This node's flushed log: the last log id up to which every entry is on
/// disk, published as flushes end.
#[derive(Clone)]
pub struct FlushedLog {
    inner: Arc<Inner>,
}

struct Inner {
    progress: Mutex<Progress>,
    flushed: watch::Sender<Flushed>,
}

struct Progress {
    /// The last entry written (not necessarily flushed).
    appended: Option<LogId<NodeId>>,
    /// Raised by every truncation: a flush that began before one may have
    /// covered entries that are gone, so it no longer says anything.
    generation: u64,
    /// Whether entries are ever reported before their flush (a node that
    /// knows its id). When not, every entry is flushed before it can be
    /// applied and the gate in [`FlushedLog::reached`] is open.
    overlapped: bool,
}

#[derive(Clone, Debug, Default)]
struct Flushed {
    upto: Option<LogId<NodeId>>,
    failure: Option<String>,
}

/// What one flush will cover once it ends: everything written when it
/// began.
pub(crate) struct FlushTicket {
    generation: u64,
    covers: Option<LogId<NodeId>>,
}

impl FlushedLog {
    /// A log whose every entry, up to `last`, is on disk already.
    pub(crate) fn new(last: Option<LogId<NodeId>>) -> Self {
        let (flushed, _) = watch::channel(Flushed {
            upto: last,
            failure: None,
        });
        FlushedLog {
            inner: Arc::new(Inner {
                progress: Mutex::new(Progress {
                    appended: last,
                    generation: 0,
                    overlapped: false,
                }),
                flushed,
            }),
        }
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.inner
            .progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// From now on some entries may be reported before they are flushed.
    pub(crate) fn overlap(&self) {
        self.progress().overlapped = true;
    }

    /// Entries up to `last` have been written.
    pub(crate) fn appended(&self, last: LogId<NodeId>) {
        self.progress().appended = Some(last);
    }

    /// Call just before a flush begins.
    pub(crate) fn ticket(&self) -> FlushTicket {
        let progress = self.progress();
        FlushTicket {
            generation: progress.generation,
            covers: progress.appended,
        }
    }

    /// A flush begun with `ticket` has ended with `result`.
    pub(crate) fn flushed(&self, ticket: FlushTicket, result: &io::Result<()>) {
        let progress = self.progress();
        match result {
            Err(error) => {
                let failure = format!("flushing the Raft log failed: {error}");
                self.inner
                    .flushed
                    .send_modify(|f| f.failure = Some(failure));
            }
            Ok(()) if ticket.generation == progress.generation => {
                self.inner.flushed.send_if_modified(|f| {
                    // After a failed flush a later one may succeed although
                    // the data of the failed one is lost (the kernel drops
                    // dirty pages it could not write): the mark stays.
                    let further = f.failure.is_none()
                        && ticket.covers.map(|c| c.index) > f.upto.map(|u| u.index);
                    if further {
                        f.upto = ticket.covers;
                    }
                    further
                });
            }
            Ok(()) => {}
        }
    }

    /// The log was cut back to end at `last` (call before the flush that
    /// makes the cut durable): flushes begun before are void, and the
    /// flushed mark moves back to `last` if it was past it.
    pub(crate) fn truncated(&self, last: Option<LogId<NodeId>>) {
        let mut progress = self.progress();
        progress.generation += 1;
        progress.appended = last;
        self.inner.flushed.send_if_modified(|f| {
            let past = f.upto.map(|u| u.index) > last.map(|l| l.index);
            if past {
                f.upto = last;
            }
            past
        });
    }

    /// The last log id up to which every entry is on disk.
    pub fn upto(&self) -> Option<LogId<NodeId>> {
        self.inner.flushed.borrow().upto
    }

    /// The index of [`FlushedLog::upto`] (0: nothing).
    pub fn upto_index(&self) -> u64 {
        self.upto().map(|id| id.index).unwrap_or_default()
    }

    /// Waits until every entry up to `index` is on disk. Fails if a flush
    /// failed: an entry reported early may then never be durable here.
    pub async fn reached(&self, index: u64) -> io::Result<()> {
        if !self.progress().overlapped {
            return Ok(());
        }
        let mut flushed = self.inner.flushed.subscribe();
        let reached = flushed
            .wait_for(|f| f.failure.is_some() || f.upto.is_some_and(|u| u.index >= index))
            .await
            .map_err(io::Error::other)?;
        match &reached.failure {
            Some(failure) => Err(io::Error::other(failure.clone())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::CommittedLeaderId;

    use super::*;

    fn id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn overlapped(last: Option<LogId<NodeId>>) -> FlushedLog {
        let log = FlushedLog::new(last);
        log.overlap();
        log
    }

    async fn reached_soon(log: &FlushedLog, index: u64) -> Option<io::Result<()>> {
        tokio::time::timeout(Duration::from_millis(50), log.reached(index))
            .await
            .ok()
    }

    #[tokio::test]
    async fn an_entry_is_reached_once_a_flush_that_began_after_it_ends() {
        let log = overlapped(Some(id(1, 3)));
        assert!(reached_soon(&log, 3).await.is_some());
        log.appended(id(1, 5));
        let before = log.ticket();
        log.appended(id(1, 6));
        assert!(reached_soon(&log, 5).await.is_none());
        log.flushed(before, &Ok(()));
        assert!(reached_soon(&log, 5).await.is_some());
        assert!(reached_soon(&log, 6).await.is_none());
        assert_eq!(log.upto(), Some(id(1, 5)));
    }

    #[tokio::test]
    async fn flushes_ending_out_of_order_never_move_the_mark_back() {
        let log = overlapped(None);
        log.appended(id(1, 1));
        let first = log.ticket();
        log.appended(id(1, 2));
        let second = log.ticket();
        log.flushed(second, &Ok(()));
        log.flushed(first, &Ok(()));
        assert_eq!(log.upto(), Some(id(1, 2)));
    }

    #[tokio::test]
    async fn a_flush_begun_before_a_truncation_says_nothing_after_it() {
        let log = overlapped(Some(id(1, 2)));
        log.appended(id(1, 4));
        let stale = log.ticket();
        log.flushed(log.ticket(), &Ok(()));
        assert_eq!(log.upto(), Some(id(1, 4)));
        log.truncated(Some(id(1, 2)));
        assert_eq!(log.upto(), Some(id(1, 2)));
        log.appended(id(2, 4));
        log.flushed(stale, &Ok(()));
        assert_eq!(log.upto(), Some(id(1, 2)));
        assert!(reached_soon(&log, 3).await.is_none());
    }

    #[tokio::test]
    async fn a_failed_flush_fails_every_wait() {
        let log = overlapped(None);
        log.appended(id(1, 1));
        let ticket = log.ticket();
        let waiting = tokio::spawn({
            let log = log.clone();
            async move { log.reached(1).await }
        });
        log.flushed(ticket, &Err(io::Error::other("disk gone")));
        let outcome = waiting.await.expect("waiter");
        assert!(outcome.unwrap_err().to_string().contains("disk gone"));
    }

    #[tokio::test]
    async fn nothing_counts_as_flushed_after_a_failed_flush() {
        let log = overlapped(Some(id(1, 1)));
        log.appended(id(1, 2));
        log.flushed(log.ticket(), &Err(io::Error::other("EIO")));
        log.appended(id(1, 3));
        log.flushed(log.ticket(), &Ok(()));
        assert_eq!(log.upto(), Some(id(1, 1)));
    }

    #[tokio::test]
    async fn without_overlap_every_entry_counts_as_flushed() {
        let log = FlushedLog::new(None);
        assert!(reached_soon(&log, 10).await.is_some());
    }
}
