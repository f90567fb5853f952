//! Group commit on the leader. openraft 0.9 appends, flushes and replicates
//! every client write as its own entry, one after the other, so a busy
//! leader spends its time on fsyncs of single commands. Here, commands
//! proposed while earlier entries are still in flight wait and then go
//! together into the next entry: concurrent writes share one append, one
//! flush on each node and one replication round, and a lone write goes out
//! at once, as before. Nothing changes for durability: every command is
//! answered only after its entry is committed on a majority and applied.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use baton_state::{ClientRequest, Command, Operation};
use baton_store::{LogCommand, TypeConfig};
use openraft::error::ClientWriteError;
use openraft::raft::ClientWriteResult;
use openraft::Raft;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::clock::EntryStamps;
use crate::liveness::{leads, leads_in};
use crate::replication::{ProposeRejection, ProposeReply};

/// Entries in flight at once (proposed, not yet applied). One: openraft
/// appends and replicates entries one after the other anyway, and proposals
/// that wait for the whole round fill the next entry best. Measured on the
/// benchmark (16 / 64 clients): 1,250 / 2,292 cycles/s with one in flight,
/// 1,089 / 2,012 with two.
const MAX_IN_FLIGHT: usize = 1;
/// Most commands in one entry.
const MAX_ENTRY_COMMANDS: usize = 128;
/// A rough bound on an entry's encoded size, so that a full replication
/// message stays far below the peer message limit.
const MAX_ENTRY_BYTES: usize = 256 * 1024;
/// Proposals waiting for an entry; beyond this, proposers wait.
const QUEUE_DEPTH: usize = 4096;
/// How long an entry may hold its in-flight slot. openraft answers every
/// entry once it is applied or truncated; this only guards the slot should
/// an answer never come (the proposers have long given up by then).
const ENTRY_ANSWER_LIMIT: Duration = Duration::from_secs(30);

struct Proposal {
    command: Command,
    reply: oneshot::Sender<ProposeReply>,
    /// For a leader's own duty, the term it was decided in: it is appended
    /// in that term or not at all. An expiry decided in one term and
    /// appended in a later one of the same node (deposed and elected again
    /// while it waited) would come before that term's grace entry, and
    /// expire sessions by a clock that may have started far ahead.
    term: Option<u64>,
}

/// The leader's queue of proposals waiting for an entry.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Proposal>,
    entry_commands: Histogram,
}

impl GroupCommit {
    /// Starts gathering proposals for `raft`; entries are stamped by
    /// `stamps`. The task ends when every handle is dropped.
    pub fn start(raft: Raft<TypeConfig>, stamps: Arc<EntryStamps>) -> Self {
        let (queue, proposals) = mpsc::channel(QUEUE_DEPTH);
        let entry_commands = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        tokio::spawn(gather(raft, stamps, proposals, entry_commands.clone()));
        GroupCommit {
            queue,
            entry_commands,
        }
    }

    /// Commands per entry proposed by this node as leader.
    pub fn entry_commands(&self) -> Histogram {
        self.entry_commands.clone()
    }

    /// Proposes `command` in the next entry and waits for its result. The
    /// caller must have checked that this node leads.
    pub async fn propose(&self, command: Command) -> ProposeReply {
        self.propose_as(command, None).await
    }

    /// Proposes a leader's own duty decided in `term`: refused as
    /// NotLeader (nothing appended) unless it is appended in that term.
    pub async fn propose_in_term(&self, command: Command, term: u64) -> ProposeReply {
        self.propose_as(command, Some(term)).await
    }

    async fn propose_as(&self, command: Command, term: Option<u64>) -> ProposeReply {
        let (reply, answer) = oneshot::channel();
        let proposal = Proposal {
            command,
            reply,
            term,
        };
        if self.queue.send(proposal).await.is_err() {
            return Err(ProposeRejection::NotLeader);
        }
        answer
            .await
            .unwrap_or_else(|_| Err(ProposeRejection::Unknown("the write was dropped".into())))
    }
}

