//! One test per rule of DESIGN §3–§6, each named after its rule.

use baton_state::{
    ClientRequest, Command, CommandError, ErrorKind, Limits, Operation, PrimitiveKey,
    PrimitiveSnapshot, Response, StateMachine, DEFAULT_SESSION_TIMEOUT_MS, MAX_ID_BYTES,
};

const T0: u64 = 1_700_000_000_000;

fn op(client: &str, request_id: u64, operation: Operation) -> Command {
    Command::Client(ClientRequest {
        client_id: client.into(),
        request_id,
        operation,
    })
}
fn join(client: &str, latch: &str) -> Command {
    op(
        client,
        0,
        Operation::Join {
            latch: latch.into(),
        },
    )
}
fn enter(client: &str, election: &str) -> Command {
    op(
        client,
        0,
        Operation::Enter {
            election: election.into(),
        },
    )
}
fn withdraw(client: &str, election: &str) -> Command {
    op(
        client,
        0,
        Operation::Withdraw {
            election: election.into(),
        },
    )
}
fn anoint(caller: &str, election: &str, candidate: &str) -> Command {
    op(
        caller,
        0,
        Operation::Anoint {
            election: election.into(),
            candidate: candidate.into(),
        },
    )
}
fn promote(caller: &str, election: &str, candidate: &str) -> Command {
    op(
        caller,
        0,
        Operation::Promote {
            election: election.into(),
            candidate: candidate.into(),
        },
    )
}
fn evict(caller: &str, election: &str, candidate: &str) -> Command {
    op(
        caller,
        0,
        Operation::Evict {
            election: election.into(),
            candidate: candidate.into(),
        },
    )
}
fn restore(caller: &str, key: PrimitiveKey, members: &[&str], epoch: u64) -> Command {
    let members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    op(
        caller,
        0,
        Operation::Restore {
            key,
            snapshot: PrimitiveSnapshot {
                leader: members.first().cloned().unwrap_or_default(),
                members,
                epoch,
            },
        },
    )
}

/// Applies and expects success.
fn ok(sm: &mut StateMachine, command: Command, at: u64) -> Response {
    let applied = sm.apply(&command, at);
    applied
        .result
        .unwrap_or_else(|e| panic!("{command:?} rejected: {e}"))
}
/// Applies and expects a rejection that changes nothing.
fn rejected(sm: &mut StateMachine, command: Command, at: u64) -> CommandError {
    let before = sm.clone();
    let applied = sm.apply(&command, at);
    let error = applied
        .result
        .expect_err("command should have been rejected");
    assert!(applied.events.is_empty());
    assert_eq!(
        sm.primitives().collect::<Vec<_>>(),
        before.primitives().collect::<Vec<_>>()
    );
    assert_eq!(
        sm.sessions().collect::<Vec<_>>(),
        before.sessions().collect::<Vec<_>>()
    );
    error
}
fn members(sm: &StateMachine, key: &PrimitiveKey) -> Vec<String> {
    sm.primitive(key).members
}

#[test]
fn join_is_idempotent() {
    let mut sm = StateMachine::default();
    ok(&mut sm, join("a", "l"), T0);
    let applied = sm.apply(&join("a", "l"), T0 + 1);
    assert!(applied.result.is_ok());
    assert!(applied.events.is_empty(), "a repeated join changes nothing");
    assert_eq!(members(&sm, &PrimitiveKey::latch("l")), ["a"]);
    assert_eq!(sm.primitive(&PrimitiveKey::latch("l")).epoch, 1);
}

#[test]
fn enter_is_idempotent() {
    let mut sm = StateMachine::default();
    ok(&mut sm, enter("a", "e"), T0);
    ok(&mut sm, enter("b", "e"), T0);
    assert!(sm.apply(&enter("a", "e"), T0).events.is_empty());
    assert_eq!(members(&sm, &PrimitiveKey::election("e")), ["a", "b"]);
}

#[test]
fn first_participant_of_empty_latch_becomes_leader() {
    let mut sm = StateMachine::default();
    let Response::Primitive(latch) = ok(&mut sm, join("a", "l"), T0) else {
        panic!()
    };
    assert_eq!(latch.leader(), Some("a"));
    assert_eq!(latch.epoch, 1);
    let Response::Primitive(latch) = ok(&mut sm, join("b", "l"), T0) else {
        panic!()
    };
    assert_eq!(
        latch.leader(),
        Some("a"),
        "later participants queue behind the leader"
    );
    assert_eq!(latch.members, ["a", "b"]);
}

#[test]
fn leader_is_first_member() {
    let mut sm = StateMachine::default();
    for c in ["c", "a", "b"] {
        ok(&mut sm, enter(c, "e"), T0);
    }
    let term = sm.primitive(&PrimitiveKey::election("e"));
    assert_eq!(term.leader(), Some("c"));
    assert_eq!(term.leader(), term.members.first().map(String::as_str));
}

#[test]
fn never_written_primitive_reads_empty_with_epoch_zero() {
    let sm = StateMachine::default();
    for key in [PrimitiveKey::latch("nope"), PrimitiveKey::election("nope")] {
        let p = sm.primitive(&key);
        assert!(p.members.is_empty());
        assert_eq!(p.epoch, 0);
        assert_eq!(p.leader(), None);
    }
}

#[test]
fn latches_and_elections_of_the_same_name_are_independent() {
    let mut sm = StateMachine::default();
    ok(&mut sm, join("a", "x"), T0);
    assert!(members(&sm, &PrimitiveKey::election("x")).is_empty());
}

#[test]
fn epoch_rises_by_one_when_leadership_passes_to_a_new_leader() {
    let mut sm = StateMachine::default();
    let e = PrimitiveKey::election("e");
    ok(&mut sm, enter("a", "e"), T0);
    ok(&mut sm, enter("b", "e"), T0);
    ok(&mut sm, enter("c", "e"), T0);
    assert_eq!(sm.primitive(&e).epoch, 1);
    ok(&mut sm, anoint("x", "e", "c"), T0);
    assert_eq!(sm.primitive(&e).epoch, 2);
    ok(&mut sm, withdraw("c", "e"), T0);
    assert_eq!(sm.primitive(&e).epoch, 3);
    assert_eq!(sm.primitive(&e).leader(), Some("a"));
}

#[test]
fn epoch_unchanged_when_leader_stays() {
    let mut sm = StateMachine::default();
    let e = PrimitiveKey::election("e");
    ok(&mut sm, enter("a", "e"), T0);
    ok(&mut sm, enter("b", "e"), T0);
    ok(&mut sm, enter("c", "e"), T0);
    ok(&mut sm, promote("x", "e", "c"), T0); // a, c, b
    ok(&mut sm, evict("x", "e", "b"), T0);
    ok(&mut sm, anoint("x", "e", "a"), T0);
    let term = sm.primitive(&e);
    assert_eq!(term.members, ["a", "c"]);
    assert_eq!(term.epoch, 1);
}

