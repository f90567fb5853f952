//! The deterministic state machine: a pure function of the command log.

use std::collections::{BTreeMap, BTreeSet};

use imbl::{OrdMap, OrdSet};

use serde::{Deserialize, Serialize};

use crate::command::{Applied, ChangeEvent, ClientRequest, Command, Operation, Response};
use crate::error::CommandError;
use crate::limits::{resolve_session_timeout, validate_id, Limits, DEFAULT_SESSION_TIMEOUT_MS};
use crate::primitive::{Primitive, PrimitiveKey, PrimitiveSnapshot};
use crate::session::{Outcome, RecordedRequest, Session};

/// All latches, elections and sessions of a cluster.
///
/// It reads no clock and does no I/O: "now" is the timestamp of the entry
/// being applied, so every replica that applies the same log reaches the
/// same state. Serialize it to take a whole-state snapshot. Its maps are
/// persistent (`imbl`): a clone shares them and costs nothing, and a change
/// to either copy copies only the nodes it touches, so a snapshot can be
/// encoded from a clone while entries go on being applied to the original.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    limits: Limits,
    now_ms: u64,
    #[serde(with = "entries")]
    primitives: OrdMap<PrimitiveKey, Primitive>,
    sessions: OrdMap<String, Session>,
    /// Ended sessions' highest request ids (DESIGN §3): a late copy of a
    /// request the client sent before its session was closed or expired
    /// must not bring it back. At most `limits.max_sessions` of them, each
    /// kept for [`TOMBSTONE_TTL_MS`] of log time.
    #[serde(default)]
    tombstones: OrdMap<String, Tombstone>,
    /// The tombstones by age, oldest first, to forget them in order.
    #[serde(default)]
    tombstone_order: OrdSet<(u64, String)>,
    /// The highest version a deleted primitive reached. A primitive used
    /// again counts its versions on from here, so a request recorded
    /// against its earlier life never matches its new one (exactly-once
    /// window: a retry is answered with the state only while the version
    /// it recorded is current).
    #[serde(default)]
    deleted_versions: u64,
    /// The rules level the cluster adopted (`Command::AdoptRules`); 0 in a
    /// state from before levels, and left out of the snapshot while 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    rules: u32,
}

fn is_zero(level: &u32) -> bool {
    *level == 0
}

/// The highest rules level this version applies. Level 1,
/// [`ORDERED_REQUESTS`]: each recorded request keeps a fingerprint of its
/// primitive; an unseen request id below a recorded one on the same
/// primitive is refused (overtaken), and a retried id sent for another
/// primitive than the one it was recorded for is refused (reused).
pub const RULES: u32 = 1;
/// The level from which requests of one client on one primitive are
/// ordered by their ids.
pub const ORDERED_REQUESTS: u32 = 1;

/// How long (log time) an ended session's highest request id is remembered:
/// twice the longest session timeout, far beyond any forwarding delay.
pub const TOMBSTONE_TTL_MS: u64 = 2 * crate::limits::MAX_SESSION_TIMEOUT_MS;

/// What is left of an ended session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The highest request id the session had seen; lower or equal ids of
    /// this client are refused as stale.
    pub highest_request_id: u64,
    /// Log time at which the session ended.
    pub ended_at_ms: u64,
    /// The latest request of this client while it had no session (a
    /// Delete, which opens none, or a first request refused), with what
    /// became of it: a retry of exactly that request is answered as a
    /// session's window would answer it, not as stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered: Option<RecordedRequest>,
}

impl Default for StateMachine {
    fn default() -> Self {
        StateMachine::new(Limits::default())
    }
}

/// The primitives one command changed, with each one's epoch before it.
type Changed = BTreeMap<PrimitiveKey, u64>;

impl StateMachine {
    /// An empty state machine with the given limits.
    pub fn new(limits: Limits) -> Self {
        StateMachine {
            limits,
            now_ms: 0,
            primitives: OrdMap::new(),
            sessions: OrdMap::new(),
            tombstones: OrdMap::new(),
            tombstone_order: OrdSet::new(),
            deleted_versions: 0,
            rules: 0,
        }
    }

    /// The rules level the cluster adopted (see [`RULES`]).
    pub fn rules(&self) -> u32 {
        self.rules
    }

    /// What is left of `client_id`'s ended session, if remembered.
    pub fn tombstone(&self, client_id: &str) -> Option<&Tombstone> {
        self.tombstones.get(client_id)
    }

