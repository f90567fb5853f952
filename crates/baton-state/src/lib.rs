//! Baton's deterministic state machine: leader latches, leader elections and
//! client sessions as a pure function of a command log.
//!
//! This crate knows nothing of Raft, storage, gRPC or the clock. The Raft
//! layer stamps every [`Command`] with the leader's time and calls
//! [`StateMachine::apply`] in log order on every replica; each replica then
//! holds the same [`StateMachine`], which serializes (serde) as the Raft
//! snapshot.
//!
//! Rules (DESIGN §3–§6):
//! - a primitive's leader is its first member; join/enter are idempotent;
//! - the epoch rises by one each time leadership passes to a new non-empty
//!   leader and never decreases, also across Restore (which sets it above
//!   both the current and the restored epoch);
//! - every member has a session; when a session expires or closes its client
//!   leaves every primitive in one step;
//! - a non-zero `request_id` makes a client command exactly-once, within a
//!   bounded window of recent ids, and older ids are refused;
//! - epochs never wrap: restored epochs stay below [`MAX_EPOCH`] and every
//!   increment is checked;
//! - a rejected command changes nothing.

#![warn(missing_docs)]

mod command;
mod error;
mod limits;
mod machine;
mod primitive;
mod session;

pub use command::{Applied, ChangeEvent, ClientRequest, Command, Operation, Response};
pub use error::{CommandError, ErrorKind};
pub use limits::{
    resolve_session_timeout, shown, validate_id, Limits, DEFAULT_SESSION_TIMEOUT_MS, MAX_EPOCH,
    MAX_ID_BYTES, MAX_SESSION_TIMEOUT_MS, MIN_SESSION_TIMEOUT_MS,
};
pub use machine::{StateMachine, Tombstone, ORDERED_REQUESTS, RULES, TOMBSTONE_TTL_MS};
pub use primitive::{Primitive, PrimitiveKey, PrimitiveKind, PrimitiveSnapshot};
pub use session::{Outcome, RecordedRequest, Session, REQUEST_WINDOW};
