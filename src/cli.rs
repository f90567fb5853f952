//! Command-line interface: `serve`, `dev`, and client commands for every RPC.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use baton::node::{self, AskToJoin, NodeConfig, PeerTls, TlsIdentity};
use baton::proto::baton::v1::admin_service_client::AdminServiceClient;
use baton::proto::baton::v1::{StatusRequest, StatusResponse};
use baton::statefulset;
use baton_client::{with_deadline, Client, ClientBuilder, Endpoints, View};
use clap::{Parser, Subcommand};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use std::time::UNIX_EPOCH;
use tonic::transport::ClientTlsConfig;

const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

/// Baton: Raft-replicated leader latches and leader elections (Atomix API).
#[derive(Parser, Debug)]
#[command(name = "baton", version)]
pub struct Args {
    /// Client endpoints of the cluster (host:port,...).
    #[arg(long, global = true, env = "BATON_ENDPOINTS", default_value = DEFAULT_ENDPOINTS, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// This client's id (participant / candidate id); default: generated.
    #[arg(long, global = true, env = "BATON_CLIENT_ID")]
    client_id: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Talk TLS to the client port, trusting this CA (PEM).
    #[arg(long, global = true, env = "BATON_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Give up on a request after this many milliseconds.
    #[arg(long, global = true, default_value_t = 5_000)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Run one node.
    Serve(Box<ServeArgs>),
    /// Run a local three-node cluster on 127.0.0.1 until Ctrl-C.
    Dev {
        /// Where the nodes keep their data.
        #[arg(long, default_value = "./baton-data")]
        data_dir: PathBuf,
        /// Client port of node 1 (nodes use base, base+1, base+2; peers base+100...).
        #[arg(long, default_value_t = 7001)]
        base_port: u16,
    },
    /// Leader latch commands.
    Latch {
        #[command(subcommand)]
        action: LatchAction,
    },
    /// Leader election commands.
    Election {
        #[command(subcommand)]
        action: ElectionAction,
    },
    /// Session commands.
    Session {
        #[command(subcommand)]
        action: SessionAction,
    },
    /// Cluster administration.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// This node's id (one of the ids in --peers). Default: from the
    /// StatefulSet pod name (ordinal + 1).
    #[arg(long, env = "BATON_ID")]
    id: Option<u64>,
    /// Client port address.
    #[arg(long, env = "BATON_LISTEN")]
    listen: SocketAddr,
    /// Peer (Raft) port address.
    #[arg(long, env = "BATON_PEER_LISTEN")]
    peer_listen: SocketAddr,
    /// Every node of the cluster: id=peer-host:port,... Default: from
    /// --replicas and --peer-address-template.
    #[arg(long, env = "BATON_PEERS", value_delimiter = ',', value_parser = parse_peer)]
    peers: Vec<(u64, String)>,
    /// Data directory (created if missing).
    #[arg(long, env = "BATON_DATA_DIR")]
    data_dir: PathBuf,
    /// Client address given to clients as the leader hint. Default: from
    /// --client-address-template, else --listen.
    #[arg(long, env = "BATON_ADVERTISE")]
    advertise: Option<String>,
    /// Join an existing cluster instead of forming one: the node starts
    /// empty and waits for `baton cluster add-node` (which the cluster's
    /// endpoints given here are not asked for: any non-empty value will do).
    #[arg(long, env = "BATON_JOIN", value_delimiter = ',')]
    join: Vec<String>,
    /// StatefulSet pod name, e.g. baton-2 (Kubernetes sets HOSTNAME to it).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// StatefulSet replica count: the cluster's members are ordinals
    /// 0..replicas.
    #[arg(long, env = "BATON_REPLICAS")]
    replicas: Option<u64>,
    /// Peer address of pod {ordinal}, e.g.
    /// baton-{ordinal}.baton-peers.default.svc.cluster.local:7101.
    #[arg(long, env = "BATON_PEER_ADDRESS_TEMPLATE")]
    peer_address_template: Option<String>,
    /// Client address of pod {ordinal} (what this pod advertises).
    #[arg(long, env = "BATON_CLIENT_ADDRESS_TEMPLATE")]
    client_address_template: Option<String>,
    /// Take a Raft snapshot every this many applied commands (or entries).
    #[arg(long, env = "BATON_SNAPSHOT_EVERY", default_value_t = 10_000)]
    snapshot_every: u64,
    /// Log entries kept behind each snapshot: a follower that missed fewer
    /// catches up from the log instead of receiving the whole state (0:
    /// purge the log up to the snapshot).
    #[arg(long, env = "BATON_KEEP_LOG_ENTRIES", default_value_t = 1_000)]
    keep_log_entries: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "BATON_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM) for the client port; with --tls-key.
    #[arg(long, env = "BATON_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the client port.
    #[arg(long, env = "BATON_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// This node's certificate (PEM) on the peer port and towards peers:
    /// mutual TLS, with --peer-tls-key and --peer-tls-ca.
    #[arg(long, env = "BATON_PEER_TLS_CERT", requires_all = ["peer_tls_key", "peer_tls_ca"])]
    peer_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --peer-tls-cert.
    #[arg(long, env = "BATON_PEER_TLS_KEY", requires = "peer_tls_cert")]
    peer_tls_key: Option<PathBuf>,
    /// The cluster's CA (PEM): peers must present a certificate it signed.
    #[arg(long, env = "BATON_PEER_TLS_CA", requires = "peer_tls_cert")]
    peer_tls_ca: Option<PathBuf>,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "BATON_HEARTBEAT_MS", default_value_t = 30)]
    heartbeat_ms: u64,
    /// Minimum Raft election timeout in milliseconds (maximum is twice it).
    #[arg(long, env = "BATON_ELECTION_TIMEOUT_MS", default_value_t = 100)]
    election_timeout_ms: u64,
    /// Log format.
    #[arg(long, env = "BATON_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// Who a node is and how it finds its cluster.
