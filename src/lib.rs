//! Baton: a Raft-replicated service for the Atomix leader latch and leader
//! election gRPC APIs.

#![warn(missing_docs)]

pub mod proto;