    /// Every remembered ended session, by client id.
    pub fn tombstones(&self) -> impl Iterator<Item = (&String, &Tombstone)> {
        self.tombstones.iter()
    }

    /// A new session for `client_id` that refuses the request ids its
    /// previous session had already seen.
    fn fresh_session(&mut self, client_id: &str, timeout_ms: u64) -> Session {
        let mut session = Session::new(timeout_ms, self.now_ms);
        if let Some(tombstone) = self.tombstones.remove(client_id) {
            self.tombstone_order
                .remove(&(tombstone.ended_at_ms, client_id.to_owned()));
            session.forgotten_up_to = tombstone.highest_request_id;
            // The latest session-less request stays answerable when its
            // retry comes after the client got a session.
            if let Some(answered) = tombstone.answered {
                session.record(answered);
            }
        }
        session
    }

    fn bury(
        &mut self,
        client_id: &str,
        highest_request_id: u64,
        answered: Option<RecordedRequest>,
    ) {
        // A late copy of an older request leaves the answer kept for the
        // latest one (a retry of that one must still get it).
        let (highest_request_id, answered) = match self.tombstones.get(client_id) {
            Some(old) if old.highest_request_id >= highest_request_id => {
                (old.highest_request_id, old.answered)
            }
            _ => (highest_request_id, answered),
        };
        if highest_request_id == 0 {
            return;
        }
        let tombstone = Tombstone {
            highest_request_id,
            ended_at_ms: self.now_ms,
            answered,
        };
        if let Some(old) = self.tombstones.insert(client_id.to_owned(), tombstone) {
            self.tombstone_order
                .remove(&(old.ended_at_ms, client_id.to_owned()));
        }
        self.tombstone_order
            .insert((tombstone.ended_at_ms, client_id.to_owned()));
        // Bounded by the order, not by the count: a state read from a
        // damaged disk whose order lacks some tombstones must not spin here.
        while self.tombstones.len() > self.limits.max_sessions && !self.tombstone_order.is_empty() {
            self.forget_oldest_tombstone();
        }
    }

    /// Remembers the request id of a client that has no session to record
    /// it in, in its tombstone, with its outcome if it is a client request:
    /// a retry of it gets that answer, an older id is refused as stale, and
    /// a session opened later starts above it. Only while there is room (or
    /// the client has a tombstone already): an ended session's tombstone is
    /// never pushed out for this, since a late copy of one of its requests
    /// would bring a dead client back.
    fn remember_without_session(
        &mut self,
        client_id: &str,
        request_id: u64,
        outcome: Option<Outcome>,
    ) {
        if request_id == 0 {
            return;
        }
        if self.tombstones.contains_key(client_id)
            || self.tombstones.len() < self.limits.max_sessions
        {
            let answered = outcome.map(|outcome| RecordedRequest {
                request_id,
                outcome,
                primitive: None,
            });
            self.bury(client_id, request_id, answered);
        }
    }

    fn forget_oldest_tombstone(&mut self) {
        if let Some((_, id)) = self.tombstone_order.remove_min() {
            self.tombstones.remove(&id);
        }
    }

    fn prune_tombstones(&mut self) {
        while self
            .tombstone_order
            .get_min()
            .is_some_and(|(at, _)| at.saturating_add(TOMBSTONE_TTL_MS) <= self.now_ms)
        {
            self.forget_oldest_tombstone();
        }
    }

    /// The limits this state machine enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Log time of the latest applied entry (ms since the Unix epoch). Never
    /// decreases, even if an entry carries an older stamp.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Refuses a Restore that applying it now would refuse for its number
    /// of members: a node checks this before proposing one, so that no
    /// oversized list of members reaches the log (see
    /// [`CommandError::TooLarge`] for why the log's entries must stay small).
    pub fn check_restore_size(
        &self,
        key: &PrimitiveKey,
        members: usize,
    ) -> Result<(), CommandError> {
        let current = self.primitives.get(key).map_or(0, |p| p.members.len());
        self.check_member_count(key, members, current)
    }

    /// A primitive may grow up to the member limit; one already above it
    /// (the limit was lowered) may keep its size or shrink.
    fn check_member_count(
        &self,
        key: &PrimitiveKey,
        members: usize,
        current: usize,
    ) -> Result<(), CommandError> {
        if members > self.limits.max_members_per_primitive && members > current {
            return Err(CommandError::TooManyMembers {
                name: key.name.clone(),
                max: self.limits.max_members_per_primitive,
            });
        }
        Ok(())
    }

