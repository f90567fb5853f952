//! Command-line interface: `serve`, `dev`, and client commands for every RPC.

// tonic::Status is the error type of every RPC and stream here.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use baton::client::{header, with_deadline, Client};
use baton::node::{self, NodeConfig};
use baton::proto::atomix::primitive::election::leader_election_service_client::LeaderElectionServiceClient;
use baton::proto::atomix::primitive::election::{self as election_pb, Term};
use baton::proto::atomix::primitive::leader::leader_latch_service_client::LeaderLatchServiceClient;
use baton::proto::atomix::primitive::leader::{self as latch_pb, Latch};
use baton::proto::atomix::primitive::meta::{object_meta, Epoch, ObjectMeta, Revision};
use baton::proto::baton::v1::admin_service_client::AdminServiceClient;
use baton::proto::baton::v1::session_service_client::SessionServiceClient;
use baton::proto::baton::v1::{
    CloseSessionRequest, KeepAliveRequest, OpenSessionRequest, StatusRequest, StatusResponse,
};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;

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
    /// Give up on a request after this many milliseconds.
    #[arg(long, global = true, default_value_t = 5_000)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Run one node.
    Serve(ServeArgs),
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
    /// This node's id (one of the ids in --peers).
    #[arg(long)]
    id: u64,
    /// Client port address.
    #[arg(long)]
    listen: SocketAddr,
    /// Peer (Raft) port address.
    #[arg(long)]
    peer_listen: SocketAddr,
    /// Every node of the cluster: id=peer-host:port,...
    #[arg(long, value_delimiter = ',', value_parser = parse_peer)]
    peers: Vec<(u64, String)>,
    /// Data directory (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Client address given to clients as the leader hint (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// Take a Raft snapshot every this many applied entries.
    #[arg(long, default_value_t = 1_000)]
    snapshot_every: u64,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Minimum Raft election timeout in milliseconds (maximum is twice it).
    #[arg(long, default_value_t = 600)]
    election_timeout_ms: u64,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
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
    /// Print the election's snapshot (JSON with --json, usable by restore).
    Snapshot { name: String },
    /// Replace the election with a snapshot read from FILE ('-': stdin).
    Restore { name: String, file: PathBuf },
}

#[derive(Subcommand, Debug)]
enum SessionAction {
    /// Open --client-id's session (timeout 0: the default, 10 s).
    Open {
        #[arg(long, default_value_t = 0)]
        timeout_ms: u64,
    },
    /// Renew --client-id's session.
    KeepAlive,
    /// Close --client-id's session: it leaves every latch and election.
    Close,
}

