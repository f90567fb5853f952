//! Leadership as a value: held from the moment the cluster names this
//! client leader until the first of an event naming someone else, the
//! session's end, the client-side lease running out, or a resignation.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::feed::spawn_feed;
use crate::session::{Ended, SessionState};
use crate::transport::is_transient;
use crate::view::{Kind, View};

/// How the cluster is told when a leadership is let go.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Release {
    /// Withdraw the candidacy (elections).
    Withdraw,
    /// Leave the latch (`PrimitiveService.Close`).
    Leave,
}

#[derive(Debug)]
struct Shared {
    client: Client,
    kind: Kind,
    name: String,
    epoch: u64,
    leader_since: Option<SystemTime>,
    /// The session's lease lapses when the leadership began: one more, and
    /// it is over (see [`crate::session::SessionState`]).
    lapses: u64,
    lost: CancellationToken,
    why: Mutex<Option<Ended>>,
}

impl Shared {
    fn end(&self, why: Ended) {
        if let Ok(mut slot) = self.why.lock() {
            slot.get_or_insert(why);
        }
        self.lost.cancel();
    }

    fn reason(&self) -> Ended {
        self.why
            .lock()
            .ok()
            .and_then(|why| why.clone())
            .unwrap_or(Ended::Resigned)
    }
}

/// This client leads a latch or an election. `epoch` is the fencing token:
/// hand it to every resource the leader writes, and let the resource refuse
/// tokens lower than the highest it has seen.
///
/// [`Leadership::is_leader`] turns false, and [`Leadership::lost`]
/// resolves, at the first of: an event showing another leader or a newer
/// epoch, an event showing the primitive deleted (an epoch below this one
/// that a linearizable read confirms: such an event may also be a state
/// from before the leadership, when the feed opened first), the session
/// ending, or the client-side lease running out (the send
/// time of the last confirmed keep-alive + session timeout × (1 − margin)).
/// The lease alone makes a paused or cut-off client stop before the cluster
/// can expire its session and name the next leader.
///
/// Dropping it lets go at once, like `resign` without waiting.
#[derive(Debug)]
pub struct Leadership {
    shared: Arc<Shared>,
    release: Option<Release>,
}

impl Leadership {
    /// Starts watching a leadership the cluster granted at `view`, using
    /// `feed` (already subscribed) for later changes.
    pub(crate) fn start(
        client: Client,
        kind: Kind,
        name: String,
        view: &View,
        lapses: u64,
        feed: Feed,
        release: Release,
    ) -> Leadership {
        let shared = Arc::new(Shared {
            client,
            kind,
            name,
            epoch: view.epoch,
            leader_since: view.leader_since,
            lapses,
            lost: CancellationToken::new(),
            why: Mutex::new(None),
        });
        tokio::spawn(watch(shared.clone(), feed));
        Leadership {
            shared,
            release: Some(release),
        }
    }

    /// The leadership epoch: the fencing token.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    /// When this leadership began (the cluster's clock).
    pub fn leader_since(&self) -> Option<SystemTime> {
        self.shared.leader_since
    }

    /// The latch or election led.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether this client may still act as leader, checked against the
    /// clock now (not when a background task last looked).
    pub fn is_leader(&self) -> bool {
        let session = &self.shared.client.inner.session;
        !self.shared.lost.is_cancelled()
            && session.alive()
            && session.lapses() == self.shared.lapses
    }

    /// Resolves when the leadership ends, with the reason.
    pub async fn lost(&self) -> Ended {
        self.shared.lost.cancelled().await;
        self.shared.reason()
    }

    /// A token cancelled when the leadership ends: give it to the work that
    /// must stop with it.
    pub fn token(&self) -> CancellationToken {
        self.shared.lost.child_token()
    }

