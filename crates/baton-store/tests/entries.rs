//! Entries that carry several commands (the leader's group commit): each is
//! applied in order with the entry's stamp and answered on its own.

use baton_state::{ClientRequest, Command, Limits, Operation, PrimitiveKey, Response};
use baton_store::{CommandOutcome, LogCommand};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

fn join(client: &str, latch: &str) -> Command {
    Command::Client(ClientRequest {
        client_id: client.into(),
        request_id: 0,
        operation: Operation::Join {
            latch: latch.into(),
        },
    })
}

#[tokio::test]
async fn every_command_of_an_entry_is_applied_in_order_and_answered_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = baton_store::open(dir.path(), Limits::default()).unwrap();
    let mut changes = sm.handle().watch(&PrimitiveKey::latch("l"));
    let unknown = Command::Client(ClientRequest {
        client_id: "b".into(),
        request_id: 0,
        operation: Operation::Delete {
            key: PrimitiveKey::latch("missing"),
        },
    });
    let entry = Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
        payload: EntryPayload::Normal(LogCommand {
            stamp_ms: 5_000,
            commands: vec![join("a", "l"), unknown, join("b", "l"), join("c", "l")],
        }),
    };
    let outcomes = sm.apply([entry]).await.unwrap();
    let [CommandOutcome(results)] = outcomes.as_slice() else {
        panic!("one outcome per entry: {outcomes:?}");
    };
    let members: Vec<_> = results
        .iter()
        .map(|result| match result {
            Ok(Response::Primitive(p)) => Ok(p.members.clone()),
            other => Err(format!("{other:?}")),
        })
        .collect();
    assert_eq!(members[0], Ok(vec!["a".to_string()]));
    assert!(
        members[1].is_err(),
        "deleting a missing primitive fails alone: {members:?}"
    );
    assert_eq!(members[2], Ok(vec!["a".to_string(), "b".into()]));
    assert_eq!(
        members[3],
        Ok(vec!["a".to_string(), "b".into(), "c".into()])
    );
    assert_eq!(results.len(), 4);

    let change = changes.try_recv().expect("the entry's changes");
    assert_eq!(change.index, 1);
    let sizes: Vec<_> = change.states.iter().map(|s| s.members.len()).collect();
    assert_eq!(sizes, vec![1, 2, 3], "one state per change, in order");
    assert!(change.states.iter().all(|s| s.changed_at_ms == 5_000));
    assert_eq!(
        sm.handle().leader_changes(),
        1,
        "a leads from the first join on"
    );
}

/// openraft applies committed entries in batches (hundreds when a follower
/// catches up): a watcher that keeps up must get every state of the batch,
/// not be told it fell behind because the batch was long.
#[tokio::test]
async fn a_long_batch_of_entries_reaches_a_watcher_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = baton_store::open(dir.path(), Limits::default()).unwrap();
    let mut changes = sm.handle().watch(&PrimitiveKey::latch("l"));
    const ENTRIES: u64 = 200;
    let entries: Vec<_> = (1..=ENTRIES)
        .map(|index| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(LogCommand {
                stamp_ms: 5_000,
                commands: vec![join(&format!("c{index}"), "l")],
            }),
        })
        .collect();
    sm.apply(entries).await.unwrap();

    let change = changes.try_recv().expect("the batch's changes, no lag");
    assert_eq!(
        change.index, ENTRIES,
        "read together with the batch's last entry"
    );
    let sizes: Vec<_> = change.states.iter().map(|s| s.members.len()).collect();
    assert_eq!(sizes, (1..=ENTRIES as usize).collect::<Vec<_>>());
}