#[test]
fn epoch_not_raised_when_primitive_becomes_empty_and_raised_when_refilled() {
    let mut sm = StateMachine::default();
    let e = PrimitiveKey::election("e");
    ok(&mut sm, enter("a", "e"), T0);
    ok(&mut sm, withdraw("a", "e"), T0);
    assert_eq!(sm.primitive(&e).epoch, 1);
    assert_eq!(sm.primitive(&e).leader(), None);
    ok(&mut sm, enter("a", "e"), T0);
    assert_eq!(
        sm.primitive(&e).epoch,
        2,
        "a leader that returns gets a new fencing token"
    );
}

#[test]
fn restore_sets_epoch_above_current_and_restored() {
    let mut sm = StateMachine::default();
    let l = PrimitiveKey::latch("l");
    for c in ["a", "b"] {
        ok(&mut sm, join(c, "l"), T0);
    }
    // Current 1, restored 7: above both.
    let answer = ok(&mut sm, restore("op", l.clone(), &["b", "a"], 7), T0);
    assert_eq!(sm.primitive(&l).epoch, 8);
    assert_eq!(
        answer,
        Response::Primitive(sm.primitive(&l)),
        "restore answers the new state"
    );
    // Current 8, restored 2: still above both, never lower.
    ok(&mut sm, restore("op", l.clone(), &["a"], 2), T0);
    assert_eq!(sm.primitive(&l).epoch, 9);
    assert_eq!(members(&sm, &l), ["a"]);
}

#[test]
fn restore_opens_default_sessions_for_members_without_one() {
    let mut sm = StateMachine::default();
    ok(
        &mut sm,
        restore("op", PrimitiveKey::election("e"), &["p", "q"], 3),
        T0,
    );
    for c in ["p", "q", "op"] {
        let s = sm.session(c).expect("session opened by restore");
        assert_eq!(s.timeout_ms, DEFAULT_SESSION_TIMEOUT_MS);
        assert_eq!(s.expires_at_ms, T0 + DEFAULT_SESSION_TIMEOUT_MS);
    }
    assert!(sm
        .session("p")
        .unwrap()
        .memberships
        .contains(&PrimitiveKey::election("e")));
}

#[test]
fn malformed_snapshot_is_rejected() {
    let mut sm = StateMachine::default();
    let key = PrimitiveKey::latch("l");
    let bad = |leader: &str, members: &[&str]| {
        op(
            "op",
            0,
            Operation::Restore {
                key: key.clone(),
                snapshot: PrimitiveSnapshot {
                    leader: leader.into(),
                    members: members.iter().map(|m| m.to_string()).collect(),
                    epoch: 1,
                },
            },
        )
    };
    for command in [
        bad("b", &["a", "b"]),
        bad("a", &["a", "a"]),
        bad("", &["a", ""]),
        bad("x", &[]),
    ] {
        let error = rejected(&mut sm, command, T0);
        assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{error}");
    }
    // An empty leader with members is accepted: the leader is implied.
    ok(&mut sm, bad("", &["a", "b"]), T0);
    assert_eq!(sm.primitive(&key).leader(), Some("a"));
}

#[test]
fn timestamps_come_from_the_applied_entry() {
    let mut sm = StateMachine::default();
    let l = PrimitiveKey::latch("l");
    ok(&mut sm, join("a", "l"), T0 + 5);
    assert_eq!(sm.primitive(&l).changed_at_ms, T0 + 5);
    assert_eq!(sm.primitive(&l).leader_since_ms, T0 + 5);
    ok(&mut sm, join("b", "l"), T0 + 9);
    assert_eq!(
        sm.primitive(&l).changed_at_ms,
        T0 + 9,
        "any change stamps the latch"
    );
    assert_eq!(
        sm.primitive(&l).leader_since_ms,
        T0 + 5,
        "the leader did not change"
    );
    assert_eq!(
        sm.session("b").unwrap().expires_at_ms,
        T0 + 9 + DEFAULT_SESSION_TIMEOUT_MS
    );
}

#[test]
fn log_time_never_goes_backwards() {
    let mut sm = StateMachine::default();
    ok(&mut sm, join("a", "l"), T0 + 100);
    ok(&mut sm, join("b", "l"), T0 + 50);
    assert_eq!(sm.now_ms(), T0 + 100);
    assert_eq!(
        sm.primitive(&PrimitiveKey::latch("l")).changed_at_ms,
        T0 + 100
    );
}

#[test]
fn retried_request_id_is_answered_from_the_record_not_applied_twice() {
    let mut sm = StateMachine::default();
    let e = PrimitiveKey::election("e");
    ok(&mut sm, enter("a", "e"), T0);
    ok(&mut sm, enter("b", "e"), T0);
    let promote_b = |request_id| {
        op(
            "x",
            request_id,
            Operation::Promote {
                election: "e".into(),
                candidate: "b".into(),
            },
        )
    };
    let first = ok(&mut sm, promote_b(7), T0);
    // An immediate retry gets exactly the first answer and changes nothing.
    let applied = sm.apply(&promote_b(7), T0 + 1);
    assert_eq!(
        applied.result,
        Ok(first),
        "the retry gets the original answer"
    );
    assert!(applied.events.is_empty());
    assert_eq!(members(&sm, &e), ["b", "a"]);
    // Once the election changed, the original answer is gone: the retry is
    // refused as already applied (ABORTED), and still not applied twice.
    ok(&mut sm, anoint("y", "e", "a"), T0);
    let error = rejected(&mut sm, promote_b(7), T0 + 2);
    assert_eq!(error.kind(), ErrorKind::Aborted, "{error}");
    assert_eq!(members(&sm, &e), ["a", "b"]);
    // A new, higher request id is applied.
    ok(&mut sm, promote_b(8), T0);
    assert_eq!(members(&sm, &e), ["b", "a"]);
}

#[test]
fn the_window_remembers_recent_request_ids_and_refuses_older_ones() {
    let mut sm = StateMachine::default();
    let join = |request_id| op("x", request_id, Operation::Join { latch: "l".into() });
    for request_id in 1..=40 {
        ok(&mut sm, join(request_id), T0);
    }
    let session = sm.session("x").unwrap();
    assert_eq!(session.recent.len(), baton_state::REQUEST_WINDOW);
    assert_eq!(
        session.forgotten_up_to,
        40 - baton_state::REQUEST_WINDOW as u64
    );
    // Inside the window: answered. Below it: refused, FAILED_PRECONDITION.
    ok(
        &mut sm,
        join(40 - baton_state::REQUEST_WINDOW as u64 + 1),
        T0,
    );
    let error = rejected(&mut sm, join(3), T0);
    assert_eq!(error.kind(), ErrorKind::FailedPrecondition, "{error}");
}

