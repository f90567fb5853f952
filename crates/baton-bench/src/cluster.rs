//! Three-node clusters of Baton or etcd on loopback, started and killed by
//! the benchmark itself (the failover workload SIGKILLs the leader).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton::proto::baton::v1::admin_service_client::AdminServiceClient;
use baton::proto::baton::v1::StatusRequest;

use crate::cpu::{self, CpuReading, MachineCpu};
use crate::etcd::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::etcd::etcdserverpb::StatusRequest as EtcdStatusRequest;
use crate::metrics::{self, Flushes};
use crate::target::{channel, Target};

/// Which system a cluster runs.
#[derive(Debug, Clone)]
pub enum System {
    /// `baton serve`, from this binary path, with extra arguments (e.g.
    /// timing flags).
    Baton(PathBuf, Vec<String>),
    /// `etcd`, from this binary path.
    Etcd(PathBuf),
}

struct Member {
    client: String,
    /// Where its Prometheus metrics are served (etcd: its client URL).
    metrics: String,
    args: Vec<String>,
    child: Option<Child>,
}

/// A running three-node cluster whose processes die with it.
pub struct LocalCluster {
    system: System,
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

/// One member's view of Raft: whether it leads, its term and its commit
/// index (etcd: `raftIndex`, its committed index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftView {
    /// It says it is the leader.
    pub leads: bool,
    /// Its current term.
    pub term: u64,
    /// Its commit index.
    pub commit: u64,
}

async fn raft_view(system: &System, endpoint: &str) -> Option<RaftView> {
    let channel = channel(endpoint);
    match system {
        System::Baton(..) => {
            let status = AdminServiceClient::new(channel)
                .status(StatusRequest {})
                .await
                .ok()?
                .into_inner();
            Some(RaftView {
                leads: status.role == "leader",
                term: status.term,
                commit: status.commit_index,
            })
        }
        System::Etcd(_) => {
            let status = MaintenanceClient::new(channel)
                .status(EtcdStatusRequest {})
                .await
                .ok()?
                .into_inner();
            let me = status.header.map(|h| h.member_id).unwrap_or_default();
            Some(RaftView {
                leads: me != 0 && status.leader == me,
                term: status.raft_term,
                commit: status.raft_index,
            })
        }
    }
}

/// `n` distinct free ports (listeners held until all are chosen, so the
/// kernel cannot hand the same port out twice).
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

