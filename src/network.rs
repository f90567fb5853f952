//! Raft traffic between nodes: openraft's network traits over tonic, on the
//! peer port. Messages travel as serde_json payloads inside `RaftPayload`.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_store::{FlushedLog, NodeId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, LogId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::proto::baton::v1::raft_service_client::RaftServiceClient;
use crate::proto::baton::v1::RaftPayload;

/// Largest peer message (snapshot chunks are far smaller; entries batch).
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// What one AppendEntries carries at most, by the group commit's generous
/// estimate (about a quarter of this for ordinary ids); the first entry
/// always goes. openraft 0.9 gives every AppendEntries one heartbeat
/// interval, whatever it carries, and sends up to 300 entries at once: a
/// follower that came back behind a busy log was sent megabytes it could
/// not take in within that time, again and again, and never caught up.
/// The rest of the entries follow in the next exchanges (the reply says
/// how far this one reached).
const EXCHANGE_ENTRY_BYTES: usize = 1024 * 1024;

/// Keeps the entries of `rpc` that fit in [`EXCHANGE_ENTRY_BYTES`]; returns
/// the last one kept if any were left out.
fn keep_what_fits(rpc: &mut AppendEntriesRequest<TypeConfig>) -> Option<LogId<NodeId>> {
    // One entry always goes: most exchanges carry one, and need no estimate.
    if rpc.entries.len() <= 1 {
        return None;
    }
    let mut bytes = 0;
    let fits = rpc
        .entries
        .iter()
        .take_while(|entry| {
            bytes += crate::group_commit::approx_entry_bytes(entry);
            bytes <= EXCHANGE_ENTRY_BYTES
        })
        .count()
        .max(1);
    if fits >= rpc.entries.len() {
        return None;
    }
    rpc.entries.truncate(fits);
    rpc.entries.last().map(|entry| entry.log_id)
}

/// Cached gRPC channels to peers, by peer address. Channels connect lazily
/// and reconnect by themselves, so one per address is enough.
#[derive(Clone, Default)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Mutual TLS to peers: this node's certificate and the cluster's CA.
    tls: Option<ClientTlsConfig>,
}

impl PeerChannels {
    /// Channels that talk to peers over mutual TLS when `tls` is given.
    pub fn new(tls: Option<ClientTlsConfig>) -> Self {
        PeerChannels {
            channels: Arc::default(),
            tls,
        }
    }

    /// A client for the peer service at `addr` (host:port).
    pub fn client(
        &self,
        addr: &str,
    ) -> Result<RaftServiceClient<Channel>, tonic::transport::Error> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let channel = self.connect_lazy(addr)?;
                channels.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        Ok(peer_client(channel))
    }

    /// A client for the peer service at `addr` on a channel of its own,
    /// not kept: for an address a caller names (an AddNode's), which may
    /// be anyone's, so that such calls leave nothing behind.
    pub fn client_once(
        &self,
        addr: &str,
    ) -> Result<RaftServiceClient<Channel>, tonic::transport::Error> {
        Ok(peer_client(self.connect_lazy(addr)?))
    }

    fn connect_lazy(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(endpoint.connect_lazy())
    }
}

fn peer_client(channel: Channel) -> RaftServiceClient<Channel> {
    RaftServiceClient::new(channel)
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES)
}

/// Whether a failed call never reached the peer (so retrying cannot apply
/// anything twice): the connection was refused or could not be made.
pub fn never_sent(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = status.source();
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            );
        }
        if error.to_string().contains("tcp connect error") {
            return true;
        }
        source = error.source();
    }
    false
}

/// Encodes a peer message.
pub fn encode<T: Serialize>(value: &T) -> Result<RaftPayload, serde_json::Error> {
    Ok(RaftPayload {
        payload: serde_json::to_vec(value)?,
    })
}

/// Decodes a peer message.
pub fn decode<T: DeserializeOwned>(payload: &RaftPayload) -> Result<T, serde_json::Error> {
    serde_json::from_slice(&payload.payload)
}

/// openraft's network factory: one [`PeerConnection`] per target node.
#[derive(Clone)]
pub struct PeerNetwork {
    channels: PeerChannels,
    commits: CommitClamp,
    idle: IdleStreams,
}

