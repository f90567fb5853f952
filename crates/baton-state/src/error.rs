//! Why a command was rejected. A rejected command changes nothing.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The class of a rejection, one per gRPC status code the service maps it to
/// (DESIGN §8). The mapping itself lives in the server crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The input itself is wrong: missing or oversized ids, bad timeout,
    /// wrong primitive type, malformed snapshot.
    InvalidArgument,
    /// The input is well formed but the state does not allow it, e.g. naming
    /// a client that is not a candidate.
    FailedPrecondition,
    /// A limit of the cluster would be exceeded.
    ResourceExhausted,
    /// The caller has no session (it expired or was never opened), or the
    /// primitive to delete does not exist.
    NotFound,
    /// The request was already applied, but its answer can no longer be
    /// given exactly; the caller should read the state again.
    Aborted,
}

/// A rejected command, with enough detail for a readable client message.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum CommandError {
    /// A required identifier (`what` names which) is empty.
    #[error("{what} is required and must not be empty")]
    EmptyId {
        /// Which identifier: "client_id", "primitive name", "candidate_id", ...
        what: String,
    },
    /// An identifier is longer than the limit.
    #[error("{what} is {len} bytes long; the limit is {max} bytes")]
    IdTooLong {
        /// Which identifier.
        what: String,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The primitive type in the request header names another primitive.
    #[error("primitive type {given:?} is not valid here; expected {expected:?} or empty")]
    WrongPrimitiveType {
        /// The type string the client sent.
        given: String,
        /// The type string this service accepts.
        expected: String,
    },
    /// A session timeout outside the allowed range.
    #[error(
        "session timeout {requested_ms} ms is outside the allowed range {min_ms}..={max_ms} ms"
    )]
    InvalidTimeout {
        /// What the client asked for.
        requested_ms: u64,
        /// Smallest allowed timeout.
        min_ms: u64,
        /// Largest allowed timeout.
        max_ms: u64,
    },
    /// A snapshot handed to Restore is not a valid primitive state.
    #[error("malformed snapshot: {reason}")]
    MalformedSnapshot {
        /// What is wrong with it.
        reason: String,
    },
    /// Anoint, Promote or Evict named a client that is not a candidate.
    #[error("{candidate:?} is not a candidate in election {election:?}")]
    NotACandidate {
        /// The election.
        election: String,
        /// The client that was named.
        candidate: String,
    },
    /// The primitive already has the maximum number of members.
    #[error("{name:?} already has {max} members, the limit")]
    TooManyMembers {
        /// The primitive.
        name: String,
        /// The limit.
        max: usize,
    },
    /// A command too large for one log entry, refused before it is
    /// proposed (the state machine never sees it): an entry reaches a
    /// follower whole, within one heartbeat interval, so one of several MB
    /// would never arrive and every write after it would wait for ever.
    #[error("the request encodes to {bytes} bytes in the log; at most {max} are allowed")]
    TooLarge {
        /// Its encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The cluster already holds the maximum number of primitives.
    #[error("the cluster already holds {max} primitives, the limit")]
    TooManyPrimitives {
        /// The limit.
        max: usize,
    },
    /// The cluster already holds the maximum number of sessions.
    #[error("the cluster already holds {max} sessions, the limit")]
    TooManySessions {
        /// The limit.
        max: usize,
    },
    /// A Restore names an epoch too large to keep rising (DESIGN §6).
    #[error("restored epoch {epoch} is too large; epochs must stay below {limit}")]
    EpochTooLarge {
        /// The epoch in the snapshot.
        epoch: u64,
        /// The first epoch refused (2^63).
        limit: u64,
    },
    /// The primitive's epoch cannot rise any further; the change that would
    /// need a new epoch is refused rather than reusing or wrapping one.
    #[error("the epoch of {name:?} is exhausted")]
    EpochExhausted {
        /// The primitive.
        name: String,
    },
    /// The request id is at or below the highest one this client's session
    /// applied and is not remembered: a late duplicate, never applied.
    #[error("request id {request_id} is stale: the session no longer remembers ids up to {forgotten_up_to}")]
    StaleRequest {
        /// The refused request id.
        request_id: u64,
        /// Ids at or below this have left the session's window.
        forgotten_up_to: u64,
    },
    /// A request this client's session never saw, overtaken by a later
    /// request of the same client on the same primitive: a late copy of
    /// something the client moved on from, never applied.
    #[error("request id {request_id} was overtaken by request {by} on the same primitive; send a new request id")]
    Overtaken {
        /// The refused request id.
        request_id: u64,
        /// The later request on the same primitive.
        by: u64,
    },
    /// A retried request id the session remembers for another primitive.
    #[error("request id {request_id} was used for another primitive; send a new request id")]
    RequestIdReused {
        /// The reused request id.
        request_id: u64,
    },
    /// A retried request was refused the first time; it stays refused.
    #[error("request id {request_id} was refused before ({kind:?}); send a new request id")]
    PreviouslyRejected {
        /// The retried request id.
        request_id: u64,
        /// The class of the first refusal.
        kind: ErrorKind,
    },
    /// A retried request was applied before, but the primitive has changed
    /// since, so its original answer cannot be given.
    #[error("request id {request_id} was already applied; the primitive has changed since, read it again")]
    AlreadyApplied {
        /// The retried request id.
        request_id: u64,
    },
    /// Delete of a primitive that does not exist.
    #[error("{name:?} does not exist (never used, or deleted)")]
    PrimitiveNotFound {
        /// The primitive's name.
        name: String,
    },
    /// A keep-alive for a client that has no session (it expired or closed).
    #[error("client {client_id:?} has no open session (expired or closed)")]
    SessionNotFound {
        /// The client.
        client_id: String,
    },
}

impl CommandError {
    /// The class of this error, which decides the gRPC status code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CommandError::EmptyId { .. }
            | CommandError::IdTooLong { .. }
            | CommandError::WrongPrimitiveType { .. }
            | CommandError::InvalidTimeout { .. }
            | CommandError::MalformedSnapshot { .. }
            | CommandError::EpochTooLarge { .. }
            | CommandError::RequestIdReused { .. } => ErrorKind::InvalidArgument,
            CommandError::NotACandidate { .. }
            | CommandError::StaleRequest { .. }
            | CommandError::Overtaken { .. } => ErrorKind::FailedPrecondition,
            CommandError::AlreadyApplied { .. } => ErrorKind::Aborted,
            CommandError::PreviouslyRejected { kind, .. } => *kind,
            CommandError::TooManyMembers { .. }
            | CommandError::TooLarge { .. }
            | CommandError::EpochExhausted { .. }
            | CommandError::TooManyPrimitives { .. }
            | CommandError::TooManySessions { .. } => ErrorKind::ResourceExhausted,
            CommandError::SessionNotFound { .. } | CommandError::PrimitiveNotFound { .. } => {
                ErrorKind::NotFound
            }
        }
    }
}
