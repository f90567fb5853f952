//! Test harness: real `baton serve` processes on loopback, real gRPC.

#![allow(dead_code)]

use std::future::Future;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton::proto::atomix::primitive::election::leader_election_service_client::LeaderElectionServiceClient;
use baton::proto::atomix::primitive::election::Term;
use baton::proto::atomix::primitive::leader::leader_latch_service_client::LeaderLatchServiceClient;
use baton::proto::atomix::primitive::leader::Latch;
use baton::proto::baton::v1::admin_service_client::AdminServiceClient;
use baton::proto::baton::v1::session_service_client::SessionServiceClient;
use baton::proto::baton::v1::{StatusRequest, StatusResponse};
pub use baton_client::View;
use baton_client::{request_header, Kind};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

/// Clusters in one test binary run one at a time: two cores cannot host
/// several clusters' elections side by side without spurious timeouts.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// `n` distinct free ports. The listeners are held until all are chosen:
/// dropped one by one, the kernel may hand the same port out twice, and two
/// nodes of one cluster then collide (seen as a peer answering UNIMPLEMENTED
/// and no leader being elected).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

pub struct Node {
    pub id: u64,
    pub client_addr: String,
    pub peer_addr: String,
    /// Reserved with the other two ports; served only by a cluster started
    /// with [`Cluster::start_with_metrics`].
    pub metrics_addr: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    extra_args: Vec<String>,
    /// Arguments for one node only (index: id - 1).
    node_args: Vec<Vec<String>>,
    /// The CA the client port's certificate chains to, if it talks TLS.
    pub client_tls_ca: Option<Vec<u8>>,
    peers: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts three nodes at once with empty data directories.
    pub async fn start(extra_args: &[&str]) -> Cluster {
        Cluster::start_full(extra_args, None, None, false).await
    }

    /// Like `start`, each node also serving `/metrics` on its
    /// `metrics_addr` (chosen with its other ports, so none can collide).
    pub async fn start_with_metrics() -> Cluster {
        Cluster::start_full(&[], None, None, true).await
    }

    /// Like `start`, for nodes whose client port talks TLS with a
    /// certificate from `ca_pem`.
    pub async fn start_tls(extra_args: &[&str], ca_pem: Vec<u8>) -> Cluster {
        Cluster::start_full(extra_args, Some(ca_pem), None, true).await
    }

