//! The node's door to Raft: writes (stamped by the leader, forwarded from
//! followers), linearizable reads, and the leader's own duties (grace entry
//! on taking office, session expiry).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_state::{Command, CommandError, Response};
use baton_store::{LogCommand, NodeId, StateHandle, TypeConfig};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{Raft, ServerState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{LeaderHint, ReplicationError};
use crate::network::{decode, encode, never_sent, PeerChannels};
use crate::proto::baton::v1::{NodeInfoRequest, ReadIndexRequest};

/// What a state-machine command answered once applied.
pub type CommandResult = Result<Response, CommandError>;

/// A proposal the leader could not take, as sent back to a forwarding node.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeRejection {
    /// This node is not the leader; nothing was appended, so the caller may
    /// safely try the real leader.
    #[error("not the leader")]
    NotLeader,
    /// The proposal was handed to Raft but its fate is unknown.
    #[error("{0}")]
    Unknown(String),
}

/// The reply to a forwarded proposal.
pub type ProposeReply = Result<CommandResult, ProposeRejection>;

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Cheap-to-clone access to the local Raft node for the services.
#[derive(Clone)]
pub struct Replicator {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    raft: Raft<TypeConfig>,
    state: StateHandle,
    channels: PeerChannels,
    client_addr: String,
    client_addrs: Mutex<HashMap<NodeId, String>>,
    last_stamp: AtomicU64,
    rejoining: AtomicBool,
}

impl Replicator {
    /// Wraps the local Raft node.
    pub fn new(
        id: NodeId,
        raft: Raft<TypeConfig>,
        state: StateHandle,
        channels: PeerChannels,
        client_addr: String,
    ) -> Self {
        Replicator {
            inner: Arc::new(Inner {
                id,
                raft,
                state,
                channels,
                client_addr,
                client_addrs: Mutex::new(HashMap::new()),
                last_stamp: AtomicU64::new(0),
                rejoining: AtomicBool::new(false),
            }),
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The local Raft node.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    /// The applied state of this node.
    pub fn state(&self) -> &StateHandle {
        &self.inner.state
    }

    /// This node's client address, as advertised.
    pub fn client_addr(&self) -> &str {
        &self.inner.client_addr
    }

    /// Marks this node as rejoining after its data was wiped: it forgot
    /// whom it voted for, so it must not vote until a leader has replicated
    /// to it (otherwise it could vote twice in one term and help elect a
    /// second leader). Cleared by [`Replicator::finish_rejoining`].
    pub fn start_rejoining(&self) {
        self.inner.rejoining.store(true, Ordering::SeqCst);
    }

    /// Whether the node is rejoining and must refuse votes.
    pub fn is_rejoining(&self) -> bool {
        self.inner.rejoining.load(Ordering::SeqCst)
    }

    /// Waits until a leader has replicated to this node (a committed vote
    /// for a known leader and something applied), then allows voting again.
    pub async fn finish_rejoining(self) {
        let mut metrics = self.inner.raft.metrics();
        let caught_up = metrics
            .wait_for(|m| {
                m.current_leader.is_some() && m.vote.is_committed() && m.last_applied.is_some()
            })
            .await
            .map(|_| ());
        if caught_up.is_ok() {
            self.inner.rejoining.store(false, Ordering::SeqCst);
            tracing::info!("rejoined the cluster; voting again");
        }
    }

    /// Whether this node currently believes it is the Raft leader.
    pub fn is_leader(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        metrics.state == ServerState::Leader && metrics.current_leader == Some(self.inner.id)
    }

    fn current_leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    fn peer_addr(&self, id: NodeId) -> Option<String> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .map(|node| node.addr.clone())
    }

    /// The client address of node `id`, asked of the node itself once and
    /// then cached (membership only records peer addresses).
    pub async fn client_addr_of(&self, id: NodeId) -> Option<String> {
        if id == self.inner.id {
            return Some(self.inner.client_addr.clone());
        }
        if let Some(addr) = self.cached_client_addr(id) {
            return Some(addr);
        }
        let mut client = self.inner.channels.client(&self.peer_addr(id)?).ok()?;
        let info = tokio::time::timeout(
            Duration::from_millis(500),
            client.node_info(NodeInfoRequest {}),
        )
        .await
        .ok()?
        .ok()?
        .into_inner();
        self.inner
            .client_addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, info.client_addr.clone());
        Some(info.client_addr)
    }

