//! Property test: random command sequences (including expiries, closes,
//! restores and bad input) run against the state machine and against a
//! small, deliberately naive reference model; they must agree at every step,
//! and the invariants of DESIGN §3–§6 must hold after every step.

use std::collections::{BTreeMap, BTreeSet};

use baton_state::{
    validate_id, ClientRequest, Command, ErrorKind, Limits, Operation, Outcome, Primitive,
    PrimitiveKey, PrimitiveKind, PrimitiveSnapshot, Response, StateMachine,
};
use proptest::prelude::*;

/// One session's exactly-once window: client, forgotten-up-to, and the
/// recorded outcomes (request id, applied version or rejection kind).
type SessionWindow = (String, u64, Vec<(u64, Result<u64, ErrorKind>)>);

const LIMITS: Limits = Limits {
    max_members_per_primitive: 3,
    max_primitives: 4,
    max_sessions: 5,
};
const DEFAULT_TIMEOUT: u64 = 10_000;

#[derive(Clone, Debug)]
struct ModelSession {
    timeout: u64,
    expires: u64,
    /// Ids at or below this left the window.
    forgotten: u64,
    /// The 32 highest request ids: Ok(version after it) or the refusal.
    recent: BTreeMap<u64, Result<u64, ErrorKind>>,
    /// The primitive of each remembered client request, once ordered
    /// requests were adopted.
    keys: BTreeMap<u64, PrimitiveKey>,
}

impl ModelSession {
    /// Remembers an outcome (and, ordered, its primitive); beyond 32 the
    /// lowest id is forgotten.
    fn record(
        &mut self,
        request_id: u64,
        outcome: Result<u64, ErrorKind>,
        key: Option<PrimitiveKey>,
    ) {
        self.recent.insert(request_id, outcome);
        match key {
            Some(key) => self.keys.insert(request_id, key),
            None => self.keys.remove(&request_id),
        };
        if self.recent.len() > 32 {
            let (lowest, _) = self.recent.pop_first().expect("not empty");
            self.keys.remove(&lowest);
            self.forgotten = self.forgotten.max(lowest);
        }
    }
}

/// Whether a Restore's snapshot is well formed: valid, distinct member ids,
/// a leader that is the first member, an epoch below 2^63.
fn snapshot_ok(snapshot: &PrimitiveSnapshot) -> bool {
    let distinct: BTreeSet<&String> = snapshot.members.iter().collect();
    let ids_ok = snapshot.members.iter().all(|m| validate_id("m", m).is_ok());
    let leader_ok =
        snapshot.leader.is_empty() || Some(&snapshot.leader) == snapshot.members.first();
    ids_ok && distinct.len() == snapshot.members.len() && leader_ok && snapshot.epoch < 1 << 63
}

/// The specification, written as plainly as possible: no indexes, full scans.
#[derive(Default)]
struct Model {
    now: u64,
    primitives: BTreeMap<PrimitiveKey, Primitive>,
    sessions: BTreeMap<String, ModelSession>,
    /// Ended sessions and callers without one: client -> (highest request
    /// id seen, ended at, the latest session-less request and its outcome).
    tombstones: BTreeMap<String, Tombstone>,
    /// Versions of a primitive used again continue above every deleted
    /// one's, so no retry recorded against an earlier life matches.
    deleted_versions: u64,
    /// The rules level adopted: from 1, one client's requests on one
    /// primitive are ordered by their ids.
    rules: u32,
}

const TOMBSTONE_TTL: u64 = 600_000;

/// A request id and what became of it: the version after it, or the refusal.
type Recorded = (u64, Result<u64, ErrorKind>);
type Tombstone = (u64, u64, Option<Recorded>);

impl Model {
    fn get(&self, key: &PrimitiveKey) -> Primitive {
        self.primitives.get(key).cloned().unwrap_or_default()
    }

