//! One Baton node: storage, Raft, the peer port and the client port, and the
//! background duties, from start to graceful shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use baton_state::Limits;
use baton_store::{NodeId, StateHandle, TypeConfig};
use futures::TryStreamExt as _;
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server, ServerTlsConfig};

use crate::error::oversize_as_resource_exhausted;
use crate::identity::Connections;
use crate::keepalive::SessionKeeper;
use crate::metrics::{MetricSources, Metrics, RpcMetricsLayer, StreamEnds};
use crate::network::{CommitClamp, PeerChannels, PeerNetwork, MAX_PEER_MESSAGE_BYTES};
use crate::peer::PeerService;
use crate::proto::atomix::primitive::election::leader_election_service_server::LeaderElectionServiceServer;
use crate::proto::atomix::primitive::leader::leader_latch_service_server::LeaderLatchServiceServer;
use crate::proto::atomix::primitive::primitive_service_server::PrimitiveServiceServer;
use crate::proto::baton::v1::admin_service_server::AdminServiceServer;
use crate::proto::baton::v1::raft_service_server::RaftServiceServer;
use crate::proto::baton::v1::session_service_server::SessionServiceServer;
use crate::proto::baton::v1::NodeInfoRequest;
use crate::replication::Replicator;
use crate::service::{AdminApi, Context, ElectionApi, LatchApi, PrimitiveApi, SessionApi};

/// Largest client message accepted (ids are at most 256 bytes; a restore of
/// a full primitive is well under this).
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 1024 * 1024;

/// An open Events stream keeps its client's session alive (DESIGN §3), so
/// a client process that is paused (SIGSTOP, a long GC) or cut off must
/// lose its connection soon, or its leadership would outlive it: the
/// kernel keeps the TCP connection open for a stopped process. HTTP/2
/// PINGs are answered by the process itself; one unanswered for
/// `CLIENT_PING_TIMEOUT` closes the connection, ending its streams, so a
/// stopped client stops being renewed within about 3 s.
const CLIENT_PING_INTERVAL: Duration = Duration::from_secs(1);
/// See [`CLIENT_PING_INTERVAL`]; generous against a briefly starved client.
const CLIENT_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The peer port pings its connections too: a peer whose host died or was
/// cut off never closes its connection, and without pings the server side
/// kept it, and the stream handlers on it, for ever. The same timing as
/// the peer channels' own pings (`network.rs`).
const PEER_PING_INTERVAL: Duration = Duration::from_secs(5);
/// See [`PEER_PING_INTERVAL`].
const PEER_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// A certificate chain and its private key, PEM.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    /// Certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Private key, PEM.
    pub key_pem: Vec<u8>,
}

/// Mutual TLS between cluster members: every node presents `identity` and
/// accepts only peers whose certificate the cluster's CA signed, so nobody
/// else can send Raft traffic or forwarded commands.
#[derive(Debug, Clone)]
pub struct PeerTls {
    /// This node's certificate and key.
    pub identity: TlsIdentity,
    /// The cluster's certificate authority, PEM.
    pub ca_pem: Vec<u8>,
}