impl LocalCluster {
    /// Starts three members with fresh data directories and waits until
    /// they have a leader.
    pub async fn start(system: System) -> Result<LocalCluster, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let free = free_ports(9).map_err(|e| e.to_string())?;
        let ports: Vec<(u16, u16)> = free[..6].chunks(2).map(|p| (p[0], p[1])).collect();
        let metrics_ports = &free[6..];
        let members = match &system {
            System::Baton(_, extra) => {
                let peers = ports
                    .iter()
                    .enumerate()
                    .map(|(i, (_, peer))| format!("{}=127.0.0.1:{peer}", i + 1))
                    .collect::<Vec<_>>()
                    .join(",");
                ports
                    .iter()
                    .enumerate()
                    .map(|(i, (client, peer))| Member {
                        client: format!("127.0.0.1:{client}"),
                        metrics: format!("127.0.0.1:{}", metrics_ports[i]),
                        args: vec![
                            "serve".into(),
                            "--id".into(),
                            (i + 1).to_string(),
                            "--listen".into(),
                            format!("127.0.0.1:{client}"),
                            "--peer-listen".into(),
                            format!("127.0.0.1:{peer}"),
                            "--peers".into(),
                            peers.clone(),
                            "--data-dir".into(),
                            path_arg(&dir.path().join(format!("baton{}", i + 1))),
                            "--metrics-listen".into(),
                            format!("127.0.0.1:{}", metrics_ports[i]),
                        ]
                        .into_iter()
                        .chain(extra.iter().cloned())
                        .collect(),
                        child: None,
                    })
                    .collect::<Vec<_>>()
            }
            System::Etcd(_) => {
                let initial = ports
                    .iter()
                    .enumerate()
                    .map(|(i, (_, peer))| format!("m{}=http://127.0.0.1:{peer}", i + 1))
                    .collect::<Vec<_>>()
                    .join(",");
                ports
                    .iter()
                    .enumerate()
                    .map(|(i, (client, peer))| Member {
                        client: format!("127.0.0.1:{client}"),
                        metrics: format!("127.0.0.1:{client}"),
                        args: vec![
                            "--name".into(),
                            format!("m{}", i + 1),
                            "--data-dir".into(),
                            path_arg(&dir.path().join(format!("etcd{}", i + 1))),
                            "--listen-client-urls".into(),
                            format!("http://127.0.0.1:{client}"),
                            "--advertise-client-urls".into(),
                            format!("http://127.0.0.1:{client}"),
                            "--listen-peer-urls".into(),
                            format!("http://127.0.0.1:{peer}"),
                            "--initial-advertise-peer-urls".into(),
                            format!("http://127.0.0.1:{peer}"),
                            "--initial-cluster".into(),
                            initial.clone(),
                            "--initial-cluster-state".into(),
                            "new".into(),
                            "--initial-cluster-token".into(),
                            "baton-bench".into(),
                        ],
                        child: None,
                    })
                    .collect::<Vec<_>>()
            }
        };
        let mut cluster = LocalCluster {
            system,
            members,
            dir,
        };
        for i in 0..3 {
            cluster.spawn(i)?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.leader().await.is_none() {
            if Instant::now() > deadline {
                return Err("no leader within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(cluster)
    }

    /// Starts member `index` again (after [`LocalCluster::kill`]), on its
    /// old data directory.
    pub fn restart(&mut self, index: usize) -> Result<(), String> {
        if self.members[index].child.is_some() {
            return Ok(());
        }
        self.spawn(index)
    }

    fn spawn(&mut self, index: usize) -> Result<(), String> {
        let binary = match &self.system {
            System::Baton(bin, _) | System::Etcd(bin) => bin.clone(),
        };
        let member = &mut self.members[index];
        let child = Command::new(&binary)
            .args(&member.args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        member.child = Some(child);
        Ok(())
    }

    /// What the workloads drive.
    pub fn target(&self) -> Target {
        let endpoints = self.members.iter().map(|m| m.client.clone()).collect();
        match self.system {
            System::Baton(..) => Target::Baton(endpoints),
            System::Etcd(_) => Target::Etcd(endpoints),
        }
    }

    /// The index of the member that says it leads, if any answers so.
    pub async fn leader(&self) -> Option<usize> {
        self.raft_views()
            .await
            .into_iter()
            .find(|(_, view)| view.leads)
            .map(|(index, _)| index)
    }

    /// What every running member that answers within 200 ms says of its
    /// Raft state, asked all at once.
    pub async fn raft_views(&self) -> Vec<(usize, RaftView)> {
        let asks = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, member)| member.child.is_some())
            .map(|(index, member)| async move {
                let view = tokio::time::timeout(
                    Duration::from_millis(200),
                    raft_view(&self.system, &member.client),
                )
                .await
                .ok()
                .flatten();
                view.map(|view| (index, view))
            });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// SIGKILLs member `index`.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The directory holding the members' data directories.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The durable flushes every running member has reported so far (Baton:
    /// its storage flushes; etcd: its WAL fsyncs).
    pub async fn flushes(&self) -> Result<Flushes, String> {
        let histogram = match self.system {
            System::Baton(..) => "baton_storage_flush_duration_seconds",
            System::Etcd(_) => "etcd_disk_wal_fsync_duration_seconds",
        };
        let mut total = Flushes::default();
        for member in self.members.iter().filter(|m| m.child.is_some()) {
            let text = metrics::scrape(&member.metrics).await?;
            total
                .add_histogram(&text, histogram)
                .ok_or_else(|| format!("{}: no {histogram} histogram", member.metrics))?;
        }
        Ok(total)
    }

    /// The CPU time all running members and the whole machine have used
    /// so far; `None` if one of them cannot be read.
    pub fn cpu_reading(&self) -> Option<CpuReading> {
        let members = self
            .members
            .iter()
            .filter_map(|m| m.child.as_ref())
            .map(|child| cpu::process_cpu(child.id()))
            .sum::<Option<Duration>>()?;
        Some(CpuReading {
            members,
            machine: MachineCpu::now()?,
        })
    }

    /// The resident set size of each running member, in bytes.
    pub fn rss_bytes(&self) -> Vec<u64> {
        self.status_bytes("VmRSS:")
    }

    /// Each running member's peak resident set size so far (VmHWM), in
    /// bytes.
    pub fn peak_rss_bytes(&self) -> Vec<u64> {
        self.status_bytes("VmHWM:")
    }

    fn status_bytes(&self, field: &str) -> Vec<u64> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref())
            .filter_map(|child| status_kib(child.id(), field))
            .map(|kib| kib * 1024)
            .collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A `kB` field of /proc/PID/status.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