    /// Sets members; the epoch rises when the first member changes to someone.
    fn set(&mut self, key: &PrimitiveKey, members: Vec<String>) {
        let now = self.now;
        let Some(p) = self.primitives.get_mut(key) else {
            return; // only a write that adds members or restores creates a primitive
        };
        if p.members == members {
            return;
        }
        if p.members.first() != members.first() {
            if !members.is_empty() {
                p.epoch += 1;
            }
            p.leader_since_ms = now;
        }
        p.members = members;
        p.changed_at_ms = now;
        p.version += 1;
    }

    fn remove_clients(&mut self, gone: &BTreeSet<String>) {
        let keys: Vec<PrimitiveKey> = self.primitives.keys().cloned().collect();
        for key in keys {
            let kept: Vec<String> = self
                .get(&key)
                .members
                .into_iter()
                .filter(|m| !gone.contains(m))
                .collect();
            self.set(&key, kept);
        }
        for id in gone {
            if let Some(s) = self.sessions.remove(id) {
                let highest = s
                    .recent
                    .keys()
                    .next_back()
                    .copied()
                    .unwrap_or(0)
                    .max(s.forgotten);
                if highest > 0 {
                    self.bury(id, highest, None);
                }
            }
        }
    }

    /// Remembers an ended session's highest request id; beyond the limit the
    /// oldest is forgotten first (ties by client id).
    fn bury(&mut self, id: &str, highest: u64, answered: Option<Recorded>) {
        self.tombstones
            .insert(id.to_owned(), (highest, self.now, answered));
        while self.tombstones.len() > LIMITS.max_sessions {
            let oldest = self
                .tombstones
                .iter()
                .min_by_key(|(c, (_, at, _))| (*at, (*c).clone()))
                .map(|(c, _)| c.clone())
                .expect("not empty");
            self.tombstones.remove(&oldest);
        }
    }

    /// A request id of a client without a session, with its outcome if it
    /// has one, in its tombstone, while that pushes no other tombstone out.
    fn remember_without_session(
        &mut self,
        id: &str,
        request_id: u64,
        outcome: Option<Result<u64, ErrorKind>>,
    ) {
        if request_id == 0 {
            return;
        }
        let answered = outcome.map(|outcome| (request_id, outcome));
        if let Some((highest, _, kept)) = self.tombstones.get(id) {
            // A late older request leaves the latest one's answer.
            let (highest, answered) = if *highest >= request_id {
                (*highest, *kept)
            } else {
                (request_id, answered)
            };
            self.bury(id, highest, answered);
        } else if self.tombstones.len() < LIMITS.max_sessions {
            self.bury(id, request_id, answered);
        }
    }

    /// A new session's starting window: what its ended predecessor saw.
    fn reborn(&mut self, id: &str) -> (u64, BTreeMap<u64, Result<u64, ErrorKind>>) {
        match self.tombstones.remove(id) {
            Some((highest, _, answered)) => (highest, answered.into_iter().collect()),
            None => (0, BTreeMap::new()),
        }
    }

    fn renew(&mut self, id: &str) {
        let now = self.now;
        if let Some(s) = self.sessions.get_mut(id) {
            s.expires = s.expires.max(now + s.timeout);
        }
    }

