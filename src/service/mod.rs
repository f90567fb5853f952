//! The gRPC services on the client port. Each handler checks its input,
//! turns it into a state-machine command or read, and maps the answer back;
//! everything else lives in [`Context`].

mod admin;
mod election;
mod latch;
mod primitive;
mod session;

use std::pin::Pin;

use baton_state::{ClientRequest, Command, Operation, Primitive, PrimitiveKind, Response};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

pub use admin::AdminApi;
pub use election::ElectionApi;
pub use latch::LatchApi;
pub use primitive::PrimitiveApi;
pub use session::SessionApi;

use crate::convert::{caller, Addressed, Caller};
use crate::error::{ApiError, ReplicationError};
use crate::identity::{refuse_reserved, ConnectionInfo};
use crate::keepalive::SessionKeeper;
use crate::replication::Replicator;

/// How many updates a watcher's stream buffers before older ones coalesce.
const WATCH_BUFFER: usize = 64;

/// What every service handler needs: the Raft door, the session keeper and
/// the node's shutdown signal.
#[derive(Clone)]
pub struct Context {
    /// Writes and linearizable reads.
    pub replicator: Replicator,
    /// Keeps streaming and reading clients' sessions alive.
    pub sessions: SessionKeeper,
    /// Turns true when the node shuts down; open streams then end.
    pub shutdown: watch::Receiver<bool>,
    /// How much of this node's Raft log is on disk (for status).
    pub flushed: baton_store::FlushedLog,
    /// Events streams ended, by kind and status (metrics).
    pub stream_ends: crate::metrics::StreamEnds,
}

/// One update of an Events stream: the initial state, then each change.
struct WatchUpdate {
    /// True for the first message (current state, type NONE).
    initial: bool,
    /// The primitive's full state.
    state: Primitive,
}

/// A server stream of Events messages.
pub type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The updates of one watch, ended by its closing error the moment that is
/// known: updates still buffered for a slow reader are dropped rather than
/// delivered after a lease has run out (one may say "you lead"), and the
/// error never waits for room behind them.
struct WatchStream {
    updates: ReceiverStream<WatchUpdate>,
    /// The watch's closing error; `None` once taken or known not to come.
    ending: Option<oneshot::Receiver<Status>>,
    /// The stream's lease, checked before each update is handed on: the
    /// watch task's timer may not have fired yet (a node just resumed from
    /// a pause), and what it buffered must not go out.
    lease: StreamLease,
    ended: bool,
}

/// A stream's lease as [`WatchStream`] checks it: the end last read, read
/// again (a lock on the session keeper) only once that has passed or some
/// lease got shorter.
struct StreamLease {
    sessions: SessionKeeper,
    client_id: String,
    known_end: Instant,
    /// Says when some lease got shorter (then `known_end` may be too late).
    shortened: watch::Receiver<u64>,
}

impl StreamLease {
    fn ran_out(&mut self) -> bool {
        let shortened = self.shortened.has_changed().unwrap_or(false);
        if Instant::now() < self.known_end && !shortened {
            return false;
        }
        self.shortened.mark_unchanged();
        if let Some(end) = self.sessions.lease_end(&self.client_id) {
            self.known_end = end;
        }
        self.known_end <= Instant::now()
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchUpdate, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::{ready, Poll};

        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(ending) = self.ending.as_mut() {
            match Pin::new(ending).poll(cx) {
                Poll::Ready(Ok(error)) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(error)));
                }
                // The watch ended without an error: what it sent is due.
                Poll::Ready(Err(_)) => self.ending = None,
                Poll::Pending => {}
            }
        }
        let update = ready!(Pin::new(&mut self.updates).poll_next(cx));
        if update.is_some() && self.lease.ran_out() {
            self.ended = true;
            return Poll::Ready(Some(
                Err(ApiError::from(ReplicationError::LeaseLost).into()),
            ));
        }
        Poll::Ready(update.map(Ok))
    }
}

impl Context {
    /// Who sends a request to a primitive of `kind`: its header's
    /// `client_id`, or, for a caller without one, the identity of its
    /// connection (DESIGN §3), named on first use. The rest of the header
    /// is checked first, so bad input names nothing.
    pub fn caller<T: Addressed>(
        &self,
        request: &tonic::Request<T>,
        kind: PrimitiveKind,
    ) -> Result<Caller, ApiError> {
        let header = request.get_ref().header();
        let anonymous = header.is_some_and(|h| h.client_id.is_empty());
        let connection = request.extensions().get::<ConnectionInfo>();
        let (true, Some(connection)) = (anonymous, connection) else {
            let named = caller(header, kind)?;
            refuse_reserved(&named.client_id)?;
            return Ok(named);
        };
        // Checked with a stand-in id first: bad input names nothing.
        let mut named = header.cloned().unwrap_or_default();
        named.client_id = "-".into();
        let mut checked = caller(Some(&named), kind)?;
        checked.client_id = connection.identity(&self.sessions);
        checked.connection = Some(connection.guard());
        Ok(checked)
    }