    fn cached_client_addr(&self, id: NodeId) -> Option<String> {
        self.inner
            .client_addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// The leader hint for error responses.
    pub async fn leader_hint(&self) -> LeaderHint {
        match self.current_leader() {
            Some(id) => LeaderHint {
                id: Some(id),
                client_addr: self.client_addr_of(id).await,
            },
            None => LeaderHint::default(),
        }
    }

    async fn unavailable(&self, reason: impl Into<String>) -> ReplicationError {
        ReplicationError::Unavailable {
            reason: reason.into(),
            hint: self.leader_hint().await,
        }
    }

    /// Replicates `command` and returns what the state machine answered.
    /// Runs on the leader directly; a follower forwards it to the leader.
    /// Acknowledged only once committed on a majority and applied.
    pub async fn write(
        &self,
        command: Command,
        deadline: Instant,
    ) -> Result<CommandResult, ReplicationError> {
        loop {
            let attempt = async {
                match self.current_leader() {
                    Some(leader) if leader == self.inner.id => {
                        self.propose_as_leader(command.clone()).await
                    }
                    Some(leader) => self.forward(leader, &command).await,
                    None => Err(ProposeRejection::NotLeader),
                }
            };
            let outcome = tokio::time::timeout_at(deadline, attempt).await;
            match outcome {
                Err(_) => {
                    return Err(ReplicationError::DeadlineExceeded(
                        "the write was not acknowledged in time; it may still be applied".into(),
                    ))
                }
                Ok(Ok(result)) => return Ok(result),
                Ok(Err(ProposeRejection::Unknown(reason))) => {
                    return Err(ReplicationError::OutcomeUnknown {
                        reason,
                        hint: self.leader_hint().await,
                    })
                }
                Ok(Err(ProposeRejection::NotLeader)) => {
                    // Nothing was appended: wait for a (new) leader and retry.
                    if !self.await_leader_change(deadline).await {
                        return Err(self
                            .unavailable("no leader elected before the deadline")
                            .await);
                    }
                }
            }
        }
    }

    /// Waits briefly for the leader to be known (or to change); false once
    /// the deadline has passed.
    async fn await_leader_change(&self, deadline: Instant) -> bool {
        let pause = Instant::now() + Duration::from_millis(50);
        tokio::time::sleep_until(pause.min(deadline)).await;
        if Instant::now() >= deadline {
            return false;
        }
        let mut metrics = self.inner.raft.metrics();
        let wait = async move {
            metrics
                .wait_for(|m| m.current_leader.is_some())
                .await
                .map(|_| ())
        };
        matches!(tokio::time::timeout_at(deadline, wait).await, Ok(Ok(())))
    }

    /// Proposes on this node, which must be the leader; stamps the entry
    /// with the leader's clock, never below a stamp already issued or applied.
    pub async fn propose_as_leader(&self, command: Command) -> ProposeReply {
        if !self.is_leader() {
            return Err(ProposeRejection::NotLeader);
        }
        let floor = self.inner.state.read(|machine, _| machine.now_ms());
        let candidate = wall_clock_ms().max(floor);
        let previous = self.inner.last_stamp.fetch_max(candidate, Ordering::SeqCst);
        let stamp_ms = previous.max(candidate);
        match self
            .inner
            .raft
            .client_write(LogCommand { stamp_ms, command })
            .await
        {
            Ok(response) => response
                .data
                .0
                .ok_or_else(|| ProposeRejection::Unknown("entry applied without a result".into())),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(ProposeRejection::Unknown(
                    "leadership changed while the write was in flight".into(),
                ))
            }
            Err(error) => Err(ProposeRejection::Unknown(error.to_string())),
        }
    }

    async fn forward(&self, leader: NodeId, command: &Command) -> ProposeReply {
        let Some(addr) = self.peer_addr(leader) else {
            return Err(ProposeRejection::NotLeader);
        };
        let mut client = self
            .inner
            .channels
            .client(&addr)
            .map_err(|e| ProposeRejection::Unknown(e.to_string()))?;
        let payload =
            encode(command).map_err(|e| ProposeRejection::Unknown(format!("encode: {e}")))?;
        match client.propose(payload).await {
            Ok(reply) => decode::<ProposeReply>(reply.get_ref())
                .map_err(|e| ProposeRejection::Unknown(format!("bad reply from leader: {e}")))?,
            // The leader was never reached: as good as not leader.
            Err(status) if never_sent(&status) => Err(ProposeRejection::NotLeader),
            Err(status) => Err(ProposeRejection::Unknown(format!(
                "forwarding to leader {leader} failed: {}",
                status.message()
            ))),
        }
    }