    fn apply(&mut self, command: &Command, stamp: u64) -> Result<Response, ErrorKind> {
        self.now = self.now.max(stamp);
        let now = self.now;
        self.tombstones
            .retain(|_, (_, at, _)| *at + TOMBSTONE_TTL > now);
        match command {
            Command::OpenSession {
                client_id,
                timeout_ms,
            } => {
                validate_id("c", client_id).map_err(|e| e.kind())?;
                let timeout = if *timeout_ms == 0 {
                    DEFAULT_TIMEOUT
                } else {
                    *timeout_ms
                };
                if !(1_000..=300_000).contains(&timeout) {
                    return Err(ErrorKind::InvalidArgument);
                }
                if !self.sessions.contains_key(client_id)
                    && self.sessions.len() >= LIMITS.max_sessions
                {
                    return Err(ErrorKind::ResourceExhausted);
                }
                let (expires, forgotten, recent, keys) = match self.sessions.get(client_id) {
                    Some(s) => (s.expires, s.forgotten, s.recent.clone(), s.keys.clone()),
                    None => {
                        let (forgotten, recent) = self.reborn(client_id);
                        (0, forgotten, recent, BTreeMap::new())
                    }
                };
                self.sessions.insert(
                    client_id.clone(),
                    ModelSession {
                        timeout,
                        expires: expires.max(now + timeout),
                        forgotten,
                        recent,
                        keys,
                    },
                );
                Ok(Response::SessionOpen {
                    timeout_ms: timeout,
                })
            }
            Command::KeepAlive { client_ids } => {
                let missing = client_ids
                    .iter()
                    .filter(|c| !self.sessions.contains_key(*c))
                    .cloned()
                    .collect();
                for c in client_ids {
                    self.renew(c);
                }
                let renewed = client_ids
                    .iter()
                    .filter_map(|c| self.sessions.get(c).map(|s| (c.clone(), s.timeout)))
                    .collect();
                Ok(Response::KeptAlive { renewed, missing })
            }
            Command::CloseSession {
                client_id,
                request_id,
            } => {
                if let Some(s) = self.sessions.get(client_id) {
                    let remembered = s.recent.contains_key(request_id);
                    if *request_id != 0 && *request_id <= s.forgotten && !remembered {
                        return Err(ErrorKind::FailedPrecondition);
                    }
                }
                let existed = self.sessions.contains_key(client_id);
                if !existed {
                    self.remember_without_session(client_id, *request_id, None);
                }
                if let Some(s) = self
                    .sessions
                    .get_mut(client_id)
                    .filter(|_| *request_id != 0)
                {
                    s.record(*request_id, Ok(0), None);
                }
                self.remove_clients(&BTreeSet::from([client_id.clone()]));
                Ok(Response::SessionClosed { existed })
            }
            Command::ExpireDue => {
                let due: BTreeSet<String> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.expires <= now)
                    .map(|(c, _)| c.clone())
                    .collect();
                self.remove_clients(&due);
                Ok(Response::Expired {
                    client_ids: due.into_iter().collect(),
                })
            }
            Command::LeaderGrace => {
                let ids: Vec<String> = self.sessions.keys().cloned().collect();
                for id in &ids {
                    self.renew(id);
                }
                Ok(Response::GraceApplied {
                    sessions: ids.len(),
                })
            }
            Command::AdoptRules { level } => {
                self.rules = self.rules.max(*level);
                Ok(Response::RulesAdopted { level: self.rules })
            }
            Command::Client(request) => self.apply_client(request),
        }
    }

    fn apply_client(&mut self, r: &ClientRequest) -> Result<Response, ErrorKind> {
        // What the request alone makes invalid is refused first, and
        // recorded nowhere.
        validate_id("c", &r.client_id).map_err(|e| e.kind())?;
        validate_id("n", &r.operation.key().name).map_err(|e| e.kind())?;
        match &r.operation {
            Operation::Anoint { candidate, .. }
            | Operation::Promote { candidate, .. }
            | Operation::Evict { candidate, .. } => {
                validate_id("c", candidate).map_err(|e| e.kind())?;
            }
            Operation::Restore { snapshot, .. } if !snapshot_ok(snapshot) => {
                return Err(ErrorKind::InvalidArgument);
            }
            _ => {}
        }
        let key = r.operation.key();
        if r.request_id != 0 && !self.sessions.contains_key(&r.client_id) {
            if let Some((highest, _, answered)) = self.tombstones.get(&r.client_id) {
                match answered {
                    // A retry of the latest session-less request: its answer.
                    Some((id, Ok(version))) if *id == r.request_id => {
                        return if *version == self.get(&key).version {
                            Ok(Response::Primitive(self.get(&key)))
                        } else {
                            Err(ErrorKind::Aborted)
                        };
                    }
                    Some((id, Err(kind))) if *id == r.request_id => return Err(*kind),
                    _ if r.request_id <= *highest => return Err(ErrorKind::FailedPrecondition),
                    _ => {}
                }
            }
        }
        if let Some(s) = self
            .sessions
            .get(&r.client_id)
            .filter(|_| r.request_id != 0)
        {
            let ordered = self.rules >= 1;
            match s.recent.get(&r.request_id) {
                // A retried id recorded for another primitive.
                Some(_) if ordered && s.keys.get(&r.request_id).is_some_and(|k| *k != key) => {
                    return Err(ErrorKind::InvalidArgument);
                }
                Some(Ok(version)) if *version == self.get(&key).version => {
                    self.renew(&r.client_id);
                    return Ok(Response::Primitive(self.get(&key)));
                }
                Some(Ok(_)) => return Err(ErrorKind::Aborted),
                Some(Err(kind)) => return Err(*kind),
                None if r.request_id <= s.forgotten => return Err(ErrorKind::FailedPrecondition),
                // Overtaken by a later request of the client on the same
                // primitive.
                None if ordered && s.keys.iter().any(|(id, k)| *id > r.request_id && *k == key) => {
                    return Err(ErrorKind::FailedPrecondition);
                }
                None => {}
            }
        }
        let result = self.apply_op(r, &key);
        if r.request_id != 0 {
            let version = self.get(&key).version;
            let ordered_key = (self.rules >= 1).then(|| key.clone());
            match self.sessions.get_mut(&r.client_id) {
                Some(s) => s.record(
                    r.request_id,
                    result.as_ref().map(|_| version).map_err(|k| *k),
                    ordered_key,
                ),
                // No session to record it in: its tombstone remembers it.
                None => self.remember_without_session(
                    &r.client_id,
                    r.request_id,
                    Some(result.as_ref().map(|_| version).map_err(|k| *k)),
                ),
            }
        }
        result
    }

    fn apply_op(&mut self, r: &ClientRequest, key: &PrimitiveKey) -> Result<Response, ErrorKind> {
        let key = key.clone();
        if let Operation::Delete { .. } = &r.operation {
            return match self.primitives.remove(&key) {
                Some(deleted) => {
                    self.deleted_versions = self.deleted_versions.max(deleted.version);
                    Ok(Response::Primitive(Primitive::default()))
                }
                None => Err(ErrorKind::NotFound),
            };
        }
        let old = self.get(&key).members;
        let mut new = old.clone();
        let find = |c: &str, members: &[String]| -> Result<usize, ErrorKind> {
            members
                .iter()
                .position(|m| m == c)
                .ok_or(ErrorKind::FailedPrecondition)
        };
        let mut restored_epoch = None;
        match &r.operation {
            Operation::Join { .. } | Operation::Enter { .. } => {
                if !new.contains(&r.client_id) {
                    new.push(r.client_id.clone());
                }
            }
            Operation::Withdraw { .. } | Operation::Leave { .. } => {
                new.retain(|m| *m != r.client_id)
            }
            Operation::Delete { .. } => unreachable!("handled above"),
            Operation::Anoint { candidate, .. } => {
                let i = find(candidate, &new)?;
                let c = new.remove(i);
                new.insert(0, c);
            }
            Operation::Promote { candidate, .. } => {
                let i = find(candidate, &new)?;
                if i > 0 {
                    new.swap(i - 1, i);
                }
            }
            Operation::Evict { candidate, .. } => {
                let i = find(candidate, &new)?;
                new.remove(i);
            }
            Operation::Restore { snapshot, .. } => {
                new = snapshot.members.clone();
                restored_epoch = Some(snapshot.epoch);
            }
        }
        if new.len() > LIMITS.max_members_per_primitive && new.len() > old.len() {
            return Err(ErrorKind::ResourceExhausted);
        }
        let creates =
            !self.primitives.contains_key(&key) && (restored_epoch.is_some() || !new.is_empty());
        if creates && self.primitives.len() >= LIMITS.max_primitives {
            return Err(ErrorKind::ResourceExhausted);
        }
        let mut needed: BTreeSet<String> = BTreeSet::from([r.client_id.clone()]);
        if restored_epoch.is_some() {
            needed.extend(new.iter().cloned());
        }
        needed.retain(|c| !self.sessions.contains_key(c));
        if self.sessions.len() + needed.len() > LIMITS.max_sessions {
            return Err(ErrorKind::ResourceExhausted);
        }
        for c in needed {
            let (forgotten, recent) = self.reborn(&c);
            self.sessions.insert(
                c,
                ModelSession {
                    timeout: DEFAULT_TIMEOUT,
                    expires: self.now + DEFAULT_TIMEOUT,
                    forgotten,
                    recent,
                    keys: BTreeMap::new(),
                },
            );
        }
        self.renew(&r.client_id);
        let epoch_before = self.get(&key).epoch;
        if creates {
            let fresh = Primitive {
                version: self.deleted_versions,
                ..Primitive::default()
            };
            self.primitives.insert(key.clone(), fresh);
        }
        self.set(&key, new);
        let response = match restored_epoch {
            Some(restored) => {
                let now = self.now;
                let p = self.primitives.get_mut(&key).expect("restore created it");
                p.epoch = epoch_before.max(restored) + 1;
                p.changed_at_ms = now;
                p.leader_since_ms = now;
                p.version += 1;
                Response::Primitive(self.get(&key))
            }
            None => Response::Primitive(self.get(&key)),
        };
        Ok(response)
    }
}