#[test]
fn a_stale_close_is_refused_and_a_current_one_closes() {
    let mut sm = StateMachine::default();
    let l = PrimitiveKey::latch("l");
    for request_id in 1..=40 {
        let join = op("x", request_id, Operation::Join { latch: "l".into() });
        ok(&mut sm, join, T0);
    }
    let close = |request_id| Command::CloseSession {
        client_id: "x".into(),
        request_id,
    };
    // Below the window: a late duplicate; refused.
    let error = rejected(&mut sm, close(4), T0);
    assert_eq!(error.kind(), ErrorKind::FailedPrecondition, "{error}");
    assert_eq!(members(&sm, &l), ["x"]);
    ok(&mut sm, close(41), T0);
    assert!(members(&sm, &l).is_empty());
}

#[test]
fn request_id_zero_is_not_deduplicated() {
    let mut sm = StateMachine::default();
    for c in ["a", "b", "c"] {
        ok(&mut sm, enter(c, "e"), T0);
    }
    ok(&mut sm, promote("x", "e", "c"), T0);
    ok(&mut sm, promote("x", "e", "c"), T0);
    assert_eq!(members(&sm, &PrimitiveKey::election("e")), ["c", "a", "b"]);
}

#[test]
fn first_request_opens_a_session_with_the_default_timeout() {
    let mut sm = StateMachine::default();
    assert!(sm.session("a").is_none());
    ok(&mut sm, join("a", "l"), T0);
    let s = sm.session("a").unwrap();
    assert_eq!(s.timeout_ms, DEFAULT_SESSION_TIMEOUT_MS);
    assert_eq!(s.expires_at_ms, T0 + DEFAULT_SESSION_TIMEOUT_MS);
}

#[test]
fn any_request_renews_the_session() {
    let mut sm = StateMachine::default();
    ok(
        &mut sm,
        Command::OpenSession {
            client_id: "a".into(),
            timeout_ms: 2_000,
        },
        T0,
    );
    ok(&mut sm, join("a", "l"), T0 + 1_500);
    assert_eq!(sm.session("a").unwrap().expires_at_ms, T0 + 3_500);
    ok(
        &mut sm,
        Command::KeepAlive {
            client_ids: vec!["a".into()],
        },
        T0 + 3_000,
    );
    assert_eq!(sm.session("a").unwrap().expires_at_ms, T0 + 5_000);
}

#[test]
fn reopening_a_session_with_a_shorter_timeout_never_shortens_its_expiry() {
    let mut sm = StateMachine::default();
    let open = |timeout_ms| Command::OpenSession {
        client_id: "a".into(),
        timeout_ms,
    };
    ok(&mut sm, open(10_000), T0);
    ok(&mut sm, open(1_000), T0 + 1_000);
    let session = sm.session("a").unwrap();
    assert_eq!(session.timeout_ms, 1_000);
    assert_eq!(session.expires_at_ms, T0 + 10_000);
}

#[test]
fn session_timeout_must_be_between_one_second_and_five_minutes() {
    let mut sm = StateMachine::default();
    for bad in [1, 999, 300_001] {
        let error = rejected(
            &mut sm,
            Command::OpenSession {
                client_id: "a".into(),
                timeout_ms: bad,
            },
            T0,
        );
        assert_eq!(error.kind(), ErrorKind::InvalidArgument);
    }
    for good in [1_000, 300_000] {
        assert_eq!(
            ok(
                &mut sm,
                Command::OpenSession {
                    client_id: "a".into(),
                    timeout_ms: good
                },
                T0
            ),
            Response::SessionOpen { timeout_ms: good }
        );
    }
}

#[test]
fn keep_alive_reports_clients_without_a_session() {
    let mut sm = StateMachine::default();
    ok(&mut sm, join("a", "l"), T0);
    let response = ok(
        &mut sm,
        Command::KeepAlive {
            client_ids: vec!["a".into(), "ghost".into()],
        },
        T0,
    );
    assert_eq!(
        response,
        Response::KeptAlive {
            renewed: vec![("a".into(), DEFAULT_SESSION_TIMEOUT_MS)],
            missing: vec!["ghost".into()]
        }
    );
    assert!(
        sm.session("ghost").is_none(),
        "keep-alive does not resurrect sessions"
    );
}

#[test]
fn session_expiry_removes_the_client_from_every_primitive_in_one_step() {
    let mut sm = StateMachine::default();
    ok(
        &mut sm,
        Command::OpenSession {
            client_id: "a".into(),
            timeout_ms: 1_000,
        },
        T0,
    );
    ok(&mut sm, join("a", "l1"), T0);
    ok(&mut sm, join("a", "l2"), T0);
    ok(&mut sm, enter("a", "e"), T0);
    for key in ["l1", "l2"] {
        ok(&mut sm, join("b", key), T0);
    }
    ok(&mut sm, enter("b", "e"), T0);
    // Not yet due: nothing happens.
    let applied = sm.apply(&Command::ExpireDue, T0 + 999);
    assert_eq!(applied.result, Ok(Response::Expired { client_ids: vec![] }));
    // Due: one entry removes "a" everywhere and "b" leads all three.
    let applied = sm.apply(&Command::ExpireDue, T0 + 1_000);
    assert_eq!(
        applied.result,
        Ok(Response::Expired {
            client_ids: vec!["a".into()]
        })
    );
    assert_eq!(applied.events.len(), 3);
    for event in &applied.events {
        assert_eq!(event.state.members, ["b"]);
        assert_eq!(event.state.epoch, 2);
        assert_eq!(event.state.leader_since_ms, T0 + 1_000);
    }
    assert!(sm.session("a").is_none());
    assert!(sm.session("b").is_some(), "b was not due");
}

#[test]
fn leader_and_successor_expiring_together_raise_the_epoch_once() {
    let mut sm = StateMachine::default();
    for c in ["a", "b", "c"] {
        let timeout_ms = if c == "c" { 60_000 } else { 1_000 };
        ok(
            &mut sm,
            Command::OpenSession {
                client_id: c.into(),
                timeout_ms,
            },
            T0,
        );
        ok(&mut sm, enter(c, "e"), T0);
    }
    let applied = sm.apply(&Command::ExpireDue, T0 + 2_000);
    assert_eq!(applied.events.len(), 1);
    assert_eq!(applied.events[0].state.members, ["c"]);
    assert_eq!(applied.events[0].state.epoch, 2);
}