impl TlsIdentity {
    fn tonic(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id; must be one of `peers`.
    pub id: NodeId,
    /// Client port address to bind.
    pub listen: SocketAddr,
    /// Client address other nodes give out as the leader hint.
    pub advertise: String,
    /// Peer port address to bind.
    pub peer_listen: SocketAddr,
    /// Every voter of the initial cluster: id -> peer address.
    pub peers: BTreeMap<NodeId, String>,
    /// sled data directory.
    pub data_dir: PathBuf,
    /// Build a Raft snapshot (and purge the log but for `keep_log_entries`
    /// behind it) every this many applied commands: openraft counts
    /// entries, and with group commit an entry may carry up to 128
    /// commands, so a count of entries alone would let the log a restart
    /// replays grow that many times longer.
    pub snapshot_every: u64,
    /// Log entries kept behind each snapshot, so that a follower that
    /// missed fewer than this catches up from the log rather than by
    /// receiving the whole state.
    pub keep_log_entries: u64,
    /// Join an existing cluster instead of forming one: never initialize,
    /// wait to be added as a learner.
    pub join: bool,
    /// While joining, ask these members to add this node (a StatefulSet
    /// pod past the founding replicas); else wait for `cluster add-node`.
    pub ask_to_join: Option<AskToJoin>,
    /// TLS on the client port, if any.
    pub client_tls: Option<TlsIdentity>,
    /// Mutual TLS on the peer port (and to peers), if any.
    pub peer_tls: Option<PeerTls>,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Raft heartbeat interval.
    pub heartbeat: Duration,
    /// Lower bound of the randomized election timeout (upper is twice it).
    pub election_timeout: Duration,
    /// Capacity limits of a new cluster's state machine.
    pub limits: Limits,
}

/// How a joining node asks to be added.
#[derive(Debug, Clone)]
pub struct AskToJoin {
    /// Where the members reach this node's peer port.
    pub peer_addr: String,
    /// Peer addresses of members to ask, in turn.
    pub members: Vec<String>,
}

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data directory could not be opened.
    #[error(transparent)]
    Storage(#[from] baton_store::OpenError),
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Raft failed to start or stopped fatally.
    #[error("raft: {0}")]
    Raft(String),
    /// A gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn raft_config(config: &NodeConfig) -> Result<Config, NodeError> {
    let heartbeat = config.heartbeat.as_millis() as u64;
    let election = config.election_timeout.as_millis() as u64;
    Config {
        cluster_name: "baton".into(),
        heartbeat_interval: heartbeat,
        election_timeout_min: election,
        election_timeout_max: election * 2,
        install_snapshot_timeout: 5_000,
        // Elections are started by `elector`, after a pre-vote.
        enable_elect: false,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every.max(1)),
        max_in_snapshot_log_to_keep: config.keep_log_entries,
        ..Config::default()
    }
    .validate()
    .map_err(|e| NodeError::Config(e.to_string()))
}

/// Connections the kernel may queue for a listening socket before the
/// server accepts them (capped by `net.core.somaxconn`). tokio's default,
/// 128, overflowed when 200 clients connected at once: the kernel dropped
/// the handshakes it had no room for and the clients retried after 1 s.
const LISTEN_BACKLOG: u32 = 1024;

/// A listener on `addr` with a [`LISTEN_BACKLOG`]-deep accept queue (and
/// SO_REUSEADDR, as tokio's own `bind` sets, so a restarted node can bind
/// again while old connections linger in TIME_WAIT).
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds `addr` and yields accepted connections with TCP_NODELAY set:
/// serving from our own listener bypasses tonic's `tcp_nodelay`, and with
/// Nagle's algorithm every small reply would wait for the peer's delayed
/// ACK (~40 ms).
async fn bind(addr: SocketAddr) -> Result<TcpIncoming, NodeError> {
    let listener = listen(addr).map_err(|source| NodeError::Bind { addr, source })?;
    TcpIncoming::from_listener(listener, true, None).map_err(|e| NodeError::Bind {
        addr,
        source: std::io::Error::other(e.to_string()),
    })
}

