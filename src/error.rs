//! Every way a client request can fail, and the one place where failures
//! become gRPC statuses (DESIGN §8).

use baton_state::{CommandError, ErrorKind};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// Metadata key carrying the Raft leader's client address, when known.
pub const LEADER_ADDR_METADATA: &str = baton_client::LEADER_HINT_METADATA;
/// Metadata key marking a NOT_FOUND that means the caller's session is gone.
pub const SESSION_GONE_METADATA: &str = baton_client::SESSION_GONE_METADATA;
/// Metadata key carrying the Raft leader's node id, when known.
pub const LEADER_ID_METADATA: &str = "baton-leader-id";

/// Where the Raft leader is, as far as this node knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderHint {
    /// The leader's node id.
    pub id: Option<u64>,
    /// The leader's client address.
    pub client_addr: Option<String>,
}

/// Why a write or a linearizable read could not be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicationError {
    /// No leader, no quorum, or the leader could not be reached before the
    /// deadline. Nothing was applied.
    #[error("no Raft leader with a quorum is reachable: {reason}")]
    Unavailable {
        /// What went wrong, for the client's message.
        reason: String,
        /// Where the leader is, if known.
        hint: LeaderHint,
    },
    /// The command may or may not have been applied (the leader changed or
    /// the connection broke mid-call). Retry with the same request_id.
    #[error("outcome unknown, the write may have been applied: {reason}")]
    OutcomeUnknown {
        /// What went wrong.
        reason: String,
        /// Where the leader is, if known.
        hint: LeaderHint,
    },
    /// The caller's deadline passed.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// This node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// This node could not keep a stream's session alive for a third of its
    /// timeout (it lost its leader, or the leader its quorum): leadership
    /// may move soon, so the stream ends instead of going silent.
    #[error("this node could not renew the session in time; reconnect to another node")]
    LeaseLost,
}

/// A failed client request: rejected by the state machine, or not served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The request was bad or not allowed; nothing changed.
    #[error(transparent)]
    Rejected(#[from] CommandError),
    /// The cluster could not serve the request.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// An administrative request is malformed (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidInput(String),
    /// An administrative request cannot be done in the cluster's current
    /// state, e.g. a removal that would lose the quorum (FAILED_PRECONDITION).
    #[error("{0}")]
    Precondition(String),
    /// The state machine answered something the handler did not expect (a
    /// bug, never bad input).
    #[error("internal error: {0}")]
    Internal(String),
}

fn with_hint(mut status: Status, hint: &LeaderHint) -> Status {
    if let Some(addr) = hint
        .client_addr
        .as_deref()
        .and_then(|a| MetadataValue::try_from(a).ok())
    {
        status.metadata_mut().insert(LEADER_ADDR_METADATA, addr);
    }
    if let Some(id) = hint
        .id
        .and_then(|id| MetadataValue::try_from(id.to_string()).ok())
    {
        status.metadata_mut().insert(LEADER_ID_METADATA, id);
    }
    status
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        let message = error.to_string();
        match error {
            ApiError::Rejected(rejection) => {
                let code = match rejection.kind() {
                    ErrorKind::InvalidArgument => Code::InvalidArgument,
                    ErrorKind::FailedPrecondition => Code::FailedPrecondition,
                    ErrorKind::ResourceExhausted => Code::ResourceExhausted,
                    ErrorKind::NotFound => Code::NotFound,
                    ErrorKind::Aborted => Code::Aborted,
                };
                let mut status = Status::new(code, message);
                if matches!(rejection, CommandError::SessionNotFound { .. }) {
                    status
                        .metadata_mut()
                        .insert(SESSION_GONE_METADATA, MetadataValue::from_static("1"));
                }
                status
            }
            ApiError::Replication(ReplicationError::Unavailable { hint, .. })
            | ApiError::Replication(ReplicationError::OutcomeUnknown { hint, .. }) => {
                with_hint(Status::unavailable(message), &hint)
            }
            ApiError::Replication(ReplicationError::DeadlineExceeded(_)) => {
                Status::deadline_exceeded(message)
            }
            ApiError::Replication(ReplicationError::ShuttingDown)
            | ApiError::Replication(ReplicationError::LeaseLost) => Status::unavailable(message),
            ApiError::InvalidInput(_) => Status::invalid_argument(message),
            ApiError::Precondition(_) => Status::failed_precondition(message),
            ApiError::Internal(_) => Status::internal(message),
        }
    }
}

/// tonic refuses a client message above the size limit with OUT_OF_RANGE
/// before any handler runs; DESIGN §8 names RESOURCE_EXHAUSTED for message
/// size. The client services never answer OUT_OF_RANGE themselves, so every
/// such answer (a trailers-only response, its status in the headers) is
/// turned into RESOURCE_EXHAUSTED: a response map for the client port's
/// layers (`tower::util::MapResponseLayer`).
pub fn oversize_as_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|code| code.to_str().ok() == Some(OUT_OF_RANGE));
    if out_of_range {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from_static(RESOURCE_EXHAUSTED),
        );
    }
    response
}

/// `Code::OutOfRange` and `Code::ResourceExhausted` as `grpc-status` values.
const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";
