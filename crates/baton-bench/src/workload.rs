//! The workloads, each the same for both systems.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_client::{request_header, Kind};
use tokio::sync::Barrier;

use crate::cluster::LocalCluster;
use crate::stats::Outcome;
use crate::target::{Observation, Session, Target};

/// Per-call deadline of the failover writer.
pub const FAILOVER_CALL_DEADLINE: Duration = Duration::from_millis(300);

fn run_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Connects `clients` sessions, then runs `body` in each from one start
/// signal until `duration` has passed; sums their outcomes.
async fn clients_for<F, Fut>(
    target: &Target,
    clients: usize,
    duration: Duration,
    body: F,
) -> Outcome
where
    F: Fn(usize, Session, Instant) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let start = Arc::new(Barrier::new(clients + 1));
    let body = Arc::new(body);
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let target = target.clone();
            let start = start.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let session = target.session(i).await;
                start.wait().await;
                match session {
                    Ok(session) => body(i, session, Instant::now() + duration).await,
                    Err(_) => Outcome {
                        errors: 1,
                        ..Outcome::default()
                    },
                }
            })
        })
        .collect();
    start.wait().await;
    let began = Instant::now();
    let mut total = Outcome::default();
    for task in tasks {
        if let Ok(outcome) = task.await {
            total.merge(outcome);
        }
    }
    total.elapsed = began.elapsed();
    total
}

/// `clients` clients, each entering and withdrawing on its own election as
/// fast as it can; one op = one cycle.
pub async fn churn(target: &Target, clients: usize, duration: Duration) -> Outcome {
    let run = run_id();
    clients_for(
        target,
        clients,
        duration,
        move |i, mut session, deadline| async move {
            let election = format!("churn-{run}-{i}");
            let mut out = Outcome::default();
            while Instant::now() < deadline {
                let began = Instant::now();
                let cycle = async {
                    let candidacy = session.enter(&election).await?;
                    session.withdraw(&election, candidacy).await
                };
                match cycle.await {
                    Ok(()) => {
                        out.ops += 1;
                        out.latencies.push(began.elapsed());
                    }
                    Err(_) => out.errors += 1,
                }
            }
            out
        },
    )
    .await
}

/// Where watcher sessions' indexes start, clear of the workload clients'.
const WATCHER_INDEX: usize = 1_000_000;
/// Watchers opened, or closed, at once.
const WATCHERS_AT_ONCE: usize = 64;
/// How often a watcher retries an UNAVAILABLE answer while opening or
/// closing (a busy node may give one, and a real client retries), paused
/// by [`RETRY_PAUSE`].
const WATCHER_RETRIES: usize = 50;

/// `call` again, [`RETRY_PAUSE`] later, while it answers UNAVAILABLE, up to
/// [`WATCHER_RETRIES`] times.
async fn retried<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut retries = 0;
    loop {
        match call().await {
            Err(status) if retry_again(&status, retries) => {
                retries += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            answer => return answer,
        }
    }
}

/// Whether a watcher's call that failed with `status` after `retries`
/// retries is tried again (after [`RETRY_PAUSE`]).
fn retry_again(status: &tonic::Status, retries: usize) -> bool {
    status.code() == tonic::Code::Unavailable && retries < WATCHER_RETRIES
}

/// Pause before a watcher's call is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Clients that each lead an election of their own and keep a stream of
/// its changes open (Baton: Events, as an Atomix candidate does; etcd:
/// Observe), spread over the endpoints, while another workload runs; each
/// keeps its session alive as a real client does. Nothing changes their
/// elections, so a server that sends each change only to that election's
/// watchers does no work for them. [`Watchers::close`] ends their sessions
/// before the next workload (left to expire, they would expire during it);
/// dropping it only drops the connections.
pub struct Watchers {
    closing: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<WatcherEnd>>,
}

/// How one watcher ended.
enum WatcherEnd {
    /// Its stream (or its session's keep-alive) ended while it watched.
    EndedEarly,
    /// Closed when asked; whether its session was closed.
    Closed(Result<(), tonic::Status>),
}

/// What closing the watchers found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchersClosed {
    /// Watchers whose stream or keep-alive had ended before the close.
    pub ended_early: usize,
    /// Sessions that could not be closed.
    pub close_failures: usize,
}