#[derive(Subcommand, Debug)]
enum ClusterAction {
    /// Every node's role, term and indexes.
    Status,
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

fn millis(t: Option<&prost_types::Timestamp>) -> u64 {
    t.map(|t| (t.seconds.max(0) as u64) * 1_000 + (t.nanos.max(0) as u64) / 1_000_000)
        .unwrap_or(0)
}

fn latch_json(name: &str, latch: &Latch) -> PrimitiveJson {
    let meta = latch.meta.as_ref();
    let time = meta.and_then(|m| match &m.timestamp {
        Some(object_meta::Timestamp::PhysicalTimestamp(p)) => p.time.as_ref(),
        _ => None,
    });
    PrimitiveJson {
        name: name.to_owned(),
        epoch: meta
            .and_then(|m| m.revision.as_ref())
            .map(|r| r.num)
            .unwrap_or(0),
        leader: Some(latch.leader.clone()).filter(|l| !l.is_empty()),
        members: latch.participants.clone(),
        timestamp_ms: millis(time),
    }
}

fn term_json(name: &str, term: &Term) -> PrimitiveJson {
    PrimitiveJson {
        name: name.to_owned(),
        epoch: term.id.as_ref().map(|e| e.num).unwrap_or(0),
        leader: Some(term.leader.clone()).filter(|l| !l.is_empty()),
        members: term.candidates.clone(),
        timestamp_ms: millis(term.timestamp.as_ref()),
    }
}

struct Output {
    json: bool,
}

impl Output {
    fn primitive(&self, label: &str, p: &PrimitiveJson) {
        if self.json {
            println!("{}", serde_json::to_string(p).unwrap_or_default());
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

/// A watch stream, already turned into printable states.
type JsonStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<PrimitiveJson, tonic::Status>> + Send>,
>;

/// Prints the primitive and every change until Ctrl-C. When a stream breaks
/// it reconnects (the client tries the next endpoint) and resumes: a state
/// older than the newest epoch already printed (a lagging node) is skipped.
async fn watch_forever<F, Fut>(label: &str, out: &Output, mut open: F) -> CliResult
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<JsonStream, tonic::Status>>,
{
    let mut newest_epoch = 0;
    loop {
        match open().await {
            Ok(mut stream) => {
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(state) if state.epoch >= newest_epoch => {
                            newest_epoch = state.epoch;
                            out.primitive(label, &state);
                        }
                        Ok(_) => {}
                        Err(status) => {
                            eprintln!("watch: stream ended ({}); reconnecting", status.message());
                            break;
                        }
                    }
                }
            }
            Err(status) => eprintln!("watch: {}; retrying", status.message()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the parsed command line.
pub async fn run(args: Args) -> CliResult {
    let client_id = args
        .client_id
        .clone()
        .unwrap_or_else(|| format!("cli-{:016x}", rand::random::<u64>()));
    let out = Output { json: args.json };
    let timeout = Duration::from_millis(args.timeout_ms);
    match args.command {
        Commands::Serve(serve) => serve_node(serve).await,
        Commands::Dev {
            data_dir,
            base_port,
        } => crate::dev::run(data_dir, base_port).await,
        Commands::Latch { action } => {
            let client = Client::new(&args.endpoints, timeout)?;
            latch_command(&client, &client_id, action, &out).await
        }
        Commands::Election { action } => {
            let client = Client::new(&args.endpoints, timeout)?;
            election_command(&client, &client_id, action, &out).await
        }
        Commands::Session { action } => {
            let client = Client::new(&args.endpoints, timeout)?;
            session_command(&client, &client_id, action, &out).await
        }
        Commands::Cluster {
            action: ClusterAction::Status,
        } => cluster_status(&args.endpoints, &out).await,
    }
}

async fn serve_node(args: ServeArgs) -> CliResult {
    init_logging(&args.log_format);
    let peers: BTreeMap<u64, String> = args.peers.into_iter().collect();
    let config = NodeConfig {
        id: args.id,
        listen: args.listen,
        advertise: args.advertise.unwrap_or_else(|| args.listen.to_string()),
        peer_listen: args.peer_listen,
        peers,
        data_dir: args.data_dir,
        snapshot_every: args.snapshot_every,
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        election_timeout: Duration::from_millis(args.election_timeout_ms),
        limits: baton_state::Limits::default(),
    };
    node::run(config, termination()).await?;
    Ok(())
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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

fn request_id() -> u64 {
    baton::client::next_request_id()
}

fn read_snapshot_file(file: &PathBuf) -> Result<PrimitiveJson, Box<dyn std::error::Error>> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file)?
    };
    Ok(serde_json::from_str(&text)?)
}

async fn latch_command(
    client: &Client,
    client_id: &str,
    action: LatchAction,
    out: &Output,
) -> CliResult {
    let rid = request_id();
    let h = |name: &str, rid: u64| header(client_id, "LeaderLatch", name, rid);
    match action {
        LatchAction::Join { name } => {
            let r = client
                .call(|ch, t| {
                    let request = with_deadline(
                        latch_pb::LatchRequest {
                            header: h(&name, rid),
                            input: Some(latch_pb::LatchInput {}),
                        },
                        t,
                    );
                    async move { LeaderLatchServiceClient::new(ch).latch(request).await }
                })
                .await?;
            out.primitive(
                "latch",
                &latch_json(&name, &r.output.and_then(|o| o.latch).unwrap_or_default()),
            );
        }
        LatchAction::Get { name } => {
            let r = client
                .call(|ch, t| {
                    let request = with_deadline(
                        latch_pb::GetRequest {
                            header: h(&name, 0),
                            input: Some(latch_pb::GetInput {}),
                        },
                        t,
                    );
                    async move { LeaderLatchServiceClient::new(ch).get(request).await }
                })
                .await?;
            out.primitive(
                "latch",
                &latch_json(&name, &r.output.and_then(|o| o.latch).unwrap_or_default()),
            );
        }
        LatchAction::Snapshot { name } => {
            let r = client
                .call(|ch, t| {
                    let request = with_deadline(
                        latch_pb::SnapshotRequest {
                            header: h(&name, 0),
                        },
                        t,
                    );
                    async move { LeaderLatchServiceClient::new(ch).snapshot(request).await }
                })
                .await?;
            let latch = r.snapshot.and_then(|s| s.latch).unwrap_or_default();
            out.primitive("latch snapshot", &latch_json(&name, &latch));
        }
        LatchAction::Restore { name, file } => {
            let snapshot = read_snapshot_file(&file)?;
            let latch = Latch {
                meta: Some(ObjectMeta {
                    revision: Some(Revision {
                        num: snapshot.epoch,
                    }),
                    timestamp: None,
                }),
                leader: snapshot.leader.clone().unwrap_or_default(),
                participants: snapshot.members.clone(),
            };
            client
                .call(|ch, t| {
                    let request = with_deadline(
                        latch_pb::RestoreRequest {
                            header: h(&name, rid),
                            snapshot: Some(latch_pb::Snapshot {
                                latch: Some(latch.clone()),
                            }),
                        },
                        t,
                    );
                    async move { LeaderLatchServiceClient::new(ch).restore(request).await }
                })
                .await?;
            println!("restored latch {name}");
        }
        LatchAction::Watch { name } => {
            return watch_forever("latch", out, || async {
                let request = latch_pb::EventsRequest {
                    header: h(&name, 0),
                    input: Some(latch_pb::EventsInput {}),
                };
                let stream = client
                    .call(|ch, _| {
                        let request = request.clone();
                        async move { LeaderLatchServiceClient::new(ch).events(request).await }
                    })
                    .await?;
                let name = name.clone();
                let states = stream.map(move |event| {
                    event.map(|e| {
                        latch_json(&name, &e.output.and_then(|o| o.latch).unwrap_or_default())
                    })
                });
                Ok(Box::pin(states) as JsonStream)
            })
            .await;
        }
    }
    Ok(())
}

async fn election_command(
    client: &Client,
    client_id: &str,
    action: ElectionAction,
    out: &Output,
) -> CliResult {
    use election_pb::*;
    let rid = request_id();
    let h = |name: &str, rid: u64| header(client_id, "Election", name, rid);
    let svc = LeaderElectionServiceClient::new;
    let (name, term) = match action {
        ElectionAction::Enter { name } => {
            let r = client
                .call(|ch, t| {
                    let request = with_deadline(
                        EnterRequest {
                            header: h(&name, rid),
                            input: Some(EnterInput {}),
                        },
                        t,
                    );
                    async move { svc(ch).enter(request).await }
                })
                .await?;
            (name, r.output.and_then(|o| o.term))
        }
        ElectionAction::Withdraw { name } => {
            let r = client
                .call(|ch, t| {
                    let request = with_deadline(
                        WithdrawRequest {
                            header: h(&name, rid),
                            input: Some(WithdrawInput {}),
                        },
                        t,
                    );
                    async move { svc(ch).withdraw(request).await }
                })
                .await?;
            (name, r.output.and_then(|o| o.term))
        }
        ElectionAction::Anoint { name, candidate } => {
            let input = Some(AnointInput {
                candidate_id: candidate,
            });
            let r = client
                .call(|ch, t| {
                    let request = with_deadline(
                        AnointRequest {
                            header: h(&name, rid),
                            input: input.clone(),
                        },
                        t,
                    );
                    async move { svc(ch).anoint(request).await }
                })
                .await?;
            (name, r.output.and_then(|o| o.term))
        }
        ElectionAction::Promote { name, candidate } => {
            let input = Some(PromoteInput {
                candidate_id: candidate,
            });
            let r = client
                .call(|ch, t| {
                    let request = with_deadline(
                        PromoteRequest {
                            header: h(&name, rid),
                            input: input.clone(),
                        },
                        t,
                    );
                    async move { svc(ch).promote(request).await }
                })
                .await?;
            (name, r.output.and_then(|o| o.term))
        }
        ElectionAction::Evict { name, candidate } => {
            let input = Some(EvictInput {
                candidate_id: candidate,
            });
            let r = client
                .call(|ch, t| {
                    let request = with_deadline(
                        EvictRequest {
                            header: h(&name, rid),
                            input: input.clone(),
                        },
                        t,
                    );
                    async move { svc(ch).evict(request).await }
                })
                .await?;
            (name, r.output.and_then(|o| o.term))
        }
        ElectionAction::Term { name } => {
            let r = client
                .call(|ch, t| {
                    let request = with_deadline(
                        GetTermRequest {
                            header: h(&name, 0),
                            input: Some(GetTermInput {}),
                        },
                        t,
                    );
                    async move { svc(ch).get_term(request).await }
                })
                .await?;
            (name, r.output.and_then(|o| o.term))
        }
        ElectionAction::Snapshot { name } => {
            let r = client
                .call(|ch, t| {
                    let request = with_deadline(
                        SnapshotRequest {
                            header: h(&name, 0),
                        },
                        t,
                    );
                    async move { svc(ch).snapshot(request).await }
                })
                .await?;
            let term = r.snapshot.and_then(|s| s.term).unwrap_or_default();
            out.primitive("election snapshot", &term_json(&name, &term));
            return Ok(());
        }
        ElectionAction::Restore { name, file } => {
            let snapshot = read_snapshot_file(&file)?;
            let term = Term {
                id: Some(Epoch {
                    num: snapshot.epoch,
                }),
                timestamp: None,
                leader: snapshot.leader.clone().unwrap_or_default(),
                candidates: snapshot.members.clone(),
            };
            client
                .call(|ch, t| {
                    let request = with_deadline(
                        RestoreRequest {
                            header: h(&name, rid),
                            snapshot: Some(election_pb::Snapshot {
                                term: Some(term.clone()),
                            }),
                        },
                        t,
                    );
                    async move { svc(ch).restore(request).await }
                })
                .await?;
            println!("restored election {name}");
            return Ok(());
        }
        ElectionAction::Watch { name } => {
            return watch_forever("election", out, || async {
                let request = EventsRequest {
                    header: h(&name, 0),
                    input: Some(EventsInput {}),
                };
                let stream = client
                    .call(|ch, _| {
                        let request = request.clone();
                        async move { svc(ch).events(request).await }
                    })
                    .await?;
                let name = name.clone();
                let states = stream.map(move |event| {
                    event.map(|e| {
                        term_json(&name, &e.output.and_then(|o| o.term).unwrap_or_default())
                    })
                });
                Ok(Box::pin(states) as JsonStream)
            })
            .await;
        }
    };
    out.primitive("election", &term_json(&name, &term.unwrap_or_default()));
    Ok(())
}

async fn session_command(
    client: &Client,
    client_id: &str,
    action: SessionAction,
    out: &Output,
) -> CliResult {
    let svc = SessionServiceClient::new;
    let id = client_id.to_owned();
    let rid = request_id();
    let (verb, timeout_ms) = match action {
        SessionAction::Open { timeout_ms } => {
            let r = client
                .call(|ch, t| {
                    let request = with_deadline(
                        OpenSessionRequest {
                            client_id: id.clone(),
                            timeout_ms,
                        },
                        t,
                    );
                    async move { svc(ch).open_session(request).await }
                })
                .await?;
            ("opened", Some(r.timeout_ms))
        }
        SessionAction::KeepAlive => {
            let r = client
                .call(|ch, t| {
                    let request = with_deadline(
                        KeepAliveRequest {
                            client_id: id.clone(),
                        },
                        t,
                    );
                    async move { svc(ch).keep_alive(request).await }
                })
                .await?;
            ("renewed", Some(r.timeout_ms))
        }
        SessionAction::Close => {
            client
                .call(|ch, t| {
                    let request = with_deadline(
                        CloseSessionRequest {
                            client_id: id.clone(),
                            request_id: rid,
                        },
                        t,
                    );
                    async move { svc(ch).close_session(request).await }
                })
                .await?;
            ("closed", None)
        }
    };
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

async fn cluster_status(endpoints: &[String], out: &Output) -> CliResult {
    let client = Client::new(endpoints, Duration::from_secs(1))?;
    let mut nodes = Vec::new();
    let mut leaders = BTreeMap::<u64, usize>::new();
    for (index, endpoint) in endpoints.iter().enumerate() {
        let mut admin = AdminServiceClient::new(client.channel(index));
        let reply: Option<StatusResponse> = tokio::time::timeout(
            Duration::from_secs(1),
            admin.status(with_deadline(StatusRequest {}, Duration::from_secs(1))),
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
    // The leader is the node that says it leads; else the most-reported one.
    let leader = nodes
        .iter()
        .filter(|n| n.role == "leader")
        .max_by_key(|n| n.term)
        .and_then(|n| n.id)
        .or_else(|| {
            leaders
                .iter()
                .max_by_key(|(_, votes)| **votes)
                .map(|(id, _)| *id)
        });
    if out.json {
        println!("{}", serde_json::json!({"leader": leader, "nodes": nodes}));
    } else {
        println!(
            "leader: {}",
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
    Ok(())
}