async fn gather(
    raft: Raft<TypeConfig>,
    stamps: Arc<EntryStamps>,
    mut proposals: mpsc::Receiver<Proposal>,
    entry_commands: Histogram,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(proposal) => proposal,
            None => match proposals.recv().await {
                Some(proposal) => proposal,
                None => return,
            },
        };
        // Waiting for a slot is what lets the next entry fill up.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = approx_bytes(&first.command);
        let mut batch = vec![first];
        while batch.len() < MAX_ENTRY_COMMANDS {
            let Ok(next) = proposals.try_recv() else {
                break;
            };
            let size = approx_bytes(&next.command);
            if bytes + size > MAX_ENTRY_BYTES {
                carried = Some(next);
                break;
            }
            bytes += size;
            batch.push(next);
        }
        // A proposer that gave up was told the outcome is unknown; leaving
        // its command out is one of the outcomes it was promised.
        batch.retain(|proposal| !proposal.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (leading, term) = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            (leads(&metrics), metrics.current_term)
        };
        if !leading {
            // Leadership moved while these waited: nothing was appended,
            // so the proposers may safely try the new leader.
            answer_all(
                batch.into_iter().map(|proposal| proposal.reply).collect(),
                ProposeRejection::NotLeader,
            );
            continue;
        }
        let (batch, outdated): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|proposal| proposal.term.is_none_or(|decided| decided == term));
        answer_all(
            outdated
                .into_iter()
                .map(|proposal| proposal.reply)
                .collect(),
            ProposeRejection::NotLeader,
        );
        if batch.is_empty() {
            continue;
        }
        entry_commands.observe(batch.len() as f64);
        let (commands, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|proposal| (proposal.command, proposal.reply))
            .unzip();
        let entry = LogCommand {
            stamp_ms: stamps.next(term),
            commands,
        };
        match raft.client_write_ff(entry).await {
            Ok(answer) => {
                tokio::spawn(answer_when_applied(
                    answer,
                    replies,
                    slot,
                    raft.clone(),
                    term,
                ));
            }
            Err(fatal) => answer_all(replies, ProposeRejection::Unknown(fatal.to_string())),
        }
    }
}

async fn answer_when_applied<E>(
    answer: impl Future<Output = Result<ClientWriteResult<TypeConfig>, E>>,
    replies: Vec<oneshot::Sender<ProposeReply>>,
    slot: OwnedSemaphorePermit,
    raft: Raft<TypeConfig>,
    term: u64,
) {
    // openraft answers an entry once it is applied or truncated, but not
    // one that a snapshot installed here later covers; should this node
    // lose office, its slot is freed at once (the next entry is then
    // refused as NotLeader) and the answer is still awaited for the
    // proposers.
    let mut slot = Some(slot);
    let answer = tokio::time::timeout(ENTRY_ANSWER_LIMIT, answer);
    tokio::pin!(answer);
    let outcome = loop {
        tokio::select! {
            outcome = &mut answer => break outcome,
            _ = left_office(&raft, term), if slot.is_some() => slot = None,
        }
    };
    drop(slot);
    let rejection = match outcome {
        Ok(Ok(Ok(response))) => {
            let results = response.data.0;
            if results.len() == replies.len() {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
                return;
            }
            ProposeRejection::Unknown("entry applied without a result for every command".into())
        }
        Ok(Ok(Err(ClientWriteError::ForwardToLeader(_)))) => {
            ProposeRejection::Unknown("leadership changed while the write was in flight".into())
        }
        Ok(Ok(Err(error))) => ProposeRejection::Unknown(error.to_string()),
        Ok(Err(_)) => ProposeRejection::Unknown("raft dropped the write".into()),
        Err(_) => ProposeRejection::Unknown("no answer for the entry in time".into()),
    };
    answer_all(replies, rejection);
}

/// Resolves once this node no longer leads in `term` (or Raft stopped).
async fn left_office(raft: &Raft<TypeConfig>, term: u64) {
    let mut metrics = raft.metrics();
    let _ = metrics.wait_for(|m| !leads_in(m, term)).await;
}

fn answer_all(replies: Vec<oneshot::Sender<ProposeReply>>, rejection: ProposeRejection) {
    for reply in replies {
        let _ = reply.send(Err(rejection.clone()));
    }
}