impl PeerNetwork {
    /// A network that shares `channels` with the rest of the node and tells
    /// followers no commit index past `flushed` (see [`CommitClamp`]).
    pub fn new(channels: PeerChannels, commits: CommitClamp) -> Self {
        PeerNetwork {
            channels,
            commits,
            idle: IdleStreams::default(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            target,
            client: self.channels.client(&node.addr).map_err(|e| e.to_string()),
            commits: self.commits.clone(),
            entries: EntryStreams {
                open: self.idle.take(target),
                refused: false,
            },
            idle: self.idle.clone(),
        }
    }
}

/// AppendEntries streams whose connection openraft has dropped, kept for
/// the next connection to the same peer. openraft makes a connection for
/// every leadership check of a linearizable read (one heartbeat to each
/// voter) and drops it after one exchange: each read opened a stream to
/// every follower (a round trip for its headers, then the exchange, both
/// within one heartbeat interval) and closed it again.
#[derive(Clone, Default)]
struct IdleStreams {
    streams: Arc<Mutex<HashMap<NodeId, Vec<EntryStream>>>>,
}

/// Idle streams kept per peer: enough for a few reads checked at once.
const IDLE_STREAMS_PER_PEER: usize = 4;

impl IdleStreams {
    fn take(&self, target: NodeId) -> Option<EntryStream> {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let idle = streams.get_mut(&target)?;
        // A stream whose HTTP/2 stream or connection has gone is dropped.
        while let Some(stream) = idle.pop() {
            if !stream.requests.is_closed() {
                return Some(stream);
            }
        }
        None
    }

    fn keep(&self, target: NodeId, stream: EntryStream) {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let idle = streams.entry(target).or_default();
        if idle.len() < IDLE_STREAMS_PER_PEER && !stream.requests.is_closed() {
            idle.push(stream);
        }
    }
}

/// Keeps the commit index a leader sends no further than its own flushed
/// log: a leader reports its own entries to openraft before flushing them
/// (`baton-store/src/flushed.rs`), so openraft may count an entry committed
/// that only followers hold durably, and a follower must not apply it until
/// the leader's copy is on disk too. A commit held back this way is sent
/// with a heartbeat as soon as the flush ends ([`CommitClamp::release`]).
#[derive(Clone)]
pub struct CommitClamp {
    flushed: FlushedLog,
    /// The highest commit index held back so far.
    held: watch::Sender<u64>,
}

impl CommitClamp {
    /// Clamps to `flushed`, this node's log.
    pub fn new(flushed: FlushedLog) -> Self {
        CommitClamp {
            flushed,
            held: watch::Sender::new(0),
        }
    }

    fn clamp(&self, rpc: &mut AppendEntriesRequest<TypeConfig>) {
        let flushed = self.flushed.upto();
        let Some(commit) = rpc.leader_commit else {
            return;
        };
        if Some(commit.index) <= flushed.map(|f| f.index) {
            return;
        }
        rpc.leader_commit = flushed;
        self.held.send_if_modified(|held| {
            let higher = commit.index > *held;
            if higher {
                *held = commit.index;
            }
            higher
        });
    }