    /// The state of a primitive; one never written reads as empty, epoch 0.
    pub fn primitive(&self, key: &PrimitiveKey) -> Primitive {
        self.primitives.get(key).cloned().unwrap_or_default()
    }

    /// Every primitive that has been written, in key order.
    pub fn primitives(&self) -> impl Iterator<Item = (&PrimitiveKey, &Primitive)> {
        self.primitives.iter()
    }

    /// How many primitives exist.
    pub fn primitive_count(&self) -> usize {
        self.primitives.len()
    }

    /// A primitive's state in the form the Snapshot RPC returns it.
    pub fn snapshot_of(&self, key: &PrimitiveKey) -> PrimitiveSnapshot {
        let primitive = self.primitive(key);
        PrimitiveSnapshot {
            leader: primitive.leader().unwrap_or_default().to_owned(),
            members: primitive.members,
            epoch: primitive.epoch,
        }
    }

    /// A client's session, if open.
    pub fn session(&self, client_id: &str) -> Option<&Session> {
        self.sessions.get(client_id)
    }

    /// Every open session, by client id.
    pub fn sessions(&self) -> impl Iterator<Item = (&String, &Session)> {
        self.sessions.iter()
    }

    /// How many sessions are open.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The earliest time at which some session falls due, if any is open.
    /// The Raft leader proposes [`Command::ExpireDue`] once its clock passes it.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.sessions.values().map(|s| s.expires_at_ms).min()
    }

    /// Applies one command stamped with the log time `stamp_ms`.
    ///
    /// A rejected command leaves every primitive and session as it was.
    pub fn apply(&mut self, command: &Command, stamp_ms: u64) -> Applied {
        self.now_ms = self.now_ms.max(stamp_ms);
        self.prune_tombstones();
        let mut changed = Changed::new();
        let result = match command {
            Command::Client(request) => self.apply_client(request, &mut changed),
            Command::OpenSession {
                client_id,
                timeout_ms,
            } => self.open_session(client_id, *timeout_ms),
            Command::KeepAlive { client_ids } => Ok(self.keep_alive(client_ids)),
            Command::CloseSession {
                client_id,
                request_id,
            } => self.close_session(client_id, *request_id, &mut changed),
            Command::ExpireDue => {
                let now = self.now_ms;
                let due: Vec<String> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.expires_at_ms <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                self.end_sessions(&due, &mut changed);
                Ok(Response::Expired { client_ids: due })
            }
            Command::LeaderGrace => {
                let now = self.now_ms;
                let ids: Vec<String> = self.sessions.keys().cloned().collect();
                for id in ids {
                    if let Some(session) = self.sessions.get_mut(&id) {
                        session.renew(now);
                    }
                }
                Ok(Response::GraceApplied {
                    sessions: self.sessions.len(),
                })
            }
            Command::AdoptRules { level } => {
                self.rules = self.rules.max(*level);
                Ok(Response::RulesAdopted { level: self.rules })
            }
        };
        let events = changed
            .into_iter()
            .map(|(key, epoch_before)| ChangeEvent {
                state: self.primitive(&key),
                key,
                epoch_before,
            })
            .collect();
        Applied { result, events }
    }

    fn apply_client(
        &mut self,
        request: &ClientRequest,
        changed: &mut Changed,
    ) -> Result<Response, CommandError> {
        // Refused for what the request alone says before anything, its
        // exactly-once record included, can change.
        request.validate()?;
        let key = request.operation.key();
        // Once ordered requests are adopted, each request's primitive is
        // recorded with it and compared in the window.
        let primitive = (self.rules >= ORDERED_REQUESTS).then(|| key.fingerprint());
        if let Some(answer) = self.answer_retry(request, &key, primitive) {
            return answer;
        }
        let result = self.apply_operation(request, &key, changed);
        // Refusals are remembered too: a late copy of a refused request
        // must not be applied once the state would allow it.
        if request.request_id != 0 {
            let outcome = match &result {
                Ok(_) => Outcome::Applied {
                    version: self.primitives.get(&key).map_or(0, |p| p.version),
                },
                Err(error) => Outcome::Rejected { kind: error.kind() },
            };
            match self.sessions.get_mut(&request.client_id) {
                Some(caller) => caller.record(RecordedRequest {
                    request_id: request.request_id,
                    outcome,
                    primitive,
                }),
                // No session to remember it in (refused before it had one,
                // or a Delete, which opens none).
                None => self.remember_without_session(
                    &request.client_id,
                    request.request_id,
                    Some(outcome),
                ),
            }
        }
        result
    }

    /// Applies a client operation that is not a retry.
    fn apply_operation(
        &mut self,
        request: &ClientRequest,
        key: &PrimitiveKey,
        changed: &mut Changed,
    ) -> Result<Response, CommandError> {
        let key = key.clone();
        let now = self.now_ms;
        if let Operation::Delete { .. } = &request.operation {
            return self.delete(&key, changed);
        }
        let current = self.primitive(&key);
        let members = plan_members(&request.client_id, &request.operation, &current)?;

        self.check_member_count(&key, members.len(), current.members.len())?;
        let restored_epoch = match &request.operation {
            Operation::Restore { snapshot, .. } => Some(snapshot.epoch),
            _ => None,
        };
        let epoch_after = match restored_epoch {
            Some(restored) => current.epoch.max(restored).checked_add(1),
            None => current.epoch_after(&members),
        }
        .ok_or_else(|| CommandError::EpochExhausted {
            name: key.name.clone(),
        })?;
        let is_restore = restored_epoch.is_some();
        let creates = !self.primitives.contains_key(&key) && (is_restore || !members.is_empty());
        if creates && self.primitives.len() >= self.limits.max_primitives {
            return Err(CommandError::TooManyPrimitives {
                max: self.limits.max_primitives,
            });
        }
        let mut new_sessions: BTreeSet<&String> = BTreeSet::new();
        new_sessions.insert(&request.client_id);
        if is_restore {
            new_sessions.extend(members.iter());
        }
        new_sessions.retain(|id| !self.sessions.contains_key(id.as_str()));
        if self.sessions.len() + new_sessions.len() > self.limits.max_sessions {
            return Err(CommandError::TooManySessions {
                max: self.limits.max_sessions,
            });
        }

        // Every check has passed: from here on the command takes effect.
        let new_sessions: Vec<String> = new_sessions.into_iter().cloned().collect();
        for id in new_sessions {
            let session = self.fresh_session(&id, DEFAULT_SESSION_TIMEOUT_MS);
            self.sessions.insert(id, session);
        }
        if let Some(caller) = self.sessions.get_mut(&request.client_id) {
            caller.renew(now);
        }
        if creates {
            let fresh = Primitive {
                version: self.deleted_versions,
                ..Primitive::default()
            };
            self.primitives.insert(key.clone(), fresh);
        }
        if self.replace_members(&key, members) {
            changed.entry(key.clone()).or_insert(current.epoch);
        }
        if is_restore {
            if let Some(primitive) = self.primitives.get_mut(&key) {
                primitive.epoch = epoch_after;
                primitive.changed_at_ms = now;
                primitive.leader_since_ms = now;
                primitive.version = primitive.version.saturating_add(1);
            }
            changed.entry(key.clone()).or_insert(current.epoch);
        }
        Ok(Response::Primitive(self.primitive(&key)))
    }

    /// Removes a primitive: its members lose their places at once (watchers
    /// get the empty state) and its slot under the limits is free.
    fn delete(
        &mut self,
        key: &PrimitiveKey,
        changed: &mut Changed,
    ) -> Result<Response, CommandError> {
        let Some(primitive) = self.primitives.remove(key) else {
            return Err(CommandError::PrimitiveNotFound {
                name: key.name.clone(),
            });
        };
        for member in &primitive.members {
            if let Some(session) = self.sessions.get_mut(member) {
                session.memberships.remove(key);
            }
        }
        self.deleted_versions = self.deleted_versions.max(primitive.version);
        changed.entry(key.clone()).or_insert(primitive.epoch);
        Ok(Response::Primitive(Primitive::default()))
    }

    /// The answer to a request whose id the caller's session remembers or
    /// has forgotten: a retry of an applied request gets the primitive's
    /// state if nothing changed it since (exactly what the first attempt
    /// answered), else `AlreadyApplied`; a retry of a refused one is refused
    /// again; an id below the window is refused, and so, with `primitive`
    /// (ordered requests adopted), is an id recorded for another primitive
    /// or one overtaken on this one. `None`: apply it.
    fn answer_retry(
        &mut self,
        request: &ClientRequest,
        key: &PrimitiveKey,
        primitive: Option<u64>,
    ) -> Option<Result<Response, CommandError>> {
        if request.request_id == 0 {
            return None;
        }
        let request_id = request.request_id;
        let Some(session) = self.sessions.get(&request.client_id) else {
            let tombstone = self.tombstones.get(&request.client_id)?;
            if let Some(answered) = tombstone.answered.filter(|a| a.request_id == request_id) {
                return Some(self.recorded_answer(request_id, answered.outcome, key));
            }
            return (request_id <= tombstone.highest_request_id).then_some(Err(
                CommandError::StaleRequest {
                    request_id,
                    forgotten_up_to: tombstone.highest_request_id,
                },
            ));
        };
        let answer = match session.recorded(request_id) {
            Some(recorded) if matches!((recorded.primitive, primitive), (Some(was), Some(is)) if was != is) => {
                Err(CommandError::RequestIdReused { request_id })
            }
            Some(recorded) => self.recorded_answer(request_id, recorded.outcome, key),
            None if session.is_stale(request_id) => Err(CommandError::StaleRequest {
                request_id,
                forgotten_up_to: session.forgotten_up_to,
            }),
            None => match primitive.and_then(|p| session.overtaken(request_id, p)) {
                Some(by) => Err(CommandError::Overtaken { request_id, by }),
                None => return None,
            },
        };
        if answer.is_ok() {
            let now = self.now_ms;
            if let Some(session) = self.sessions.get_mut(&request.client_id) {
                session.renew(now);
            }
        }
        Some(answer)
    }

    /// The answer to a retry of a request whose outcome was recorded: the
    /// primitive's state if nothing changed it since (exactly what the
    /// first attempt answered), else `AlreadyApplied`; a refusal again.
    fn recorded_answer(
        &self,
        request_id: u64,
        outcome: Outcome,
        key: &PrimitiveKey,
    ) -> Result<Response, CommandError> {
        match outcome {
            Outcome::Applied { version } => {
                let state = self.primitives.get(key).cloned().unwrap_or_default();
                if state.version == version {
                    Ok(Response::Primitive(state))
                } else {
                    Err(CommandError::AlreadyApplied { request_id })
                }
            }
            Outcome::Rejected { kind } => {
                Err(CommandError::PreviouslyRejected { request_id, kind })
            }
        }
    }

    fn open_session(&mut self, client_id: &str, timeout_ms: u64) -> Result<Response, CommandError> {
        validate_id("client_id", client_id)?;
        let timeout_ms = resolve_session_timeout(timeout_ms)?;
        let now = self.now_ms;
        match self.sessions.get_mut(client_id) {
            Some(session) => {
                // Never shortens the current expiry: a node may have told a
                // watcher its session lives that long (its stream lease).
                session.timeout_ms = timeout_ms;
                session.renew(now);
            }
            None => {
                if self.sessions.len() >= self.limits.max_sessions {
                    return Err(CommandError::TooManySessions {
                        max: self.limits.max_sessions,
                    });
                }
                let session = self.fresh_session(client_id, timeout_ms);
                self.sessions.insert(client_id.to_owned(), session);
            }
        }
        Ok(Response::SessionOpen { timeout_ms })
    }

    fn close_session(
        &mut self,
        client_id: &str,
        request_id: u64,
        changed: &mut Changed,
    ) -> Result<Response, CommandError> {
        let Some(session) = self.sessions.get_mut(client_id) else {
            // Nothing to close; but a late copy of this close must not
            // close the client's next session either.
            self.remember_without_session(client_id, request_id, None);
            return Ok(Response::SessionClosed { existed: false });
        };
        if session.is_stale(request_id) {
            return Err(CommandError::StaleRequest {
                request_id,
                forgotten_up_to: session.forgotten_up_to,
            });
        }
        // The close is a request of this session like any other: recorded,
        // its id goes into the tombstone, so a late copy of it cannot close
        // the client's next session.
        if request_id != 0 {
            session.record(RecordedRequest {
                request_id,
                outcome: Outcome::Applied { version: 0 },
                primitive: None,
            });
        }
        self.end_sessions(&[client_id.to_owned()], changed);
        Ok(Response::SessionClosed { existed: true })
    }

    fn keep_alive(&mut self, client_ids: &[String]) -> Response {
        let now = self.now_ms;
        let mut renewed = Vec::new();
        let mut missing = Vec::new();
        for id in client_ids {
            match self.sessions.get_mut(id) {
                Some(session) => {
                    session.renew(now);
                    renewed.push((id.clone(), session.timeout_ms));
                }
                None => missing.push(id.clone()),
            }
        }
        Response::KeptAlive { renewed, missing }
    }

    /// Closes or expires sessions: their clients leave every primitive in
    /// this one step, so a primitive that loses several members (say its
    /// leader and the next in line) changes once and its epoch rises once.
    fn end_sessions(&mut self, client_ids: &[String], changed: &mut Changed) {
        let leaving: BTreeSet<&String> = client_ids
            .iter()
            .filter(|id| self.sessions.contains_key(id.as_str()))
            .collect();
        let affected: BTreeSet<PrimitiveKey> = leaving
            .iter()
            .filter_map(|id| self.sessions.get(id.as_str()))
            .flat_map(|s| s.memberships.iter().cloned())
            .collect();
        for key in affected {
            let before = self.primitive(&key);
            let members: Vec<String> = before
                .members
                .into_iter()
                .filter(|m| !leaving.contains(m))
                .collect();
            if self.replace_members(&key, members) {
                changed.entry(key).or_insert(before.epoch);
            }
        }
        let leaving: Vec<String> = leaving.into_iter().cloned().collect();
        for id in leaving {
            if let Some(session) = self.sessions.remove(&id) {
                self.bury(&id, session.highest_request_id(), None);
            }
        }
    }

    /// Sets a primitive's member list, keeping each session's membership
    /// index in step. Members added here must already have a session.
    fn replace_members(&mut self, key: &PrimitiveKey, members: Vec<String>) -> bool {
        let now = self.now_ms;
        let Some(primitive) = self.primitives.get_mut(key) else {
            return false;
        };
        let before: BTreeSet<String> = primitive.members.iter().cloned().collect();
        if !primitive.set_members(members, now) {
            return false;
        }
        // From the list actually set: an exhausted epoch empties it.
        let after: BTreeSet<String> = primitive.members.iter().cloned().collect();
        for gone in before.difference(&after) {
            if let Some(session) = self.sessions.get_mut(gone) {
                session.memberships.remove(key);
            }
        }
        for joined in after.difference(&before) {
            if let Some(session) = self.sessions.get_mut(joined) {
                session.memberships.insert(key.clone());
            }
        }
        true
    }
}