struct Identity {
    id: u64,
    peers: BTreeMap<u64, String>,
    advertise: String,
    /// A pod past the founding replicas asks them to add it.
    ask_to_join: Option<AskToJoin>,
}

/// Id, peers and advertised address: explicit flags first, then what the
/// StatefulSet pod name and templates give.
fn identity(args: &ServeArgs) -> Result<Identity, String> {
    let pod_name = args
        .pod_name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok());
    let id = match args.id {
        Some(id) => id,
        None => {
            let pod = pod_name
                .as_deref()
                .ok_or("no --id, and no --pod-name (POD_NAME / HOSTNAME) to derive it from")?;
            statefulset::node_id(pod).map_err(|e| e.to_string())?
        }
    };
    if id == 0 {
        return Err("node ids start at 1".into());
    }
    let mut ask_to_join = None;
    let peers: BTreeMap<u64, String> = if args.peers.is_empty() && !args.join.is_empty() {
        BTreeMap::new()
    } else if args.peers.is_empty() {
        let template = args
            .peer_address_template
            .as_deref()
            .ok_or("no --peers, and no --peer-address-template to derive them from")?;
        let replicas = args
            .replicas
            .ok_or("no --peers, and no --replicas to derive them from")?;
        let founders = statefulset::peers(template, replicas).map_err(|e| e.to_string())?;
        if statefulset::founds(id, replicas) {
            founders
        } else {
            ask_to_join = Some(AskToJoin {
                peer_addr: statefulset::address(template, id - 1).map_err(|e| e.to_string())?,
                members: founders.into_values().collect(),
            });
            BTreeMap::new()
        }
    } else {
        args.peers.iter().cloned().collect()
    };
    let advertise = match (&args.advertise, &args.client_address_template) {
        (Some(advertise), _) => advertise.clone(),
        (None, Some(template)) => {
            statefulset::address(template, id - 1).map_err(|e| e.to_string())?
        }
        (None, None) => args.listen.to_string(),
    };
    Ok(Identity {
        id,
        peers,
        advertise,
        ask_to_join,
    })
}

fn parse_peer(value: &str) -> Result<(u64, String), String> {
    let (id, addr) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not id=host:port"))?;
    let id = id.parse().map_err(|e| format!("bad node id {id:?}: {e}"))?;
    Ok((id, addr.to_owned()))
}

