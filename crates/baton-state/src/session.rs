//! Client sessions: the liveness of a client_id, and its exactly-once window.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::primitive::PrimitiveKey;

/// How many request outcomes a session remembers: those of its highest
/// request ids. A client whose request ids increase has far fewer requests
/// in flight than this, so a retry always finds its outcome here, and
/// requests that overtake each other in flight are still applied.
pub const REQUEST_WINDOW: usize = 32;

/// What became of a request, as remembered in a session's window. It holds
/// the primitive's version after the request instead of the state itself,
/// so a session's memory does not grow with the size of member lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied; [`crate::Primitive::version`] right after it.
    Applied {
        /// The primitive's version after the request.
        version: u64,
    },
    /// Refused; a retry gets the same class of error, never an application.
    Rejected {
        /// The class of the refusal.
        kind: ErrorKind,
    },
}

/// One remembered request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// The request id.
    pub request_id: u64,
    /// What became of it.
    pub outcome: Outcome,
    /// The primitive it acted on, as [`PrimitiveKey::fingerprint`]: kept
    /// once the cluster has adopted ordered requests
    /// ([`crate::ORDERED_REQUESTS`]), so that an older request on the same
    /// primitive arriving late is not applied over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primitive: Option<u64>,
}

/// One client's session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// How long the session lives without a renewal.
    pub timeout_ms: u64,
    /// Log time at or after which the session may be expired.
    pub expires_at_ms: u64,
    /// Every request id at or below this has left the window: such an id
    /// that is not remembered is refused, since it may be a late duplicate
    /// of a request whose outcome was forgotten.
    #[serde(default)]
    pub forgotten_up_to: u64,
    /// The outcomes of the highest request ids (at most
    /// [`REQUEST_WINDOW`]), in id order.
    #[serde(default)]
    pub recent: Vec<RecordedRequest>,
    /// Every primitive the client is a member of, so that expiry and close
    /// can remove it everywhere without scanning all primitives.
    pub memberships: BTreeSet<PrimitiveKey>,
}

impl Session {
    /// A fresh session opened at `now_ms`.
    pub fn new(timeout_ms: u64, now_ms: u64) -> Self {
        Session {
            timeout_ms,
            expires_at_ms: now_ms.saturating_add(timeout_ms),
            forgotten_up_to: 0,
            recent: Vec::new(),
            memberships: BTreeSet::new(),
        }
    }

    /// Gives the session a full timeout from `now_ms` (never shortens it).
    pub fn renew(&mut self, now_ms: u64) {
        self.expires_at_ms = self
            .expires_at_ms
            .max(now_ms.saturating_add(self.timeout_ms));
    }

    /// The remembered outcome of `request_id`, if it is in the window.
    pub fn outcome(&self, request_id: u64) -> Option<Outcome> {
        self.recorded(request_id).map(|r| r.outcome)
    }

    /// The remembered request with this id, if any.
    pub fn recorded(&self, request_id: u64) -> Option<RecordedRequest> {
        self.recent
            .binary_search_by_key(&request_id, |r| r.request_id)
            .ok()
            .map(|i| self.recent[i])
    }

    /// The highest request id this session has seen (applied, refused or
    /// forgotten).
    pub fn highest_request_id(&self) -> u64 {
        self.recent
            .last()
            .map_or(0, |r| r.request_id)
            .max(self.forgotten_up_to)
    }

    /// Whether `request_id` is too old to apply: below the window and not
    /// remembered.
    pub fn is_stale(&self, request_id: u64) -> bool {
        request_id != 0 && request_id <= self.forgotten_up_to && self.outcome(request_id).is_none()
    }

    /// Whether this session applied or refused a request with a higher id
    /// on the primitive with fingerprint `primitive` (recorded once ordered
    /// requests were adopted): `request_id`, unseen, was overtaken, and
    /// applying it now would undo what the client asked for after it.
    pub fn overtaken(&self, request_id: u64, primitive: u64) -> Option<u64> {
        self.recent
            .iter()
            .rev()
            .take_while(|r| r.request_id > request_id)
            .find(|r| r.primitive == Some(primitive))
            .map(|r| r.request_id)
    }

    /// Remembers a request's outcome, forgetting the lowest id beyond the
    /// window.
    pub(crate) fn record(&mut self, request: RecordedRequest) {
        match self
            .recent
            .binary_search_by_key(&request.request_id, |r| r.request_id)
        {
            Ok(i) => self.recent[i] = request,
            Err(i) => self.recent.insert(i, request),
        }
        if self.recent.len() > REQUEST_WINDOW {
            let dropped = self.recent.remove(0);
            self.forgotten_up_to = self.forgotten_up_to.max(dropped.request_id);
        }
    }
}