    /// Stops leading (locally first, so nothing acts on it any more) and
    /// tells the cluster: this client withdraws from the election or leaves
    /// the latch; its session stays open. An error the cluster may get over
    /// (it is unavailable, the call timed out) is returned, and the library
    /// goes on telling it in the background until it lands or the session
    /// ends.
    pub async fn resign(mut self) -> Result<()> {
        let Some(release) = self.release.take() else {
            return Ok(());
        };
        self.shared.end(Ended::Resigned);
        let request_id = match self.shared.client.inner.write_id().await {
            Ok(request_id) => request_id,
            Err(e) => {
                let request_id = crate::transport::next_request_id();
                release_in_background(&Handle::current(), self.shared.clone(), release, request_id);
                return Err(e);
            }
        };
        match let_go(&self.shared, release, request_id).await {
            Err(e) if worth_retrying(&e) && self.shared.client.is_alive() => {
                release_in_background(&Handle::current(), self.shared.clone(), release, request_id);
                Err(e)
            }
            answer => answer,
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        let Some(release) = self.release.take() else {
            return;
        };
        self.shared.end(Ended::Resigned);
        if let Ok(runtime) = Handle::try_current() {
            // Numbered now, below every write this client makes after the
            // drop (those wait for it to land: `Inner::write_id`).
            let request_id = crate::transport::next_request_id();
            release_in_background(&runtime, self.shared.clone(), release, request_id);
        }
    }
}

/// First pause before a release is tried again; it doubles up to
/// [`RELEASE_RETRY_MAX`].
const RELEASE_RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between tries of a release.
const RELEASE_RETRY_MAX: Duration = Duration::from_secs(2);

/// Lets go in the background, trying again what the cluster could not take
/// (an outage, a leader change) until it lands, is refused, or the session
/// ends: a release given up would leave this client first in line for as
/// long as its process keeps the session alive. Counted in
/// `Inner::releases` meanwhile, so later writes wait for it.
fn release_in_background(runtime: &Handle, shared: Arc<Shared>, release: Release, request_id: u64) {
    let pending = PendingRelease::new(&shared.client.inner.releases);
    runtime.spawn(async move {
        let _pending = pending;
        let mut pause = RELEASE_RETRY_FIRST;
        loop {
            match let_go(&shared, release, request_id).await {
                Ok(()) => return,
                Err(e) if worth_retrying(&e) && shared.client.is_alive() => {
                    tracing::debug!(name = %shared.name, "letting go failed, trying again: {e}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RELEASE_RETRY_MAX);
                }
                Err(e) => {
                    tracing::warn!(name = %shared.name, "letting go of a leadership failed: {e}");
                    return;
                }
            }
        }
    });
}

/// Whether a release that failed this way may land if tried again.
fn worth_retrying(error: &Error) -> bool {
    error
        .status()
        .is_some_and(|status| is_transient(status) || status.code() == Code::DeadlineExceeded)
}

/// One release on its way, counted in `Inner::releases` until it is
/// dropped: also when its task is cancelled (its runtime shut down), or
/// every later write of the client would wait for it for ever.
struct PendingRelease(tokio::sync::watch::Sender<usize>);

impl PendingRelease {
    fn new(releases: &tokio::sync::watch::Sender<usize>) -> Self {
        releases.send_modify(|pending| *pending += 1);
        PendingRelease(releases.clone())
    }
}

impl Drop for PendingRelease {
    fn drop(&mut self) {
        self.0
            .send_modify(|pending| *pending = pending.saturating_sub(1));
    }
}

async fn let_go(shared: &Shared, release: Release, request_id: u64) -> Result<()> {
    match release {
        Release::Withdraw => shared
            .client
            .election(shared.name.clone())
            .withdraw_as(request_id)
            .await
            .map(|_| ()),
        Release::Leave => {
            crate::lifecycle::close(&shared.client, Kind::Latch, &shared.name, request_id).await
        }
    }
}

/// Ends the leadership at the first sign it is over; `is_leader` does not
/// wait for this task, it reads the lease itself.
async fn watch(shared: Arc<Shared>, mut feed: Feed) {
    let _stop_feed = feed.stop.clone().drop_guard();
    let session = shared.client.inner.session.clone();
    // One future for the session's side, raced against the feed and
    // against the read that may settle a view (which can take a call's
    // time): the lease and the session end the leadership first.
    let session_over = async {
        tokio::select! {
            _ = session.ended.cancelled() => session.ended_because().unwrap_or(Ended::Closed),
            _ = lease_runs_out(&session) => Ended::LeaseExpired,
        }
    };
    tokio::pin!(session_over);
    let me = shared.client.client_id().to_owned();
    let mut feed_open = true;
    loop {
        // A lapse while this task was busy elsewhere (confirming a view).
        if session.lapses() != shared.lapses {
            shared.end(Ended::LeaseExpired);
            return;
        }
        let fed = tokio::select! {
            biased;
            _ = shared.lost.cancelled() => return,
            why = &mut session_over => {
                shared.end(why);
                return;
            }
            fed = feed.recv(), if feed_open => fed,
        };
        let verdict = match fed {
            Some(Ok(fed)) => tokio::select! {
                biased;
                why = &mut session_over => Some(why),
                verdict = still_leading(&shared, &me, fed) => verdict,
            },
            Some(Err(e)) => Some(Ended::SessionLost(e.to_string())),
            // The feed stopped without an error: only the lease and the
            // session can end the leadership now.
            None => {
                feed_open = false;
                None
            }
        };
        if let Some(why) = verdict {
            shared.end(why);
            return;
        }
    }
}

/// Resolves once the session's lease has run out (it may be extended while
/// this waits).
async fn lease_runs_out(session: &SessionState) {
    let mut lease = session.lease.subscribe();
    loop {
        let until = *lease.borrow_and_update();
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {
                if *lease.borrow() <= Instant::now() {
                    return;
                }
            }
            changed = lease.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Whether a view from the feed leaves the leadership standing: `None` if
/// it does, else why it ended.
///
/// A newer epoch, or this epoch led by someone else, ends it at once. An
/// older epoch, or one lower than the view before it, is ambiguous: the
/// feed opens in the background while the join runs, so its first states
/// may come from before this leadership; but they may also come from after
/// a Delete (whose epochs start again), when the feed opened only after it
/// and never saw it happen. The current state (a linearizable read) tells.
async fn still_leading(shared: &Shared, me: &str, fed: Fed) -> Option<Ended> {
    let (view, went_back) = match fed {
        Fed::Next(view) => (view, false),
        Fed::Deleted(view) => (view, true),
    };
    if !went_back && view.epoch >= shared.epoch {
        let replaced = view.epoch > shared.epoch || !view.is_led_by(me);
        return replaced.then_some(Ended::Replaced);
    }
    match current(&shared.client, shared.kind, &shared.name).await {
        Ok(now) if now.epoch == shared.epoch && now.is_led_by(me) => None,
        Ok(now) if now.epoch < shared.epoch => Some(Ended::Deleted),
        Ok(_) => Some(Ended::Replaced),
        // Unable to tell: a leader that cannot show it still leads stops.
        Err(e) => Some(Ended::SessionLost(format!(
            "could not confirm the leadership after a change: {e}"
        ))),
    }
}

/// Subscribes to `name`'s changes, then runs `join` (enter or latch) and
/// waits up to `wait` (forever if `None`) until the cluster names this
/// client leader: `Ok(None)` if it did not by then.
pub(crate) async fn lead_after(
    client: &Client,
    kind: Kind,
    name: &str,
    join: impl Future<Output = Result<View>>,
    wait: Option<Duration>,
    release: Release,
) -> Result<Option<Leadership>> {
    if !client.inner.managed {
        return Err(tonic::Status::failed_precondition(
            "only a client that keeps its own session alive can lead (use connect, not attach)",
        )
        .into());
    }
    // A dropped leadership's withdraw reaches the cluster before the join
    // is sent (its request id waits for it: `Inner::write_id`), or it
    // would undo what the join wins.
    let stop = CancellationToken::new();
    let stop_unless_led = stop.clone().drop_guard();
    // Subscribed before joining, so the change that makes this client
    // leader cannot fall between the two.
    let mut feed = Feed {
        views: spawn_feed(client.clone(), kind, name.to_owned(), stop.clone()),
        stop,
        last_epoch: None,
    };
    // The lease's lapses when the request whose answer is `view` was sent:
    // an answer that took longer than a lapse and a renewal may name this
    // client leader of a session the cluster has since expired (and a
    // late request opened again), so only an answer sent and received
    // within one run of the lease may start a leadership.
    let mut sent_in = client.inner.session.lapses();
    let mut view = join.await?;
    // Whether `view` came from the feed, which opened before the join: it
    // may show a state from before the join, even from before a Delete
    // (when this client may have led the primitive's earlier life).
    let mut from_feed = false;
    let me = client.client_id().to_owned();
    let deadline = wait.map(|w| Instant::now() + w);
    let mut lease = client.inner.session.lease.subscribe();
    loop {
        let stands = view.members.contains(&me);
        let named = view.is_led_by(&me) && client.is_alive();
        let stale = client.inner.session.lapses() != sent_in;
        if (from_feed || stale) && (named || !stands) {
            // Only the current state, read within this run of the lease,
            // may start a leadership or end the wait: the feed's may be
            // from before the join.
            (sent_in, view) = current_in_lease(client, kind, name).await?;
            from_feed = false;
            continue;
        }
        if !stands {
            return Err(tonic::Status::aborted(format!(
                "this client no longer stands in {name:?} (evicted, or the primitive deleted)"
            ))
            .into());
        }
        if named {
            stop_unless_led.disarm();
            let leadership = Leadership::start(
                client.clone(),
                kind,
                name.to_owned(),
                &view,
                sent_in,
                feed,
                release,
            );
            return Ok(Some(leadership));
        }
        // Named leader while the lease has lapsed: no change may come to
        // say so again, so the lease running again is news too (only from
        // now on: renewals before the lapse are no news).
        let lapsed = view.is_led_by(&me);
        lease.borrow_and_update();
        let next = tokio::select! {
            next = feed.recv() => next,
            Ok(()) = lease.changed(), if lapsed => {
                if client.is_alive() {
                    (sent_in, view) = current_in_lease(client, kind, name).await?;
                    from_feed = false;
                }
                continue;
            }
            _ = until(deadline) => return Ok(None),
        };
        match next {
            Some(Ok(Fed::Next(newer))) if newer.epoch >= view.epoch => {
                view = newer;
                from_feed = true;
            }
            // An epoch that went back, or a view older than the join's
            // answer: either from before the join (the feed may open
            // first), or the primitive was deleted, before or after the
            // join — a feed that opened only after the Delete starts below
            // the join's epoch and never hears of it. The current state
            // says whether this client still stands.
            Some(Ok(Fed::Deleted(_) | Fed::Next(_))) => {
                (sent_in, view) = current_in_lease(client, kind, name).await?;
                from_feed = false;
            }
            Some(Err(e)) => return Err(e),
            None => {
                client.inner.check_session()?;
                return Err(Error::SessionLost("the events feed stopped".into()));
            }
        }
    }
}

/// Resolves at `deadline`, never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `name`'s state now, with the lease's lapses when the read was sent
/// (see `sent_in` in [`lead_after`]).
async fn current_in_lease(client: &Client, kind: Kind, name: &str) -> Result<(u64, View)> {
    let sent_in = client.inner.session.lapses();
    Ok((sent_in, current(client, kind, name).await?))
}

/// `name`'s state now (a linearizable read).
async fn current(client: &Client, kind: Kind, name: &str) -> Result<View> {
    match kind {
        Kind::Latch => client.latch(name.to_owned()).get().await,
        Kind::Election => client.election(name.to_owned()).term().await,
    }
}

/// A primitive's views, subscribed before the join, handed on from
/// [`lead_after`] to the leadership's watch with what was taken from it.
pub(crate) struct Feed {
    views: mpsc::Receiver<Result<View>>,
    /// Stops the feed's task.
    stop: CancellationToken,
    /// The epoch of the last view taken.
    last_epoch: Option<u64>,
}

/// A view taken from a [`Feed`].
enum Fed {
    /// The next state.
    Next(View),
    /// A state whose epoch is below the one before it: the primitive was
    /// deleted since (only Delete lowers an epoch).
    Deleted(View),
}

impl Feed {
    async fn recv(&mut self) -> Option<Result<Fed>> {
        let view = match self.views.recv().await? {
            Ok(view) => view,
            Err(error) => return Some(Err(error)),
        };
        let went_back = self.last_epoch.is_some_and(|last| view.epoch < last);
        self.last_epoch = Some(view.epoch);
        Some(Ok(if went_back {
            Fed::Deleted(view)
        } else {
            Fed::Next(view)
        }))
    }
}