impl Watchers {
    /// Opens `count` watchers, each on its own connection, and waits for
    /// every stream's first message.
    pub async fn open(target: &Target, count: usize) -> Result<Watchers, String> {
        use futures::StreamExt;

        // One socket per watcher: a soft limit of 1,024 would not do.
        raise_open_file_limit();
        let run = run_id();
        let (closing, closed) = tokio::sync::watch::channel(false);
        let closers = Arc::new(tokio::sync::Semaphore::new(WATCHERS_AT_ONCE));
        let opening = futures::stream::iter(0..count)
            .map(|i| {
                let target = target.clone();
                let mut closed = closed.clone();
                let closers = closers.clone();
                async move {
                    let election = format!("watched-{run}-{i}");
                    let (target, election) = (&target, election.as_str());
                    // A session leading its election, watching it, its
                    // stream's first message taken. Retried on the same
                    // session: a new one would leave the first one's
                    // candidacy behind (etcd: a lease nobody revokes, whose
                    // key the new campaign would wait behind).
                    let mut session = retried(|| target.session(WATCHER_INDEX + i)).await?;
                    let mut retries = 0;
                    let mut stream = loop {
                        let watching = async {
                            session.enter(election).await?;
                            let mut stream = session.observe(election).await?;
                            stream.next().await?;
                            Ok::<_, tonic::Status>(stream)
                        };
                        match watching.await {
                            Err(status) if retry_again(&status, retries) => {
                                retries += 1;
                                tokio::time::sleep(RETRY_PAUSE).await;
                            }
                            answer => break answer?,
                        }
                    };
                    Ok::<_, tonic::Status>(tokio::spawn(async move {
                        let watching = async { while let Ok(Some(())) = stream.next().await {} };
                        let ended_early = tokio::select! {
                            _ = watching => true,
                            _ = session.keep_alive() => true,
                            _ = closed.wait_for(|closing| *closing) => false,
                        };
                        if ended_early {
                            return WatcherEnd::EndedEarly;
                        }
                        let _permit = closers.acquire().await;
                        WatcherEnd::Closed(retried(|| session.close()).await)
                    }))
                }
            })
            .buffer_unordered(WATCHERS_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        let mut watchers = Watchers {
            closing,
            tasks: Vec::new(),
        };
        for opened in opening {
            match opened {
                Ok(task) => watchers.tasks.push(task),
                Err(status) => return Err(format!("opening a watcher: {status}")),
            }
        }
        Ok(watchers)
    }

    /// Closes every watcher's session (its candidacy goes with it) and
    /// waits until all are closed.
    pub async fn close(mut self) -> WatchersClosed {
        let _ = self.closing.send(true);
        let mut closed = WatchersClosed::default();
        for task in std::mem::take(&mut self.tasks) {
            match task.await {
                Ok(WatcherEnd::Closed(Ok(()))) => {}
                Ok(WatcherEnd::Closed(Err(_))) | Err(_) => closed.close_failures += 1,
                Ok(WatcherEnd::EndedEarly) => closed.ended_early += 1,
            }
        }
        closed
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// `clients` clients on one election; whoever leads withdraws and enters
/// again at once. One op = one leadership, counted by its holder.
pub async fn contend(target: &Target, clients: usize, duration: Duration) -> Outcome {
    let election = format!("contend-{}", run_id());
    clients_for(target, clients, duration, move |_, session, deadline| {
        let election = election.clone();
        async move {
            match session {
                baton @ Session::Baton { .. } => contend_baton(baton, election, deadline).await,
                etcd => contend_etcd(etcd, election, deadline).await,
            }
        }
    })
    .await
}

async fn contend_baton(mut session: Session, election: String, deadline: Instant) -> Outcome {
    let mut out = Outcome::default();
    let id = session.id().to_owned();
    let Ok(Observation::Baton(mut events)) = session.observe(&election).await else {
        out.errors += 1;
        return out;
    };
    if session.enter(&election).await.is_err() {
        out.errors += 1;
    }
    let mut handled_epoch = 0;
    loop {
        let message = tokio::time::timeout_at(deadline.into(), events.message()).await;
        let Ok(Ok(Some(message))) = message else {
            return out;
        };
        let term = message.output.and_then(|o| o.term).unwrap_or_default();
        let epoch = term.id.map(|e| e.num).unwrap_or(0);
        if term.leader == id && epoch > handled_epoch {
            handled_epoch = epoch;
            out.ops += 1;
            let led_since = Instant::now();
            let hand_over = async {
                session
                    .withdraw(&election, crate::target::Candidacy::Baton(term))
                    .await?;
                session.enter(&election).await
            };
            if hand_over.await.is_err() {
                out.errors += 1;
            }
            out.latencies.push(led_since.elapsed());
        }
        if Instant::now() >= deadline {
            return out;
        }
    }
}

async fn contend_etcd(mut session: Session, election: String, deadline: Instant) -> Outcome {
    let mut out = Outcome::default();
    while Instant::now() < deadline {
        let began = Instant::now();
        let campaign = tokio::time::timeout_at(deadline.into(), session.enter(&election)).await;
        match campaign {
            Ok(Ok(candidacy)) => {
                out.ops += 1;
                if session.withdraw(&election, candidacy).await.is_err() {
                    out.errors += 1;
                }
                out.latencies.push(began.elapsed());
            }
            Ok(Err(_)) => out.errors += 1,
            Err(_) => break,
        }
    }
    out
}

/// What happened around a leader's SIGKILL under a write loop. Every
/// `*_after` is measured from the kill.
#[derive(Debug, Clone)]
pub struct FailoverReport {
    /// Writes acknowledged in the whole run.
    pub writes: u64,
    /// The longest gap between acknowledged writes.
    pub longest_gap: Duration,
    /// Detection: a survivor moved to a higher term (an election began).
    pub election_started_after: Option<Duration>,
    /// Election: a survivor reported itself leader.
    pub new_leader_after: Option<Duration>,
    /// First commit: the new leader's commit index passed every index the
    /// survivors had committed before it led (its own term's first entry).
    pub first_commit_after: Option<Duration>,
    /// Client redirect: the writer's first acknowledged write.
    pub first_write_after: Option<Duration>,
}

/// Timestamps of the phases of one failover, seen by polling the survivors.
#[derive(Default)]
struct Phases {
    election_started: Option<Duration>,
    new_leader: Option<Duration>,
    first_commit: Option<Duration>,
}

/// Polls the survivors every few milliseconds for `watch` after the kill.
async fn watch_failover(
    cluster: &LocalCluster,
    term_before: u64,
    killed_at: Instant,
    watch: Duration,
) -> Phases {
    let mut phases = Phases::default();
    let mut commit_floor = 0u64;
    while killed_at.elapsed() < watch && phases.first_commit.is_none() {
        let views = cluster.raft_views().await;
        let now = killed_at.elapsed();
        if phases.election_started.is_none() && views.iter().any(|(_, v)| v.term > term_before) {
            phases.election_started = Some(now);
        }
        match views.iter().find(|(_, v)| v.leads && v.term > term_before) {
            Some((_, leader)) => {
                phases.new_leader.get_or_insert(now);
                if leader.commit > commit_floor {
                    phases.first_commit = Some(now);
                }
            }
            None => {
                commit_floor = views
                    .iter()
                    .map(|(_, v)| v.commit)
                    .fold(commit_floor, u64::max);
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    phases
}

/// One writer (300 ms per call, next endpoint on any error) runs for
/// `before`, the Raft leader is SIGKILLed, and the writer goes on for
/// `after`; meanwhile the survivors are polled for the phases of the
/// failover.
pub async fn failover(
    cluster: &mut LocalCluster,
    target: &Target,
    before: Duration,
    after: Duration,
) -> Result<FailoverReport, String> {
    let endpoints = target.endpoints().len();
    let mut sessions = Vec::new();
    for i in 0..endpoints {
        sessions.push(target.session(i).await.map_err(|e| e.to_string())?);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acks = Vec::new();
            let mut index = 0usize;
            let mut seq = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                let session = &mut sessions[index % endpoints];
                let call = session.write(seq, FAILOVER_CALL_DEADLINE);
                match tokio::time::timeout(FAILOVER_CALL_DEADLINE, call).await {
                    Ok(Ok(())) => acks.push(Instant::now()),
                    _ => index += 1,
                }
            }
            acks
        })
    };
    tokio::time::sleep(before).await;
    let views = cluster.raft_views().await;
    let (leader, view) = views
        .into_iter()
        .find(|(_, view)| view.leads)
        .ok_or("no leader before the kill")?;
    let killed_at = Instant::now();
    cluster.kill(leader);
    let phases = watch_failover(cluster, view.term, killed_at, after).await;
    tokio::time::sleep(after.saturating_sub(killed_at.elapsed())).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acks = writer.await.map_err(|e| e.to_string())?;
    let longest_gap = acks
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    Ok(FailoverReport {
        writes: acks.len() as u64,
        longest_gap,
        election_started_after: phases.election_started,
        new_leader_after: phases.new_leader,
        first_commit_after: phases.first_commit,
        // Writes acknowledged before the election began were the old
        // leader's, answered just before it died.
        first_write_after: acks
            .iter()
            .map(|t| t.saturating_duration_since(killed_at))
            .find(|after| *after >= phases.election_started.unwrap_or_default()),
    })
}

/// What holding many primitives and sessions costs.
#[derive(Debug, Clone)]
pub struct ScaleReport {
    /// Primitives (latches) and sessions created.
    pub items: usize,
    /// UNAVAILABLE answers retried while loading.
    pub retries: u64,
    /// How long creating them took.
    pub load: Duration,
    /// Resident set size of each node [`SETTLE`] after the load, in bytes:
    /// what holding the items costs.
    pub rss_bytes: Vec<u64>,
    /// Resident set size of each node the moment the load ended, in bytes
    /// (until session 11 a snapshot being built then, a deep copy of the
    /// state and its encoding, showed here).
    pub rss_at_end_bytes: Vec<u64>,
    /// Each node's peak resident set size during the load (VmHWM), in
    /// bytes.
    pub peak_rss_bytes: Vec<u64>,
    /// From restarting all three (after SIGKILL) to the first successful
    /// linearizable read.
    pub restart_to_read: Duration,
}

/// How long the scale workload lets the nodes idle after the load before
/// it reads their RSS: memory the allocator has not yet returned is gone
/// by then (before snapshots shared the state, RSS fell by up to ~200 MB
/// within 2 s at 100 k items; it was flat after that).
pub const SETTLE: Duration = Duration::from_secs(3);

/// Baton only: `items` clients each open a 5-minute session and join a
/// latch of their own (`clients` at a time); then every node's RSS is read
/// (at the end of the load, after [`SETTLE`], and its peak), all three are
/// SIGKILLed and restarted, and the time until a linearizable read succeeds
/// is measured.
pub async fn scale(
    cluster: &mut LocalCluster,
    items: usize,
    clients: usize,
) -> Result<ScaleReport, String> {
    use baton::proto::atomix::primitive::leader as la;
    use baton::proto::atomix::primitive::leader::leader_latch_service_client::LeaderLatchServiceClient;
    use baton::proto::baton::v1::session_service_client::SessionServiceClient;
    use baton::proto::baton::v1::OpenSessionRequest;

    let target = cluster.target();
    let endpoints = target.endpoints().to_vec();
    let began = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..clients)
        .map(|w| {
            let channel = crate::target::channel(&endpoints[w % endpoints.len()]);
            let next = next.clone();
            tokio::spawn(async move {
                let mut sessions = SessionServiceClient::new(channel.clone());
                let mut latches = LeaderLatchServiceClient::new(channel);
                let mut failures = 0u64;
                let mut retries = 0u64;
                let mut last_error = None;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= items {
                        return (failures, retries, last_error);
                    }
                    let client_id = format!("scale-{i}");
                    // Retried like any client would: under this load a node
                    // may briefly answer UNAVAILABLE.
                    let mut loaded = false;
                    for _ in 0..50 {
                        let opened = sessions
                            .open_session(OpenSessionRequest {
                                client_id: client_id.clone(),
                                timeout_ms: baton_state_max_timeout(),
                            })
                            .await;
                        let joined = match opened {
                            Ok(_) => latches
                                .latch(la::LatchRequest {
                                    header: request_header(
                                        &client_id,
                                        Kind::Latch,
                                        &format!("scale-{i}"),
                                        0,
                                    ),
                                    input: None,
                                })
                                .await
                                .map(|_| ()),
                            Err(status) => Err(status),
                        };
                        match joined {
                            Ok(()) => {
                                loaded = true;
                                break;
                            }
                            Err(status) if status.code() == tonic::Code::Unavailable => {
                                retries += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(status) => {
                                last_error = Some(status.to_string());
                                break;
                            }
                        }
                    }
                    if !loaded {
                        failures += 1;
                    }
                }
            })
        })
        .collect();
    let (mut failures, mut retries, mut last_error) = (0, 0, None);
    for worker in workers {
        let (f, r, e) = worker.await.map_err(|e| e.to_string())?;
        failures += f;
        retries += r;
        last_error = last_error.or(e);
    }
    if failures > 0 {
        return Err(format!(
            "{failures} of {items} items failed to load ({retries} retries); last error: {last_error:?}"
        ));
    }
    let load = began.elapsed();
    let rss_at_end_bytes = cluster.rss_bytes();
    tokio::time::sleep(SETTLE).await;
    let rss_bytes = cluster.rss_bytes();
    let peak_rss_bytes = cluster.peak_rss_bytes();
    for index in 0..3 {
        cluster.kill(index);
    }
    let restarted = Instant::now();
    for index in 0..3 {
        cluster.restart(index)?;
    }
    let mut reader = LeaderLatchServiceClient::new(crate::target::channel(&endpoints[0]));
    loop {
        let mut read = tonic::Request::new(la::GetRequest {
            header: request_header("scale-reader", Kind::Latch, "scale-0", 0),
            input: None,
        });
        read.set_timeout(Duration::from_millis(500));
        if reader.get(read).await.is_ok() {
            break;
        }
        if restarted.elapsed() > Duration::from_secs(120) {
            return Err("no linearizable read within 120 s of the restart".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(ScaleReport {
        items,
        retries,
        load,
        rss_bytes,
        rss_at_end_bytes,
        peak_rss_bytes,
        restart_to_read: restarted.elapsed(),
    })
}

/// The longest session timeout a client may ask for (5 minutes).
fn baton_state_max_timeout() -> u64 {
    300_000
}
