//! Short-session clients on primitives of their own, and the client-belief
//! check: no client may still believe it leads (by what it was told and by
//! its own record of its session) once another client leads at a higher
//! epoch.
//!
//! Two kinds of client, both with 1–3 s sessions and using only
//! join/enter/withdraw/read (so leadership moves only by a voluntary step
//! or by expiry, never by a third party's anoint):
//! - *renewing* clients keep their session alive with explicit keep-alives;
//!   their belief ends at the latest when their own lease runs out (send
//!   time of the last confirmed keep-alive or write + the session timeout).
//!   Some stall on purpose (stop renewing for 2–3 timeouts while leading):
//!   the hand-over that follows is measured.
//! - *watching* clients join once and then rely on an Events stream on one
//!   node, opened with their own client id, to keep their session alive (the
//!   upstream Atomix pattern); their belief ends when an event, an answer
//!   or the end of the stream tells them otherwise. Their connection pings
//!   the node (HTTP/2 keep-alive), so a frozen node is noticed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::proto::atomix::primitive::election::leader_election_service_client::LeaderElectionServiceClient;
use baton::proto::atomix::primitive::election::{self as el};
use baton::proto::atomix::primitive::leader::leader_latch_service_client::LeaderLatchServiceClient;
use baton::proto::atomix::primitive::leader::{self as la};
use baton::proto::baton::v1::session_service_client::SessionServiceClient;
use baton::proto::baton::v1::{CloseSessionRequest, KeepAliveRequest};
use baton_client::{next_request_id, request_header, with_deadline, Kind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_stream::StreamExt;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

/// Lease primitives: latches first, then elections.
pub const LATCHES: usize = 2;
/// Elections among the lease primitives.
pub const ELECTIONS: usize = 2;
/// All lease primitives.
pub const PRIMITIVES: usize = LATCHES + ELECTIONS;
/// Clients that renew their sessions with explicit keep-alives.
pub const RENEWING: usize = 6;
/// Clients that keep their sessions alive with an Events stream.
pub const WATCHING: usize = 4;

/// The name of lease primitive `p`.
pub fn name(p: usize) -> String {
    if p < LATCHES {
        format!("lease-latch-{p}")
    } else {
        format!("lease-election-{}", p - LATCHES)
    }
}

fn is_latch(p: usize) -> bool {
    p < LATCHES
}

/// A (primitive, epoch, leader) sighting.
pub type Sighting = (usize, u64, String);

/// What the check found: violations, summary lines, every sighting.
pub struct Findings {
    /// Overlaps and other violations.
    pub violations: Vec<String>,
    /// Lines for the run's summary.
    pub summary: Vec<String>,
    /// Every leader sighting on the lease primitives.
    pub sightings: Vec<Sighting>,
}

use crate::history::{Op, Ret};
use crate::{open_session, Client, StateStream};

/// One interval in which a client believed it led a primitive at an epoch.
#[derive(Clone, Debug)]
struct Belief {
    client: String,
    primitive: usize,
    epoch: u64,
    told: Instant,
    end: Instant,
}

/// A client stopped renewing while it led.
#[derive(Clone, Debug)]
struct Stall {
    client: String,
    primitive: usize,
    epoch: u64,
    at: Instant,
    /// What the client's first decisive keep-alive after the stall said:
    /// `Some(true)` if its session was still there (a new Raft leader's
    /// grace entry renewed every session during the stall, so nobody was
    /// due to take over), `Some(false)` if it had expired.
    outlived: Option<bool>,
}

#[derive(Default)]
struct Record {
    /// Beliefs still held: (client, primitive) -> (epoch, told).
    open: HashMap<(String, usize), (u64, Instant)>,
    closed: Vec<Belief>,
    /// Every "X leads p at epoch e" a client was told about itself, when.
    told: Vec<(usize, u64, String, Instant)>,
    stalls: Vec<Stall>,
    /// Nodes holding the stream of a watching client that believes it leads.
    leading_streams: HashMap<String, u64>,
    /// Every (primitive, epoch, leader) seen, for the one-leader-per-epoch check.
    sightings: Vec<Sighting>,
    /// When each (primitive, epoch) was first seen by anyone.
    first_seen: HashMap<(usize, u64), Instant>,
    violations: Vec<String>,
}

/// What the lease clients recorded, shared between them.
#[derive(Clone, Default)]
pub struct Beliefs {
    record: Arc<Mutex<Record>>,
}

impl Beliefs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `client` learned the state of `p` at `at`.
    fn saw(&self, client: &str, p: usize, members: &[String], epoch: u64, at: Instant) {
        let mut r = self.lock();
        if let Some(leader) = members.first() {
            r.sightings.push((p, epoch, leader.clone()));
            let first = r.first_seen.entry((p, epoch)).or_insert(at);
            *first = (*first).min(at);
        }
        let key = (client.to_owned(), p);
        match (members.first(), r.open.get(&key).copied()) {
            (Some(leader), Some((believed, _))) if leader == client && believed == epoch => {}
            (Some(leader), previous) if leader == client => {
                if let Some((old_epoch, told)) = previous {
                    r.closed.push(Belief {
                        client: client.to_owned(),
                        primitive: p,
                        epoch: old_epoch,
                        told,
                        end: at,
                    });
                }
                r.told.push((p, epoch, client.to_owned(), at));
                r.open.insert(key, (epoch, at));
            }
            _ => {
                if let Some((old_epoch, told)) = r.open.remove(&key) {
                    r.closed.push(Belief {
                        client: client.to_owned(),
                        primitive: p,
                        epoch: old_epoch,
                        told,
                        end: at,
                    });
                }
            }
        }
    }

    /// `client`'s session was (`true`) or was not still there after its
    /// stalls.
    fn stalls_outlived(&self, client: &str, outlived: bool) {
        let mut r = self.lock();
        for stall in r
            .stalls
            .iter_mut()
            .filter(|stall| stall.client == client && stall.outlived.is_none())
        {
            stall.outlived = Some(outlived);
        }
    }

    /// `client` stops believing it leads anything, as of `at`.
    fn end_all(&self, client: &str, at: Instant) {
        let mut r = self.lock();
        let keys: Vec<(String, usize)> = r
            .open
            .keys()
            .filter(|(c, _)| c == client)
            .cloned()
            .collect();
        for key in keys {
            if let Some((epoch, told)) = r.open.remove(&key) {
                r.closed.push(Belief {
                    client: client.to_owned(),
                    primitive: key.1,
                    epoch,
                    told,
                    end: at.max(told),
                });
            }
        }
        r.leading_streams.remove(client);
    }

    fn leads_anything(&self, client: &str) -> Vec<(usize, u64)> {
        self.lock()
            .open
            .iter()
            .filter(|((c, _), _)| c == client)
            .map(|((_, p), (e, _))| (*p, *e))
            .collect()
    }

    /// A node holding the stream of a watching client that believes it leads.
    pub fn node_of_a_leading_stream(&self) -> Option<u64> {
        self.lock().leading_streams.values().next().copied()
    }

    fn violation(&self, what: String) {
        self.lock().violations.push(what);
    }

    /// Closes every belief still held at `end`, then checks that no belief
    /// overlaps another client's leadership at a higher epoch (judged by
    /// the first time anyone was told of it). Returns the violations and
    /// summary lines.
    pub fn check(&self, end: Instant) -> Findings {
        let mut r = self.lock();
        let open: Vec<((String, usize), (u64, Instant))> = r.open.drain().collect();
        for ((client, primitive), (epoch, told)) in open {
            r.closed.push(Belief {
                client,
                primitive,
                epoch,
                told,
                end,
            });
        }
        let mut violations = std::mem::take(&mut r.violations);
        if r.told.is_empty() {
            violations.push("lease: no client was ever told it led, so nothing was checked".into());
        }
        // First time each (primitive, epoch) was told to its leader.
        let mut first_told: BTreeMap<(usize, u64), (Instant, String)> = BTreeMap::new();
        for (p, epoch, client, at) in &r.told {
            let entry = first_told
                .entry((*p, *epoch))
                .or_insert((*at, client.clone()));
            if *at < entry.0 {
                *entry = (*at, client.clone());
            }
        }
        for belief in r.closed.iter().filter(|b| b.end > b.told) {
            let later =
                first_told.range((belief.primitive, belief.epoch + 1)..(belief.primitive + 1, 0));
            for ((_, epoch), (at, client)) in later {
                if *client != belief.client && *at < belief.end {
                    violations.push(format!(
                        "belief overlap on {}: {} believed it led at epoch {} until {:?} after being told, but {client} was told it led at epoch {epoch} {:?} before that",
                        name(belief.primitive),
                        belief.client,
                        belief.epoch,
                        belief.end - belief.told,
                        belief.end - *at,
                    ));
                }
            }
        }
        // Hand-over: from the stall to the first sighting, by anyone, of a
        // later epoch of that primitive; only where the session did not
        // outlive the stall (if it did, the client led on, rightly).
        let outlived = r
            .stalls
            .iter()
            .filter(|stall| stall.outlived == Some(true))
            .count();
        let mut handovers: Vec<(Duration, String)> = r
            .stalls
            .iter()
            .filter(|stall| stall.outlived != Some(true))
            .filter_map(|stall| {
                let next = r
                    .first_seen
                    .iter()
                    .filter(|((p, e), at)| {
                        *p == stall.primitive && *e > stall.epoch && **at > stall.at
                    })
                    .map(|(_, at)| *at)
                    .min()?;
                if std::env::var_os("CHAOS_DEBUG").is_some() {
                    eprintln!(
                        "stall {stall:?} -> next epoch seen after {:?}",
                        next - stall.at
                    );
                }
                Some((next - stall.at, stall.client.clone()))
            })
            .collect();
        handovers.sort();
        let longest = handovers.last().cloned();
        let median = handovers
            .get(handovers.len() / 2)
            .map(|(d, _)| d.as_millis());
        let summary = vec![
            format!(
                "client beliefs: {} intervals, {} leaderships told, {} stalled leaders; overlaps: {}",
                r.closed.len(),
                r.told.len(),
                r.stalls.len(),
                violations.iter().filter(|v| v.starts_with("belief overlap")).count()
            ),
            format!(
                "hand-over after a leader stopped renewing (1-3 s sessions): {} replaced, median {} ms, longest {}; {outlived} stalled leaderships outlived by their session (renewed by a new Raft leader's grace)",
                handovers.len(),
                median.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
                longest
                    .map(|(d, c)| format!("{} ms ({c})", d.as_millis()))
                    .unwrap_or_else(|| "-".into())
            ),
        ];
        Findings {
            violations,
            summary,
            sightings: std::mem::take(&mut r.sightings),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    Join,
    Withdraw,
    Read,
}

/// A state as (members, epoch); None for an answer that carries none.
fn state_of(ret: Ret) -> Option<(Vec<String>, u64)> {
    match ret {
        Ret::State { members, epoch } => Some((members, epoch)),
        _ => None,
    }
}

/// One operation on lease primitive `p` (through the workload's
/// [`crate::perform_on`]); the state it answered.
async fn perform(
    client: &Client,
    who: &str,
    p: usize,
    step: Step,
) -> Result<Option<(Vec<String>, u64)>, Status> {
    let (op, request_id) = match step {
        Step::Join => (Op::Join(who.to_owned()), next_request_id()),
        Step::Withdraw => (Op::Withdraw(who.to_owned()), next_request_id()),
        Step::Read => (Op::Read, 0),
    };
    crate::perform_on(client, who, &name(p), is_latch(p), &op, request_id)
        .await
        .map(state_of)
}

/// A client that renews its own session and bounds its belief by its lease.
pub async fn run_renewing(
    index: usize,
    seed: u64,
    endpoints: Vec<String>,
    beliefs: Beliefs,
    stop: Arc<AtomicBool>,
) {
    let who = format!("r{index}");
    let mut rng =
        StdRng::seed_from_u64(seed ^ (index as u64 + 101).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let timeout = Duration::from_millis(1_000 * rng.gen_range(1..=3));
    let client = Client::new(&endpoints, timeout / 2).expect("client");
    let Some(mut renewed_at) = open_session(&client, &who, timeout.as_millis() as u64, &stop).await
    else {
        return;
    };
    let mut keep_alive_sent = renewed_at;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(30..120))).await;
        let lease_end = renewed_at + timeout;
        if Instant::now() >= lease_end {
            // By its own record the session may be gone: stop believing as
            // of the moment it could have expired.
            beliefs.end_all(&who, lease_end);
        }
        let led = beliefs.leads_anything(&who);
        if !led.is_empty() && rng.gen_ratio(1, 60) {
            // Stall on purpose (a long GC pause): no renewals, no requests.
            let at = Instant::now();
            {
                let mut r = beliefs.lock();
                for (p, epoch) in &led {
                    r.stalls.push(Stall {
                        client: who.clone(),
                        primitive: *p,
                        epoch: *epoch,
                        at,
                        outlived: None,
                    });
                }
            }
            beliefs.end_all(&who, renewed_at + timeout);
            tokio::time::sleep(timeout * rng.gen_range(2..=3)).await;
            continue;
        }
        if keep_alive_sent.elapsed() >= timeout / 4 {
            let sent = Instant::now();
            keep_alive_sent = sent;
            let kept = client
                .call(|ch, t| {
                    let request = with_deadline(
                        KeepAliveRequest {
                            client_id: who.clone(),
                        },
                        t,
                    );
                    async move { SessionServiceClient::new(ch).keep_alive(request).await }
                })
                .await;
            match kept {
                Ok(_) => {
                    renewed_at = renewed_at.max(sent);
                    beliefs.stalls_outlived(&who, true);
                }
                Err(status) if status.code() == Code::NotFound => {
                    beliefs.stalls_outlived(&who, false);
                    beliefs.end_all(&who, Instant::now().min(renewed_at + timeout));
                    match open_session(&client, &who, timeout.as_millis() as u64, &stop).await {
                        Some(sent) => renewed_at = sent,
                        None => return,
                    }
                }
                Err(_) => {}
            }
            continue;
        }
        let p = rng.gen_range(0..PRIMITIVES);
        let step = match rng.gen_range(0..100) {
            0..=39 => Step::Join,
            40..=49 if !is_latch(p) => Step::Withdraw,
            40..=49 => Step::Read,
            50..=51 => {
                // Close the session: it gives up everything now.
                beliefs.end_all(&who, Instant::now());
                let close_id = next_request_id();
                let _ = client
                    .call(|ch, t| {
                        let request = with_deadline(
                            CloseSessionRequest {
                                client_id: who.clone(),
                                request_id: close_id,
                            },
                            t,
                        );
                        async move { SessionServiceClient::new(ch).close_session(request).await }
                    })
                    .await;
                match open_session(&client, &who, timeout.as_millis() as u64, &stop).await {
                    Some(sent) => renewed_at = sent,
                    None => return,
                }
                continue;
            }
            _ => Step::Read,
        };
        let sent = Instant::now();
        if step == Step::Withdraw {
            // Giving up: it stops believing before it asks.
            let led: Vec<usize> = beliefs
                .leads_anything(&who)
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            if led.contains(&p) {
                beliefs.saw(&who, p, &[], 0, sent);
            }
        }
        match perform(&client, &who, p, step).await {
            Ok(None) => {}
            Ok(Some((members, epoch))) => {
                let now = Instant::now();
                if step != Step::Read {
                    renewed_at = renewed_at.max(sent);
                }
                // An answer that arrives after the lease ran out says nothing.
                if now < renewed_at + timeout {
                    beliefs.saw(&who, p, &members, epoch, now);
                } else {
                    beliefs.saw("", p, &members, epoch, now);
                }
            }
            Err(status)
                if matches!(
                    status.code(),
                    Code::InvalidArgument | Code::ResourceExhausted
                ) =>
            {
                beliefs.violation(format!(
                    "{who}: unexpected rejection of {step:?}: {status:?}"
                ));
            }
            Err(_) => {}
        }
    }
}