    /// The HTTP status of node `id`'s `GET /ready` (metrics port), if it
    /// answered.
    pub async fn readiness(&self, id: u64) -> Option<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let get = async {
            let mut stream = tokio::net::TcpStream::connect(&self.node(id).metrics_addr).await?;
            stream.write_all(b"GET /ready HTTP/1.0\r\n\r\n").await?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await?;
            std::io::Result::Ok(reply)
        };
        let reply = tokio::time::timeout(Duration::from_secs(2), get)
            .await
            .ok()?
            .ok()?;
        reply.split_whitespace().nth(1)?.parse().ok()
    }

    /// Like `start`, with each node's data directory first seeded from the
    /// backup `file` (`baton cluster snapshot restore`).
    pub async fn start_seeded(file: &std::path::Path) -> Cluster {
        Cluster::start_full(&[], None, Some(file), false).await
    }

    async fn start_full(
        extra_args: &[&str],
        client_tls_ca: Option<Vec<u8>>,
        seed: Option<&std::path::Path>,
        metrics: bool,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(9);
        let addr =
            |id: u64, which: usize| format!("127.0.0.1:{}", ports[3 * (id as usize - 1) + which]);
        let nodes: Vec<Node> = (1..=3)
            .map(|id| Node {
                id,
                client_addr: addr(id, 0),
                peer_addr: addr(id, 1),
                metrics_addr: addr(id, 2),
                data_dir: dir.path().join(format!("node{id}")),
                child: None,
            })
            .collect();
        let node_args = |id: u64| {
            if metrics {
                vec!["--metrics-listen".to_owned(), addr(id, 2)]
            } else {
                Vec::new()
            }
        };
        let peers = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_addr))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            nodes,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            node_args: (1..=3).map(node_args).collect(),
            client_tls_ca,
            peers,
            _dir: dir,
        };
        for id in 1..=3 {
            if let Some(file) = seed {
                let restored = Command::new(env!("CARGO_BIN_EXE_baton"))
                    .args(["cluster", "snapshot", "restore"])
                    .arg(file)
                    .arg("--data-dir")
                    .arg(&cluster.node(id).data_dir)
                    .output()
                    .expect("baton cluster snapshot restore");
                assert!(restored.status.success(), "restore: {restored:?}");
            }
            cluster.spawn(id);
        }
        cluster.wait_for_leader().await;
        cluster
    }

    /// Starts a new node `id` (the next id after the existing ones) with
    /// `--join`, its own ports and an empty data directory; it waits to be
    /// added with `add_node`.
    pub fn launch_joiner(&mut self, id: u64) {
        assert_eq!(
            id as usize,
            self.nodes.len() + 1,
            "joiners take the next id"
        );
        let ports = free_ports(3);
        let joined = self.endpoints().join(",");
        self.nodes.push(Node {
            id,
            client_addr: format!("127.0.0.1:{}", ports[0]),
            peer_addr: format!("127.0.0.1:{}", ports[1]),
            metrics_addr: format!("127.0.0.1:{}", ports[2]),
            data_dir: self._dir.path().join(format!("node{id}")),
            child: None,
        });
        self.node_args.push(vec!["--join".to_owned(), joined]);
        self.spawn(id);
    }

    /// Where node `id` writes its log (stderr, the default filter unless
    /// the test's environment sets RUST_LOG), across restarts.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self._dir.path().join(format!("node{id}.log"))
    }

    /// Everything node `id` has logged so far.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    fn spawn(&mut self, id: u64) {
        let peers = self.peers.clone();
        let mut extra = self.extra_args.clone();
        extra.extend(self.node_args[(id - 1) as usize].iter().cloned());
        let skew_file = self.skew_file(id);
        let deaf_file = self.deaf_file(id);
        let events_delay_file = self.events_delay_file(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("node log file");
        let node = &mut self.nodes[(id - 1) as usize];
        assert!(node.child.is_none(), "node {id} is already running");
        let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
        // SAFETY: prctl(2) is async-signal-safe; nodes die with the test
        // process even if it is killed before Drop runs.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .arg("serve")
            .args(["--id", &id.to_string()])
            .args(["--listen", &node.client_addr])
            .args(["--peer-listen", &node.peer_addr])
            .args(["--peers", &peers])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(&extra)
            .env("BATON_TEST_CLOCK_SKEW_FILE", &skew_file)
            .env("BATON_TEST_PEER_DEAF_FILE", &deaf_file)
            .env("BATON_TEST_EVENTS_DELAY_FILE", &events_delay_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn baton serve");
        node.child = Some(child);
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        if let Some(mut child) = node.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM: a graceful shutdown; waits for the process to exit, and
    /// fails if the node had to give up waiting for a server of its own to
    /// finish (it waits 5 s, then logs that: connections kept open, e.g.
    /// a peer's stream, held it up).
    pub fn stop(&mut self, id: u64) {
        let logged_before = self.log(id).len();
        self.terminate(id);
        let logged = self.log(id);
        let during_stop = logged.get(logged_before..).unwrap_or_default();
        assert!(
            !during_stop.contains("did not stop within"),
            "node {id}'s graceful shutdown waited for a server that did not stop: {during_stop}"
        );
    }

    fn terminate(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        if let Some(mut child) = node.child.take() {
            // SAFETY: kill(2) on a child we spawned, with a valid signal.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            if wait_exit(&mut child, STOP_LIMIT).is_none() {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {id} did not stop within {STOP_LIMIT:?} of SIGTERM");
            }
        }
    }

    /// The file the node reads its wall-clock offset from (debug builds'
    /// test hook, `BATON_TEST_CLOCK_SKEW_FILE`).
    fn skew_file(&self, id: u64) -> PathBuf {
        self._dir.path().join(format!("node{id}.skew"))
    }

    /// The file whose presence makes node `id` refuse the Raft messages it
    /// is sent (debug builds' test hook, `BATON_TEST_PEER_DEAF_FILE`).
    fn deaf_file(&self, id: u64) -> PathBuf {
        self._dir.path().join(format!("node{id}.deaf"))
    }

    /// The file holding how long node `id`'s Events streams wait before
    /// their first read (debug builds' test hook,
    /// `BATON_TEST_EVENTS_DELAY_FILE`).
    fn events_delay_file(&self, id: u64) -> PathBuf {
        self._dir.path().join(format!("node{id}.events-delay"))
    }

    /// Every node's Events streams opened from now on wait `delay` before
    /// they read the state they start with (zero: no wait).
    pub fn delay_events(&self, delay: Duration) {
        for id in 1..=self.nodes.len() as u64 {
            std::fs::write(self.events_delay_file(id), delay.as_millis().to_string()).unwrap();
        }
    }

    /// Node `id` hears nothing from its peers (while `deaf`), as if cut off
    /// from them; its own calls to them still go out.
    pub fn deafen(&self, id: u64, deaf: bool) {
        if deaf {
            std::fs::write(self.deaf_file(id), b"").unwrap();
        } else {
            let _ = std::fs::remove_file(self.deaf_file(id));
        }
    }

    /// Steps node `id`'s wall clock by `offset_ms`, as NTP would.
    pub fn step_clock(&self, id: u64, offset_ms: i64) {
        std::fs::write(self.skew_file(id), offset_ms.to_string()).unwrap();
    }

    fn signal(&self, id: u64, signal: libc::c_int) {
        if let Some(child) = &self.node(id).child {
            // SAFETY: kill(2) on a child we spawned, with a valid signal.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn pause(&self, id: u64) {
        self.signal(id, libc::SIGSTOP);
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&self, id: u64) {
        self.signal(id, libc::SIGCONT);
    }

    pub fn restart(&mut self, id: u64) {
        self.spawn(id);
    }

    pub fn wipe(&mut self, id: u64) {
        let node = &self.nodes[(id - 1) as usize];
        assert!(node.child.is_none(), "stop node {id} before wiping it");
        std::fs::remove_dir_all(&node.data_dir).unwrap();
    }

    /// How node `id`'s process ended, if it has (without waiting); an ended
    /// node no longer counts as running.
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let node = &mut self.nodes[(id - 1) as usize];
        let status = node.child.as_mut()?.try_wait().expect("try_wait")?;
        node.child = None;
        Some(status)
    }

    /// The process id of node `id` (running).
    pub fn pid(&self, id: u64) -> u32 {
        self.node(id).child.as_ref().expect("node is running").id()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client_addr.clone()).collect()
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    pub fn channel(&self, id: u64) -> Channel {
        let address = &self.node(id).client_addr;
        match &self.client_tls_ca {
            None => Endpoint::from_shared(format!("http://{address}")).unwrap(),
            Some(ca) => Endpoint::from_shared(format!("https://{address}"))
                .unwrap()
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
                )
                .unwrap(),
        }
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy()
    }

    pub fn latch(&self, id: u64) -> LeaderLatchServiceClient<Channel> {
        LeaderLatchServiceClient::new(self.channel(id))
    }

    pub fn election(&self, id: u64) -> LeaderElectionServiceClient<Channel> {
        LeaderElectionServiceClient::new(self.channel(id))
    }

    pub fn sessions(&self, id: u64) -> SessionServiceClient<Channel> {
        SessionServiceClient::new(self.channel(id))
    }

    pub async fn status(&self, id: u64) -> Option<StatusResponse> {
        let mut admin = AdminServiceClient::new(self.channel(id));
        let call = admin.status(StatusRequest {});
        match tokio::time::timeout(Duration::from_secs(1), call).await {
            Ok(Ok(reply)) => Some(reply.into_inner()),
            _ => None,
        }
    }

    /// Waits until a running node says it leads and the others that run
    /// agree; returns the leader's id.
    pub async fn wait_for_leader(&self) -> u64 {
        eventually(Duration::from_secs(20), "a leader is elected", || async {
            let mut leader = None;
            for id in self.running() {
                let status = self.status(id).await?;
                if status.role == "leader" {
                    leader = Some(status.node_id);
                }
            }
            let leader = leader?;
            for id in self.running() {
                let status = self.status(id).await?;
                if !status.has_leader || status.leader_id != leader {
                    return None;
                }
            }
            Some(leader)
        })
        .await
    }

    /// Waits until every running node has applied the same index with the
    /// same state digest.
    pub async fn wait_converged(&self) -> (u64, String) {
        eventually(Duration::from_secs(20), "all nodes converge", || async {
            let mut seen = Vec::new();
            for id in self.running() {
                let status = self.status(id).await?;
                seen.push((status.applied_index, status.state_digest));
            }
            let first = seen.first()?.clone();
            seen.iter().all(|s| *s == first).then_some(first)
        })
        .await
    }

    pub fn followers_of(&self, leader: u64) -> Vec<u64> {
        self.running()
            .into_iter()
            .filter(|id| *id != leader)
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // SAFETY: kill(2) on a child we spawned; a stopped process
                // must be continued to die promptly on some kernels.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGCONT);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Polls `probe` until it returns Some, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn latch_header(
    client: &str,
    name: &str,
) -> Option<baton::proto::atomix::primitive::RequestHeader> {
    request_header(client, Kind::Latch, name, 0)
}

