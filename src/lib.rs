//! Baton: a Raft-replicated service for the Atomix leader latch and leader
//! election gRPC APIs.
//!
//! Layout: [`proto`] is the generated wire code; [`service`] the thin gRPC
//! handlers; [`convert`] the wire <-> state-machine translation; [`error`]
//! the one mapping of failures to gRPC statuses; [`replication`] the door to
//! Raft (leader stamping, forwarding, read index, leader duties);
//! [`clock`] the leader's term clock for log stamps; [`liveness`] whether
//! a working leader is within reach; [`health`] gRPC health and the leader
//! address cache; [`identity`] names callers without a client_id by their
//! connection; [`membership`] adds and removes nodes; [`metrics`] the Prometheus endpoint and RPC layer;
//! [`network`] and [`peer`] the Raft transport; [`keepalive`] session
//! renewal on clients' behalf; [`statefulset`] a node's identity from its
//! Kubernetes pod; [`node`] wires one node together. The CLI,
//! the tests and users call the cluster through `baton-client`.

#![warn(missing_docs)]
// tonic::Status and openraft's errors are the types their traits require.
#![allow(clippy::result_large_err)]

pub mod clock;
pub mod convert;
pub mod elector;
pub mod error;
pub mod forwarding;
pub mod group_commit;
pub mod health;
pub mod identity;
pub mod keepalive;
pub mod liveness;
pub mod membership;
pub mod metrics;
pub mod network;
pub mod node;
pub mod peer;
pub mod proto;
pub mod replication;
pub mod service;
#[cfg(test)]
mod stand_in_peer;
pub mod statefulset;
mod test_hooks;