/// A client that joins, then lets an Events stream on one node keep its
/// session alive, and believes what that stream tells it.
pub async fn run_watching(
    index: usize,
    seed: u64,
    endpoints: Vec<String>,
    beliefs: Beliefs,
    stop: Arc<AtomicBool>,
) {
    let who = format!("w{index}");
    let mut rng =
        StdRng::seed_from_u64(seed ^ (index as u64 + 201).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let timeout = Duration::from_millis(1_000 * rng.gen_range(1..=3));
    let p = index % PRIMITIVES;
    let client = Client::new(&endpoints, Duration::from_secs(2)).expect("client");
    let mut node = index % endpoints.len();
    while !stop.load(Ordering::Relaxed) {
        node = (node + 1) % endpoints.len();
        if open_session(&client, &who, timeout.as_millis() as u64, &stop)
            .await
            .is_none()
        {
            return;
        }
        if perform(&client, &who, p, Step::Join).await.is_err() {
            continue;
        }
        // Pings every sixth of the timeout: a frozen node is noticed within
        // a third of it, like the node's own lease.
        let channel = Endpoint::from_shared(format!("http://{}", endpoints[node]))
            .expect("endpoint")
            .connect_timeout(Duration::from_millis(300))
            .http2_keep_alive_interval(timeout / 6)
            .keep_alive_timeout(timeout / 6)
            .keep_alive_while_idle(true)
            .connect_lazy();
        let h = request_header(
            &who,
            if is_latch(p) {
                Kind::Latch
            } else {
                Kind::Election
            },
            &name(p),
            0,
        );
        let stream: Result<StateStream, Status> = if is_latch(p) {
            LeaderLatchServiceClient::new(channel)
                .events(la::EventsRequest {
                    header: h,
                    input: None,
                })
                .await
                .map(|s| {
                    Box::pin(
                        s.into_inner()
                            .map(|m| m.map(|m| crate::latch_ret(m.output.and_then(|o| o.latch)))),
                    ) as _
                })
        } else {
            LeaderElectionServiceClient::new(channel)
                .events(el::EventsRequest {
                    header: h,
                    input: None,
                })
                .await
                .map(|s| {
                    Box::pin(
                        s.into_inner()
                            .map(|m| m.map(|m| crate::term_ret(m.output.and_then(|o| o.term)))),
                    ) as _
                })
        };
        if let Ok(mut stream) = stream {
            loop {
                let next = tokio::select! {
                    next = stream.next() => next,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {
                        if stop.load(Ordering::Relaxed) { break; }
                        continue;
                    }
                };
                match next {
                    Some(Ok(Ret::State { members, epoch })) => {
                        let now = Instant::now();
                        beliefs.saw(&who, p, &members, epoch, now);
                        let mut r = beliefs.lock();
                        if members.first() == Some(&who) {
                            r.leading_streams.insert(who.clone(), node as u64 + 1);
                        } else {
                            r.leading_streams.remove(&who);
                        }
                    }
                    _ => break,
                }
            }
        }
        beliefs.end_all(&who, Instant::now());
        // Some come back at once (and keep their place), some only after
        // their session may have expired (and hand over).
        tokio::time::sleep(Duration::from_millis(
            rng.gen_range(0..2 * timeout.as_millis() as u64),
        ))
        .await;
    }
}
