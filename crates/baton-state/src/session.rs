//! Client sessions: the liveness of a client_id, and its exactly-once window.

use std::collections::{BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::primitive::PrimitiveKey;

/// How many recent request outcomes a session remembers. A client whose
/// request ids increase never has more than a few requests in flight, so a
/// retry always finds its id here; older ids are refused.
pub const REQUEST_WINDOW: usize = 32;

/// One applied request in a session's exactly-once window. It holds the
/// primitive's version after the request instead of the state itself, so a
/// session's memory does not grow with the size of member lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRequest {
    /// The request id.
    pub request_id: u64,
    /// [`crate::Primitive::version`] right after the request was applied.
    pub version: u64,
}

/// One client's session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// How long the session lives without a renewal.
    pub timeout_ms: u64,
    /// Log time at or after which the session may be expired.
    pub expires_at_ms: u64,
    /// The highest non-zero request id applied for this client. A request
    /// id at or below it that is not in `recent` is refused: it is a late
    /// duplicate of something the client has given up on.
    #[serde(default)]
    pub highest_request_id: u64,
    /// The latest applied request ids (at most [`REQUEST_WINDOW`]), oldest
    /// first, so a retry is answered without applying it twice.
    #[serde(default)]
    pub recent: VecDeque<AppliedRequest>,
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
            highest_request_id: 0,
            recent: VecDeque::new(),
            memberships: BTreeSet::new(),
        }
    }

    /// Gives the session a full timeout from `now_ms` (never shortens it).
    pub fn renew(&mut self, now_ms: u64) {
        self.expires_at_ms = self
            .expires_at_ms
            .max(now_ms.saturating_add(self.timeout_ms));
    }

    /// The record of `request_id`, if it is in the window.
    pub fn applied(&self, request_id: u64) -> Option<&AppliedRequest> {
        self.recent.iter().find(|r| r.request_id == request_id)
    }

    /// Whether `request_id` is too old to apply: at or below the highest
    /// applied id and no longer (or never) in the window.
    pub fn is_stale(&self, request_id: u64) -> bool {
        request_id != 0
            && request_id <= self.highest_request_id
            && self.applied(request_id).is_none()
    }

    /// Remembers an applied request, forgetting the oldest beyond the window.
    pub(crate) fn record(&mut self, request: AppliedRequest) {
        self.highest_request_id = self.highest_request_id.max(request.request_id);
        self.recent.push_back(request);
        while self.recent.len() > REQUEST_WINDOW {
            self.recent.pop_front();
        }
    }
}
