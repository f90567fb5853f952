//! A node's identity derived from its Kubernetes StatefulSet pod, so the
//! manifest needs no per-pod configuration: pod `baton-2` of 3 replicas is
//! node 3, its peers are the ordinals 0..3 put into an address template
//! (the headless Service's stable DNS names), and it advertises its own
//! name. A pod past the replica count (the set was scaled up) joins the
//! cluster the first replicas formed and asks them to add it. Explicit
//! `--id`, `--peers`, `--join` and `--advertise` win over all this.

use std::collections::BTreeMap;

/// The placeholder the address templates replace with a pod ordinal.
pub const ORDINAL: &str = "{ordinal}";

/// Why a pod's identity could not be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The pod name does not end in `-<ordinal>`.
    #[error(
        "pod name {0:?} does not end in -<ordinal> (StatefulSet pods are <set>-0, <set>-1, ...)"
    )]
    NoOrdinal(String),
    /// A template lacks the ordinal placeholder.
    #[error("address template {0:?} has no {ORDINAL} placeholder")]
    NoPlaceholder(String),
}

/// The ordinal of a StatefulSet pod name (`baton-2` → 2).
pub fn ordinal(pod_name: &str) -> Result<u64, IdentityError> {
    pod_name
        .rsplit_once('-')
        .and_then(|(set, ordinal)| (!set.is_empty()).then_some(ordinal))
        .and_then(|ordinal| ordinal.parse().ok())
        .ok_or_else(|| IdentityError::NoOrdinal(pod_name.to_owned()))
}

/// `template` with the ordinal filled in.
pub fn address(template: &str, ordinal: u64) -> Result<String, IdentityError> {
    if !template.contains(ORDINAL) {
        return Err(IdentityError::NoPlaceholder(template.to_owned()));
    }
    Ok(template.replace(ORDINAL, &ordinal.to_string()))
}

/// Node id of a pod: its ordinal + 1 (Raft node ids start at 1 here).
pub fn node_id(pod_name: &str) -> Result<u64, IdentityError> {
    ordinal(pod_name)?
        .checked_add(1)
        .ok_or_else(|| IdentityError::NoOrdinal(pod_name.to_owned()))
}

/// Whether node `id` is one of the `replicas` founding members (ordinals
/// 0..replicas); a pod past them, which a StatefulSet scaled up started,
/// joins the cluster they formed.
pub fn founds(id: u64, replicas: u64) -> bool {
    (1..=replicas).contains(&id)
}

/// Every member's peer address: node `i + 1` at `template` with ordinal `i`.
pub fn peers(template: &str, replicas: u64) -> Result<BTreeMap<u64, String>, IdentityError> {
    (0..replicas)
        .map(|ordinal| Ok((ordinal + 1, address(template, ordinal)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_name_gives_its_node_id_and_its_peers() {
        assert_eq!(node_id("baton-0"), Ok(1));
        assert_eq!(node_id("my-baton-set-2"), Ok(3));
        assert_eq!(node_id("baton-3"), Ok(4));
        assert!(founds(3, 3) && !founds(4, 3) && !founds(0, 3));
        assert!(node_id("baton").is_err());
        assert!(node_id("-1").is_err());
        assert!(node_id("baton-x").is_err());
        assert!(node_id(&format!("baton-{}", u64::MAX)).is_err());
        let peers = peers("baton-{ordinal}.baton-peers:7101", 3).expect("peers");
        assert_eq!(peers[&1], "baton-0.baton-peers:7101");
        assert_eq!(peers[&3], "baton-2.baton-peers:7101");
        assert!(address("baton.baton-peers:7101", 0).is_err());
    }
}
