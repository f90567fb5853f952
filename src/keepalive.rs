//! Renews, on their behalf, the sessions of clients that hold an Events
//! stream on this node or read from it: one replicated keep-alive entry per
//! tick carries every client that is due.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_state::Command;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::replication::{wall_clock_ms, Replicator};

/// How often due sessions are collected into a keep-alive entry.
pub const TICK: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Clients {
    streams: HashMap<String, usize>,
    touched: HashSet<String>,
    renewed_at_ms: HashMap<String, u64>,
}

/// Tracks which clients this node keeps alive.
#[derive(Clone, Default)]
pub struct SessionKeeper {
    clients: Arc<Mutex<Clients>>,
}

/// Keeps a client's session alive while it exists (one per open stream).
pub struct StreamHold {
    keeper: SessionKeeper,
    client_id: String,
}

impl Drop for StreamHold {
    fn drop(&mut self) {
        let mut clients = self.keeper.lock();
        if let Some(count) = clients.streams.get_mut(&self.client_id) {
            *count -= 1;
            if *count == 0 {
                clients.streams.remove(&self.client_id);
                clients.renewed_at_ms.remove(&self.client_id);
            }
        }
    }
}

impl SessionKeeper {
    fn lock(&self) -> std::sync::MutexGuard<'_, Clients> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `client_id` alive until the returned hold is dropped.
    pub fn hold(&self, client_id: &str) -> StreamHold {
        *self.lock().streams.entry(client_id.to_owned()).or_default() += 1;
        StreamHold {
            keeper: self.clone(),
            client_id: client_id.to_owned(),
        }
    }

    /// Counts a request (a read) from `client_id` as a sign of life.
    pub fn touch(&self, client_id: &str) {
        self.lock().touched.insert(client_id.to_owned());
    }

    /// The clients whose sessions are due for renewal now: a third of their
    /// timeout has passed since this node last renewed them.
    fn due(&self, replicator: &Replicator, now_ms: u64) -> Vec<String> {
        let mut clients = self.lock();
        let touched = std::mem::take(&mut clients.touched);
        // Forget readers not heard from for longer than any session lives.
        let Clients {
            streams,
            renewed_at_ms,
            ..
        } = &mut *clients;
        renewed_at_ms.retain(|id, at| {
            streams.contains_key(id)
                || now_ms.saturating_sub(*at) <= baton_state::MAX_SESSION_TIMEOUT_MS
        });
        let wanted: HashSet<String> = clients.streams.keys().cloned().chain(touched).collect();
        replicator.state().read(|machine, _| {
            wanted
                .into_iter()
                .filter(|id| {
                    let Some(session) = machine.session(id) else {
                        return false;
                    };
                    let last = clients.renewed_at_ms.get(id).copied().unwrap_or(0);
                    now_ms.saturating_sub(last) >= session.timeout_ms / 3
                })
                .collect()
        })
    }

    /// Proposes keep-alive entries until `shutdown` turns true.
    pub async fn run(self, replicator: Replicator, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = wall_clock_ms();
            let mut due = self.due(&replicator, now);
            if due.is_empty() {
                continue;
            }
            due.sort();
            let command = Command::KeepAlive {
                client_ids: due.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(2);
            match replicator.write(command, deadline).await {
                Ok(_) => {
                    let mut clients = self.lock();
                    for id in due {
                        clients.renewed_at_ms.insert(id, now);
                    }
                }
                Err(error) => tracing::debug!(%error, "batched keep-alive not committed"),
            }
        }
    }
}
