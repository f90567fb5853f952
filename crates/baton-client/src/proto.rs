//! Generated protobuf and gRPC code for the client-facing API, one module per
//! protobuf package: the upstream Atomix contract (`atomix.*`) and Baton's
//! sessions and administration (`baton.v1`). Servers are generated too, so
//! the Baton server implements exactly these types.

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
    /// `baton.v1`: sessions and administration.
    pub mod v1 {
        tonic::include_proto!("baton.v1");
    }
}

/// Encoded `FileDescriptorSet` of these packages, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("baton_client_descriptor");
