//! Renews, on their behalf, the sessions of clients that hold an Events
//! stream on this node or read from it: one replicated keep-alive entry per
//! tick carries every client that is due.
//!
//! It also gives each stream its **lease** (DESIGN §4): a stream may stay
//! open only while this node keeps its client's session alive. The lease
//! runs until the send time of the last keep-alive the cluster committed
//! for the client plus a third of its session timeout; the session cannot
//! expire before that send time plus the whole timeout, so a stream whose
//! node is cut off ends well before the majority could hand its client's
//! places to anyone else. Renewing every sixth of the timeout keeps a
//! healthy stream's lease from running out.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_state::{Command, Response};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::replication::Replicator;

/// How often due sessions are collected into a keep-alive entry.
pub const TICK: Duration = Duration::from_millis(50);
/// A session is renewed once this fraction of its timeout has passed since
/// its last confirmed renewal.
const RENEW_DIVISOR: u32 = 6;
/// A stream's lease lasts this fraction of the session timeout past the
/// last confirmed renewal.
const LEASE_DIVISOR: u32 = 3;

/// Clients one keep-alive command renews at most: a node with many
/// streaming clients renews them in several commands, which group commit
/// packs into entries of bounded size. One command for all of them made
/// one entry of ~45 bytes per client (4.5 MB for 100,000 streams), and
/// openraft gives every AppendEntries one heartbeat interval, a single
/// entry included, so such an entry would never have reached a follower.
const KEEP_ALIVE_IDS: usize = 512;

/// The last keep-alive the cluster committed for a client.
#[derive(Debug, Clone, Copy)]
struct Confirmed {
    /// When it was sent (before it could have been stamped by the leader).
    sent_at: Instant,
    /// The session timeout it confirmed, or the client's session's timeout
    /// now if that is shorter: a session closed and opened again with a
    /// shorter timeout may expire that much sooner after `sent_at`.
    timeout: Duration,
}

impl Confirmed {
    fn lease_end(&self) -> Instant {
        self.sent_at + self.timeout / LEASE_DIVISOR
    }
}

#[derive(Default)]
struct Clients {
    /// Open streams per client.
    streams: HashMap<String, usize>,
    /// Connection-bound identities whose connection is open.
    connections: HashMap<String, usize>,
    /// Clients that read since the last tick.
    touched: HashSet<String>,
    /// Last confirmed renewal per client; forgotten once neither a stream
    /// nor a live session needs it, so departed clients leave nothing.
    confirmed: HashMap<String, Confirmed>,
}

/// Tracks which clients this node keeps alive.
#[derive(Clone, Default)]
pub struct SessionKeeper {
    clients: Arc<Mutex<Clients>>,
    /// Bumped whenever some client's lease got shorter, so that streams
    /// waiting for their lease's old end look again.
    shortened: Arc<watch::Sender<u64>>,
}

/// What keeps a client's session alive on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldKind {
    /// An open Events stream (one hold per stream).
    Stream,
    /// An open connection of a connection-bound identity (`identity.rs`).
    Connection,
}

/// Keeps a client's session alive while it exists.
pub struct Hold {
    keeper: SessionKeeper,
    client_id: String,
    kind: HoldKind,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut clients = self.keeper.lock();
        let holds = clients.holds_of(self.kind);
        if let Some(count) = holds.get_mut(&self.client_id) {
            *count -= 1;
            if *count == 0 {
                holds.remove(&self.client_id);
            }
        }
    }
}

impl Clients {
    fn holds_of(&mut self, kind: HoldKind) -> &mut HashMap<String, usize> {
        match kind {
            HoldKind::Stream => &mut self.streams,
            HoldKind::Connection => &mut self.connections,
        }
    }
}