/// An Events stream on latch `name` through `node`, as `client`.
pub async fn latch_events(
    c: &Cluster,
    node: u64,
    client: &str,
    name: &str,
) -> Result<tonic::Streaming<baton::proto::atomix::primitive::leader::EventsResponse>, Status> {
    let request = baton::proto::atomix::primitive::leader::EventsRequest {
        header: latch_header(client, name),
        input: None,
    };
    Ok(c.latch(node).events(request).await?.into_inner())
}

/// The latch's participants an Events message carries.
pub fn participants(
    message: &baton::proto::atomix::primitive::leader::EventsResponse,
) -> Vec<String> {
    message
        .output
        .as_ref()
        .and_then(|o| o.latch.as_ref())
        .map(|l| l.participants.clone())
        .unwrap_or_default()
}

pub fn election_header(
    client: &str,
    name: &str,
) -> Option<baton::proto::atomix::primitive::RequestHeader> {
    request_header(client, Kind::Election, name, 0)
}

/// The library's client pinned to one node (tests often need to know which
/// node answers), for a session someone else opened.
pub fn client_on(c: &Cluster, node: u64, client: &str) -> baton_client::Client {
    let builder = baton_client::Client::builder(&[c.node(node).client_addr.as_str()]);
    let builder = match &c.client_tls_ca {
        Some(ca) => builder.tls_ca_pem(ca),
        None => builder,
    };
    builder
        .client_id(client)
        .call_timeout(Duration::from_secs(5))
        .attach()
        .expect("client")
}