#[test]
fn closing_a_session_hands_over_at_once() {
    let mut sm = StateMachine::default();
    ok(&mut sm, join("a", "l"), T0);
    ok(&mut sm, join("b", "l"), T0);
    let applied = sm.apply(
        &Command::CloseSession {
            client_id: "a".into(),
            request_id: 0,
        },
        T0 + 1,
    );
    assert_eq!(
        applied.result,
        Ok(Response::SessionClosed { existed: true })
    );
    let latch = sm.primitive(&PrimitiveKey::latch("l"));
    assert_eq!(latch.leader(), Some("b"));
    assert_eq!(latch.epoch, 2);
    assert_eq!(applied.events.len(), 1);
    let again = sm.apply(
        &Command::CloseSession {
            client_id: "a".into(),
            request_id: 0,
        },
        T0 + 2,
    );
    assert_eq!(again.result, Ok(Response::SessionClosed { existed: false }));
}

#[test]
fn leader_grace_gives_every_session_a_fresh_timeout() {
    let mut sm = StateMachine::default();
    ok(
        &mut sm,
        Command::OpenSession {
            client_id: "a".into(),
            timeout_ms: 1_000,
        },
        T0,
    );
    ok(&mut sm, join("a", "l"), T0);
    // The cluster was down for a minute; the new leader's first entry is grace.
    let outage_end = T0 + 60_000;
    ok(&mut sm, Command::LeaderGrace, outage_end);
    assert_eq!(sm.session("a").unwrap().expires_at_ms, outage_end + 1_000);
    ok(&mut sm, Command::ExpireDue, outage_end + 1);
    assert_eq!(sm.primitive(&PrimitiveKey::latch("l")).leader(), Some("a"));
}

#[test]
fn anoint_moves_the_candidate_to_the_front() {
    let mut sm = StateMachine::default();
    for c in ["a", "b", "c"] {
        ok(&mut sm, enter(c, "e"), T0);
    }
    ok(&mut sm, anoint("x", "e", "c"), T0 + 3);
    let term = sm.primitive(&PrimitiveKey::election("e"));
    assert_eq!(term.members, ["c", "a", "b"]);
    assert_eq!(term.leader_since_ms, T0 + 3);
}

#[test]
fn promote_moves_the_candidate_up_one_place() {
    let mut sm = StateMachine::default();
    for c in ["a", "b", "c"] {
        ok(&mut sm, enter(c, "e"), T0);
    }
    ok(&mut sm, promote("x", "e", "c"), T0);
    assert_eq!(members(&sm, &PrimitiveKey::election("e")), ["a", "c", "b"]);
    ok(&mut sm, promote("x", "e", "c"), T0);
    assert_eq!(members(&sm, &PrimitiveKey::election("e")), ["c", "a", "b"]);
    assert!(
        sm.apply(&promote("x", "e", "c"), T0).events.is_empty(),
        "the leader cannot go higher"
    );
}

#[test]
fn evict_and_withdraw_remove_the_candidate() {
    let mut sm = StateMachine::default();
    for c in ["a", "b", "c"] {
        ok(&mut sm, enter(c, "e"), T0);
    }
    ok(&mut sm, evict("x", "e", "b"), T0);
    ok(&mut sm, withdraw("a", "e"), T0);
    assert_eq!(members(&sm, &PrimitiveKey::election("e")), ["c"]);
    assert!(!sm
        .session("b")
        .unwrap()
        .memberships
        .contains(&PrimitiveKey::election("e")));
    // Withdrawing when not a candidate is a successful no-op.
    assert!(sm.apply(&withdraw("a", "e"), T0).result.is_ok());
}

#[test]
fn naming_a_non_candidate_is_failed_precondition() {
    let mut sm = StateMachine::default();
    ok(&mut sm, enter("a", "e"), T0);
    for command in [
        anoint("x", "e", "zz"),
        promote("x", "e", "zz"),
        evict("x", "e", "zz"),
        anoint("x", "never", "a"),
    ] {
        let error = rejected(&mut sm, command, T0);
        assert_eq!(error.kind(), ErrorKind::FailedPrecondition);
    }
    assert!(
        sm.session("x").is_none(),
        "a rejected caller gets no session"
    );
}

#[test]
fn missing_or_oversized_ids_are_invalid_argument() {
    let mut sm = StateMachine::default();
    let long = "x".repeat(MAX_ID_BYTES + 1);
    let exact = "y".repeat(MAX_ID_BYTES);
    for command in [
        join("", "l"),
        join("a", ""),
        join(&long, "l"),
        join("a", &long),
        anoint("a", "e", ""),
        anoint("a", "e", &long),
        Command::OpenSession {
            client_id: "".into(),
            timeout_ms: 0,
        },
    ] {
        let error = rejected(&mut sm, command, T0);
        assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{error}");
    }
    ok(&mut sm, join(&exact, &exact), T0);
}

#[test]
fn member_limit_is_resource_exhausted() {
    let mut sm = StateMachine::new(Limits {
        max_members_per_primitive: 2,
        ..Limits::default()
    });
    ok(&mut sm, join("a", "l"), T0);
    ok(&mut sm, join("b", "l"), T0);
    let error = rejected(&mut sm, join("c", "l"), T0);
    assert_eq!(error.kind(), ErrorKind::ResourceExhausted);
    let error = rejected(
        &mut sm,
        restore("op", PrimitiveKey::latch("m"), &["a", "b", "c"], 0),
        T0,
    );
    assert_eq!(error.kind(), ErrorKind::ResourceExhausted);
    ok(&mut sm, join("a", "l"), T0); // an idempotent join of a member still works at the limit
}

#[test]
fn primitive_limit_is_resource_exhausted() {
    let mut sm = StateMachine::new(Limits {
        max_primitives: 2,
        ..Limits::default()
    });
    ok(&mut sm, join("a", "l1"), T0);
    ok(&mut sm, enter("a", "e1"), T0);
    let error = rejected(&mut sm, join("a", "l2"), T0);
    assert_eq!(error.kind(), ErrorKind::ResourceExhausted);
    ok(&mut sm, join("b", "l1"), T0); // existing primitives still take members
}

