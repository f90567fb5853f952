//! Issue 9 under chaos: `baton_client` campaigners on one election write to
//! a fenced resource while the cluster's nodes are killed, paused and
//! partitioned, and while the campaigners themselves freeze.
//!
//! Each campaigner runs on its own thread with a current-thread runtime,
//! so a deliberate freeze (`std::thread::sleep` inside a task) stops the
//! whole client — its keep-alives included — with its sockets left open,
//! like a GC pause or SIGSTOP of a process. While it believes it leads it
//! writes to the resource with its epoch as the token, checking
//! `is_leader()` right before each write.
//!
//! Findings: writes the resource refused as stale (token below the highest
//! it saw), writes attempted by a client after another was told it leads at
//! a higher epoch, and overlaps of belief intervals (first told .. last
//! `is_leader()` that said yes, on the one monotonic clock of this process)
//! between different epochs. All must be zero.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_client::Client;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Campaigners on the fenced election.
pub const CAMPAIGNERS: usize = 3;
/// Their session timeout: short, so freezes and expiries happen often.
const SESSION_TIMEOUT: Duration = Duration::from_secs(2);
/// Between two writes of a leader.
const WRITE_EVERY: Duration = Duration::from_millis(20);
/// The election they campaign on.
const ELECTION: &str = "fenced-job";

/// One write the resource accepted or refused.
#[derive(Debug, Default)]
struct Resource {
    highest: u64,
    accepted: u64,
    refused: Vec<String>,
}

/// A leadership as its holder saw it.
#[derive(Debug, Clone)]
struct Belief {
    client: String,
    epoch: u64,
    told: Instant,
    last_yes: Instant,
}

#[derive(Debug, Default)]
struct Record {
    resource: Resource,
    beliefs: Vec<Belief>,
    /// (epoch, when told), for the stale-attempt check.
    told: Vec<(u64, Instant)>,
    stale_attempts: Vec<String>,
    freezes: u64,
    lost: std::collections::BTreeMap<String, u64>,
}

/// What the campaigners share: the resource and their beliefs.
#[derive(Clone, Default)]
pub struct Fenced {
    record: Arc<Mutex<Record>>,
}

impl Fenced {
    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn told(&self, epoch: u64, at: Instant) {
        self.lock().told.push((epoch, at));
    }

    /// The fenced write: refused if `token` is below the highest seen.
    /// Also notes an attempt made after a higher epoch was told to anyone.
    fn write(&self, client: &str, token: u64, checked_at: Instant) {
        let mut record = self.lock();
        if let Some((newer, at)) = record
            .told
            .iter()
            .find(|(epoch, at)| *epoch > token && *at < checked_at)
            .copied()
        {
            record.stale_attempts.push(format!(
                "{client} wrote with epoch {token} {} ms after epoch {newer} was told",
                (checked_at - at).as_millis()
            ));
        }
        if token < record.resource.highest {
            let highest = record.resource.highest;
            record
                .resource
                .refused
                .push(format!("{client}: token {token} < {highest}"));
        } else {
            record.resource.highest = token;
            record.resource.accepted += 1;
        }
    }

    fn believed(&self, belief: Belief) {
        self.lock().beliefs.push(belief);
    }

    fn froze(&self) {
        self.lock().freezes += 1;
    }

    fn lost(&self, why: &baton_client::Ended) {
        let key = format!("{why:?}")
            .split('(')
            .next()
            .unwrap_or_default()
            .to_owned();
        *self.lock().lost.entry(key).or_default() += 1;
    }

    /// Violations and summary lines.
    pub fn check(&self) -> (Vec<String>, Vec<String>) {
        let record = self.lock();
        let mut violations: Vec<String> = record
            .resource
            .refused
            .iter()
            .map(|r| format!("fenced resource refused a stale write: {r}"))
            .collect();
        violations.extend(record.stale_attempts.iter().cloned());
        if record.beliefs.is_empty() || record.resource.accepted == 0 {
            violations
                .push("fenced: no campaigner ever led and wrote, so nothing was checked".into());
        }
        let mut overlaps = 0;
        for (i, a) in record.beliefs.iter().enumerate() {
            for b in &record.beliefs[i + 1..] {
                if a.epoch != b.epoch && a.told <= b.last_yes && b.told <= a.last_yes {
                    overlaps += 1;
                    violations.push(format!(
                        "fenced: {} (epoch {}) and {} (epoch {}) both believed they led at once",
                        a.client, a.epoch, b.client, b.epoch
                    ));
                }
            }
        }
        let summary = vec![format!(
            "fenced resource: {} leaderships of {CAMPAIGNERS} library campaigners, {} freezes of 2-3 session timeouts; {} writes accepted, {} refused as stale, {} attempted after a newer leader was told; belief overlaps: {overlaps}; ends: {:?}",
            record.beliefs.len(),
            record.freezes,
            record.resource.accepted,
            record.resource.refused.len(),
            record.stale_attempts.len(),
            record.lost,
        )];
        (violations, summary)
    }
}

/// Starts campaigner `index` on its own thread; it runs until `stop`.
pub fn spawn_campaigner(
    index: usize,
    seed: u64,
    endpoints: Vec<String>,
    fenced: Fenced,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(campaign(index, seed, endpoints, fenced, stop));
    })
}

async fn campaign(
    index: usize,
    seed: u64,
    endpoints: Vec<String>,
    fenced: Fenced,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (0xfe4ce << index));
    let mut generation = 0;
    while !stop.load(Ordering::Relaxed) {
        generation += 1;
        let connected = Client::builder(&endpoints)
            .client_id(format!("fenced-{index}-{generation}"))
            .session_timeout(SESSION_TIMEOUT)
            .call_timeout(Duration::from_secs(2))
            .connect()
            .await;
        let Ok(client) = connected else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // One session: lead, lose, campaign again, until the session is
        // lost or closed.
        while !stop.load(Ordering::Relaxed) && client.ended().is_none() {
            let election = client.election(ELECTION);
            let campaigned =
                tokio::time::timeout(Duration::from_secs(3), election.campaign()).await;
            let leadership = match campaigned {
                Ok(Ok(leadership)) => leadership,
                Ok(Err(_)) => break,
                Err(_) => continue,
            };
            let told = Instant::now();
            fenced.told(leadership.epoch(), told);
            let mut belief = Belief {
                client: client.client_id().to_owned(),
                epoch: leadership.epoch(),
                told,
                last_yes: told,
            };
            // Lead for a while, then either resign or freeze.
            let hold = Duration::from_millis(rng.gen_range(200..1_500));
            let mut freeze = rng
                .gen_bool(0.3)
                .then(|| SESSION_TIMEOUT.mul_f64(rng.gen_range(2.0..3.0)));
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if !leadership.is_leader() {
                    break;
                }
                belief.last_yes = now;
                fenced.write(&belief.client, belief.epoch, now);
                if now - told > hold {
                    match freeze.take() {
                        // Blocks this thread's runtime: nothing of this
                        // client runs, its sockets stay open.
                        Some(freeze) => {
                            fenced.froze();
                            std::thread::sleep(freeze);
                        }
                        None => break,
                    }
                }
                tokio::time::sleep(WRITE_EVERY).await;
            }
            fenced.believed(belief);
            if leadership.is_leader() {
                let _ = leadership.resign().await;
            } else {
                let why = tokio::time::timeout(Duration::from_secs(1), leadership.lost())
                    .await
                    .unwrap_or(baton_client::Ended::LeaseExpired);
                fenced.lost(&why);
            }
        }
        let _ = client.close().await;
    }
}