/// The member list an operation would leave, or why it is rejected.
fn plan_members(
    caller: &str,
    operation: &Operation,
    current: &Primitive,
) -> Result<Vec<String>, CommandError> {
    let mut members = current.members.clone();
    let position = |candidate: &str, election: &str| {
        members
            .iter()
            .position(|m| m == candidate)
            .ok_or_else(|| CommandError::NotACandidate {
                election: election.to_owned(),
                candidate: candidate.to_owned(),
            })
    };
    match operation {
        Operation::Join { .. } | Operation::Enter { .. } => {
            if !current.contains(caller) {
                members.push(caller.to_owned());
            }
        }
        Operation::Withdraw { .. } | Operation::Leave { .. } => members.retain(|m| m != caller),
        // Handled before planning: it removes the primitive itself.
        Operation::Delete { .. } => {}
        Operation::Anoint {
            election,
            candidate,
        } => {
            let index = position(candidate, election)?;
            let anointed = members.remove(index);
            members.insert(0, anointed);
        }
        Operation::Promote {
            election,
            candidate,
        } => {
            let index = position(candidate, election)?;
            if index > 0 {
                members.swap(index - 1, index);
            }
        }
        Operation::Evict {
            election,
            candidate,
        } => {
            let index = position(candidate, election)?;
            members.remove(index);
        }
        Operation::Restore { snapshot, .. } => {
            members = snapshot.members.clone();
        }
    }
    Ok(members)
}

/// Serializes a map with structured keys as a sequence of pairs, so the
/// snapshot encodes in formats whose map keys must be strings (JSON).
mod entries {
    use imbl::OrdMap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize + Ord, V: Serialize, S: Serializer>(
        map: &OrdMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(deserializer: D) -> Result<OrdMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}