fn client() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["a", "b", "c", "d", "e", "f"]).prop_map(String::from),
        1 => Just(String::new()),
        1 => Just("z".repeat(257)),
    ]
}
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        9 => prop::sample::select(vec!["p", "q", "r"]).prop_map(String::from),
        1 => prop::sample::select(vec!["".to_string(), "n".repeat(257)]),
    ]
}
fn key() -> impl Strategy<Value = PrimitiveKey> {
    (prop::bool::ANY, name()).prop_map(|(latch, name)| PrimitiveKey {
        kind: if latch {
            PrimitiveKind::Latch
        } else {
            PrimitiveKind::Election
        },
        name,
    })
}
fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        3 => name().prop_map(|latch| Operation::Join { latch }),
        3 => name().prop_map(|election| Operation::Enter { election }),
        1 => name().prop_map(|election| Operation::Withdraw { election }),
        1 => name().prop_map(|latch| Operation::Leave { latch }),
        1 => (name(), prop::bool::ANY).prop_map(|(name, latch)| Operation::Delete {
            key: if latch { PrimitiveKey::latch(name) } else { PrimitiveKey::election(name) }
        }),
        1 => (name(), client()).prop_map(|(election, candidate)| Operation::Anoint { election, candidate }),
        1 => (name(), client()).prop_map(|(election, candidate)| Operation::Promote { election, candidate }),
        1 => (name(), client()).prop_map(|(election, candidate)| Operation::Evict { election, candidate }),
        1 => (key(), prop::collection::vec(client(), 0..5), prop::bool::weighted(0.8), epoch())
            .prop_map(|(key, members, consistent, epoch)| {
                let leader = if consistent { members.first().cloned().unwrap_or_default() } else { "b".into() };
                Operation::Restore { key, snapshot: PrimitiveSnapshot { leader, members, epoch } }
            }),
    ]
}
/// Small epochs mostly, and some at the limits, where a careless `+ 1` wraps.
fn epoch() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..6,
        1 => prop::sample::select(vec![(1u64 << 63) - 2, (1 << 63) - 1, 1 << 63, u64::MAX - 1, u64::MAX]),
    ]
}
fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        10 => (client(), 0u64..4, operation())
            .prop_map(|(client_id, request_id, operation)| Command::Client(ClientRequest { client_id, request_id, operation })),
        2 => (client(), prop::sample::select(vec![0u64, 500, 1_000, 2_000, 5_000, 400_000]))
            .prop_map(|(client_id, timeout_ms)| Command::OpenSession { client_id, timeout_ms }),
        2 => prop::collection::vec(client(), 0..4).prop_map(|client_ids| Command::KeepAlive { client_ids }),
        1 => (client(), 0u64..4).prop_map(|(client_id, request_id)| Command::CloseSession { client_id, request_id }),
        3 => Just(Command::ExpireDue),
        1 => Just(Command::LeaderGrace),
        1 => Just(Command::AdoptRules { level: 1 }),
    ]
}
/// Commands with stamps that mostly advance, sometimes jump, sometimes go back.
fn history() -> impl Strategy<Value = Vec<(Command, u64)>> {
    prop::collection::vec((command(), -1_000i64..4_000), 1..80).prop_map(|steps| {
        let mut t: i64 = 1_000_000;
        steps
            .into_iter()
            .map(|(c, dt)| {
                t = (t + dt).max(0);
                (c, t as u64)
            })
            .collect()
    })
}

