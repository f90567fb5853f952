//! Generated protobuf and gRPC code, one module per protobuf package.
//!
//! The `atomix` packages are the upstream wire contract (shared/spec/WIRE.md);
//! `baton::v1` is ours: sessions, administration and the peer protocol.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `atomix.*` packages (upstream-compatible).
pub mod atomix {
    /// `atomix.primitive`: request and response headers.
    pub mod primitive {
        tonic::include_proto!("atomix.primitive");

        /// `atomix.primitive.meta`: object metadata and timestamps.
        pub mod meta {
            tonic::include_proto!("atomix.primitive.meta");
        }
        /// `atomix.primitive.leader`: the LeaderLatchService.
        pub mod leader {
            tonic::include_proto!("atomix.primitive.leader");
        }
        /// `atomix.primitive.election`: the LeaderElectionService.
        pub mod election {
            tonic::include_proto!("atomix.primitive.election");
        }
    }
}

/// `baton.*` packages (ours).
pub mod baton {
    /// `baton.v1`: sessions, administration, peer protocol.
    pub mod v1 {
        tonic::include_proto!("baton.v1");
    }
}

/// Encoded `FileDescriptorSet` of every package, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("baton_descriptor");
