//! Connection-bound identities (DESIGN §3): a caller that sends no
//! `client_id` (the upstream Atomix client never does) is named by the node
//! holding its gRPC connection, `conn-<node>-<boot>-<n>`: unique in the
//! cluster (`boot` is drawn at random when the node process starts, so a
//! restarted node never reuses a name whose session may still live), and
//! stable for the life of that connection. The node keeps that session alive
//! while the connection is open and closes it the moment the connection
//! closes, so the caller's places pass on at once.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use baton_state::Command;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::server::Connected;

use crate::error::ApiError;
use crate::keepalive::{Hold, SessionKeeper};
use crate::replication::Replicator;

/// What every connection-bound identity starts with. A caller may not name
/// itself so: it could take over another connection's places, or close its
/// session.
const RESERVED_PREFIX: &str = "conn-";

/// Refuses a client id the caller chose that looks like a connection-bound
/// identity.
pub fn refuse_reserved(client_id: &str) -> Result<(), ApiError> {
    if client_id.starts_with(RESERVED_PREFIX) {
        return Err(ApiError::InvalidInput(format!(
            "client ids starting with {RESERVED_PREFIX:?} are reserved for callers the cluster names (those that send none)"
        )));
    }
    Ok(())
}

/// How long the node keeps trying to close a departed connection's session
/// (through elections, a lost quorum); after that the session expires on its
/// own timeout.
const CLOSE_PATIENCE: Duration = Duration::from_secs(30);
/// Pause between attempts to close it.
const CLOSE_RETRY: Duration = Duration::from_millis(200);

/// Names connections and closes their sessions when they go.
#[derive(Clone)]
pub struct Connections {
    shared: Arc<Shared>,
}

struct Shared {
    node_id: u64,
    boot: u32,
    next: AtomicU64,
    departed: mpsc::UnboundedSender<String>,
}

impl Connections {
    /// Connections of node `node_id`, and the receiver of departed
    /// identities that [`Connections::close_departed`] consumes.
    pub fn new(node_id: u64) -> (Self, mpsc::UnboundedReceiver<String>) {
        let (departed, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            node_id,
            boot: rand::random(),
            next: AtomicU64::new(1),
            departed,
        });
        (Connections { shared }, receiver)
    }

    /// Wraps an accepted connection so that its requests carry a
    /// [`ConnectionInfo`] and its end is noticed.
    pub fn track(&self, stream: TcpStream) -> TrackedConnection {
        let slot = Arc::new(Slot {
            connections: self.shared.clone(),
            identity: OnceLock::new(),
            hold: Mutex::new(None),
        });
        TrackedConnection {
            info: ConnectionInfo {
                remote: stream.peer_addr().ok(),
                slot: slot.clone(),
            },
            stream,
            _guard: Departure { slot },
        }
    }

    /// Closes the session of every departed connection that had an
    /// identity, until the channel ends.
    pub async fn close_departed(
        mut departed: mpsc::UnboundedReceiver<String>,
        replicator: Replicator,
    ) {
        while let Some(client_id) = departed.recv().await {
            let replicator = replicator.clone();
            tokio::spawn(async move {
                let give_up = Instant::now() + CLOSE_PATIENCE;
                loop {
                    let close = Command::CloseSession {
                        client_id: client_id.clone(),
                        request_id: 0,
                    };
                    let deadline = (Instant::now() + Duration::from_secs(5)).min(give_up);
                    match replicator.write(close, deadline).await {
                        Ok(_) => return,
                        Err(error) if Instant::now() + CLOSE_RETRY < give_up => {
                            tracing::debug!(%client_id, %error, "closing a departed connection's session");
                            tokio::time::sleep(CLOSE_RETRY).await;
                        }
                        Err(error) => {
                            tracing::warn!(%client_id, %error, "gave up closing a departed connection's session; it will expire");
                            return;
                        }
                    }
                }
            });
        }
    }
}

/// Per-connection state shared by its requests.
struct Slot {
    connections: Arc<Shared>,
    identity: OnceLock<String>,
    /// This node's hold on the identity's session, once named.
    hold: Mutex<Option<Hold>>,
}

/// What tonic attaches to every request of a tracked connection.
#[derive(Clone)]
pub struct ConnectionInfo {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    slot: Arc<Slot>,
}

impl ConnectionInfo {
    /// This connection's identity, named on first use and from then on
    /// kept alive by this node until the connection closes. Naming it opens
    /// no session: the identity's first accepted command does (the state
    /// machine opens one, default timeout, for a caller without), or its
    /// first Events stream; so a refused request changes nothing.
    pub fn identity(&self, sessions: &SessionKeeper) -> String {
        let slot = &self.slot;
        let identity = slot
            .identity
            .get_or_init(|| {
                let shared = &slot.connections;
                let n = shared.next.fetch_add(1, Ordering::Relaxed);
                format!(
                    "{RESERVED_PREFIX}{}-{:08x}-{n}",
                    shared.node_id, shared.boot
                )
            })
            .clone();
        let mut hold = slot.hold.lock().unwrap_or_else(|p| p.into_inner());
        if hold.is_none() {
            *hold = Some(sessions.hold_connection(&identity));
        }
        identity
    }
}

/// A hold on a connection's identity for as long as something is done
/// under its name (a request's command on its way, an Events stream
/// opening or open): [`Caller`](crate::convert::Caller) carries one. The
/// identity's session is closed when the connection and every such hold
/// are gone, so nothing done under the name can open the session again
/// after its close. Until session 14 the close went out when the connection
/// ended, and an Events stream still opening then (its opening goes on in a
/// task of its own) could open a session after it, which stayed until it
/// expired (`atomix_compat.rs::a_stream_abandoned_while_it_opens_leaves_no_session`
/// found one in about one run in four).
#[derive(Clone)]
pub struct ConnectionGuard {
    _slot: Arc<Slot>,
}

impl std::fmt::Debug for ConnectionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionGuard")
    }
}

impl ConnectionInfo {
    /// A hold on this connection's identity (see [`ConnectionGuard`]).
    pub fn guard(&self) -> ConnectionGuard {
        ConnectionGuard {
            _slot: self.slot.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(
            self.hold
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        if let Some(identity) = self.identity.get() {
            // The receiver lives as long as the node; if it is gone the node
            // is stopping and the session will expire.
            let _ = self.connections.departed.send(identity.clone());
        }
    }
}

/// Noticed when the connection is dropped: stops renewing its identity's
/// session (closed once the last use of the name ends: [`ConnectionGuard`]).
struct Departure {
    slot: Arc<Slot>,
}

impl Drop for Departure {
    fn drop(&mut self) {
        let hold = self
            .slot
            .hold
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(hold);
    }
}

/// An accepted client connection whose end is noticed.
pub struct TrackedConnection {
    stream: TcpStream,
    info: ConnectionInfo,
    _guard: Departure,
}

impl Connected for TrackedConnection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TrackedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
