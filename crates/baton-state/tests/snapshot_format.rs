//! The snapshot format does not change with the maps behind it: a state
//! encoded by the version before persistent maps (session 10, std
//! `BTreeMap`s; `fixtures/state-before-imbl.json`) decodes into the state
//! the same commands build now, and encodes back byte for byte.

use baton_state::{ClientRequest, Command, Limits, Operation, StateMachine};

const BEFORE: &str = include_str!("fixtures/state-before-imbl.json");

fn client(client_id: &str, request_id: u64, operation: Operation) -> Command {
    Command::Client(ClientRequest {
        client_id: client_id.into(),
        request_id,
        operation,
    })
}

/// Sessions, a tombstone, a latch and an election: every map and set the
/// state holds.
fn built_now() -> StateMachine {
    let mut machine = StateMachine::new(Limits::default());
    for id in ["a", "b", "c"] {
        machine.apply(
            &Command::OpenSession {
                client_id: id.into(),
                timeout_ms: 5_000,
            },
            1_000,
        );
    }
    let join = |latch: &str| Operation::Join {
        latch: latch.into(),
    };
    let enter = |election: &str| Operation::Enter {
        election: election.into(),
    };
    machine.apply(&client("a", 1, join("l1")), 1_001);
    machine.apply(&client("b", 1, join("l1")), 1_002);
    machine.apply(&client("c", 1, enter("e1")), 1_003);
    machine.apply(&client("a", 2, enter("e1")), 1_004);
    machine.apply(
        &Command::CloseSession {
            client_id: "b".into(),
            request_id: 0,
        },
        1_005,
    );
    machine
}

#[test]
fn a_state_encoded_before_persistent_maps_decodes_to_the_same_state() {
    let decoded: StateMachine = serde_json::from_str(BEFORE.trim_end()).expect("decodes");
    let now = built_now();
    assert!(
        decoded.tombstone("b").is_some(),
        "the fixture holds a tombstone"
    );
    assert_eq!(decoded, now);
    assert_eq!(serde_json::to_string(&now).unwrap(), BEFORE.trim_end());
}