#[test]
fn session_limit_is_resource_exhausted() {
    let mut sm = StateMachine::new(Limits {
        max_sessions: 1,
        ..Limits::default()
    });
    ok(&mut sm, join("a", "l"), T0);
    let error = rejected(&mut sm, join("b", "l"), T0);
    assert_eq!(error.kind(), ErrorKind::ResourceExhausted);
    let error = rejected(
        &mut sm,
        Command::OpenSession {
            client_id: "c".into(),
            timeout_ms: 0,
        },
        T0,
    );
    assert_eq!(error.kind(), ErrorKind::ResourceExhausted);
}

#[test]
fn a_refused_request_stays_refused_when_retried() {
    let mut sm = StateMachine::default();
    ok(&mut sm, enter("a", "e"), T0);
    let anoint_b = op(
        "a",
        5,
        Operation::Anoint {
            election: "e".into(),
            candidate: "b".into(),
        },
    );
    let before = sm.primitive(&PrimitiveKey::election("e"));
    let first = sm.apply(&anoint_b, T0).result.unwrap_err();
    assert_eq!(first.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(sm.primitive(&PrimitiveKey::election("e")), before);
    ok(&mut sm, enter("b", "e"), T0);
    // A late copy of the refused request, now that it would be valid: it is
    // refused again, never applied (the client was told it was refused).
    let again = sm.apply(&anoint_b, T0 + 1);
    assert_eq!(
        again.result.unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
    assert!(again.events.is_empty());
    assert_eq!(members(&sm, &PrimitiveKey::election("e")), ["a", "b"]);
    // A new request id is evaluated afresh.
    ok(
        &mut sm,
        op(
            "a",
            6,
            Operation::Anoint {
                election: "e".into(),
                candidate: "b".into(),
            },
        ),
        T0,
    );
    assert_eq!(members(&sm, &PrimitiveKey::election("e")), ["b", "a"]);
}

#[test]
fn change_events_carry_the_full_new_state_and_only_real_changes() {
    let mut sm = StateMachine::default();
    let applied = sm.apply(&join("a", "l"), T0);
    assert_eq!(applied.events.len(), 1);
    assert_eq!(applied.events[0].key, PrimitiveKey::latch("l"));
    assert_eq!(
        applied.events[0].state,
        sm.primitive(&PrimitiveKey::latch("l"))
    );
    assert!(sm.apply(&join("a", "l"), T0).events.is_empty());
    assert!(sm
        .apply(
            &Command::KeepAlive {
                client_ids: vec!["a".into()]
            },
            T0
        )
        .events
        .is_empty());
}

#[test]
fn snapshot_round_trip_gives_an_equal_state() {
    let mut sm = StateMachine::default();
    ok(&mut sm, join("a", "l"), T0);
    ok(
        &mut sm,
        op(
            "b",
            3,
            Operation::Enter {
                election: "e".into(),
            },
        ),
        T0,
    );
    let bytes = serde_json::to_vec(&sm).unwrap();
    let restored: StateMachine = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(restored, sm);
}

#[test]
fn primitive_snapshot_matches_the_held_state() {
    let mut sm = StateMachine::default();
    ok(&mut sm, enter("a", "e"), T0);
    ok(&mut sm, enter("b", "e"), T0);
    let snapshot = sm.snapshot_of(&PrimitiveKey::election("e"));
    assert_eq!(
        snapshot,
        PrimitiveSnapshot {
            leader: "a".into(),
            members: vec!["a".into(), "b".into()],
            epoch: 1
        }
    );
}

#[test]
fn next_expiry_is_the_earliest_session_deadline() {
    let mut sm = StateMachine::default();
    assert_eq!(sm.next_expiry_ms(), None);
    ok(
        &mut sm,
        Command::OpenSession {
            client_id: "a".into(),
            timeout_ms: 5_000,
        },
        T0,
    );
    ok(
        &mut sm,
        Command::OpenSession {
            client_id: "b".into(),
            timeout_ms: 2_000,
        },
        T0,
    );
    assert_eq!(sm.next_expiry_ms(), Some(T0 + 2_000));
}

// ---------------------------------------------------------------- issue 7

#[test]
fn restored_epoch_of_two_to_the_63_or_more_is_invalid_and_the_epoch_never_wraps() {
    let mut sm = StateMachine::default();
    let l = PrimitiveKey::latch("l");
    // Just below the limit is accepted and lands above it.
    ok(&mut sm, restore("op", l.clone(), &["a"], (1 << 63) - 1), T0);
    assert_eq!(sm.primitive(&l).epoch, 1 << 63);
    for epoch in [1u64 << 63, u64::MAX - 1, u64::MAX] {
        let error = rejected(&mut sm, restore("op", l.clone(), &["a"], epoch), T0);
        assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{error}");
    }
    // Restoring a lower epoch on top of a high one still rises by one.
    ok(&mut sm, restore("op", l.clone(), &["b"], 5), T0);
    assert_eq!(sm.primitive(&l).epoch, (1 << 63) + 1);
}

#[test]
fn a_late_duplicate_older_than_the_latest_request_is_never_applied() {
    let mut sm = StateMachine::default();
    let e = PrimitiveKey::election("e");
    let withdraw_r1 = op(
        "x",
        1,
        Operation::Withdraw {
            election: "e".into(),
        },
    );
    let enter_r2 = op(
        "x",
        2,
        Operation::Enter {
            election: "e".into(),
        },
    );
    ok(&mut sm, enter("x", "e"), T0);
    // Withdraw r1 was sent, timed out, retried elsewhere and applied ...
    ok(&mut sm, withdraw_r1.clone(), T0);
    // ... then the client entered again with r2 ...
    ok(&mut sm, enter_r2.clone(), T0 + 1);
    assert_eq!(members(&sm, &e), ["x"]);
    // ... and the first, forwarded copy of r1 commits late: it is answered
    // from the record (or refused), never applied again.
    let _ = sm.apply(&withdraw_r1, T0 + 2);
    assert_eq!(
        members(&sm, &e),
        ["x"],
        "a late duplicate removed the client"
    );

    // Concurrent requests of one client may overtake each other in flight:
    // a lower id that was never applied is still applied, once.
    let mut sm = StateMachine::default();
    let join = |request_id, latch: &str| {
        op(
            "y",
            request_id,
            Operation::Join {
                latch: latch.into(),
            },
        )
    };
    ok(&mut sm, join(5, "a"), T0);
    ok(&mut sm, join(4, "b"), T0);
    assert_eq!(members(&sm, &PrimitiveKey::latch("b")), ["y"]);
}

#[test]
fn the_exactly_once_record_holds_no_member_lists() {
    let limits = Limits {
        max_members_per_primitive: 1_024,
        ..Limits::default()
    };
    let mut sm = StateMachine::new(limits);
    let id = |i: usize| format!("{i:0>256}");
    for i in 0..1_024 {
        let join = op(&id(i), 1, Operation::Join { latch: "l".into() });
        ok(&mut sm, join, T0);
    }
    // 1,024 members of 256 bytes are ~270 KB of JSON; a record that copied
    // the member list into every session would be ~140 MB.
    let bytes = serde_json::to_vec(&sm).unwrap().len();
    assert!(bytes < 2_000_000, "snapshot is {bytes} bytes");
}

#[test]
fn a_late_copy_of_a_request_sent_before_the_session_ended_cannot_bring_the_client_back() {
    let mut sm = StateMachine::default();
    let l = PrimitiveKey::latch("l");
    let join = |request_id| op("x", request_id, Operation::Join { latch: "l".into() });
    ok(&mut sm, join(7), T0);
    ok(
        &mut sm,
        Command::CloseSession {
            client_id: "x".into(),
            request_id: 8,
        },
        T0 + 1,
    );
    assert_eq!(sm.tombstone("x").map(|t| t.highest_request_id), Some(8));
    // A copy of request 7 (already answered) or of an older one arrives late.
    for late in [7, 3] {
        let error = rejected(&mut sm, join(late), T0 + 2);
        assert_eq!(error.kind(), ErrorKind::FailedPrecondition, "{error}");
    }
    assert!(members(&sm, &l).is_empty());
    assert!(sm.session("x").is_none());
    // The client's next request opens a new session that keeps refusing
    // them, and a late copy of the close does not close it.
    ok(&mut sm, join(9), T0 + 3);
    let late_close = Command::CloseSession {
        client_id: "x".into(),
        request_id: 8,
    };
    let error = rejected(&mut sm, late_close, T0 + 3);
    assert_eq!(error.kind(), ErrorKind::FailedPrecondition, "{error}");
    assert_eq!(members(&sm, &l), ["x"]);
    assert!(sm.tombstone("x").is_none());
    let error = rejected(&mut sm, join(5), T0 + 4);
    assert_eq!(error.kind(), ErrorKind::FailedPrecondition, "{error}");
}

#[test]
fn tombstones_are_bounded_in_number_and_age() {
    let limits = Limits {
        max_sessions: 3,
        ..Limits::default()
    };
    let mut sm = StateMachine::new(limits);
    for (i, c) in ["a", "b", "c", "d"].iter().enumerate() {
        let t = T0 + i as u64;
        ok(&mut sm, op(c, 1, Operation::Join { latch: "l".into() }), t);
        ok(
            &mut sm,
            Command::CloseSession {
                client_id: (*c).into(),
                request_id: 0,
            },
            t,
        );
    }
    let kept: Vec<&String> = sm.tombstones().map(|(c, _)| c).collect();
    assert_eq!(kept, ["b", "c", "d"], "the oldest is forgotten first");
    ok(
        &mut sm,
        Command::ExpireDue,
        T0 + 3 + baton_state::TOMBSTONE_TTL_MS,
    );
    assert_eq!(sm.tombstones().count(), 0);
}

fn leave(client: &str, latch: &str) -> Command {
    op(
        client,
        0,
        Operation::Leave {
            latch: latch.into(),
        },
    )
}

fn delete(client: &str, key: PrimitiveKey) -> Command {
    op(client, 0, Operation::Delete { key })
}

#[test]
fn leaving_a_latch_hands_it_to_the_next_participant() {
    let mut sm = StateMachine::default();
    ok(&mut sm, join("a", "l"), T0);
    ok(&mut sm, join("b", "l"), T0);
    let epoch = sm.primitive(&PrimitiveKey::latch("l")).epoch;
    ok(&mut sm, leave("a", "l"), T0 + 1);
    let latch = sm.primitive(&PrimitiveKey::latch("l"));
    assert_eq!(latch.members, vec!["b".to_owned()]);
    assert_eq!(latch.epoch, epoch + 1);
    assert!(
        sm.session("a").is_some(),
        "leaving one latch keeps the session"
    );
    ok(&mut sm, leave("a", "l"), T0 + 2); // leaving again changes nothing
}

#[test]
fn delete_frees_the_place_and_the_next_use_starts_from_epoch_zero() {
    let mut sm = StateMachine::new(Limits {
        max_primitives: 1,
        ..Limits::default()
    });
    ok(&mut sm, join("a", "l"), T0);
    ok(&mut sm, join("b", "l"), T0);
    let error = rejected(&mut sm, enter("a", "e"), T0);
    assert_eq!(error.kind(), ErrorKind::ResourceExhausted);

    let applied = sm.apply(&delete("a", PrimitiveKey::latch("l")), T0 + 1);
    assert!(applied.result.is_ok());
    assert_eq!(applied.events.len(), 1, "watchers see the empty state");
    assert_eq!(
        applied.events[0].state,
        sm.primitive(&PrimitiveKey::latch("l"))
    );
    let gone = sm.primitive(&PrimitiveKey::latch("l"));
    assert_eq!((gone.epoch, gone.members.len()), (0, 0));
    assert!(sm.session("b").is_some_and(|s| s.memberships.is_empty()));

    ok(&mut sm, enter("a", "e"), T0 + 2); // the freed place is usable
    let error = rejected(&mut sm, join("a", "l"), T0 + 2);
    assert_eq!(error.kind(), ErrorKind::ResourceExhausted);
    ok(&mut sm, delete("a", PrimitiveKey::election("e")), T0 + 3);
    ok(&mut sm, join("b", "l"), T0 + 4);
    assert_eq!(sm.primitive(&PrimitiveKey::latch("l")).epoch, 1);
}

#[test]
fn deleting_an_unknown_primitive_is_not_found() {
    let mut sm = StateMachine::default();
    let error = rejected(&mut sm, delete("a", PrimitiveKey::latch("never")), T0);
    assert_eq!(error.kind(), ErrorKind::NotFound);
    ok(&mut sm, join("a", "l"), T0);
    ok(&mut sm, delete("a", PrimitiveKey::latch("l")), T0);
    let error = rejected(&mut sm, delete("a", PrimitiveKey::latch("l")), T0);
    assert_eq!(error.kind(), ErrorKind::NotFound);
}

#[test]
fn a_retry_after_the_primitive_was_deleted_and_used_again_is_not_answered_with_the_new_one() {
    let mut sm = StateMachine::default();
    let key = PrimitiveKey::latch("l");
    let join_a = op("a", 1, Operation::Join { latch: "l".into() });
    ok(&mut sm, join_a.clone(), T0);
    ok(&mut sm, delete("admin", key.clone()), T0 + 1);
    // Used again by someone else: as many changes as the first life had.
    ok(&mut sm, join("b", "l"), T0 + 2);
    assert_eq!(members(&sm, &key), ["b"]);
    // a's retry (a late copy of request 1) must not be told it holds the
    // latch it is not in: the primitive changed since it was applied.
    let again = sm.apply(&join_a, T0 + 3);
    assert_eq!(again.result.unwrap_err().kind(), ErrorKind::Aborted);
    assert_eq!(members(&sm, &key), ["b"]);
}

#[test]
fn a_request_refused_before_its_caller_had_a_session_stays_refused() {
    let mut sm = StateMachine::new(Limits {
        max_primitives: 1,
        ..Limits::default()
    });
    ok(&mut sm, join("a", "full"), T0);
    // x has no session yet; its first request is refused by a limit.
    let join_x = op("x", 7, Operation::Join { latch: "l".into() });
    let first = sm.apply(&join_x, T0 + 1).result.unwrap_err();
    assert_eq!(first.kind(), ErrorKind::ResourceExhausted);
    ok(
        &mut sm,
        delete("admin", PrimitiveKey::latch("full")),
        T0 + 2,
    );
    // A late copy of it, now that the limit would allow it: never applied.
    let again = sm.apply(&join_x, T0 + 3);
    assert!(again.result.is_err(), "a refused request was applied later");
    assert!(members(&sm, &PrimitiveKey::latch("l")).is_empty());
    // x's next request is evaluated afresh.
    ok(
        &mut sm,
        op("x", 8, Operation::Join { latch: "l".into() }),
        T0 + 4,
    );
    assert_eq!(members(&sm, &PrimitiveKey::latch("l")), ["x"]);
}

#[test]
fn a_delete_by_a_caller_without_a_session_is_not_applied_twice() {
    let mut sm = StateMachine::default();
    let key = PrimitiveKey::latch("l");
    ok(&mut sm, join("a", "l"), T0);
    let delete_once = op("ops", 3, Operation::Delete { key: key.clone() });
    ok(&mut sm, delete_once.clone(), T0 + 1);
    ok(&mut sm, join("b", "l"), T0 + 2);
    // A late copy of the delete must not remove the latch used again.
    let _ = sm.apply(&delete_once, T0 + 3);
    assert_eq!(members(&sm, &key), ["b"]);
}

#[test]
fn a_retry_by_a_caller_without_a_session_gets_the_first_attempts_answer() {
    let mut sm = StateMachine::new(Limits {
        max_primitives: 1,
        ..Limits::default()
    });
    let key = PrimitiveKey::latch("l");
    ok(&mut sm, join("a", "l"), T0);
    // A Delete opens no session; its answer is lost, and the caller retries.
    let delete_once = op("ops", 3, Operation::Delete { key: key.clone() });
    ok(&mut sm, delete_once.clone(), T0 + 1);
    assert_eq!(
        sm.apply(&delete_once, T0 + 2).result,
        Ok(Response::Primitive(Default::default())),
        "a retried delete is answered as the first attempt was"
    );
    // Once the latch is used again, the retry is ABORTED (applied, answer
    // gone) and still not applied; an older id is stale.
    ok(&mut sm, join("b", "l"), T0 + 3);
    assert_eq!(
        rejected(&mut sm, delete_once, T0 + 4).kind(),
        ErrorKind::Aborted
    );
    let older = op("ops", 2, Operation::Delete { key: key.clone() });
    assert_eq!(
        rejected(&mut sm, older, T0 + 5).kind(),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(members(&sm, &key), ["b"]);
    // Still so once the client has a session (its next request opened
    // one before the retry came).
    let delete_again = op("ops", 7, Operation::Delete { key: key.clone() });
    ok(&mut sm, delete_again.clone(), T0 + 5);
    ok(
        &mut sm,
        op(
            "ops",
            8,
            Operation::Enter {
                election: "x".into(),
            },
        ),
        T0 + 5,
    );
    assert!(sm.session("ops").is_some());
    assert_eq!(
        sm.apply(&delete_again, T0 + 5).result,
        Ok(Response::Primitive(Default::default())),
        "a retried delete is answered as the first attempt was, session or not"
    );
    // A first request refused by a limit (no session is opened) gets the
    // same refusal again, not a stale-request error.
    let join_x = op("x", 7, Operation::Join { latch: "m".into() });
    assert_eq!(
        rejected(&mut sm, join_x.clone(), T0 + 6).kind(),
        ErrorKind::ResourceExhausted
    );
    assert_eq!(
        rejected(&mut sm, join_x, T0 + 7).kind(),
        ErrorKind::ResourceExhausted
    );
}

/// A late copy of an older session-less request (a CloseSession that found
/// nothing to close) does not erase the answer kept for the client's latest
/// one: until session 13 the retried Delete below was then stale.
#[test]
fn a_late_older_request_leaves_the_latest_answer_of_a_caller_without_a_session() {
    let mut sm = StateMachine::new(Limits::default());
    let key = PrimitiveKey::latch("l");
    ok(&mut sm, join("a", "l"), T0);
    let close = Command::CloseSession {
        client_id: "ops".into(),
        request_id: 15,
    };
    let delete = op("ops", 21, Operation::Delete { key: key.clone() });
    ok(&mut sm, delete.clone(), T0 + 1);
    // The late close finds no session (and is stale: 15 < 21).
    let _ = sm.apply(&close, T0 + 2);
    assert_eq!(
        sm.apply(&delete, T0 + 3).result,
        Ok(Response::Primitive(Default::default())),
        "the retried delete is answered as its first attempt was"
    );
}

#[test]
fn a_request_invalid_on_its_own_is_recorded_nowhere() {
    let mut sm = StateMachine::default();
    let bad_anoint = |client: &str, request_id: u64| {
        op(
            client,
            request_id,
            Operation::Anoint {
                election: "e".into(),
                candidate: String::new(),
            },
        )
    };
    // Without a session: no tombstone, so the client's ids are not used up.
    let refused = rejected(&mut sm, bad_anoint("bob", u64::MAX), T0);
    assert_eq!(refused.kind(), ErrorKind::InvalidArgument);
    assert!(sm.tombstone("bob").is_none());
    ok(
        &mut sm,
        op(
            "bob",
            1,
            Operation::Enter {
                election: "e".into(),
            },
        ),
        T0 + 1,
    );
    // With a session: its window keeps only what may be retried.
    let refused = rejected(&mut sm, bad_anoint("bob", 2), T0 + 2);
    assert_eq!(refused.kind(), ErrorKind::InvalidArgument);
    let recorded: Vec<u64> = sm
        .session("bob")
        .expect("bob's session")
        .recent
        .iter()
        .map(|r| r.request_id)
        .collect();
    assert_eq!(recorded, [1]);
}

#[test]
fn a_state_whose_tombstone_order_was_lost_on_disk_does_not_hang_the_node() {
    let mut sm = StateMachine::new(Limits {
        max_sessions: 2,
        ..Limits::default()
    });
    for (i, client) in ["x", "y"].into_iter().enumerate() {
        let join = op(client, 1, Operation::Join { latch: "l".into() });
        ok(&mut sm, join, T0 + i as u64);
        let close = Command::CloseSession {
            client_id: client.into(),
            request_id: 2,
        };
        ok(&mut sm, close, T0 + i as u64);
    }
    assert_eq!(sm.tombstones().count(), 2);
    // Read back from a damaged disk: the tombstones without their order.
    let mut stored = serde_json::to_value(&sm).expect("encode");
    stored["tombstone_order"] = serde_json::json!([]);
    stored["limits"]["max_sessions"] = serde_json::json!(1);
    let mut damaged: StateMachine = serde_json::from_value(stored).expect("decode");
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // A third session ends: its tombstone is one too many.
        let join = op("z", 1, Operation::Join { latch: "l".into() });
        let _ = damaged.apply(&join, T0 + 10);
        let close = Command::CloseSession {
            client_id: "z".into(),
            request_id: 2,
        };
        let _ = damaged.apply(&close, T0 + 11);
        let _ = done.send(());
    });
    finished
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("applying a command to the damaged state finished");
}

#[test]
fn a_late_close_of_a_session_already_gone_cannot_close_the_next_one() {
    let mut sm = StateMachine::default();
    let l = PrimitiveKey::latch("l");
    ok(
        &mut sm,
        op("x", 1, Operation::Join { latch: "l".into() }),
        T0,
    );
    // The session expires; the client's close (id 2) is still in flight,
    // and its retry finds nothing to close.
    ok(&mut sm, Command::ExpireDue, T0 + DEFAULT_SESSION_TIMEOUT_MS);
    let close = Command::CloseSession {
        client_id: "x".into(),
        request_id: 2,
    };
    ok(&mut sm, close.clone(), T0 + DEFAULT_SESSION_TIMEOUT_MS + 1);
    // The client comes back and leads again; then the first copy lands.
    let t = T0 + DEFAULT_SESSION_TIMEOUT_MS + 2;
    ok(
        &mut sm,
        op("x", 3, Operation::Join { latch: "l".into() }),
        t,
    );
    let _ = sm.apply(&close, t + 1);
    assert_eq!(
        members(&sm, &l),
        ["x"],
        "a late close ended the new session"
    );
    assert!(sm.session("x").is_some());
}

#[test]
fn remembering_session_less_ids_never_pushes_out_an_ended_sessions_tombstone() {
    let mut sm = StateMachine::new(Limits {
        max_sessions: 1,
        ..Limits::default()
    });
    ok(
        &mut sm,
        op("dead", 7, Operation::Join { latch: "l".into() }),
        T0,
    );
    ok(
        &mut sm,
        Command::CloseSession {
            client_id: "dead".into(),
            request_id: 8,
        },
        T0,
    );
    ok(&mut sm, join("alive", "other"), T0);
    // Clients without sessions refused at the session limit.
    for i in 0..5 {
        let join = op(
            &format!("refused-{i}"),
            1,
            Operation::Join { latch: "l".into() },
        );
        assert!(sm.apply(&join, T0 + 1).result.is_err());
    }
    assert_eq!(sm.tombstone("dead").map(|t| t.highest_request_id), Some(8));
    ok(
        &mut sm,
        Command::CloseSession {
            client_id: "alive".into(),
            request_id: 0,
        },
        T0 + 2,
    );
    // A late copy of the dead client's join does not bring it back.
    let late = op("dead", 7, Operation::Join { latch: "l".into() });
    assert!(sm.apply(&late, T0 + 3).result.is_err());
    assert!(members(&sm, &PrimitiveKey::latch("l")).is_empty());
}

/// Once the cluster has adopted ordered requests (rules level 1), a request
/// id the session never saw, below a request of the same client on the
/// same primitive, is refused: a Join the client gave up on (its outcome
/// unknown) that arrives after the client's Leave must not make it a
/// member again. Before adoption (a cluster with an older node) the late
/// Join is applied, as every node of the older version would apply it.
#[test]
fn a_request_overtaken_on_its_primitive_is_refused_once_ordered_requests_are_adopted() {
    let key = PrimitiveKey::latch("l");
    let late_join = op("w", 7, Operation::Join { latch: "l".into() });
    let leave = op("w", 8, Operation::Leave { latch: "l".into() });
    // Not adopted: applied, as before.
    let mut sm = StateMachine::default();
    ok(&mut sm, leave.clone(), T0);
    ok(&mut sm, late_join.clone(), T0 + 1);
    assert_eq!(members(&sm, &key), ["w"]);

    let mut sm = StateMachine::default();
    assert_eq!(
        ok(&mut sm, Command::AdoptRules { level: 1 }, T0),
        Response::RulesAdopted { level: 1 }
    );
    assert_eq!(sm.rules(), 1);
    ok(&mut sm, leave.clone(), T0 + 1);
    let error = rejected(&mut sm, late_join, T0 + 2);
    assert!(
        matches!(
            error,
            CommandError::Overtaken {
                request_id: 7,
                by: 8
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.kind(), ErrorKind::FailedPrecondition);
    assert!(members(&sm, &key).is_empty());
    // Overtaking on another primitive is allowed: concurrent requests of
    // one client on different primitives may arrive in any order.
    ok(
        &mut sm,
        op(
            "w",
            6,
            Operation::Enter {
                election: "e".into(),
            },
        ),
        T0 + 3,
    );
    assert_eq!(members(&sm, &PrimitiveKey::election("e")), ["w"]);
    // A retry of 8 is answered as before; 8 sent for another primitive is
    // a reused id.
    ok(&mut sm, leave, T0 + 4);
    let reused = rejected(
        &mut sm,
        op(
            "w",
            8,
            Operation::Join {
                latch: "other".into(),
            },
        ),
        T0 + 5,
    );
    assert_eq!(reused.kind(), ErrorKind::InvalidArgument, "{reused:?}");
    // The level is part of the state: it survives a snapshot, and a state
    // that never adopted one encodes as before.
    let copy: StateMachine = serde_json::from_slice(&serde_json::to_vec(&sm).unwrap()).unwrap();
    assert_eq!(copy.rules(), 1);
    let fresh = serde_json::to_string(&StateMachine::default()).unwrap();
    assert!(!fresh.contains("rules"), "{fresh}");
}
