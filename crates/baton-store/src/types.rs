//! The openraft type configuration: what a log entry carries.

use std::io::Cursor;

use baton_state::{Command, CommandError, Response};
use serde::{Deserialize, Serialize};

/// A node's id in the cluster.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Baton's openraft types: entries carry stamped state-machine commands,
    /// nodes are known by their peer address.
    pub TypeConfig:
        D = LogCommand,
        R = CommandOutcome,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The payload of a normal log entry: a command and the log time the Raft
/// leader stamped on it (ms since the Unix epoch, never below the previous
/// stamp). The stamp is the state machine's "now" for this entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCommand {
    /// Leader's wall-clock time when it proposed the entry.
    pub stamp_ms: u64,
    /// What to apply.
    pub command: Command,
}

/// What applying one entry answered. Blank and membership entries have no
/// command and answer `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutcome(pub Option<Result<Response, CommandError>>);
