//! The client's session: opened once, kept alive by explicit KeepAlive
//! calls in the background, and the client-side lease derived from them
//! (DESIGN §9): the client counts itself alive only until the send time of
//! its last keep-alive the cluster confirmed, plus the session timeout less
//! a drift margin. The cluster cannot expire the session before that
//! instant, so nothing this client leads can pass to anyone else while the
//! lease still runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::Inner;

/// Keep-alives per session timeout: six leaves room for several to fail in
/// a row (a node dying, an election) before the lease runs out.
const KEEPALIVES_PER_TIMEOUT: u32 = 6;

/// Shortest pause between keep-alives, so a tiny timeout does not spin.
const MIN_KEEPALIVE_INTERVAL: Duration = Duration::from_millis(20);

/// Why a session or a leadership ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// No keep-alive was confirmed in time: the client-side lease ran out
    /// (a pause, a partition, an unreachable cluster).
    LeaseExpired,
    /// The cluster no longer knows the session (it expired there).
    SessionLost(String),
    /// The client closed its session.
    Closed,
    /// Another client leads now (an event showed a new leader or epoch).
    Replaced,
    /// The leader resigned or the leadership was dropped.
    Resigned,
    /// The primitive was deleted (`Delete`): its epochs start again, so
    /// its fencing tokens say nothing any more.
    Deleted,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::LeaseExpired => write!(f, "the client-side lease ran out"),
            Ended::SessionLost(why) => write!(f, "the session was lost: {why}"),
            Ended::Closed => write!(f, "the session was closed"),
            Ended::Replaced => write!(f, "another client leads"),
            Ended::Resigned => write!(f, "resigned"),
            Ended::Deleted => write!(f, "the primitive was deleted"),
        }
    }
}

/// The session as the rest of the library sees it.
#[derive(Debug)]
pub(crate) struct SessionState {
    /// The session's timeout as the cluster last reported it (granted at
    /// open, confirmed by each keep-alive; another OpenSession for the same
    /// client id may change it), in milliseconds.
    timeout_ms: AtomicU64,
    /// Fraction of the timeout given up for clock-rate drift.
    pub margin: f64,
    /// The instant the client-side lease runs out; only ever extended.
    pub lease: watch::Sender<Instant>,
    /// How often the lease was extended after it had run out. The cluster
    /// may have expired the session meanwhile (and an Events stream opened
    /// it again, empty), so whatever this client led before a lapse is
    /// over, even once the lease runs again.
    lapses: AtomicU64,
    /// Cancelled when the session is over for good (lost or closed).
    pub ended: CancellationToken,
    /// Why it ended, once it has.
    pub end: Mutex<Option<Ended>>,
}

impl SessionState {
    pub fn new(timeout: Duration, margin: f64, opened_at: Instant) -> Self {
        let state = SessionState {
            timeout_ms: AtomicU64::new(millis(timeout)),
            margin,
            lease: watch::Sender::new(opened_at),
            lapses: AtomicU64::new(0),
            ended: CancellationToken::new(),
            end: Mutex::new(None),
        };
        state.confirmed(opened_at, timeout);
        // The first grant is no lapse.
        state.lapses.store(0, Ordering::Relaxed);
        state
    }

    /// The state of a session this client does not manage: no lease.
    pub fn unmanaged() -> Self {
        SessionState {
            timeout_ms: AtomicU64::new(0),
            margin: 0.0,
            lease: watch::Sender::new(Instant::now()),
            lapses: AtomicU64::new(0),
            ended: CancellationToken::new(),
            end: Mutex::new(None),
        }
    }

    /// The lease a keep-alive (or open) sent at `sent_at` earns once the
    /// cluster confirms it with the session's `timeout`. The timeout is the
    /// one the cluster reports, not the one asked for: if it has shrunk
    /// (the same client id opened again with a shorter one), the session on
    /// the cluster outlives `sent_at` by no more than that.
    pub fn confirmed(&self, sent_at: Instant, timeout: Duration) {
        self.timeout_ms.store(millis(timeout), Ordering::Relaxed);
        let until = sent_at + timeout.mul_f64(1.0 - self.margin);
        self.lease.send_if_modified(|lease| {
            let later = until > *lease;
            if later {
                if *lease <= Instant::now() {
                    self.lapses.fetch_add(1, Ordering::Relaxed);
                }
                *lease = until;
            }
            later
        });
    }

    /// How often the lease has run out and been extended again.
    pub fn lapses(&self) -> u64 {
        self.lapses.load(Ordering::Relaxed)
    }

    /// Whether the client-side lease still runs and the session is not over.
    pub fn alive(&self) -> bool {
        !self.ended.is_cancelled() && Instant::now() < *self.lease.borrow()
    }

    /// Ends the session for good, remembering the first reason.
    pub fn end(&self, why: Ended) {
        if let Ok(mut end) = self.end.lock() {
            end.get_or_insert(why);
        }
        self.ended.cancel();
    }

    /// Why the session ended, if it has.
    pub fn ended_because(&self) -> Option<Ended> {
        self.end.lock().ok().and_then(|end| end.clone())
    }

    /// The session's timeout as the cluster last reported it.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    fn interval(&self) -> Duration {
        (self.timeout() / KEEPALIVES_PER_TIMEOUT).max(MIN_KEEPALIVE_INTERVAL)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Sends a keep-alive every timeout/6 until the session ends or the client
/// is dropped. A keep-alive may go to any node; each one gets at most one
/// interval, so a dead node costs one beat, not the lease.
pub(crate) async fn keep_alive(client: Weak<Inner>, session: Arc<SessionState>) {
    let mut next = Instant::now() + session.interval();
    loop {
        tokio::select! {
            _ = session.ended.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let Some(inner) = client.upgrade() else {
            return;
        };
        // Each round, as the session's timeout is now.
        let interval = session.interval();
        next = Instant::now() + interval;
        match inner.renew(interval).await {
            Ok(_) => {}
            // A lost session ended itself in `renew`.
            Err(_) if session.ended.is_cancelled() => {
                tracing::warn!(client_id = %inner.client_id, "session lost");
                return;
            }
            Err(e) => tracing::debug!(client_id = %inner.client_id, "keep-alive failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_follows_the_timeout_the_cluster_reports() {
        let opened = Instant::now();
        let session = SessionState::new(Duration::from_secs(10), 0.0, opened);
        assert_eq!(*session.lease.borrow(), opened + Duration::from_secs(10));
        // The same client id opened again with 2 s: the cluster keeps the
        // current expiry but renews by 2 s from now on.
        session.confirmed(opened + Duration::from_secs(9), Duration::from_secs(2));
        assert_eq!(*session.lease.borrow(), opened + Duration::from_secs(11));
        assert_eq!(session.timeout(), Duration::from_secs(2));
        assert_eq!(session.interval(), Duration::from_secs(2) / 6);
        // A confirmation never shortens a lease already earned.
        session.confirmed(opened + Duration::from_secs(1), Duration::from_secs(2));
        assert_eq!(*session.lease.borrow(), opened + Duration::from_secs(11));
        assert_eq!(session.lapses(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_extended_after_it_ran_out_counts_a_lapse() {
        let session = SessionState::new(Duration::from_secs(1), 0.0, Instant::now());
        assert_eq!(session.lapses(), 0);
        session.confirmed(Instant::now(), Duration::from_secs(1));
        assert_eq!(session.lapses(), 0, "renewed in time");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!session.alive());
        session.confirmed(Instant::now(), Duration::from_secs(1));
        assert!(session.alive());
        assert_eq!(session.lapses(), 1);
    }
}