    /// Replicates a command and returns the state machine's answer. A
    /// command that is bad on its own, or too large for the log, is refused
    /// here, before it costs a log entry on every node.
    pub async fn apply(&self, command: Command, deadline: Instant) -> Result<Response, ApiError> {
        crate::replication::admit(&command, self.replicator.state())?;
        Ok(self.replicator.write(command, deadline).await??)
    }

    /// Applies a client operation on `caller`'s behalf and returns the
    /// primitive's new state (every client operation answers with it).
    pub async fn operate(
        &self,
        caller: &Caller,
        operation: Operation,
        deadline: Instant,
    ) -> Result<Primitive, ApiError> {
        let request = ClientRequest {
            client_id: caller.client_id.clone(),
            request_id: caller.request_id,
            operation,
        };
        match self.apply(Command::Client(request), deadline).await? {
            Response::Primitive(state) => Ok(state),
            other => Err(ApiError::Internal(format!(
                "a client operation answered {other:?}"
            ))),
        }
    }

    /// A linearizable read of the caller's primitive; counts as a sign of
    /// life for the caller's session.
    pub async fn read_primitive(
        &self,
        caller: &Caller,
        deadline: Instant,
    ) -> Result<Primitive, ApiError> {
        self.replicator.linearizable_barrier(deadline).await?;
        self.sessions.touch(&caller.client_id);
        Ok(self
            .replicator
            .state()
            .read(|machine, _| machine.primitive(&caller.key)))
    }