fn status(error: baton_client::Error) -> Status {
    match error {
        baton_client::Error::Status(status) => *status,
        other => Status::unknown(other.to_string()),
    }
}

pub async fn join(c: &Cluster, node: u64, client: &str, name: &str) -> Result<View, Status> {
    client_on(c, node, client)
        .latch(name)
        .join()
        .await
        .map_err(status)
}

pub async fn get_latch(c: &Cluster, node: u64, name: &str) -> Result<View, Status> {
    client_on(c, node, "reader")
        .latch(name)
        .get()
        .await
        .map_err(status)
}

pub async fn enter(c: &Cluster, node: u64, client: &str, name: &str) -> Result<View, Status> {
    client_on(c, node, client)
        .election(name)
        .enter()
        .await
        .map_err(status)
}

pub async fn get_term(c: &Cluster, node: u64, name: &str) -> Result<View, Status> {
    client_on(c, node, "reader")
        .election(name)
        .term()
        .await
        .map_err(status)
}

pub async fn open_session(
    c: &Cluster,
    node: u64,
    client: &str,
    timeout_ms: u64,
) -> Result<u64, Status> {
    let session = baton_client::Client::builder(&[c.node(node).client_addr.as_str()])
        .client_id(client)
        .session_timeout(Duration::from_millis(timeout_ms))
        .attach()
        .expect("client");
    let granted = session.open_session().await.map_err(status)?;
    Ok(granted.as_millis() as u64)
}

pub fn epoch_of_latch(latch: &Latch) -> u64 {
    latch
        .meta
        .as_ref()
        .and_then(|m| m.revision.as_ref())
        .map(|r| r.num)
        .unwrap_or(0)
}

pub fn epoch_of_term(term: &Term) -> u64 {
    term.id.as_ref().map(|e| e.num).unwrap_or(0)
}

/// Client `i`'s ~250-byte id: a primitive with many such members makes
/// large Events messages, which fill a slow reader's buffers quickly.
pub fn long_id(i: usize) -> String {
    format!("{i:04}-{}", "x".repeat(245))
}