#[derive(Subcommand, Debug)]
enum LatchAction {
    /// Join the latch as --client-id.
    Join { name: String },
    /// Show the latch (linearizable).
    Get { name: String },
    /// Print the latch and every change until Ctrl-C.
    Watch { name: String },
    /// Print the latch's snapshot (JSON with --json, usable by restore).
    Snapshot { name: String },
    /// Replace the latch with a snapshot read from FILE ('-': stdin).
    Restore { name: String, file: PathBuf },
    /// Leave the latch as --client-id (its session stays open).
    Close { name: String },
    /// Remove the latch; its next use starts again from epoch 0.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
enum ElectionAction {
    /// Enter the election as --client-id.
    Enter { name: String },
    /// Withdraw --client-id from the election.
    Withdraw { name: String },
    /// Make CANDIDATE the leader.
    Anoint { name: String, candidate: String },
    /// Move CANDIDATE up one place.
    Promote { name: String, candidate: String },
    /// Remove CANDIDATE.
    Evict { name: String, candidate: String },
    /// Show the current term (linearizable).
    Term { name: String },
    /// Print the term and every change until Ctrl-C.
    Watch { name: String },
    /// Campaign as --client-id with a session of its own: prints "leading
    /// with epoch N" once it leads, keeps the session alive, resigns on
    /// Ctrl-C or SIGTERM, and exits non-zero the moment leadership is lost.
    Campaign {
        name: String,
        /// Session timeout: how long after this process stops (killed,
        /// paused, cut off) the next candidate can take over.
        #[arg(long, default_value_t = 10_000)]
        session_timeout_ms: u64,
    },
    /// Print the election's snapshot (JSON with --json, usable by restore).
    Snapshot { name: String },
    /// Replace the election with a snapshot read from FILE ('-': stdin).
    Restore { name: String, file: PathBuf },
    /// Withdraw --client-id through the lifecycle API (like withdraw).
    Close { name: String },
    /// Remove the election; its next use starts again from epoch 0.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
enum SessionAction {
    /// Open --client-id's session (timeout 0: the default, 10 s).
    Open {
        /// The session timeout. (Not `--timeout-ms`: that is every
        /// command's call deadline, and the two once shared one flag.)
        #[arg(long, default_value_t = 0)]
        session_timeout_ms: u64,
    },
    /// Renew --client-id's session.
    KeepAlive,
    /// Close --client-id's session: it leaves every latch and election.
    Close,
}

#[derive(Subcommand, Debug)]
enum ClusterAction {
    /// Every node's role, term and indexes, and the membership.
    Status,
    /// Add a node (started with `serve --join`): a learner until it has
    /// caught up, then a voter.
    AddNode {
        /// The new node's id.
        #[arg(long)]
        id: u64,
        /// The new node's peer (Raft) address, host:port.
        #[arg(long)]
        peer_addr: String,
    },
    /// Remove a node (refused if the rest could not keep a quorum).
    RemoveNode {
        /// The node's id.
        #[arg(long)]
        id: u64,
    },
    /// Back up or restore the whole cluster.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
}

#[derive(Subcommand, Debug)]
enum SnapshotAction {
    /// Save the cluster's state (a linearizable read) to FILE, atomically.
    Save { file: PathBuf },
    /// Seed a new node's (empty) data directory from FILE; then start the
    /// node with `serve` as usual. Every initial member of the new cluster
    /// must be seeded from the same file.
    Restore {
        file: PathBuf,
        /// The new node's data directory (must not exist or be empty).
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// A primitive as the CLI prints it and reads it back for restore.
#[derive(Debug, Serialize, Deserialize)]
struct PrimitiveJson {
    name: String,
    epoch: u64,
    leader: Option<String>,
    members: Vec<String>,
    timestamp_ms: u64,
}

impl PrimitiveJson {
    fn of(name: &str, view: &View) -> Self {
        let since = view
            .leader_since
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        PrimitiveJson {
            name: name.to_owned(),
            epoch: view.epoch,
            leader: view.leader.clone(),
            members: view.members.clone(),
            timestamp_ms: u64::try_from(since.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The state to restore (the cluster stamps its own time).
    fn view(&self) -> View {
        View {
            epoch: self.epoch,
            leader: self.leader.clone(),
            members: self.members.clone(),
            leader_since: None,
        }
    }
}

struct Output {
    json: bool,
}

impl Output {
    fn primitive(&self, label: &str, name: &str, view: &View) {
        let p = PrimitiveJson::of(name, view);
        if self.json {
            println!("{}", serde_json::to_string(&p).unwrap_or_default());
        } else {
            println!(
                "{label} {}: leader={} epoch={} members=[{}]",
                p.name,
                p.leader.as_deref().unwrap_or("-"),
                p.epoch,
                p.members.join(", ")
            );
        }
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

/// Prints the primitive and every change until Ctrl-C or the session ends.
/// The library's feed reconnects through other nodes and never goes back to
/// an older epoch.
async fn watch_forever(
    label: &str,
    name: &str,
    out: &Output,
    views: impl Stream<Item = baton_client::Result<View>>,
) -> CliResult {
    let mut views = std::pin::pin!(views);
    while let Some(view) = views.next().await {
        out.primitive(label, name, &view?);
    }
    Ok(())
}

/// The commands that act as one client on places it holds: with a
/// generated id they would change nothing (leave, withdraw, close, renew)
/// or leave a place that nobody keeps alive behind (join, enter). `None`
/// for the rest: reads, commands naming their candidate, and a campaign,
/// which keeps its own session.
fn acts_as_a_client(command: &Commands) -> Option<&'static str> {
    match command {
        Commands::Latch { action } => match action {
            LatchAction::Join { .. } => Some("latch join"),
            LatchAction::Close { .. } => Some("latch close"),
            _ => None,
        },
        Commands::Election { action } => match action {
            ElectionAction::Enter { .. } => Some("election enter"),
            ElectionAction::Withdraw { .. } => Some("election withdraw"),
            ElectionAction::Close { .. } => Some("election close"),
            _ => None,
        },
        Commands::Session { .. } => Some("session"),
        _ => None,
    }
}

/// Runs the parsed command line.
pub async fn run(args: Args) -> CliResult {
    if let (None, Some(command)) = (&args.client_id, acts_as_a_client(&args.command)) {
        return Err(format!(
            "`baton {command}` acts as a client: name it with --client-id (or BATON_CLIENT_ID)"
        )
        .into());
    }
    let client_id = args
        .client_id
        .clone()
        .unwrap_or_else(|| format!("cli-{:016x}", rand::random::<u64>()));
    let out = Output { json: args.json };
    let timeout = Duration::from_millis(args.timeout_ms);
    let tls_ca = match &args.tls_ca {
        Some(path) => {
            Some(std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?)
        }
        None => None,
    };
    let client = || {
        let builder = Client::builder(&args.endpoints)
            .client_id(client_id.clone())
            .call_timeout(timeout);
        match &tls_ca {
            Some(ca) => builder.tls_ca_pem(ca),
            None => builder,
        }
    };
    match args.command {
        Commands::Serve(serve) => serve_node(*serve).await,
        Commands::Dev {
            data_dir,
            base_port,
        } => crate::dev::run(data_dir, base_port).await,
        Commands::Latch { action } => latch_command(&client().attach()?, action, &out).await,
        Commands::Election { action } => election_command(client(), action, &out).await,
        Commands::Session { action } => session_command(client(), &client_id, action, &out).await,
        Commands::Cluster {
            action: ClusterAction::Status,
        } => {
            let tls = tls_ca.as_ref().map(|ca| {
                ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca))
            });
            cluster_status(&args.endpoints, tls, timeout, &out).await
        }
        Commands::Cluster {
            action: ClusterAction::AddNode { id, peer_addr },
        } => {
            // Catching up can take a while: at least a minute.
            let client = client()
                .call_timeout(timeout.max(Duration::from_secs(60)))
                .attach()?;
            let (voters, learners) = client.add_node(id, &peer_addr).await?;
            println!("added node {id}: voters {voters:?}, learners {learners:?}");
            Ok(())
        }
        Commands::Cluster {
            action: ClusterAction::RemoveNode { id },
        } => {
            let (voters, learners) = client().attach()?.remove_node(id).await?;
            println!("removed node {id}: voters {voters:?}, learners {learners:?}");
            Ok(())
        }
        Commands::Cluster {
            action:
                ClusterAction::Snapshot {
                    action: SnapshotAction::Save { file },
                },
        } => {
            let bytes = client().attach()?.save_snapshot().await?;
            let (header, _) = baton_store::backup::check(&bytes)?;
            write_atomically(&file, &bytes)?;
            println!(
                "saved index {} of cluster {} to {} ({} bytes)",
                header.index,
                header.cluster_id,
                file.display(),
                bytes.len()
            );
            Ok(())
        }
        Commands::Cluster {
            action:
                ClusterAction::Snapshot {
                    action: SnapshotAction::Restore { file, data_dir },
                },
        } => {
            let bytes =
                std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let header = baton_store::backup::seed(&data_dir, &bytes)?;
            println!(
                "seeded {} with index {} of cluster {}; start the node with `baton serve --data-dir {}`",
                data_dir.display(),
                header.index,
                header.cluster_id,
                data_dir.display()
            );
            Ok(())
        }
    }
}

async fn serve_node(args: ServeArgs) -> CliResult {
    init_logging(&args.log_format);
    let Identity {
        id,
        peers,
        advertise,
        ask_to_join,
    } = identity(&args)?;
    tracing::info!(id, ?peers, %advertise, "node identity");
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let client_tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsIdentity {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        }),
        _ => None,
    };
    let peer_tls = match (&args.peer_tls_cert, &args.peer_tls_key, &args.peer_tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(PeerTls {
            identity: TlsIdentity {
                cert_pem: read(cert)?,
                key_pem: read(key)?,
            },
            ca_pem: read(ca)?,
        }),
        _ => None,
    };
    if !args.join.is_empty() {
        tracing::info!(cluster = ?args.join, "joining: waiting to be added with `baton cluster add-node --id {id} --peer-addr <this node's peer address>`");
    }
    let config = NodeConfig {
        id,
        join: !args.join.is_empty() || ask_to_join.is_some(),
        ask_to_join,
        client_tls,
        peer_tls,
        listen: args.listen,
        advertise,
        peer_listen: args.peer_listen,
        peers,
        data_dir: args.data_dir,
        snapshot_every: args.snapshot_every,
        keep_log_entries: args.keep_log_entries,
        metrics_listen: args.metrics_listen,
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        election_timeout: Duration::from_millis(args.election_timeout_ms),
        limits: baton_state::Limits::default(),
    };
    node::run(config, termination()).await?;
    Ok(())
}

/// openraft reports routine events of a healthy cluster (peers not up yet
/// at start, votes crossing during an election) as WARN and ERROR, so its
/// logs are off unless RUST_LOG asks for them; the node logs Raft leader
/// changes itself (`metrics::Metrics::watch_raft_leader`).
const DEFAULT_LOG_FILTER: &str = "info,openraft=off";

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn termination() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(signal) => { signal.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

fn read_snapshot_file(file: &PathBuf) -> Result<PrimitiveJson, Box<dyn std::error::Error>> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file)?
    };
    Ok(serde_json::from_str(&text)?)
}

async fn latch_command(client: &Client, action: LatchAction, out: &Output) -> CliResult {
    let (label, view, name) = match action {
        LatchAction::Join { name } => ("latch", client.latch(&name).join().await?, name),
        LatchAction::Get { name } => ("latch", client.latch(&name).get().await?, name),
        LatchAction::Snapshot { name } => (
            "latch snapshot",
            client.latch(&name).snapshot().await?,
            name,
        ),
        LatchAction::Restore { name, file } => {
            let snapshot = read_snapshot_file(&file)?;
            client.latch(&name).restore(&snapshot.view()).await?;
            println!("restored latch {name}");
            return Ok(());
        }
        LatchAction::Watch { name } => {
            return watch_forever("latch", &name, out, client.latch(&name).observe()).await;
        }
        LatchAction::Close { name } => {
            client.latch(&name).close().await?;
            println!("left latch {name}");
            return Ok(());
        }
        LatchAction::Delete { name } => {
            client.latch(&name).delete().await?;
            println!("deleted latch {name}");
            return Ok(());
        }
    };
    out.primitive(label, &name, &view);
    Ok(())
}

async fn election_command(
    builder: ClientBuilder,
    action: ElectionAction,
    out: &Output,
) -> CliResult {
    let client = &builder.clone().attach()?;
    let (label, view, name) = match action {
        ElectionAction::Enter { name } => ("election", client.election(&name).enter().await?, name),
        ElectionAction::Withdraw { name } => {
            ("election", client.election(&name).withdraw().await?, name)
        }
        ElectionAction::Anoint { name, candidate } => (
            "election",
            client.election(&name).anoint(&candidate).await?,
            name,
        ),
        ElectionAction::Promote { name, candidate } => (
            "election",
            client.election(&name).promote(&candidate).await?,
            name,
        ),
        ElectionAction::Evict { name, candidate } => (
            "election",
            client.election(&name).evict(&candidate).await?,
            name,
        ),
        ElectionAction::Term { name } => ("election", client.election(&name).term().await?, name),
        ElectionAction::Snapshot { name } => (
            "election snapshot",
            client.election(&name).snapshot().await?,
            name,
        ),
        ElectionAction::Restore { name, file } => {
            let snapshot = read_snapshot_file(&file)?;
            client.election(&name).restore(&snapshot.view()).await?;
            println!("restored election {name}");
            return Ok(());
        }
        ElectionAction::Watch { name } => {
            return watch_forever("election", &name, out, client.election(&name).observe()).await;
        }
        ElectionAction::Close { name } => {
            client.election(&name).close().await?;
            println!("left election {name}");
            return Ok(());
        }
        ElectionAction::Delete { name } => {
            client.election(&name).delete().await?;
            println!("deleted election {name}");
            return Ok(());
        }
        ElectionAction::Campaign {
            name,
            session_timeout_ms,
        } => {
            let client = builder
                .session_timeout(Duration::from_millis(session_timeout_ms))
                .connect()
                .await?;
            return campaign(&client, &name, out).await;
        }
    };
    out.primitive(label, &name, &view);
    Ok(())
}

/// `baton election campaign NAME`: campaigns, says "leading with epoch N"
/// once it leads, keeps the session alive, resigns on Ctrl-C or SIGTERM, and
/// fails the moment leadership is lost. However it ends, its session is
/// closed on the way out, so that it is nobody's candidate any more.
async fn campaign(client: &Client, name: &str, out: &Output) -> CliResult {
    let ended = campaign_until_done(client, name, out).await;
    let closed = client.close().await;
    ended?;
    closed?;
    Ok(())
}

async fn campaign_until_done(client: &Client, name: &str, out: &Output) -> CliResult {
    // One subscription for the whole campaign: a signal that came while
    // the campaign turned into a leadership is not lost.
    let terminated = termination();
    tokio::pin!(terminated);
    let election = client.election(name);
    let leadership = tokio::select! {
        leadership = election.campaign() => leadership?,
        _ = &mut terminated => {
            election.withdraw().await?;
            return Ok(());
        }
    };
    if out.json {
        println!(
            "{}",
            serde_json::json!({"name": name, "client_id": client.client_id(), "leading": true, "epoch": leadership.epoch()})
        );
    } else {
        println!("leading with epoch {}", leadership.epoch());
    }
    tokio::select! {
        why = leadership.lost() => {
            Err(format!("lost leadership of {name} (epoch {}): {why}", leadership.epoch()).into())
        }
        _ = &mut terminated => {
            leadership.resign().await?;
            println!("resigned");
            Ok(())
        }
    }
}

async fn session_command(
    client: ClientBuilder,
    client_id: &str,
    action: SessionAction,
    out: &Output,
) -> CliResult {
    let (verb, timeout) = match action {
        SessionAction::Open { session_timeout_ms } => {
            let client = client
                .session_timeout(Duration::from_millis(session_timeout_ms))
                .attach()?;
            ("opened", Some(client.open_session().await?))
        }
        SessionAction::KeepAlive => ("renewed", Some(client.attach()?.keep_alive().await?)),
        SessionAction::Close => {
            client.attach()?.close().await?;
            ("closed", None)
        }
    };
    let timeout_ms = timeout.map(|t| t.as_millis());
    if out.json {
        println!(
            "{}",
            serde_json::json!({"client_id": client_id, "session": verb, "timeout_ms": timeout_ms})
        );
    } else {
        println!(
            "session of {client_id} {verb}{}",
            timeout_ms
                .map(|t| format!(" (timeout {t} ms)"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Writes `bytes` to `file` so that a crash leaves either the old file or
/// the whole new one: a temporary file beside it, fsynced, then renamed.
fn write_atomically(file: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut temporary = file.as_os_str().to_owned();
    temporary.push(".partial");
    let temporary = std::path::PathBuf::from(temporary);
    let mut out = std::fs::File::create(&temporary)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    std::fs::rename(&temporary, file)?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// One node's line in `cluster status`.
#[derive(Debug, Serialize)]
struct NodeStatus {
    id: Option<u64>,
    client_addr: String,
    role: String,
    term: Option<u64>,
    commit_index: Option<u64>,
    applied_index: Option<u64>,
}

async fn cluster_status(
    endpoints: &[String],
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
    out: &Output,
) -> CliResult {
    let client = Endpoints::with_tls(endpoints, tls)?;
    let mut nodes = Vec::new();
    let mut leaders = BTreeMap::<u64, usize>::new();
    // The membership as the highest-term answer knows it.
    let mut membership: Option<(u64, Vec<u64>, Vec<u64>)> = None;
    for (index, endpoint) in endpoints.iter().enumerate() {
        let mut admin = AdminServiceClient::new(client.channel(index));
        let reply: Option<StatusResponse> = tokio::time::timeout(
            timeout,
            admin.status(with_deadline(StatusRequest {}, timeout)),
        )
        .await
        .ok()
        .and_then(|r| r.ok())
        .map(|r| r.into_inner());
        nodes.push(match reply {
            Some(s) => {
                if s.has_leader {
                    *leaders.entry(s.leader_id).or_default() += 1;
                }
                if membership
                    .as_ref()
                    .is_none_or(|(term, _, _)| s.term > *term)
                {
                    membership = Some((s.term, s.voters.clone(), s.learners.clone()));
                }
                NodeStatus {
                    id: Some(s.node_id),
                    client_addr: s.client_addr,
                    role: s.role,
                    term: Some(s.term),
                    commit_index: Some(s.commit_index),
                    applied_index: Some(s.applied_index),
                }
            }
            None => NodeStatus {
                id: None,
                client_addr: endpoint.clone(),
                role: "unreachable".into(),
                term: None,
                commit_index: None,
                applied_index: None,
            },
        });
    }
    // The leader the answering nodes work with (a leader counts itself
    // once a quorum acknowledges it): the most-reported one, and of equals
    // the one that says so itself.
    let says_so = |id: u64| nodes.iter().any(|n| n.id == Some(id) && n.role == "leader");
    let leader = leaders
        .iter()
        .max_by_key(|(id, votes)| (**votes, says_so(**id)))
        .map(|(id, _)| *id);
    if out.json {
        let (_, voters, learners) = membership.unwrap_or_default();
        println!(
            "{}",
            serde_json::json!({"leader": leader, "voters": voters, "learners": learners, "nodes": nodes})
        );
    } else {
        let (_, voters, learners) = membership.unwrap_or_default();
        println!(
            "leader: {}   voters: {voters:?}   learners: {learners:?}",
            leader
                .map(|l| l.to_string())
                .unwrap_or_else(|| "none".into())
        );
        for n in &nodes {
            println!(
                "  node {:>3} {:<21} {:<11} term={} commit={} applied={}",
                n.id.map(|i| i.to_string()).unwrap_or_else(|| "?".into()),
                n.client_addr,
                n.role,
                n.term.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                n.commit_index
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into()),
                n.applied_index
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }
    // Printed either way; the exit status says whether the cluster serves,
    // for scripts and health checks.
    if nodes.iter().all(|n| n.id.is_none()) {
        return Err("no node answered".into());
    }
    if leader.is_none() {
        return Err("no node knows a leader".into());
    }
    Ok(())
}