    /// Sends a heartbeat whenever the flushed log passes a commit index
    /// held back, so followers learn it at once rather than with the next
    /// entry or heartbeat. Runs until Raft stops.
    pub async fn release(self, raft: openraft::Raft<TypeConfig>) {
        let mut held = self.held.subscribe();
        while held.changed().await.is_ok() {
            let index = *held.borrow_and_update();
            if self.flushed.reached(index).await.is_err()
                || raft.trigger().heartbeat().await.is_err()
            {
                return;
            }
        }
    }
}

/// Raft RPCs to one peer.
pub struct PeerConnection {
    target: NodeId,
    client: Result<RaftServiceClient<Channel>, String>,
    commits: CommitClamp,
    entries: EntryStreams,
    /// Where its stream goes when openraft drops it.
    idle: IdleStreams,
}

impl Drop for PeerConnection {
    fn drop(&mut self) {
        if let Some(stream) = self.entries.open.take() {
            self.idle.keep(self.target, stream);
        }
    }
}

/// AppendEntries to one peer over one stream: openraft replicates to a
/// target one request at a time, so each reply answers the last request.
/// That spares each its own HTTP/2 call (headers, a task on each side, a
/// hop through the channel's buffer).
#[derive(Default)]
pub(crate) struct EntryStreams {
    open: Option<EntryStream>,
    /// The peer answered UNIMPLEMENTED (an older version): unary calls.
    refused: bool,
}

struct EntryStream {
    requests: mpsc::Sender<RaftPayload>,
    /// Only ever used through `&mut` (`get_mut`, no locking): the Mutex
    /// makes the connection `Sync`, as openraft requires.
    replies: Mutex<tonic::Streaming<RaftPayload>>,
}

impl EntryStreams {
    /// Sends one AppendEntries and waits for its reply, over the open
    /// stream, a new one, or (to an older peer) a unary call. A failed
    /// exchange closes the stream.
    pub(crate) async fn send(
        &mut self,
        client: &mut RaftServiceClient<Channel>,
        request: RaftPayload,
    ) -> Result<RaftPayload, tonic::Status> {
        if self.open.is_none() && !self.refused {
            let (requests, outbound) = mpsc::channel(1);
            let opened = client
                .append_entries_stream(tokio_stream::wrappers::ReceiverStream::new(outbound))
                .await;
            match opened {
                Ok(replies) => {
                    self.open = Some(EntryStream {
                        requests,
                        replies: Mutex::new(replies.into_inner()),
                    })
                }
                Err(status) if status.code() == tonic::Code::Unimplemented => self.refused = true,
                Err(status) => return Err(status),
            }
        }
        // Taken out while in use: a caller that gives up mid-exchange (its
        // timeout) leaves no stream whose next reply answers an old request.
        let Some(mut stream) = self.open.take() else {
            return client
                .append_entries(request)
                .await
                .map(tonic::Response::into_inner);
        };
        let reply = stream.exchange(request).await?;
        self.open = Some(stream);
        Ok(reply)
    }
}

impl EntryStream {
    async fn exchange(&mut self, request: RaftPayload) -> Result<RaftPayload, tonic::Status> {
        if self.requests.send(request).await.is_err() {
            return Err(tonic::Status::unavailable("AppendEntries stream closed"));
        }
        let replies = self
            .replies
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match replies.message().await? {
            Some(reply) => Ok(reply),
            None => Err(tonic::Status::unavailable("AppendEntries stream ended")),
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, E>>;

#[derive(Clone, Copy)]
enum PeerMethod {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        method: PeerMethod,
        request: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, RaftError<NodeId, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: StdError,
        RaftError<NodeId, E>: DeserializeOwned,
    {
        let client = self
            .client
            .as_mut()
            .map_err(|e| RPCError::Unreachable(Unreachable::from(AnyError::error(e.clone()))))?;
        let payload = encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let entries = &mut self.entries;
        let call = async {
            match method {
                PeerMethod::AppendEntries => return entries.send(client, payload).await,
                PeerMethod::Vote => client.vote(payload).await,
                PeerMethod::InstallSnapshot => client.install_snapshot(payload).await,
            }
            .map(tonic::Response::into_inner)
        };
        let reply = match tokio::time::timeout(option.hard_ttl(), call).await {
            Err(elapsed) => return Err(RPCError::Network(NetworkError::new(&elapsed))),
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&status)))
            }
            Ok(Err(status)) => return Err(RPCError::Network(NetworkError::new(&status))),
            Ok(Ok(reply)) => reply,
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        self.commits.clamp(&mut rpc);
        // The follower commits no further than the entries it was sent.
        let cut_after = keep_what_fits(&mut rpc);
        let response = self.call(PeerMethod::AppendEntries, &rpc, &option).await?;
        Ok(match (response, cut_after) {
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(Some(last))
            }
            (response, _) => response,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.call(PeerMethod::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.call(PeerMethod::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use super::*;
    use crate::stand_in_peer::{serve, StandIn};

    async fn client_of(stand_in: &Arc<StandIn>) -> RaftServiceClient<Channel> {
        let addr = serve(stand_in.clone()).await.to_string();
        PeerChannels::default().client(&addr).expect("a client")
    }

    fn payload(byte: u8) -> RaftPayload {
        RaftPayload {
            payload: vec![byte],
        }
    }

    fn entries(commands_each: &[usize]) -> AppendEntriesRequest<TypeConfig> {
        use baton_state::{ClientRequest, Command, Operation};
        let command = Command::Client(ClientRequest {
            client_id: "c".repeat(200),
            request_id: 1,
            operation: Operation::Join {
                latch: "l".repeat(200),
            },
        });
        let entries = commands_each
            .iter()
            .enumerate()
            .map(|(i, count)| openraft::Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), i as u64 + 1),
                payload: openraft::EntryPayload::Normal(baton_store::LogCommand {
                    stamp_ms: 0,
                    commands: vec![command.clone(); *count],
                }),
            })
            .collect();
        AppendEntriesRequest {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries,
        }
    }

    #[test]
    fn an_append_entries_carries_what_fits_and_at_least_one_entry() {
        let mut few = entries(&[10, 10]);
        assert_eq!(keep_what_fits(&mut few), None);
        assert_eq!(few.entries.len(), 2);
        // ~2.7 KB estimated per command: 128 commands per entry, 300 entries.
        let mut many = entries(&[128; 300]);
        let last = keep_what_fits(&mut many).expect("cut");
        assert!((1..300).contains(&many.entries.len()));
        assert_eq!(Some(last), many.entries.last().map(|e| e.log_id));
        let mut huge = entries(&[100_000, 1]);
        assert_eq!(keep_what_fits(&mut huge).map(|id| id.index), Some(1));
        assert_eq!(huge.entries.len(), 1);
    }

    #[tokio::test]
    async fn append_entries_to_one_peer_share_one_stream() {
        let peer = Arc::new(StandIn::default());
        let mut client = client_of(&peer).await;
        let mut entries = EntryStreams::default();
        for byte in 0..5 {
            let reply = entries.send(&mut client, payload(byte)).await;
            assert_eq!(reply.ok(), Some(payload(byte)));
        }
        assert_eq!(peer.streams_opened.load(Ordering::SeqCst), 1);
        assert_eq!(peer.unary_calls.load(Ordering::SeqCst), 0);
    }

    /// openraft makes a connection per leadership check of a read and
    /// drops it after one exchange: the next one takes over its stream.
    #[tokio::test]
    async fn a_dropped_connections_stream_serves_the_next_connection() {
        let peer = Arc::new(StandIn::default());
        let mut client = client_of(&peer).await;
        let idle = IdleStreams::default();
        for byte in 0..3 {
            let mut entries = EntryStreams {
                open: idle.take(7),
                refused: false,
            };
            let reply = entries.send(&mut client, payload(byte)).await;
            assert_eq!(reply.ok(), Some(payload(byte)));
            idle.keep(7, entries.open.take().expect("a stream"));
        }
        assert_eq!(peer.streams_opened.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_peer_without_the_stream_gets_unary_append_entries() {
        let peer = Arc::new(StandIn {
            without_streams: true,
            ..StandIn::default()
        });
        let mut client = client_of(&peer).await;
        let mut entries = EntryStreams::default();
        for byte in 0..3 {
            let reply = entries.send(&mut client, payload(byte)).await;
            assert_eq!(reply.ok(), Some(payload(byte)));
        }
        assert_eq!(peer.unary_calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_failed_exchange_closes_the_stream_and_the_next_opens_another() {
        let peer = Arc::new(StandIn::default());
        peer.streams_to_break.store(1, Ordering::SeqCst);
        let mut client = client_of(&peer).await;
        let mut entries = EntryStreams::default();
        assert!(entries.send(&mut client, payload(1)).await.is_err());
        assert_eq!(
            entries.send(&mut client, payload(2)).await.ok(),
            Some(payload(2))
        );
        assert_eq!(peer.streams_opened.load(Ordering::SeqCst), 2);
    }
}