/// A generous estimate of a log entry's encoded size (see [`approx_bytes`]).
pub(crate) fn approx_entry_bytes(entry: &openraft::Entry<TypeConfig>) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(log) => log.commands.iter().map(approx_bytes).sum(),
        openraft::EntryPayload::Blank | openraft::EntryPayload::Membership(_) => 256,
    }
}

/// A generous estimate of a command's encoded size: JSON may escape a byte
/// as six, so every name and id counts six times its length; restores are
/// measured. Ids are only checked when applied, so nothing here trusts
/// them to be short.
fn approx_bytes(command: &Command) -> usize {
    const OVERHEAD: usize = 256;
    let text = |s: &str| 6 * s.len();
    OVERHEAD
        + match command {
            Command::Client(ClientRequest {
                client_id,
                operation,
                ..
            }) => {
                text(client_id)
                    + match operation {
                        Operation::Join { latch } | Operation::Leave { latch } => text(latch),
                        Operation::Enter { election } | Operation::Withdraw { election } => {
                            text(election)
                        }
                        Operation::Anoint {
                            election,
                            candidate,
                        }
                        | Operation::Promote {
                            election,
                            candidate,
                        }
                        | Operation::Evict {
                            election,
                            candidate,
                        } => text(election) + text(candidate),
                        Operation::Delete { key } => text(&key.name),
                        Operation::Restore { .. } => {
                            serde_json::to_vec(command).map_or(MAX_ENTRY_BYTES, |bytes| bytes.len())
                        }
                    }
            }
            Command::OpenSession { client_id, .. } | Command::CloseSession { client_id, .. } => {
                text(client_id)
            }
            Command::KeepAlive { client_ids } => {
                client_ids.iter().map(|id| text(id) + 8).sum::<usize>()
            }
            Command::ExpireDue | Command::LeaderGrace | Command::AdoptRules { .. } => 0,
        }
}

#[cfg(test)]
mod tests {
    use baton_state::PrimitiveKey;

    use super::*;

    fn client(client_id: &str, operation: Operation) -> Command {
        Command::Client(ClientRequest {
            client_id: client_id.into(),
            request_id: 7,
            operation,
        })
    }

    /// Entries are bounded by this estimate, so it must never be below the
    /// encoded size, whatever the ids hold (they are only checked when
    /// applied, and a client message may be 1 MiB).
    #[test]
    fn the_size_estimate_is_never_below_the_encoded_size() {
        let huge = "x".repeat(600 * 1024);
        let escaped = "\u{1}\"\n".repeat(1000);
        let commands = [
            client(
                "c",
                Operation::Anoint {
                    election: "e".into(),
                    candidate: huge.clone(),
                },
            ),
            client(
                &escaped,
                Operation::Promote {
                    election: escaped.clone(),
                    candidate: escaped.clone(),
                },
            ),
            client(
                "c",
                Operation::Evict {
                    election: huge.clone(),
                    candidate: "d".into(),
                },
            ),
            client(&huge, Operation::Join { latch: "l".into() }),
            client(
                "c",
                Operation::Leave {
                    latch: escaped.clone(),
                },
            ),
            client(
                "c",
                Operation::Enter {
                    election: huge.clone(),
                },
            ),
            client(
                "c",
                Operation::Withdraw {
                    election: "e".into(),
                },
            ),
            client(
                "c",
                Operation::Delete {
                    key: PrimitiveKey::latch(escaped.clone()),
                },
            ),
            Command::OpenSession {
                client_id: escaped.clone(),
                timeout_ms: 1,
            },
            Command::CloseSession {
                client_id: huge.clone(),
                request_id: 3,
            },
            Command::KeepAlive {
                client_ids: vec![escaped.clone(), huge.clone(), String::new()],
            },
            Command::ExpireDue,
            Command::LeaderGrace,
        ];
        for command in &commands {
            let encoded = serde_json::to_vec(command).expect("encodes").len();
            assert!(
                approx_bytes(command) >= encoded,
                "estimated {} < encoded {encoded} for {command:.80?}",
                approx_bytes(command)
            );
        }
    }
}
