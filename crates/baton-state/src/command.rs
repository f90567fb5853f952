//! The commands carried in log entries, their responses and the change
//! events they cause.

use serde::{Deserialize, Serialize};

use crate::error::CommandError;
use crate::limits::{resolve_session_timeout, validate_id};
use crate::primitive::{Primitive, PrimitiveKey, PrimitiveSnapshot};

/// Every state change is one of these, applied in log order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A client's operation on a latch or an election.
    Client(ClientRequest),
    /// Opens the client's session, or changes its timeout and renews it.
    /// `timeout_ms` 0 means the default.
    OpenSession {
        /// The client.
        client_id: String,
        /// Requested timeout in ms (0: default).
        timeout_ms: u64,
    },
    /// Renews the sessions of these clients (one explicit keep-alive, or a
    /// node's batch for all its open Events streams). Clients without a
    /// session are reported back, not recreated.
    KeepAlive {
        /// The clients to renew.
        client_ids: Vec<String>,
    },
    /// Closes the client's session: it leaves every primitive at once.
    CloseSession {
        /// The client.
        client_id: String,
        /// Non-zero refuses the close if it is a stale duplicate (an id at
        /// or below the highest the session applied and not remembered).
        #[serde(default)]
        request_id: u64,
    },
    /// Expires every session due at this entry's time. Proposed by the Raft
    /// leader when a session falls due.
    ExpireDue,
    /// Proposed by a new Raft leader as its first entry: every session gets a
    /// full timeout from now, so an outage or a leader change never expires
    /// healthy clients.
    LeaderGrace,
    /// The cluster adopts the rules of `level` (see [`crate::RULES`]):
    /// proposed by the leader once every member runs a version that applies
    /// them, so that no two replicas apply the same log differently.
    AdoptRules {
        /// The rules level from now on (it never goes down).
        level: u32,
    },
}

/// An operation sent by a client, with its identity and retry token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// The caller; its participant / candidate id.
    pub client_id: String,
    /// Non-zero makes the request exactly-once for this client.
    pub request_id: u64,
    /// What to do.
    pub operation: Operation,
}

/// An operation on one primitive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// Latch: add the caller to the participants.
    Join {
        /// Latch name.
        latch: String,
    },
    /// Latch: remove the caller from the participants (upstream
    /// `PrimitiveService.Close` on a latch).
    Leave {
        /// Latch name.
        latch: String,
    },
    /// Election: add the caller to the candidates.
    Enter {
        /// Election name.
        election: String,
    },
    /// Election: remove the caller from the candidates.
    Withdraw {
        /// Election name.
        election: String,
    },
    /// Election: move `candidate` to the front.
    Anoint {
        /// Election name.
        election: String,
        /// The candidate to make leader.
        candidate: String,
    },
    /// Election: move `candidate` up one place.
    Promote {
        /// Election name.
        election: String,
        /// The candidate to move.
        candidate: String,
    },
    /// Election: remove `candidate`.
    Evict {
        /// Election name.
        election: String,
        /// The candidate to remove.
        candidate: String,
    },
    /// Remove the primitive and free its place under the limits; its next
    /// use starts again from epoch 0 (upstream `PrimitiveService.Delete`).
    Delete {
        /// The primitive.
        key: PrimitiveKey,
    },
    /// Replace one primitive's state with a snapshot.
    Restore {
        /// The primitive.
        key: PrimitiveKey,
        /// Its new state.
        snapshot: PrimitiveSnapshot,
    },
}

impl Command {
    /// Checks what the command alone decides, whatever the state: ids
    /// present and not too long, a session timeout in range, a Restore's
    /// snapshot well formed. A node refuses such a command before proposing
    /// it; the state machine checks a client request this way before
    /// anything, its exactly-once record included, changes (and the other
    /// commands where it applies them).
    pub fn validate(&self) -> Result<(), CommandError> {
        match self {
            Command::Client(request) => request.validate(),
            Command::OpenSession {
                client_id,
                timeout_ms,
            } => {
                validate_id("client_id", client_id)?;
                resolve_session_timeout(*timeout_ms).map(|_| ())
            }
            Command::CloseSession { client_id, .. } => validate_id("client_id", client_id),
            Command::KeepAlive { client_ids } => client_ids
                .iter()
                .try_for_each(|id| validate_id("client_id", id)),
            Command::ExpireDue | Command::LeaderGrace | Command::AdoptRules { .. } => Ok(()),
        }
    }
}

impl ClientRequest {
    /// Checks what the request alone decides (see [`Command::validate`]).
    pub fn validate(&self) -> Result<(), CommandError> {
        validate_id("client_id", &self.client_id)?;
        validate_id("primitive name", &self.operation.key().name)?;
        match &self.operation {
            Operation::Anoint { candidate, .. }
            | Operation::Promote { candidate, .. }
            | Operation::Evict { candidate, .. } => validate_id("candidate_id", candidate),
            Operation::Restore { snapshot, .. } => snapshot.validate(),
            Operation::Join { .. }
            | Operation::Leave { .. }
            | Operation::Enter { .. }
            | Operation::Withdraw { .. }
            | Operation::Delete { .. } => Ok(()),
        }
    }
}

impl Operation {
    /// The primitive this operation acts on.
    pub fn key(&self) -> PrimitiveKey {
        match self {
            Operation::Join { latch } | Operation::Leave { latch } => {
                PrimitiveKey::latch(latch.clone())
            }
            Operation::Enter { election }
            | Operation::Withdraw { election }
            | Operation::Anoint { election, .. }
            | Operation::Promote { election, .. }
            | Operation::Evict { election, .. } => PrimitiveKey::election(election.clone()),
            Operation::Restore { key, .. } | Operation::Delete { key } => key.clone(),
        }
    }
}

/// What a successfully applied command answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The primitive's state after a client operation (latch or term),
    /// Restore included.
    Primitive(Primitive),
    /// The session is open with this timeout.
    SessionOpen {
        /// Timeout in force, ms.
        timeout_ms: u64,
    },
    /// Keep-alive result: the renewed clients with their session timeouts,
    /// and the clients that had no session to renew.
    KeptAlive {
        /// Renewed clients and their timeouts (ms), in request order.
        renewed: Vec<(String, u64)>,
        /// Clients not renewed because they have no session.
        missing: Vec<String>,
    },
    /// The session is closed (`existed` is false if there was none).
    SessionClosed {
        /// Whether a session was open.
        existed: bool,
    },
    /// These clients' sessions expired.
    Expired {
        /// The expired clients, in id order.
        client_ids: Vec<String>,
    },
    /// The grace entry renewed this many sessions.
    GraceApplied {
        /// Number of sessions renewed.
        sessions: usize,
    },
    /// The rules level now in force.
    RulesAdopted {
        /// The level.
        level: u32,
    },
}

/// A primitive changed; its full new state. Watchers receive these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// Which primitive.
    pub key: PrimitiveKey,
    /// Its state after the change.
    pub state: Primitive,
    /// Its epoch before the command.
    pub epoch_before: u64,
}

impl ChangeEvent {
    /// Whether the command changed who leads (the epoch rose; a Delete,
    /// which resets it to 0, does not count).
    pub fn leader_changed(&self) -> bool {
        self.state.epoch > self.epoch_before
    }
}

/// The outcome of applying one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The answer for the caller.
    pub result: Result<Response, CommandError>,
    /// One event per primitive that changed, in key order.
    pub events: Vec<ChangeEvent>,
}
