//! The node's door to Raft: writes (stamped by the leader, forwarded from
//! followers), linearizable reads, and the leader's own duties (grace entry
//! on taking office, session expiry). Every path first asks [`Liveness`]
//! whether a working leader is within reach, and gives up with UNAVAILABLE
//! the moment it is not, instead of waiting for the caller's deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_state::{ClientRequest, Command, CommandError, Operation, Response};
use baton_store::{LogStore, NodeId, StateHandle, TypeConfig};
use openraft::error::RaftError;
use openraft::{LogId, Raft, ServerState};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::clock::EntryStamps;
use crate::error::{LeaderHint, ReplicationError};
use crate::forwarding::{ForwardFailure, Forwarder};
use crate::group_commit::GroupCommit;
use crate::liveness::{leads, leads_in, LeaderLoss, Liveness};
use crate::network::{decode, encode, PeerChannels};
use crate::proto::baton::v1::raft_service_client::RaftServiceClient;
use crate::proto::baton::v1::{NodeInfoRequest, NodeInfoResponse, ReadIndexRequest};

/// What a state-machine command answered once applied.
pub type CommandResult = Result<Response, CommandError>;

/// A proposal the leader could not take, as sent back to a forwarding node.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeRejection {
    /// This node is not the leader; nothing was appended, so the caller may
    /// safely try the real leader.
    #[error("not the leader")]
    NotLeader,
    /// The leader has not heard from a quorum for an election timeout and
    /// refuses writes; nothing was appended.
    #[error("{0}")]
    NoQuorum(String),
    /// The proposal was handed to Raft but its fate is unknown.
    #[error("{0}")]
    Unknown(String),
}

/// How often an in-flight write or read re-checks that its leader is still
/// within reach (a small fraction of the election timeout).
const LIVENESS_POLL: Duration = Duration::from_millis(25);
/// How long to wait before retrying a write that a stale leader refused.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Largest encoded command a node proposes (see [`CommandError::TooLarge`]):
/// twice a Restore of the most members of the longest plain names, half of
/// what one AppendEntries carries (`network.rs`).
pub const MAX_COMMAND_BYTES: usize = 512 * 1024;

/// Refuses, before it costs a log entry, a command the state machine would
/// refuse on its own ([`Command::validate`]) or one too large for the log: a
/// Restore over the member limit, or any Restore or KeepAlive (the commands
/// whose size the caller decides) encoding to more than
/// [`MAX_COMMAND_BYTES`].
pub fn admit(command: &Command, state: &StateHandle) -> Result<(), CommandError> {
    command.validate()?;
    let sized = match command {
        Command::Client(ClientRequest {
            operation: Operation::Restore { key, snapshot },
            ..
        }) => {
            state.read(|machine, _| machine.check_restore_size(key, snapshot.members.len()))?;
            true
        }
        Command::KeepAlive { .. } => true,
        _ => false,
    };
    if sized {
        let bytes = serde_json::to_vec(command).map_or(usize::MAX, |encoded| encoded.len());
        if bytes > MAX_COMMAND_BYTES {
            return Err(CommandError::TooLarge {
                bytes,
                max: MAX_COMMAND_BYTES,
            });
        }
    }
    Ok(())
}

/// Pause between a probe's tries.
const PROBE_PAUSE: Duration = Duration::from_millis(100);

/// What the node behind `client` says of itself, if it answers in time.
async fn node_info(mut client: RaftServiceClient<Channel>) -> Option<NodeInfoResponse> {
    let info = tokio::time::timeout(
        Duration::from_millis(500),
        client.node_info(NodeInfoRequest {}),
    )
    .await
    .ok()?
    .ok()?;
    Some(info.into_inner())
}

/// The reply to a forwarded proposal.
pub type ProposeReply = Result<CommandResult, ProposeRejection>;

