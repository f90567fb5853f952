//! Time on the Raft leader: log stamps that never go back and, within one
//! term, advance with the leader's monotonic clock (DESIGN §3), so an NTP
//! step on the leader can neither expire healthy sessions early nor keep
//! dead ones alive. The wall clock is read once per term, as a label.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use baton_store::StateHandle;

/// Wall-clock milliseconds since the Unix epoch.
///
/// Debug builds (the ones the tests run) add the offset in milliseconds
/// written in the file named by `BATON_TEST_CLOCK_SKEW_FILE`, so a test can
/// step a node's wall clock as NTP would; release builds have no such hook.
pub fn wall_clock_ms() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    now.saturating_add_signed(test_skew_ms())
}

fn test_skew_ms() -> i64 {
    crate::test_hooks::read("BATON_TEST_CLOCK_SKEW_FILE")
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// Where one term's clock started.
#[derive(Debug, Clone, Copy)]
struct TermStart {
    term: u64,
    wall_ms: u64,
    at: Instant,
}

/// The leader's clock: per term, the wall time read when the term's first
/// stamp was taken, advanced by the monotonic time elapsed since.
#[derive(Debug, Default)]
pub struct LeaderClock {
    start: Mutex<Option<TermStart>>,
}

impl LeaderClock {
    /// The time in `term`, never below `floor_ms` at the term's start (the
    /// latest applied stamp, which a previous leader may have set ahead of
    /// this node's wall clock). A caller still working for an older term
    /// gets the current term's time; only a newer term restarts the clock.
    pub fn now_ms(&self, term: u64, floor_ms: u64) -> u64 {
        let mut start = self.start.lock().unwrap_or_else(|p| p.into_inner());
        let current = match *start {
            Some(current) if current.term >= term => current,
            _ => {
                let fresh = TermStart {
                    term,
                    wall_ms: wall_clock_ms().max(floor_ms),
                    at: Instant::now(),
                };
                *start = Some(fresh);
                fresh
            }
        };
        let elapsed = u64::try_from(current.at.elapsed().as_millis()).unwrap_or(u64::MAX);
        current.wall_ms.saturating_add(elapsed)
    }
}

/// The stamps a leader puts on its entries: its term clock, never below a
/// stamp already issued or applied.
pub struct EntryStamps {
    clock: LeaderClock,
    last: AtomicU64,
    state: StateHandle,
}

impl EntryStamps {
    /// Stamps for the node whose applied state is `state`.
    pub fn new(state: StateHandle) -> Self {
        EntryStamps {
            clock: LeaderClock::default(),
            last: AtomicU64::new(0),
            state,
        }
    }

    /// The leader's time in `term`, never below the latest applied stamp.
    pub fn now_ms(&self, term: u64) -> u64 {
        let floor = self.state.read(|machine, _| machine.now_ms());
        self.clock.now_ms(term, floor)
    }

    /// The stamp for the next entry proposed in `term`.
    pub fn next(&self, term: u64) -> u64 {
        let candidate = self.now_ms(term);
        let previous = self.last.fetch_max(candidate, Ordering::SeqCst);
        previous.max(candidate)
    }
}
