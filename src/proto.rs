//! Protobuf and gRPC code. The client-facing packages (`atomix.*` and
//! Baton's sessions and administration) come from `baton-client`, so server,
//! CLI and library share one set of types; the peer protocol is generated
//! here, into the same `baton::v1` module.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub use baton_client::proto::atomix;

/// `baton.*` packages (ours).
pub mod baton {
    /// `baton.v1`: sessions and administration (from `baton-client`) and the
    /// peer protocol.
    pub mod v1 {
        pub use baton_client::proto::baton::v1::*;
        tonic::include_proto!("baton.v1");
    }
}

/// Encoded `FileDescriptorSet` of the packages served on the client port,
/// for gRPC reflection (the peer protocol is not served there).
pub const FILE_DESCRIPTOR_SET: &[u8] = baton_client::proto::FILE_DESCRIPTOR_SET;
