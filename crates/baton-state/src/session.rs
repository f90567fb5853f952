//! Client sessions: the liveness of a client_id, and its exactly-once record.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::command::Response;
use crate::primitive::PrimitiveKey;

/// One client's session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// How long the session lives without a renewal.
    pub timeout_ms: u64,
    /// Log time at or after which the session may be expired.
    pub expires_at_ms: u64,
    /// The latest non-zero request id applied for this client and its
    /// response, so that a retry is answered without applying it twice.
    pub last_request: Option<(u64, Response)>,
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
            last_request: None,
            memberships: BTreeSet::new(),
        }
    }

    /// Gives the session a full timeout from `now_ms` (never shortens it).
    pub fn renew(&mut self, now_ms: u64) {
        self.expires_at_ms = self
            .expires_at_ms
            .max(now_ms.saturating_add(self.timeout_ms));
    }
}
