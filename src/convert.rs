//! Translation between the wire messages and the state machine's types,
//! with the input checks that belong to the wire (headers, snapshots).

use std::time::Duration;

use baton_state::{
    validate_id, CommandError, Primitive, PrimitiveKey, PrimitiveKind, PrimitiveSnapshot,
};
use tokio::time::Instant;

use crate::proto::atomix::primitive::election as election_pb;
use crate::proto::atomix::primitive::leader as latch_pb;
use crate::proto::atomix::primitive::meta::{
    object_meta, Epoch, ObjectMeta, PhysicalTimestamp, Revision,
};
use crate::proto::atomix::primitive::{RequestHeader, ResponseHeader, ResponseType};

/// A request to a primitive: it names the primitive (and maybe the caller)
/// in its header.
pub trait Addressed {
    /// The request's header, if it has one.
    fn header(&self) -> Option<&RequestHeader>;
}

macro_rules! addressed {
    ($($request:ty),* $(,)?) => {
        $(impl Addressed for $request {
            fn header(&self) -> Option<&RequestHeader> {
                self.header.as_ref()
            }
        })*
    };
}

addressed!(
    latch_pb::LatchRequest,
    latch_pb::GetRequest,
    latch_pb::EventsRequest,
    latch_pb::SnapshotRequest,
    latch_pb::RestoreRequest,
    election_pb::EnterRequest,
    election_pb::WithdrawRequest,
    election_pb::AnointRequest,
    election_pb::PromoteRequest,
    election_pb::EvictRequest,
    election_pb::GetTermRequest,
    election_pb::EventsRequest,
    election_pb::SnapshotRequest,
    election_pb::RestoreRequest,
    crate::proto::atomix::primitive::CreateRequest,
    crate::proto::atomix::primitive::CloseRequest,
    crate::proto::atomix::primitive::DeleteRequest,
);

/// Deadline applied when the caller sets none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);
/// Longest deadline honoured; longer ones are cut to this.
pub const MAX_DEADLINE: Duration = Duration::from_secs(60);

/// Who is asking, about which primitive.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `RequestHeader.client_id`.
    pub client_id: String,
    /// `RequestHeader.request_id` (0: not deduplicated).
    pub request_id: u64,
    /// The primitive named by `RequestHeader.primitive_id`.
    pub key: PrimitiveKey,
    /// For a connection-bound identity, its connection's hold: its session
    /// is closed only once the connection and everything done under its
    /// name have ended (see [`crate::identity`]).
    pub connection: Option<crate::identity::ConnectionGuard>,
}

/// Checks a request header sent to the service of `kind`.
pub fn caller(header: Option<&RequestHeader>, kind: PrimitiveKind) -> Result<Caller, CommandError> {
    let header = header.ok_or_else(|| CommandError::EmptyId {
        what: "header.client_id".into(),
    })?;
    let primitive = header
        .primitive_id
        .as_ref()
        .ok_or_else(|| CommandError::EmptyId {
            what: "header.primitive_id.name".into(),
        })?;
    kind.check_type_name(&primitive.r#type)?;
    validate_id("header.primitive_id.name", &primitive.name)?;
    validate_id("header.client_id", &header.client_id)?;
    Ok(Caller {
        client_id: header.client_id.clone(),
        request_id: header.request_id,
        key: PrimitiveKey {
            kind,
            name: primitive.name.clone(),
        },
        connection: None,
    })
}

/// The header of a unary response.
pub fn unary_header() -> Option<ResponseHeader> {
    Some(ResponseHeader {
        response_type: ResponseType::Response as i32,
    })
}

/// The header of a streamed response.
pub fn stream_header() -> Option<ResponseHeader> {
    Some(ResponseHeader {
        response_type: ResponseType::ResponseStream as i32,
    })
}

/// Milliseconds since the Unix epoch as a protobuf timestamp.
pub fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1_000) as i64,
        nanos: ((ms % 1_000) * 1_000_000) as i32,
    }
}

/// A latch as the wire shows it: epoch as `meta.revision.num`, time of the
/// last change as `meta.physical_timestamp`.
pub fn latch_to_proto(latch: &Primitive) -> latch_pb::Latch {
    latch_pb::Latch {
        meta: Some(ObjectMeta {
            revision: Some(Revision { num: latch.epoch }),
            timestamp: Some(object_meta::Timestamp::PhysicalTimestamp(
                PhysicalTimestamp {
                    time: Some(timestamp(latch.changed_at_ms)),
                },
            )),
        }),
        leader: latch.leader().unwrap_or_default().to_owned(),
        participants: latch.members.clone(),
    }
}

/// An election as the wire shows it: epoch as `id.num`, time the current
/// leader took over as `timestamp`.
pub fn term_to_proto(election: &Primitive) -> election_pb::Term {
    election_pb::Term {
        id: Some(Epoch {
            num: election.epoch,
        }),
        timestamp: Some(timestamp(election.leader_since_ms)),
        leader: election.leader().unwrap_or_default().to_owned(),
        candidates: election.members.clone(),
    }
}

fn malformed(reason: &str) -> CommandError {
    CommandError::MalformedSnapshot {
        reason: reason.to_owned(),
    }
}

/// A latch Restore's snapshot.
pub fn latch_snapshot(
    snapshot: Option<latch_pb::Snapshot>,
) -> Result<PrimitiveSnapshot, CommandError> {
    let latch = snapshot
        .ok_or_else(|| malformed("snapshot is missing"))?
        .latch
        .ok_or_else(|| malformed("snapshot.latch is missing"))?;
    let epoch = latch
        .meta
        .and_then(|m| m.revision)
        .map(|r| r.num)
        .unwrap_or(0);
    Ok(PrimitiveSnapshot {
        leader: latch.leader,
        members: latch.participants,
        epoch,
    })
}

/// An election Restore's snapshot.
pub fn term_snapshot(
    snapshot: Option<election_pb::Snapshot>,
) -> Result<PrimitiveSnapshot, CommandError> {
    let term = snapshot
        .ok_or_else(|| malformed("snapshot is missing"))?
        .term
        .ok_or_else(|| malformed("snapshot.term is missing"))?;
    Ok(PrimitiveSnapshot {
        leader: term.leader,
        members: term.candidates,
        epoch: term.id.map(|e| e.num).unwrap_or(0),
    })
}

/// The time by which to answer: the caller's `grpc-timeout` (default 5 s)
/// less a small margin, so that the caller receives our UNAVAILABLE or
/// DEADLINE_EXCEEDED (with its leader hint) rather than timing out itself.
pub fn deadline<T>(request: &tonic::Request<T>) -> Instant {
    let timeout = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(DEFAULT_DEADLINE)
        .min(MAX_DEADLINE);
    let margin = (timeout / 10).min(Duration::from_millis(200));
    Instant::now() + timeout - margin
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H M S m u n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3_600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("5Q"), None);
    }

    #[test]
    fn timestamp_splits_millis() {
        let t = timestamp(1_500);
        assert_eq!((t.seconds, t.nanos), (1, 500_000_000));
    }
}
