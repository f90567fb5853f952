//! Limits on what clients may create, and the checks on identifiers.

use serde::{Deserialize, Serialize};

use crate::error::CommandError;

/// Longest primitive name, client id or candidate id, in bytes (DESIGN §3).
pub const MAX_ID_BYTES: usize = 256;
/// The first epoch a Restore may not name (2^63): far below `u64::MAX`, so
/// the epoch can always rise from a restored value, and within an `int64`
/// for clients that read the wire's `uint64` as signed.
pub const MAX_EPOCH: u64 = 1 << 63;
/// Session timeout used when a client does not ask for one.
pub const DEFAULT_SESSION_TIMEOUT_MS: u64 = 10_000;
/// Shortest session timeout a client may ask for.
pub const MIN_SESSION_TIMEOUT_MS: u64 = 1_000;
/// Longest session timeout a client may ask for.
pub const MAX_SESSION_TIMEOUT_MS: u64 = 300_000;

/// Capacity limits. They are part of the replicated state (carried in the
/// snapshot) so that every replica rejects exactly the same commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most members (participants or candidates) one primitive may have.
    pub max_members_per_primitive: usize,
    /// Most primitives (latches plus elections) the cluster may hold.
    pub max_primitives: usize,
    /// Most open sessions the cluster may hold.
    pub max_sessions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_members_per_primitive: 1_024,
            max_primitives: 100_000,
            max_sessions: 100_000,
        }
    }
}

/// Characters of a client's string an error message quotes at most: a
/// message travels in a header, and a field no check bounds (a type name, a
/// snapshot's leader) may be up to a whole message long.
const SHOWN_CHARS: usize = 64;

/// `text` as an error message quotes it: cut short past [`SHOWN_CHARS`].
pub fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Checks that a required identifier is present and not oversized.
pub fn validate_id(what: &'static str, id: &str) -> Result<(), CommandError> {
    if id.is_empty() {
        return Err(CommandError::EmptyId {
            what: what.to_owned(),
        });
    }
    if id.len() > MAX_ID_BYTES {
        return Err(CommandError::IdTooLong {
            what: what.to_owned(),
            len: id.len(),
            max: MAX_ID_BYTES,
        });
    }
    Ok(())
}

/// Resolves a requested session timeout: 0 means the default, anything else
/// must lie within the allowed range.
pub fn resolve_session_timeout(requested_ms: u64) -> Result<u64, CommandError> {
    if requested_ms == 0 {
        return Ok(DEFAULT_SESSION_TIMEOUT_MS);
    }
    if !(MIN_SESSION_TIMEOUT_MS..=MAX_SESSION_TIMEOUT_MS).contains(&requested_ms) {
        return Err(CommandError::InvalidTimeout {
            requested_ms,
            min_ms: MIN_SESSION_TIMEOUT_MS,
            max_ms: MAX_SESSION_TIMEOUT_MS,
        });
    }
    Ok(requested_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PrimitiveKind;

    #[test]
    fn an_error_quotes_a_long_string_cut_short_on_a_character_boundary() {
        assert_eq!(shown("Election"), "Election");
        let long = "é".repeat(100_000);
        let quoted = shown(&long);
        assert_eq!(quoted.chars().count(), SHOWN_CHARS + 1);
        assert!(quoted.ends_with('…'));
        let refused = PrimitiveKind::Latch
            .check_type_name(&"x".repeat(1 << 20))
            .expect_err("a wrong type");
        assert!(refused.to_string().len() < 200, "{refused}");
    }
}