    /// The Events stream of the caller's primitive, each update turned into
    /// the service's message by `to_message(initial, state)`.
    pub fn events<T: Send + 'static>(
        &self,
        caller: &Caller,
        to_message: impl Fn(bool, &Primitive) -> T + Send + 'static,
    ) -> EventStream<T> {
        let updates = self.watch(caller);
        Box::pin(updates.map(move |update| update.map(|u| to_message(u.initial, &u.state))))
    }

    /// Streams the primitive's current state and then every change, from
    /// this node's applied state, keeping the caller's session alive (and
    /// opening one with the default timeout if it has none).
    ///
    /// The first message is a linearizable read (DESIGN §4), and the stream
    /// ends with UNAVAILABLE as soon as this node stops confirming renewals
    /// of the caller's session (its lease, see [`crate::keepalive`]).
    fn watch(&self, caller: &Caller) -> WatchStream {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let (end_tx, end_rx) = oneshot::channel();
        let context = self.clone();
        let lease = StreamLease {
            sessions: self.sessions.clone(),
            client_id: caller.client_id.clone(),
            known_end: Instant::now(),
            shortened: self.sessions.lease_changes(),
        };
        let caller = caller.clone();
        tokio::spawn(async move {
            let hold = context.sessions.hold(&caller.client_id);
            let ended = context.stream_changes(&caller, &tx).await;
            drop(hold);
            context.count_stream_end(&caller, ended.as_ref().err());
            if let Err(error) = ended {
                let _ = end_tx.send(error);
            }
        });
        WatchStream {
            updates: ReceiverStream::new(rx),
            ending: Some(end_rx),
            lease,
            ended: false,
        }
    }

    async fn stream_changes(
        &self,
        caller: &Caller,
        tx: &mpsc::Sender<WatchUpdate>,
    ) -> Result<(), Status> {
        let deadline = Instant::now() + crate::convert::DEFAULT_DEADLINE;
        let replicator = &self.replicator;
        // A client that gave up before the stream opened costs no more.
        tokio::select! {
            _ = tx.closed() => return Ok(()),
            renewed = self.sessions.renew_now(replicator, &caller.client_id, deadline) => renewed?,
        }
        let mut shutdown = self.shutdown.clone();
        // From the first renewal on, one future for the whole stream (it
        // re-reads the lease whenever its old end comes), not a new timer
        // and lock per message. The first message is held to it too: a node
        // slow to send the state it read must not send it once its lease
        // has run out.
        let ending = self.must_end(caller, &mut shutdown);
        tokio::pin!(ending);
        let state = replicator.state();
        let key = &caller.key;
        // Subscribed before the read, so no change between the two is lost.
        let mut changes = state.watch(key);
        let first_read = async {
            replicator
                .linearizable_barrier(deadline)
                .await
                .map_err(ApiError::from)?;
            delay_for_tests().await;
            Ok::<_, Status>(state.read(|m, index| (m.primitive(key), index)))
        };
        let (mut last_sent, mut seen_index) = tokio::select! {
            biased;
            ended = &mut ending => return Err(ended),
            _ = tx.closed() => return Ok(()),
            read = first_read => read?,
        };
        let update = WatchUpdate {
            initial: true,
            state: last_sent.clone(),
        };
        tokio::select! {
            biased;
            ended = &mut ending => return Err(ended),
            sent = tx.send(update) => if sent.is_err() { return Ok(()) },
        }
        loop {
            // Biased: an expired lease wins over pending changes.
            let next: Vec<Primitive> = tokio::select! {
                biased;
                ended = &mut ending => return Err(ended),
                _ = tx.closed() => return Ok(()),
                received = changes.recv() => match received {
                    // Already sent: in the first message, or in the state
                    // re-read after falling behind.
                    Ok(change) if seen_index.is_some_and(|seen| change.index <= seen) => continue,
                    Ok(change) => change.states.clone(),
                    // Fell behind: skip to the latest state (coalescing).
                    // What the feed still holds is older than that state.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let (latest, index) = state.read(|m, index| (m.primitive(key), index));
                        seen_index = index;
                        vec![latest]
                    }
                    // Cannot happen while subscribed; treated as the end.
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(ApiError::from(ReplicationError::ShuttingDown).into());
                    }
                },
            };
            for next in next {
                if next == last_sent {
                    continue;
                }
                last_sent = next.clone();
                let update = WatchUpdate {
                    initial: false,
                    state: next,
                };
                // A slow reader's buffer is waited for only while the
                // stream may go on.
                tokio::select! {
                    biased;
                    ended = &mut ending => return Err(ended),
                    sent = tx.send(update) => if sent.is_err() { return Ok(()) },
                }
            }
        }
    }

    fn count_stream_end(&self, caller: &Caller, error: Option<&Status>) {
        let kind = match caller.key.kind {
            PrimitiveKind::Latch => "latch",
            PrimitiveKind::Election => "election",
        };
        let code = error.map_or(tonic::Code::Ok, Status::code);
        self.stream_ends
            .get_or_create(&crate::metrics::StreamEndLabels {
                kind: kind.to_owned(),
                code: format!("{code:?}"),
            })
            .inc();
    }

    /// Resolves with the error that ends the caller's stream: its lease on
    /// this node has run out (renewals committed meanwhile extend it, so it
    /// is checked again when the old end comes, or when some lease got
    /// shorter), or the node is stopping.
    async fn must_end(&self, caller: &Caller, shutdown: &mut watch::Receiver<bool>) -> Status {
        let mut shortened = self.sessions.lease_changes();
        let lease_lost = async {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(self.lease_end(caller)) => {}
                    changed = shortened.changed() => {
                        if changed.is_err() {
                            // The keeper is gone: only the old end is left.
                            tokio::time::sleep_until(self.lease_end(caller)).await;
                        }
                    }
                }
                if self.lease_end(caller) <= Instant::now() {
                    return ReplicationError::LeaseLost;
                }
            }
        };
        let reason = tokio::select! {
            biased;
            lost = lease_lost => lost,
            _ = stopping(shutdown) => ReplicationError::ShuttingDown,
        };
        ApiError::from(reason).into()
    }

    /// When the caller's stream lease on this node runs out.
    fn lease_end(&self, caller: &Caller) -> Instant {
        self.sessions
            .lease_end(&caller.client_id)
            .unwrap_or_else(Instant::now)
    }
}

/// Debug builds' test hook: a stream waits the milliseconds written in the
/// file named by `BATON_TEST_EVENTS_DELAY_FILE` between its read index and
/// its first read, so a test can make a stream open after a change it would
/// otherwise see, or be slow to send its first message.
async fn delay_for_tests() {
    let delay = crate::test_hooks::read("BATON_TEST_EVENTS_DELAY_FILE")
        .and_then(|ms| ms.trim().parse::<u64>().ok());
    if let Some(ms) = delay {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await.map(|_| ());
}