/// Opens a long session for each of `long_id(0..count)` (several at once)
/// and then joins them to latch `name` through `node`, one after the
/// other: a latch that grows by one large member per entry.
pub async fn join_long_ids(c: &Cluster, node: u64, name: &str, count: usize) {
    use futures::StreamExt;
    futures::stream::iter(0..count)
        .map(|i| async move {
            open_session(c, node, &long_id(i), 300_000)
                .await
                .expect("session")
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for i in 0..count {
        join(c, node, &long_id(i), name).await.expect("join");
    }
}

/// Retries `op` until it succeeds (for writes during failover).
pub async fn until_ok<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    eventually(Duration::from_secs(20), what, || {
        let attempt = op();
        async move { attempt.await.ok() }
    })
    .await
}

/// Stalls one process's disk writes until dropped: the process is moved into
/// a cgroup (v1 `blkio`) that lets it write one byte a second to the disk
/// under `dir`. Its reads, network and CPU are untouched, and writes go on
/// filling the page cache; only what waits for the device (a flush) stalls.
pub struct DiskStall {
    cgroup: PathBuf,
    device: String,
    pid: u32,
}

const BLKIO: &str = "/sys/fs/cgroup/blkio";

impl DiskStall {
    pub fn start(pid: u32, dir: &std::path::Path) -> DiskStall {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(dir).expect("data directory").dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        assert!(
            major != 0,
            "{} is on a filesystem without a block device; a disk stall needs one",
            dir.display()
        );
        // Throttling applies to whole disks: a partition's is its parent's.
        let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        let device = if sys.join("partition").exists() {
            std::fs::read_to_string(sys.join("../dev"))
                .expect("the partition's disk")
                .trim()
                .to_owned()
        } else {
            format!("{major}:{minor}")
        };
        // Only into an existing v1 controller: on a cgroup v2 host, root's
        // mkdir -p would make plain directories and leave them behind.
        assert!(
            PathBuf::from(BLKIO).join("cgroup.procs").exists(),
            "a disk stall needs the cgroup v1 blkio controller at {BLKIO} and root"
        );
        let cgroup = PathBuf::from(BLKIO).join(format!("baton-test-stall-{pid}"));
        std::fs::create_dir(&cgroup)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", cgroup.display()));
        // From here on, a failure below still removes the group (Drop).
        let stall = DiskStall {
            cgroup,
            device,
            pid,
        };
        std::fs::write(
            stall.cgroup.join("blkio.throttle.write_bps_device"),
            format!("{} 1", stall.device),
        )
        .expect("throttle writes");
        std::fs::write(stall.cgroup.join("cgroup.procs"), pid.to_string())
            .expect("move the process");
        stall
    }
}

impl Drop for DiskStall {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.cgroup.join("blkio.throttle.write_bps_device"),
            format!("{} 0", self.device),
        );
        let _ = std::fs::write(
            PathBuf::from(BLKIO).join("cgroup.procs"),
            self.pid.to_string(),
        );
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// One explicit keep-alive of `client`'s session through `node`, retried
/// while the node answers UNAVAILABLE, as every client does: a follower
/// refuses at once when it has not heard from its leader for the leader
/// lease (200 ms), which a loaded machine's scheduling gaps can cause. Any
/// other answer (NOT_FOUND: the session expired) is returned.
pub async fn keep_alive(
    c: &Cluster,
    node: u64,
    client: &str,
) -> Result<baton::proto::baton::v1::KeepAliveResponse, Status> {
    retry_unavailable(|| async {
        let request = baton::proto::baton::v1::KeepAliveRequest {
            client_id: client.into(),
        };
        c.sessions(node)
            .keep_alive(request)
            .await
            .map(|reply| reply.into_inner())
    })
    .await
}

/// `call` again, 25 ms later, while it answers UNAVAILABLE (for up to 5 s),
/// as every client does: a follower that has not heard from its leader for
/// the leader lease (200 ms) — just resumed, or starved of CPU on a loaded
/// machine — refuses at once. Any other answer is returned. (Up to 20
/// tries, 0.5 s, until session 14: short for a loaded CI machine.)
pub async fn retry_unavailable<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        match call().await {
            Err(status)
                if status.code() == tonic::Code::Unavailable && Instant::now() < give_up =>
            {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            answer => return answer,
        }
    }
}

/// How long a node may take to stop gracefully: its servers get 5 s to
/// drain, and a loaded debug build needs some more.
pub const STOP_LIMIT: Duration = Duration::from_secs(20);

/// Waits up to `limit` for `child` to exit (a hung process fails the test
/// instead of hanging the suite); `None` if it is still running.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