/// Runs a node until `shutdown` completes, then stops gracefully: open
/// Events streams end with UNAVAILABLE, Raft shuts down.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    if !config.join && !config.peers.contains_key(&config.id) {
        return Err(NodeError::Config(format!(
            "--peers must include this node's own id {}",
            config.id
        )));
    }
    let raft_config = Arc::new(raft_config(&config)?);
    let (log_store, state_store) = baton_store::open(&config.data_dir, config.limits.clone())?;
    if config.join {
        if state_store.is_seeded()? {
            return Err(NodeError::Config(
                "this data directory was seeded from a backup: start it with --peers to form \
                 the restored cluster, or with an empty directory to join one"
                    .into(),
            ));
        }
    } else if baton_store::found_on_seed(&log_store, &state_store, founding_members(&config))
        .await?
    {
        tracing::info!(
            "founded the cluster on the restored state (a snapshot at its first log id)"
        );
    }
    let log_store = log_store.for_node(config.id);
    let flushed = log_store.flushed_log();
    let commits = CommitClamp::new(flushed.clone());
    let flush_seconds = log_store.flush_seconds();
    let log_reader = log_store.clone();
    let state = state_store.handle();
    let channels = PeerChannels::new(config.peer_tls.as_ref().map(|tls| {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&tls.ca_pem))
            .identity(tls.identity.tonic())
    }));
    let raft = Raft::new(
        config.id,
        raft_config,
        PeerNetwork::new(channels.clone(), commits.clone()),
        log_store,
        state_store,
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;
    let replicator = Replicator::new(
        config.id,
        raft.clone(),
        state,
        log_reader,
        channels.clone(),
        config.advertise.clone(),
    );
    // A node with no Raft state may have voted before its disk was wiped:
    // it grants no vote, from the moment it serves its peer port, until it
    // knows it founds a new cluster or has heard from the cluster's leader.
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    if !initialized {
        replicator.start_rejoining();
    }

    let peer_listener = bind(config.peer_listen).await?;
    let client_listener = bind(config.listen).await?;
    let (stop_tx, stop_rx) = watch::channel(false);

    // Raft RPCs time out by design (heartbeats wait at most one interval),
    // and every timeout resets an HTTP/2 stream; h2's rapid-reset guard
    // would otherwise close the peer connection under a partition.
    if config.client_tls.is_some() && config.peer_tls.is_none() {
        // Allowed (a cluster on a private network), but the peer port
        // takes AppendEntries and membership changes from anyone who can
        // reach it, whatever the client port asks of its clients.
        tracing::warn!(
            "the client port speaks TLS and the peer port does not: give --peer-tls-* too, or keep the peer port where only the nodes can reach it"
        );
    }
    let mut peer_server = Server::builder();
    if let Some(tls) = &config.peer_tls {
        let mutual = ServerTlsConfig::new()
            .identity(tls.identity.tonic())
            .client_ca_root(Certificate::from_pem(&tls.ca_pem));
        peer_server = peer_server.tls_config(mutual).map_err(tls_error)?;
    }
    let peer_server = peer_server
        .http2_max_pending_accept_reset_streams(Some(100_000))
        .http2_keepalive_interval(Some(PEER_PING_INTERVAL))
        .http2_keepalive_timeout(Some(PEER_PING_TIMEOUT))
        .add_service(
            RaftServiceServer::new(PeerService::new(replicator.clone(), stop_rx.clone()))
                .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(peer_listener, stopped(stop_rx.clone()));
    let peer_server = tokio::spawn(peer_server);

    let sessions = SessionKeeper::default();
    let (connections, departed) = Connections::new(config.id);
    let stream_ends = StreamEnds::default();
    let context = Context {
        replicator: replicator.clone(),
        sessions: sessions.clone(),
        shutdown: stop_rx.clone(),
        flushed,
        stream_ends: stream_ends.clone(),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    let health_services = vec![
        <LeaderLatchServiceServer<LatchApi> as NamedService>::NAME,
        <LeaderElectionServiceServer<ElectionApi> as NamedService>::NAME,
        <SessionServiceServer<SessionApi> as NamedService>::NAME,
        <PrimitiveServiceServer<PrimitiveApi> as NamedService>::NAME,
    ];
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| NodeError::Config(format!("reflection: {e}")))?;
    let metrics = Metrics::new(MetricSources {
        forwarded: replicator.forwarded_writes(),
        expired: replicator.expired_sessions(),
        entry_commands: replicator.entry_commands(),
        flush_seconds,
        stream_ends,
    });
    let mut client_server = Server::builder();
    if let Some(tls) = &config.client_tls {
        let tls = ServerTlsConfig::new().identity(tls.tonic());
        client_server = client_server.tls_config(tls).map_err(tls_error)?;
    }
    let client_server = client_server
        .layer(RpcMetricsLayer::new(metrics.clone()))
        .layer(tower::util::MapResponseLayer::new(
            oversize_as_resource_exhausted,
        ))
        .http2_keepalive_interval(Some(CLIENT_PING_INTERVAL))
        .http2_keepalive_timeout(Some(CLIENT_PING_TIMEOUT))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            LeaderLatchServiceServer::new(LatchApi::new(context.clone()))
                .max_decoding_message_size(MAX_CLIENT_MESSAGE_BYTES),
        )
        .add_service(
            LeaderElectionServiceServer::new(ElectionApi::new(context.clone()))
                .max_decoding_message_size(MAX_CLIENT_MESSAGE_BYTES),
        )
        .add_service(
            SessionServiceServer::new(SessionApi::new(context.clone()))
                .max_decoding_message_size(MAX_CLIENT_MESSAGE_BYTES),
        )
        .add_service(
            AdminServiceServer::new(AdminApi::new(context.clone()))
                .max_decoding_message_size(MAX_CLIENT_MESSAGE_BYTES),
        )
        .add_service(
            PrimitiveServiceServer::new(PrimitiveApi::new(context.clone()))
                .max_decoding_message_size(MAX_CLIENT_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            client_listener.map_ok(move |tcp| connections.track(tcp)),
            stopped(stop_rx.clone()),
        );
    let client_server = tokio::spawn(client_server);
    let closer = tokio::spawn(Connections::close_departed(departed, replicator.clone()));
    let leader_watcher = tokio::spawn(metrics.clone().watch_raft_leader(context.clone()));
    let (ready, ready_rx) = watch::channel(false);
    if let Some(addr) = config.metrics_listen {
        // Bound here, so that a port taken stops the node: left to the
        // task, it was one log line, and a pod probed there never ready.
        let listener = listen(addr).map_err(|source| NodeError::Bind { addr, source })?;
        let serving = crate::metrics::serve(
            listener,
            metrics.clone(),
            context.clone(),
            ready_rx,
            stop_rx.clone(),
        );
        tokio::spawn(async move {
            if let Err(error) = serving.await {
                tracing::error!(%addr, %error, "metrics endpoint failed");
            }
        });
    }

    // A node started to join an existing cluster never initializes one: it
    // waits, empty, until the leader adds it (`baton cluster add-node`).
    // Once it belongs to one, its vote is on its disk and `--join` (still
    // on its command line after a restart) changes nothing: kept
    // rejoining, nodes that joined long ago could not elect a leader
    // after they all restarted at once.
    let rejoining =
        !initialized && (config.join || !initialize_if_new(&raft, &config, &channels).await?);
    if rejoining {
        tokio::spawn(replicator.clone().finish_rejoining());
    } else {
        replicator.stop_rejoining();
    }
    // Asked until it is a voter: also after a restart as a learner (its
    // promotion may have been cut short).
    if let Some(ask) = config.ask_to_join.clone() {
        tokio::spawn(crate::membership::ask_to_join(
            replicator.clone(),
            channels.clone(),
            ask,
            stop_rx.clone(),
        ));
    }
    let elector = tokio::spawn(crate::elector::run(
        replicator.clone(),
        Duration::from_millis(raft.config().election_timeout_max),
        Duration::from_millis(raft.config().election_timeout_min),
    ));
    let duties = tokio::spawn(replicator.clone().run_leader_duties());
    let rules = tokio::spawn(crate::membership::adopt_rules(
        replicator.clone(),
        stop_rx.clone(),
    ));
    let releaser = tokio::spawn(commits.release(raft.clone()));
    let snapshots = tokio::spawn(snapshot_by_commands(
        raft.clone(),
        replicator.state().clone(),
        config.snapshot_every.max(1),
    ));
    let keeper = tokio::spawn(sessions.run(replicator.clone(), stop_rx.clone()));
    let health = tokio::spawn(crate::health::run(
        replicator.clone(),
        health,
        health_services,
        ready,
        stop_rx.clone(),
    ));
    tracing::info!(id = config.id, client = %config.listen, peer = %config.peer_listen, "node started");

    let failure = tokio::select! {
        () = shutdown => None,
        fatal = raft_failed(&raft) => {
            Some(NodeError::Raft(format!("Raft stopped on a fatal error: {fatal}")))
        }
    };
    match &failure {
        None => tracing::info!(id = config.id, "shutting down"),
        Some(error) => tracing::error!(
            id = config.id,
            %error,
            "stopping the node so that it is restarted from its data directory"
        ),
    }
    let _ = stop_tx.send(true);
    keeper.abort();
    closer.abort();
    leader_watcher.abort();
    duties.abort();
    rules.abort();
    elector.abort();
    releaser.abort();
    snapshots.abort();
    health.abort();
    // Raft stops first: while it runs, a leader keeps heartbeating and its
    // followers will not elect anyone else; the sooner it stops, the sooner
    // leadership moves (openraft 0.9 cannot hand it over). Requests still in
    // flight here fail UNAVAILABLE and are retried elsewhere.
    let stopped_raft = raft.shutdown().await;
    for server in [client_server, peer_server] {
        match tokio::time::timeout(Duration::from_secs(5), server).await {
            Ok(Ok(Err(error))) => tracing::warn!(%error, "server stopped with an error"),
            Err(_) => tracing::warn!("server did not stop within 5 s"),
            _ => {}
        }
    }
    if let Some(error) = failure {
        return Err(error);
    }
    stopped_raft.map_err(|e| NodeError::Raft(e.to_string()))?;
    Ok(())
}

/// Resolves once the node is told to stop (`stop` turns true).
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// How often the node checks that its Raft core still runs.
const RAFT_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Resolves with the error once openraft's core has stopped by itself. It
/// stops for good on a storage error (a full or failing disk) or an
/// internal error of openraft's; the node would otherwise linger, answering
/// with its last role (a leader's included) and never catching up again.
/// A core that returns marks its error in the metrics; one that panicked
/// only drops their sender. Polled rather than watched: the metrics change
/// with every entry.
async fn raft_failed(raft: &Raft<TypeConfig>) -> String {
    let metrics = raft.metrics();
    let mut check = tokio::time::interval(RAFT_CHECK_INTERVAL);
    loop {
        check.tick().await;
        if let Err(fatal) = &metrics.borrow().running_state {
            return fatal.to_string();
        }
        if metrics.has_changed().is_err() {
            return "the Raft core ended without an error (it panicked)".into();
        }
    }
}

fn tls_error(error: tonic::transport::Error) -> NodeError {
    NodeError::Config(format!("TLS: {error}"))
}

/// Forms the cluster on first start: a node with no Raft state initializes
/// the membership from `--peers`, unless a peer already belongs to a cluster
/// (then this node was wiped and rejoins by replication instead). Nodes
/// starting together all initialize with the same membership, which is safe.
/// Returns false if the node is empty and joins an existing cluster.
async fn initialize_if_new(
    raft: &Raft<TypeConfig>,
    config: &NodeConfig,
    channels: &PeerChannels,
) -> Result<bool, NodeError> {
    if raft
        .is_initialized()
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?
    {
        return Ok(true);
    }
    for (id, addr) in config.peers.iter().filter(|(id, _)| **id != config.id) {
        let Ok(mut client) = channels.client(addr) else {
            continue;
        };
        let info = tokio::time::timeout(
            Duration::from_millis(500),
            client.node_info(NodeInfoRequest {}),
        )
        .await;
        if let Ok(Ok(info)) = info {
            // Only a cluster that has committed entries can hold a vote this
            // node cast before its data was wiped; a cluster still forming
            // needs this node's vote.
            if info.get_ref().initialized && info.get_ref().applied_index > 0 {
                tracing::info!(
                    peer = id,
                    "a peer already belongs to a cluster; waiting to be replicated to"
                );
                return Ok(false);
            }
        }
    }
    match raft.initialize(founding_members(config)).await {
        Ok(()) => tracing::info!("initialized a new cluster"),
        Err(error) => tracing::info!(%error, "not initializing"),
    }
    Ok(true)
}

/// The membership a cluster formed from `--peers` starts with.
fn founding_members(config: &NodeConfig) -> BTreeMap<NodeId, BasicNode> {
    config
        .peers
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect()
}

/// Asks openraft for a snapshot whenever `every` commands were applied since
/// the last one (openraft's own policy, by entries, still applies too).
async fn snapshot_by_commands(raft: Raft<TypeConfig>, state: StateHandle, every: u64) {
    const CHECK: Duration = Duration::from_secs(1);
    let mut since = state.commands_applied();
    let mut last_snapshot = raft.metrics().borrow().snapshot;
    loop {
        tokio::time::sleep(CHECK).await;
        let applied = state.commands_applied();
        let snapshot = raft.metrics().borrow().snapshot;
        if snapshot != last_snapshot {
            // openraft took one by its own count.
            last_snapshot = snapshot;
            since = applied;
        } else if applied.saturating_sub(since) >= every {
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            since = applied;
        }
    }
}