fn check_invariants(sm: &StateMachine, previous: &StateMachine) {
    for (key, p) in sm.primitives() {
        let distinct: BTreeSet<&String> = p.members.iter().collect();
        assert_eq!(
            distinct.len(),
            p.members.len(),
            "{key:?}: a member twice means two leaders"
        );
        assert_eq!(
            p.leader(),
            p.members.first().map(String::as_str),
            "leader is the first member"
        );
        for m in &p.members {
            let session = sm
                .session(m)
                .unwrap_or_else(|| panic!("{key:?}: member {m} has no live session"));
            assert!(
                session.memberships.contains(key),
                "membership index misses {key:?} for {m}"
            );
        }
    }
    for (client, session) in sm.sessions() {
        for key in &session.memberships {
            assert!(
                sm.primitive(key).contains(client),
                "stale membership index {key:?} for {client}"
            );
        }
    }
    // Epochs only rise, except that Delete (checked against the model)
    // removes a primitive, whose next use starts from 0 (DESIGN §6).
    let still_there: BTreeSet<&PrimitiveKey> = sm.primitives().map(|(k, _)| k).collect();
    for (key, before) in previous.primitives() {
        if !still_there.contains(key) {
            continue;
        }
        let after = sm.primitive(key);
        assert!(
            after.epoch >= before.epoch,
            "{key:?}: epoch went back {} -> {}",
            before.epoch,
            after.epoch
        );
    }
    assert!(sm.now_ms() >= previous.now_ms(), "log time went back");
    let round_trip: StateMachine =
        serde_json::from_str(&serde_json::to_string(sm).unwrap()).unwrap();
    assert_eq!(&round_trip, sm, "snapshot round trip");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn state_machine_agrees_with_the_reference_model(steps in history(), split in any::<prop::sample::Index>()) {
        let mut sm = StateMachine::new(LIMITS);
        let mut model = Model::default();
        let split = split.index(steps.len());
        let mut snapshot_at_split = None;
        for (i, (command, stamp)) in steps.iter().enumerate() {
            if i == split {
                snapshot_at_split = Some(serde_json::to_vec(&sm).unwrap());
            }
            let before = sm.clone();
            let applied = sm.apply(command, *stamp);
            let expected = model.apply(command, *stamp);
            prop_assert_eq!(applied.result.clone().map_err(|e| e.kind()), expected, "step {}: {:?}", i, command);

            let keys: BTreeSet<PrimitiveKey> = model.primitives.keys().cloned().collect();
            prop_assert_eq!(sm.primitives().map(|(k, _)| k.clone()).collect::<BTreeSet<_>>(), keys.clone());
            for key in &keys {
                prop_assert_eq!(sm.primitive(key), model.get(key), "step {}: {:?}", i, key);
            }
            let sessions: Vec<(String, u64, u64)> =
                sm.sessions().map(|(c, s)| (c.clone(), s.timeout_ms, s.expires_at_ms)).collect();
            let expected_sessions: Vec<(String, u64, u64)> =
                model.sessions.iter().map(|(c, s)| (c.clone(), s.timeout, s.expires)).collect();
            prop_assert_eq!(sessions, expected_sessions, "step {}", i);

            // Deleted primitives changed too (to the empty state).
            let changed: BTreeSet<PrimitiveKey> = keys
                .iter()
                .chain(before.primitives().map(|(k, _)| k))
                .filter(|k| before.primitive(k) != sm.primitive(k))
                .cloned()
                .collect();
            let evented: BTreeSet<PrimitiveKey> = applied.events.iter().map(|e| e.key.clone()).collect();
            prop_assert_eq!(evented, changed, "one event per changed primitive");
            for event in &applied.events {
                prop_assert_eq!(&event.state, &sm.primitive(&event.key));
                prop_assert_eq!(event.epoch_before, before.primitive(&event.key).epoch);
            }
            let windows: Vec<SessionWindow> = sm
                .sessions()
                .map(|(c, s)| {
                    let recent = s
                        .recent
                        .iter()
                        .map(|r| match r.outcome {
                            Outcome::Applied { version } => (r.request_id, Ok(version)),
                            Outcome::Rejected { kind } => (r.request_id, Err(kind)),
                        })
                        .collect();
                    (c.clone(), s.forgotten_up_to, recent)
                })
                .collect();
            let expected_windows: Vec<SessionWindow> = model
                .sessions
                .iter()
                .map(|(c, s)| (c.clone(), s.forgotten, s.recent.iter().map(|(id, o)| (*id, *o)).collect()))
                .collect();
            prop_assert_eq!(windows, expected_windows, "step {}: exactly-once windows", i);
            let tombstones: Vec<(String, Tombstone)> = sm
                .tombstones()
                .map(|(c, t)| {
                    let answered = t.answered.map(|r| match r.outcome {
                        Outcome::Applied { version } => (r.request_id, Ok(version)),
                        Outcome::Rejected { kind } => (r.request_id, Err(kind)),
                    });
                    (c.clone(), (t.highest_request_id, t.ended_at_ms, answered))
                })
                .collect();
            let expected_tombstones: Vec<(String, Tombstone)> = model
                .tombstones
                .iter()
                .map(|(c, t)| (c.clone(), *t))
                .collect();
            prop_assert_eq!(tombstones, expected_tombstones, "step {}: tombstones", i);
            if applied.result.is_err() {
                // A refusal changes no primitive and renews nothing; only
                // the exactly-once window may remember it.
                prop_assert_eq!(sm.primitives().collect::<Vec<_>>(), before.primitives().collect::<Vec<_>>());
                let liveness = |m: &StateMachine| {
                    m.sessions()
                        .map(|(c, s)| (c.clone(), s.timeout_ms, s.expires_at_ms, s.memberships.clone()))
                        .collect::<Vec<_>>()
                };
                prop_assert_eq!(liveness(&sm), liveness(&before));
            }
            check_invariants(&sm, &before);
        }

        // Determinism: replaying the tail from the snapshot reaches the same state.
        let mut replica: StateMachine = serde_json::from_slice(&snapshot_at_split.expect("split within steps")).unwrap();
        for (command, stamp) in &steps[split..] {
            replica.apply(command, *stamp);
        }
        prop_assert_eq!(replica, sm);
    }
}