/// Cheap-to-clone access to the local Raft node for the services.
#[derive(Clone)]
pub struct Replicator {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    raft: Raft<TypeConfig>,
    state: StateHandle,
    /// A reader of the log openraft writes (for the pre-vote).
    log: LogStore,
    channels: PeerChannels,
    forwarder: Forwarder,
    client_addr: String,
    client_addrs: Mutex<HashMap<NodeId, String>>,
    stamps: Arc<EntryStamps>,
    group_commit: GroupCommit,
    liveness: Liveness,
    /// The term in which this node, as leader, has applied its grace entry,
    /// and the applied index at that moment. Reads on the leader wait for
    /// it: a leader restored after a restart in its old term (openraft 0.9
    /// does that; since the leader's flush overlaps replication the log
    /// store prevents it, see `LogStore::read_vote`) has no fresh no-op
    /// entry, and its commit index (not flushed on every commit) may lag
    /// what was acknowledged before the crash; once an entry of its own
    /// term is applied, everything acknowledged before is too.
    graced: Mutex<Option<(u64, u64)>>,
    rejoining: AtomicBool,
    /// Writes this node forwarded to the leader (exported as a metric).
    forwarded: Counter,
    /// Sessions expired by entries this node proposed as leader.
    expired: Counter,
    /// Held while this node, as leader, changes the membership or adopts a
    /// rules level: each decides on what the other changes.
    membership_changes: tokio::sync::Mutex<()>,
}