impl SessionKeeper {
    fn lock(&self) -> std::sync::MutexGuard<'_, Clients> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hold_as(&self, client_id: &str, kind: HoldKind) -> Hold {
        *self
            .lock()
            .holds_of(kind)
            .entry(client_id.to_owned())
            .or_default() += 1;
        Hold {
            keeper: self.clone(),
            client_id: client_id.to_owned(),
            kind,
        }
    }

    /// Keeps `client_id` alive until the returned hold is dropped (one per
    /// open Events stream).
    pub fn hold(&self, client_id: &str) -> Hold {
        self.hold_as(client_id, HoldKind::Stream)
    }

    /// Keeps the connection-bound identity `client_id` alive until the
    /// returned hold is dropped.
    pub fn hold_connection(&self, client_id: &str) -> Hold {
        self.hold_as(client_id, HoldKind::Connection)
    }

    /// Counts a request (a read) from `client_id` as a sign of life.
    pub fn touch(&self, client_id: &str) {
        self.lock().touched.insert(client_id.to_owned());
    }

    /// How many clients this node currently tracks (streams, readers and
    /// confirmations), for tests and metrics.
    pub fn tracked(&self) -> usize {
        let clients = self.lock();
        let mut ids: HashSet<&String> = clients.streams.keys().collect();
        ids.extend(clients.connections.keys());
        ids.extend(clients.touched.iter());
        ids.extend(clients.confirmed.keys());
        ids.len()
    }

    /// How many Events streams are open on this node.
    pub fn open_streams(&self) -> usize {
        self.lock().streams.values().sum()
    }

    fn confirm(&self, client_id: &str, sent_at: Instant, timeout_ms: u64) {
        let mut clients = self.lock();
        let entry = clients
            .confirmed
            .entry(client_id.to_owned())
            .or_insert(Confirmed {
                sent_at,
                timeout: Duration::from_millis(timeout_ms),
            });
        if entry.sent_at <= sent_at {
            let old_end = entry.lease_end();
            entry.sent_at = sent_at;
            entry.timeout = Duration::from_millis(timeout_ms);
            if entry.lease_end() < old_end {
                self.lease_shortened();
            }
        }
    }

    fn lease_shortened(&self) {
        self.shortened.send_modify(|generation| *generation += 1);
    }

    /// Changes whenever some client's lease got shorter (a session closed
    /// and opened again with a shorter timeout): a stream waiting for its
    /// lease's end must then look at it again.
    pub fn lease_changes(&self) -> watch::Receiver<u64> {
        self.shortened.subscribe()
    }

    /// When the lease of `client_id`'s streams on this node runs out, if
    /// any renewal was ever confirmed.
    pub fn lease_end(&self, client_id: &str) -> Option<Instant> {
        self.lock()
            .confirmed
            .get(client_id)
            .map(Confirmed::lease_end)
    }

    /// Renews (or opens, with the default timeout) `client_id`'s session
    /// now and starts its lease; used when a stream opens.
    pub async fn renew_now(
        &self,
        replicator: &Replicator,
        client_id: &str,
        deadline: Instant,
    ) -> Result<(), ApiError> {
        let sent_at = Instant::now();
        let keep = Command::KeepAlive {
            client_ids: vec![client_id.to_owned()],
        };
        let timeout_ms = match replicator.write(keep, deadline).await?? {
            Response::KeptAlive { renewed, .. } if !renewed.is_empty() => renewed[0].1,
            Response::KeptAlive { .. } => {
                let open = Command::OpenSession {
                    client_id: client_id.to_owned(),
                    timeout_ms: 0,
                };
                match replicator.write(open, deadline).await?? {
                    Response::SessionOpen { timeout_ms } => timeout_ms,
                    other => return Err(ApiError::Internal(format!("open answered {other:?}"))),
                }
            }
            other => return Err(ApiError::Internal(format!("keep-alive answered {other:?}"))),
        };
        self.confirm(client_id, sent_at, timeout_ms);
        Ok(())
    }

    /// The clients whose sessions are due for renewal now, with the
    /// shortest of their timeouts; forgets clients nobody needs any more.
    fn due(&self, replicator: &Replicator, now: Instant) -> (Vec<String>, Option<Duration>) {
        let mut clients = self.lock();
        let touched = std::mem::take(&mut clients.touched);
        let Clients {
            streams,
            connections,
            confirmed,
            ..
        } = &mut *clients;
        let mut shortened = false;
        let found = replicator.state().read(|machine, _| {
            confirmed.retain(|id, c| {
                let session = machine.session(id);
                if let Some(session) = session {
                    let timeout = Duration::from_millis(session.timeout_ms);
                    if timeout < c.timeout {
                        c.timeout = timeout;
                        shortened = true;
                    }
                }
                streams.contains_key(id)
                    || connections.contains_key(id)
                    || (session.is_some() && now.saturating_duration_since(c.sent_at) <= c.timeout)
            });
            let mut shortest: Option<Duration> = None;
            let due = streams
                .keys()
                .chain(connections.keys())
                .chain(touched.iter())
                .collect::<HashSet<_>>()
                .into_iter()
                .filter(|id| {
                    let Some(session) = machine.session(id) else {
                        return false;
                    };
                    // The shorter of the session's timeout now and the one
                    // the lease runs on: a session reopened with a longer
                    // timeout keeps the old, short lease until a renewal
                    // confirms the new one, so that renewal is due by the
                    // old cadence.
                    let confirmed = confirmed.get(*id);
                    let timeout = Duration::from_millis(session.timeout_ms);
                    let timeout = confirmed.map_or(timeout, |c| c.timeout.min(timeout));
                    let is_due = confirmed.is_none_or(|c| {
                        now.saturating_duration_since(c.sent_at) >= timeout / RENEW_DIVISOR
                    });
                    if is_due {
                        shortest = Some(shortest.map_or(timeout, |s| s.min(timeout)));
                    }
                    is_due
                })
                .cloned()
                .collect();
            (due, shortest)
        });
        drop(clients);
        if shortened {
            self.lease_shortened();
        }
        found
    }

    /// Proposes keep-alive commands until `shutdown` turns true.
    pub async fn run(self, replicator: Replicator, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            let sent_at = Instant::now();
            let (mut due, shortest) = self.due(&replicator, sent_at);
            let Some(shortest) = shortest else {
                continue;
            };
            due.sort();
            // A renewal that cannot commit before the shortest lease would
            // end is of no use; give up and try again on the next tick.
            let deadline = sent_at + shortest / LEASE_DIVISOR;
            let renewals = due.chunks(KEEP_ALIVE_IDS).map(|ids| {
                let command = Command::KeepAlive {
                    client_ids: ids.to_vec(),
                };
                replicator.write(command, deadline)
            });
            for answer in futures::future::join_all(renewals).await {
                match answer {
                    Ok(Ok(Response::KeptAlive { renewed, .. })) => {
                        for (id, timeout_ms) in renewed {
                            self.confirm(&id, sent_at, timeout_ms);
                        }
                    }
                    Ok(other) => {
                        tracing::warn!(?other, "batched keep-alive answered unexpectedly")
                    }
                    Err(error) => tracing::debug!(%error, "batched keep-alive not committed"),
                }
            }
        }
    }
}