    /// Waits until this node's applied state reflects every write
    /// acknowledged before the call (leader read index: the leader confirms
    /// its leadership with a quorum first). Then a local read is linearizable.
    pub async fn linearizable_barrier(&self, deadline: Instant) -> Result<(), ReplicationError> {
        loop {
            let attempt = async {
                match self.current_leader() {
                    Some(leader) if leader == self.inner.id => self.read_index_as_leader().await,
                    Some(leader) => self.read_index_from(leader).await,
                    None => Err(ProposeRejection::NotLeader),
                }
            };
            let read_index = match tokio::time::timeout_at(deadline, attempt).await {
                Err(_) => {
                    return Err(self
                        .unavailable("no quorum confirmed the read in time")
                        .await)
                }
                Ok(Ok(index)) => index,
                Ok(Err(_)) => {
                    if !self.await_leader_change(deadline).await {
                        return Err(self.unavailable("no leader with a quorum").await);
                    }
                    continue;
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            return match self
                .inner
                .raft
                .wait(Some(remaining))
                .applied_index_at_least(read_index, "linearizable read")
                .await
            {
                Ok(_) => Ok(()),
                Err(_) => Err(self
                    .unavailable("this node could not catch up in time")
                    .await),
            };
        }
    }

    /// On the leader: confirms leadership with a quorum and returns the log
    /// index a read must wait for.
    pub async fn read_index_as_leader(&self) -> Result<Option<u64>, ProposeRejection> {
        match self.inner.raft.get_read_log_id().await {
            Ok((read_log_id, _)) => Ok(read_log_id.map(|id| id.index)),
            Err(RaftError::APIError(_)) => Err(ProposeRejection::NotLeader),
            Err(error) => Err(ProposeRejection::Unknown(error.to_string())),
        }
    }

    async fn read_index_from(&self, leader: NodeId) -> Result<Option<u64>, ProposeRejection> {
        let addr = self.peer_addr(leader).ok_or(ProposeRejection::NotLeader)?;
        let mut client = self
            .inner
            .channels
            .client(&addr)
            .map_err(|e| ProposeRejection::Unknown(e.to_string()))?;
        let reply = client
            .read_index(ReadIndexRequest {})
            .await
            .map_err(|_| ProposeRejection::NotLeader)?
            .into_inner();
        if !reply.is_leader {
            return Err(ProposeRejection::NotLeader);
        }
        Ok(reply.has_index.then_some(reply.index))
    }

    /// The leader's duties, run for as long as the node lives: on taking
    /// office, the grace entry; then, while leader, an expiry entry whenever
    /// a session falls due.
    pub async fn run_leader_duties(self) {
        let mut metrics = self.inner.raft.metrics();
        loop {
            if metrics
                .wait_for(|m| m.state == ServerState::Leader || m.state == ServerState::Shutdown)
                .await
                .is_err()
            {
                return;
            }
            let term = {
                let m = metrics.borrow();
                if m.state == ServerState::Shutdown {
                    return;
                }
                m.current_term
            };
            let still_leader = |this: &Self| {
                let m = this.inner.raft.metrics();
                let m = m.borrow();
                m.state == ServerState::Leader && m.current_term == term
            };
            // The grace entry first, so no session expires for time the
            // cluster spent without a leader.
            let mut graced = false;
            while still_leader(&self) && !graced {
                match self.propose_as_leader(Command::LeaderGrace).await {
                    Ok(_) => graced = true,
                    Err(error) => {
                        tracing::debug!(%error, "grace entry not committed yet; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            while still_leader(&self) {
                let due = self.inner.state.read(|machine, _| machine.next_expiry_ms());
                let now = wall_clock_ms();
                match due {
                    Some(due) if due <= now => {
                        if let Err(error) = self.propose_as_leader(Command::ExpireDue).await {
                            tracing::debug!(%error, "expiry entry not committed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    Some(due) => {
                        tokio::time::sleep(Duration::from_millis((due - now).min(100))).await
                    }
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    }
}
