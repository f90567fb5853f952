//! The openraft type configuration: what a log entry carries.

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
        SnapshotData = crate::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The payload of a normal log entry: the commands the leader gathered
/// into it (group commit: proposals that arrive while an entry is in flight
/// share the next one), applied in order, and the log time the leader
/// stamped on the entry (ms since the Unix epoch, never below the previous
/// stamp). The stamp is the state machine's "now" for every command in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredLogCommand")]
pub struct LogCommand {
    /// Leader's wall-clock time when it proposed the entry.
    pub stamp_ms: u64,
    /// What to apply, in order.
    pub commands: Vec<Command>,
}

impl LogCommand {
    /// An entry carrying one command.
    pub fn single(stamp_ms: u64, command: Command) -> Self {
        LogCommand {
            stamp_ms,
            commands: vec![command],
        }
    }
}

/// How a [`LogCommand`] may be stored: entries written before group commit
/// carry a single `command`, and remain readable.
#[derive(Deserialize)]
struct StoredLogCommand {
    stamp_ms: u64,
    #[serde(default)]
    commands: Vec<Command>,
    #[serde(default)]
    command: Option<Command>,
}

impl From<StoredLogCommand> for LogCommand {
    fn from(stored: StoredLogCommand) -> Self {
        let mut commands = stored.commands;
        commands.extend(stored.command);
        LogCommand {
            stamp_ms: stored.stamp_ms,
            commands,
        }
    }
}

/// What applying one entry answered: one result per command, in order.
/// Blank and membership entries carry no command and answer none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutcome(pub Vec<Result<Response, CommandError>>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_written_with_a_single_command_still_reads() {
        let old = r#"{"stamp_ms":7,"command":"ExpireDue"}"#;
        let read: LogCommand = serde_json::from_str(old).expect("old entry");
        assert_eq!(read, LogCommand::single(7, Command::ExpireDue));
        let new = serde_json::to_string(&read).expect("encode");
        assert_eq!(
            serde_json::from_str::<LogCommand>(&new).expect("new entry"),
            read
        );
    }
}
