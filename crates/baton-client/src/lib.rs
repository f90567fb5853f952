//! Async Rust client for Baton, the Raft-replicated leader latch and leader
//! election service (Atomix API).
//!
//! A [`Client`] holds one session, kept alive in the background by explicit
//! keep-alives, over every endpoint of a cluster: calls fail over to the
//! leader a node hints at, and writes keep their request id across retries
//! so the cluster applies them once. Handles on primitives
//! ([`Client::latch`], [`Client::election`]) have one method per RPC, plus:
//!
//! - [`Election::campaign`] / [`Latch::acquire`]: a [`Leadership`] whose
//!   [`Leadership::epoch`] is the fencing token and which ends — on an
//!   event, with the session, or when the client-side lease runs out,
//!   whichever comes first — before the cluster can name another leader;
//! - `observe()`: the primitive's changes as a stream that survives node
//!   loss and never goes back to an older state (its epoch goes back only
//!   when the primitive is deleted, which also ends its leadership).
//!
//! ```no_run
//! # async fn run() -> baton_client::Result<()> {
//! let client = baton_client::Client::connect(&["127.0.0.1:7001", "127.0.0.1:7002"]).await?;
//! let leadership = client.election("scheduler").campaign().await?;
//! println!("leading with epoch {}", leadership.epoch());
//! let why = leadership.lost().await;
//! println!("no longer leading: {why}");
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod client;
mod election;
mod error;
mod feed;
mod latch;
mod leadership;
mod lifecycle;
mod observe;
pub mod proto;
mod session;
mod transport;
mod view;

pub use client::{
    request_header, Client, ClientBuilder, DEFAULT_CALL_TIMEOUT, DEFAULT_LEASE_MARGIN,
    DEFAULT_SESSION_TIMEOUT,
};
pub use election::Election;
pub use error::{Error, Result};
pub use latch::Latch;
pub use leadership::Leadership;
pub use session::Ended;
pub use transport::{
    is_session_gone, is_transient, next_request_id, with_deadline, Endpoints, Rotation,
    LEADER_HINT_METADATA, SESSION_GONE_METADATA,
};
pub use view::{Kind, View};
