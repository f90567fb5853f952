//! Latches and elections: an ordered member list whose head is the leader,
//! plus the epoch that fences each leadership.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::CommandError;
use crate::limits::{validate_id, MAX_EPOCH};

/// Which of the two primitives a name refers to. Latches and elections live
/// in separate namespaces: latch "x" and election "x" are unrelated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PrimitiveKind {
    /// A leader latch (`atomix.primitive.leader`).
    Latch,
    /// A leader election (`atomix.primitive.election`).
    Election,
}

impl PrimitiveKind {
    /// The `PrimitiveId.type` string upstream clients send for this kind.
    pub fn type_name(self) -> &'static str {
        match self {
            PrimitiveKind::Latch => "LeaderLatch",
            PrimitiveKind::Election => "Election",
        }
    }

    /// Checks a request's `PrimitiveId.type` against the service it was sent
    /// to: it must be empty or this kind's type name.
    pub fn check_type_name(self, given: &str) -> Result<(), CommandError> {
        if given.is_empty() || given == self.type_name() {
            Ok(())
        } else {
            Err(CommandError::WrongPrimitiveType {
                given: crate::limits::shown(given),
                expected: self.type_name().to_owned(),
            })
        }
    }
}

/// The full name of a primitive in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PrimitiveKey {
    /// Latch or election.
    pub kind: PrimitiveKind,
    /// `PrimitiveId.name`.
    pub name: String,
}

impl PrimitiveKey {
    /// A stable 64-bit fingerprint of the key (FNV-1a over the kind and the
    /// name): the same on every replica and every version, so it may be
    /// kept in the replicated state.
    pub fn fingerprint(&self) -> u64 {
        let kind: &[u8] = match self.kind {
            PrimitiveKind::Latch => b"latch",
            PrimitiveKind::Election => b"election",
        };
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in kind.iter().chain([0u8].iter()).chain(self.name.as_bytes()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash
    }

    /// The latch called `name`.
    pub fn latch(name: impl Into<String>) -> Self {
        PrimitiveKey {
            kind: PrimitiveKind::Latch,
            name: name.into(),
        }
    }

    /// The election called `name`.
    pub fn election(name: impl Into<String>) -> Self {
        PrimitiveKey {
            kind: PrimitiveKind::Election,
            name: name.into(),
        }
    }
}

/// The replicated state of one latch or election. A primitive that was never
/// written reads as `Primitive::default()`: no members, epoch 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Primitive {
    /// Participants (latch) or candidates (election) in order; the first one
    /// is the leader.
    pub members: Vec<String>,
    /// Fencing token: +1 each time leadership passes to a new non-empty
    /// leader; never decreases. Latch `meta.revision.num`, election `Term.id.num`.
    pub epoch: u64,
    /// Time (ms since the Unix epoch, from the log) of the last change.
    pub changed_at_ms: u64,
    /// Time of the last leadership change (the election's `Term.timestamp`).
    pub leader_since_ms: u64,
    /// Counts every change of this primitive. The exactly-once window
    /// records it instead of a copy of the member list: a retried request
    /// is answered with the current state only while this is unchanged.
    #[serde(default)]
    pub version: u64,
}

impl Primitive {
    /// The current leader, if any: the first member.
    pub fn leader(&self) -> Option<&str> {
        self.members.first().map(String::as_str)
    }

    /// Whether `client_id` is a member.
    pub fn contains(&self, client_id: &str) -> bool {
        self.members.iter().any(|m| m == client_id)
    }

    /// The epoch the primitive would have with `members`: one more if
    /// leadership passes to a new non-empty leader. `None` if that would
    /// overflow, so the caller can refuse the change instead of wrapping.
    pub fn epoch_after(&self, members: &[String]) -> Option<u64> {
        let new_leader = members.first();
        if new_leader.is_some() && new_leader != self.members.first() {
            self.epoch.checked_add(1)
        } else {
            Some(self.epoch)
        }
    }

    /// Replaces the member list at time `now_ms`, advancing the epoch if
    /// leadership passed to a new non-empty leader. Returns whether anything
    /// changed. Callers check [`Primitive::epoch_after`] first; should the
    /// epoch still be exhausted, the primitive is left without a leader
    /// rather than handing out a token that was issued before.
    pub(crate) fn set_members(&mut self, members: Vec<String>, now_ms: u64) -> bool {
        let (members, epoch) = match self.epoch_after(&members) {
            Some(epoch) => (members, epoch),
            None => (Vec::new(), self.epoch),
        };
        if members == self.members {
            return false;
        }
        if members.first() != self.members.first() {
            self.leader_since_ms = now_ms;
        }
        self.epoch = epoch;
        self.members = members;
        self.changed_at_ms = now_ms;
        self.version = self.version.saturating_add(1);
        true
    }
}

/// A primitive's state as given to or taken from the Snapshot and Restore
/// RPCs: the members in order and the epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimitiveSnapshot {
    /// The leader named in the snapshot ("" for none). Must be the first
    /// member, which is how the wire format carries it redundantly.
    pub leader: String,
    /// Members in order.
    pub members: Vec<String>,
    /// The epoch recorded in the snapshot.
    pub epoch: u64,
}

impl PrimitiveSnapshot {
    /// Checks the snapshot on its own: an epoch below [`MAX_EPOCH`], valid
    /// and distinct member ids, and a leader that is the first member.
    pub fn validate(&self) -> Result<(), CommandError> {
        if self.epoch >= MAX_EPOCH {
            return Err(CommandError::EpochTooLarge {
                epoch: self.epoch,
                limit: MAX_EPOCH,
            });
        }
        let malformed = |reason: String| CommandError::MalformedSnapshot { reason };
        let mut seen = BTreeSet::new();
        for member in &self.members {
            validate_id("member id", member).map_err(|e| malformed(e.to_string()))?;
            if !seen.insert(member) {
                return Err(malformed(format!("member {member:?} appears twice")));
            }
        }
        let first = self.members.first().map(String::as_str).unwrap_or("");
        if !self.leader.is_empty() && self.leader != first {
            return Err(malformed(format!(
                "leader {:?} is not the first member {first:?}",
                crate::limits::shown(&self.leader)
            )));
        }
        Ok(())
    }
}