impl Replicator {
    /// Wraps the local Raft node.
    pub fn new(
        id: NodeId,
        raft: Raft<TypeConfig>,
        state: StateHandle,
        log: LogStore,
        channels: PeerChannels,
        client_addr: String,
    ) -> Self {
        // openraft's leader lease: the other followers refuse to elect anyone
        // for election_timeout_max after their last heartbeat, so no new
        // leader can exist before this node's contact is that old.
        let liveness = Liveness::new(Duration::from_millis(raft.config().election_timeout_max));
        let stamps = Arc::new(EntryStamps::new(state.clone()));
        let group_commit = GroupCommit::start(raft.clone(), stamps.clone());
        Replicator {
            inner: Arc::new(Inner {
                id,
                raft,
                state,
                log,
                forwarder: Forwarder::new(channels.clone()),
                channels,
                client_addr,
                client_addrs: Mutex::new(HashMap::new()),
                stamps,
                group_commit,
                liveness,
                graced: Mutex::new(None),
                rejoining: AtomicBool::new(false),
                forwarded: Counter::default(),
                expired: Counter::default(),
                membership_changes: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Writes this node forwarded to the leader so far.
    pub fn forwarded_writes(&self) -> Counter {
        self.inner.forwarded.clone()
    }

    /// Commands per entry this node proposed as leader (group commit).
    pub fn entry_commands(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.inner.group_commit.entry_commands()
    }

    /// Sessions expired by entries this node proposed as leader so far.
    pub fn expired_sessions(&self) -> Counter {
        self.inner.expired.clone()
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

    /// Serializes this node's membership changes and rules adoptions: a
    /// node must not be admitted on a rules level about to be raised, nor
    /// a level raised over a node being admitted.
    pub async fn membership_changes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.membership_changes.lock().await
    }

    /// The node founds a new cluster after all: it votes.
    pub fn stop_rejoining(&self) {
        self.inner.rejoining.store(false, Ordering::SeqCst);
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
        leads(&self.inner.raft.metrics().borrow())
    }

    /// This node's Raft commit index (0 before anything is committed).
    pub async fn committed_index(&self) -> u64 {
        self.inner
            .raft
            .with_raft_state(|state| state.committed.map(|id| id.index))
            .await
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// The Raft leader this node knows of.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Contact with the leader, as tracked for this node.
    pub fn liveness(&self) -> &Liveness {
        &self.inner.liveness
    }

    /// Whether this node would vote for a candidate whose last log id is
    /// `candidate_log` now (pre-vote): it does not lead, is not rejoining,
    /// has heard from no leader for the leader lease (after which openraft's
    /// followers take votes too), and its log is not ahead of the
    /// candidate's (`None`: a candidate that did not say).
    pub fn grants_pre_vote(&self, candidate_log: Option<LogId<NodeId>>) -> bool {
        if leads(&self.inner.raft.metrics().borrow()) || self.is_rejoining() {
            return false;
        }
        let lease = self.inner.liveness.lost_after();
        let leaderless = self
            .inner
            .liveness
            .last_contact()
            .is_none_or(|at| at.elapsed() >= lease);
        leaderless
            && candidate_log.is_none_or(|candidate| {
                self.last_log_id().is_some_and(|own| Some(candidate) >= own)
            })
    }

    /// The id of this node's last log entry, as openraft's vote compares it
    /// (`None` if the log cannot be read).
    pub fn last_log_id(&self) -> Option<Option<LogId<NodeId>>> {
        match self.inner.log.last_log_id() {
            Ok(last) => Some(last),
            Err(error) => {
                tracing::warn!(%error, "cannot read the last log id");
                None
            }
        }
    }

    /// A client of peer `id`'s peer service.
    pub fn peer_client(&self, id: NodeId) -> Option<RaftServiceClient<Channel>> {
        self.inner.channels.client(&self.peer_addr(id)?).ok()
    }

    /// The leader this node can work with right now, or why there is none.
    pub fn working_leader(&self) -> Result<NodeId, LeaderLoss> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        self.inner.liveness.working_leader(&metrics)
    }

    /// Resolves once no working leader is within reach.
    async fn leader_lost(&self) -> LeaderLoss {
        loop {
            if let Err(loss) = self.working_leader() {
                return loss;
            }
            tokio::time::sleep(LIVENESS_POLL).await;
        }
    }

    /// Runs `attempt` unless contact with the leader is lost first; then
    /// its outcome is unknown (it may still commit).
    async fn while_leader_reachable<T>(
        &self,
        attempt: impl std::future::Future<Output = Result<T, ProposeRejection>>,
    ) -> Result<T, ProposeRejection> {
        tokio::select! {
            outcome = attempt => outcome,
            loss = self.leader_lost() => Err(ProposeRejection::Unknown(loss.to_string())),
        }
    }

    /// The peer address of member `id`, from the membership.
    pub fn peer_addr_of(&self, id: NodeId) -> Option<String> {
        self.peer_addr(id)
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
        self.node_info_of(id).await.map(|info| info.client_addr)
    }

    /// What peer `id` says of itself (at most 500 ms); caches its client
    /// address.
    pub async fn node_info_of(&self, id: NodeId) -> Option<NodeInfoResponse> {
        let info = self.node_info_at(&self.peer_addr(id)?).await?;
        self.inner
            .client_addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, info.client_addr.clone());
        Some(info)
    }

    /// What the node at peer address `addr` says of itself, if it answers
    /// within 500 ms (a node that is not a member yet, too).
    pub async fn node_info_at(&self, addr: &str) -> Option<NodeInfoResponse> {
        node_info(self.inner.channels.client(addr).ok()?).await
    }

    /// Asks whoever is at `addr` what it says of itself until it answers
    /// or `give_up` comes, over a channel that is not kept (`addr` may be
    /// any caller's guess).
    pub async fn probe(&self, addr: &str, give_up: Instant) -> Option<NodeInfoResponse> {
        let client = self.inner.channels.client_once(addr).ok()?;
        loop {
            if let Some(info) = node_info(client.clone()).await {
                return Some(info);
            }
            if Instant::now() + PROBE_PAUSE >= give_up {
                return None;
            }
            tokio::time::sleep(PROBE_PAUSE).await;
        }
    }

    /// The client address of node `id`, if already known.
    pub fn cached_client_addr(&self, id: NodeId) -> Option<String> {
        self.inner
            .client_addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// The leader hint for error responses: only what is already known, so
    /// that an error is never delayed by a lookup (the health task keeps
    /// the leader's address cached).
    pub fn leader_hint(&self) -> LeaderHint {
        match self.current_leader() {
            Some(id) => LeaderHint {
                id: Some(id),
                client_addr: if id == self.inner.id {
                    Some(self.inner.client_addr.clone())
                } else {
                    self.cached_client_addr(id)
                },
            },
            None => LeaderHint::default(),
        }
    }

    fn unavailable(&self, reason: impl Into<String>) -> ReplicationError {
        ReplicationError::Unavailable {
            reason: reason.into(),
            hint: self.leader_hint(),
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
            let leader = self
                .working_leader()
                .map_err(|loss| self.unavailable(loss.to_string()))?;
            // `propose_as_leader` watches the quorum itself; only the
            // forwarding hop needs watching here.
            let attempt = async {
                if leader == self.inner.id {
                    self.propose_as_leader(command.clone()).await
                } else {
                    self.while_leader_reachable(self.forward(leader, &command))
                        .await
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
                        hint: self.leader_hint(),
                    })
                }
                Ok(Err(ProposeRejection::NoQuorum(reason))) => return Err(self.unavailable(reason)),
                Ok(Err(ProposeRejection::NotLeader)) => {
                    // Nothing was appended: retry once this node's view of
                    // the leader has had a moment to catch up.
                    if !pause_before_retry(deadline).await {
                        return Err(
                            self.unavailable("no leader took the write before the deadline")
                        );
                    }
                }
            }
        }
    }

    /// The leader's clock in `term` (DESIGN §3: monotonic within a term).
    fn leader_now_ms(&self, term: u64) -> u64 {
        self.inner.stamps.now_ms(term)
    }

    /// Proposes on this node, which must be a working leader. The command
    /// joins the next entry (group commit), stamped with the leader's term
    /// clock.
    pub async fn propose_as_leader(&self, command: Command) -> ProposeReply {
        self.check_office(None)?;
        self.while_leader_reachable(self.inner.group_commit.propose(command))
            .await
    }

    /// Proposes a leader's own duty decided in `term`, appended in that
    /// term or not at all.
    async fn propose_duty(&self, command: Command, term: u64) -> ProposeReply {
        self.check_office(Some(term))?;
        let proposed = self.inner.group_commit.propose_in_term(command, term);
        self.while_leader_reachable(proposed).await
    }

    /// Whether this node may propose now (in `term`, if given).
    fn check_office(&self, term: Option<u64>) -> Result<(), ProposeRejection> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let in_office = match term {
            Some(term) => leads_in(&metrics, term),
            None => leads(&metrics),
        };
        if !in_office {
            return Err(ProposeRejection::NotLeader);
        }
        if let Err(loss) = self.inner.liveness.working_leader(&metrics) {
            return Err(ProposeRejection::NoQuorum(loss.to_string()));
        }
        Ok(())
    }

    async fn forward(&self, leader: NodeId, command: &Command) -> ProposeReply {
        let Some(addr) = self.peer_addr(leader) else {
            return Err(ProposeRejection::NotLeader);
        };
        self.inner.forwarded.inc();
        let payload =
            encode(command).map_err(|e| ProposeRejection::Unknown(format!("encode: {e}")))?;
        match self.inner.forwarder.forward(&addr, payload).await {
            Ok(reply) => decode::<ProposeReply>(&reply)
                .map_err(|e| ProposeRejection::Unknown(format!("bad reply from leader: {e}")))?,
            // The leader was never reached: as good as not leader.
            Err(ForwardFailure::NotSent(_)) => Err(ProposeRejection::NotLeader),
            Err(ForwardFailure::Lost(reason)) => Err(ProposeRejection::Unknown(format!(
                "forwarding to leader {leader} failed: {reason}"
            ))),
        }
    }

    /// Waits until this node's applied state reflects every write
    /// acknowledged before the call (leader read index: the leader confirms
    /// its leadership with a quorum first). Then a local read is linearizable.
    pub async fn linearizable_barrier(&self, deadline: Instant) -> Result<(), ReplicationError> {
        loop {
            let leader = self
                .working_leader()
                .map_err(|loss| self.unavailable(loss.to_string()))?;
            let attempt = async {
                if leader == self.inner.id {
                    self.read_index_as_leader().await
                } else {
                    self.read_index_from(leader).await
                }
            };
            let read_index =
                match tokio::time::timeout_at(deadline, self.while_leader_reachable(attempt)).await
                {
                    Err(_) => return Err(self.unavailable("no quorum confirmed the read in time")),
                    Ok(Ok(index)) => index,
                    Ok(Err(ProposeRejection::NotLeader)) => {
                        if !pause_before_retry(deadline).await {
                            return Err(self.unavailable("no leader with a quorum"));
                        }
                        continue;
                    }
                    Ok(Err(rejection)) => return Err(self.unavailable(rejection.to_string())),
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
                Err(_) => Err(self.unavailable("this node could not catch up in time")),
            };
        }
    }

    /// On the leader: confirms leadership with a quorum and returns the log
    /// index a read must wait for.
    pub async fn read_index_as_leader(&self) -> Result<Option<u64>, ProposeRejection> {
        if let Err(loss) = self.working_leader() {
            return Err(match loss {
                LeaderLoss::LostQuorum => ProposeRejection::NoQuorum(loss.to_string()),
                _ => ProposeRejection::NotLeader,
            });
        }
        let term = self.inner.raft.metrics().borrow().current_term;
        let graced = *self.inner.graced.lock().unwrap_or_else(|p| p.into_inner());
        let Some(graced_index) = graced.filter(|(t, _)| *t == term).map(|(_, i)| i) else {
            // Not ready to serve reads in this term yet; the caller retries.
            return Err(ProposeRejection::NotLeader);
        };
        match self.inner.raft.get_read_log_id().await {
            Ok((read_log_id, _)) => Ok(Some(
                read_log_id.map_or(graced_index, |id| id.index.max(graced_index)),
            )),
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
        if reply.no_quorum {
            return Err(ProposeRejection::NoQuorum(
                LeaderLoss::LostQuorum.to_string(),
            ));
        }
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
            let still_leader = |this: &Self| leads_in(&this.inner.raft.metrics().borrow(), term);
            // The grace entry first, so no session expires for time the
            // cluster spent without a leader; and again whenever this
            // leader has been without its quorum, which refused every
            // keep-alive meanwhile (openraft 0.9 keeps such a leader in
            // office, and it may regain its quorum without an election).
            let mut graced = false;
            while still_leader(&self) {
                // Checking also measures a quorum loss as it goes on; what
                // was lost before a grace is attempted, that grace covers.
                let _ = self.working_leader();
                let lost = self.inner.liveness.take_quorum_loss();
                if graced && lost >= REGRACE_AFTER_LOSS {
                    tracing::info!(
                        term,
                        lost_ms = lost.as_millis() as u64,
                        "quorum regained: renewing every session before any expires"
                    );
                    graced = false;
                }
                if !graced {
                    match self.propose_duty(Command::LeaderGrace, term).await {
                        Ok(_) => {
                            graced = true;
                            let applied = self.inner.state.applied_index().unwrap_or(0);
                            let mut record =
                                self.inner.graced.lock().unwrap_or_else(|p| p.into_inner());
                            if !matches!(*record, Some((t, _)) if t == term) {
                                *record = Some((term, applied));
                            }
                        }
                        Err(error) => {
                            tracing::debug!(%error, "grace entry not committed yet; retrying");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    continue;
                }
                let due = self.inner.state.read(|machine, _| machine.next_expiry_ms());
                let now = self.leader_now_ms(term);
                match due {
                    Some(due) if due <= now => {
                        match self.propose_duty(Command::ExpireDue, term).await {
                            Ok(Ok(Response::Expired { client_ids })) => {
                                self.inner.expired.inc_by(client_ids.len() as u64);
                            }
                            Ok(_) => {}
                            Err(error) => {
                                tracing::debug!(%error, "expiry entry not committed");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
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

/// How long a leader must have been without its quorum for its sessions to
/// be renewed once it has it again. A healthy client renews every sixth of
/// its timeout (at least 1 s), so a shorter loss leaves it a third of its
/// timeout to get a renewal through; and brief lapses (a slow disk) must
/// not keep renewing dead clients' sessions, or they would never expire.
const REGRACE_AFTER_LOSS: Duration = Duration::from_millis(baton_state::MIN_SESSION_TIMEOUT_MS / 2);

/// Sleeps briefly before a retry; false if the deadline has passed.
async fn pause_before_retry(deadline: Instant) -> bool {
    tokio::time::sleep_until((Instant::now() + RETRY_PAUSE).min(deadline)).await;
    Instant::now() < deadline
}
