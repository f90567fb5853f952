//! Channels to every endpoint of a cluster and the retry loop every call
//! goes through: UNAVAILABLE, or no answer within the attempt's share of
//! the time, moves on to the leader the node hinted at, or to the next
//! endpoint, until the call's deadline.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::error::{Error, Result};

/// Metadata key on an UNAVAILABLE answer carrying the Raft leader's client
/// address (`host:port`), when the answering node knows it.
pub const LEADER_HINT_METADATA: &str = "baton-leader";

/// Metadata key on a NOT_FOUND answer that means the caller's session is
/// gone (expired or closed), as opposed to a missing primitive.
pub const SESSION_GONE_METADATA: &str = "baton-session-gone";

/// Whether `status` says the caller's session is gone. Told by the
/// metadata the cluster sets, never by the message, which may quote a
/// primitive's name.
pub fn is_session_gone(status: &Status) -> bool {
    status.code() == Code::NotFound && status.metadata().contains_key(SESSION_GONE_METADATA)
}

/// How long to wait before going round the endpoints again when none of
/// them could serve the call: long enough for an election to make progress,
/// short against a session timeout.
const ROUND_PAUSE: Duration = Duration::from_millis(50);

/// The least one endpoint is given while more time than that is left.
const MIN_ATTEMPT: Duration = Duration::from_millis(50);

/// How often a connection with a stream or call open is pinged (HTTP/2
/// PING), and how long an answer may take before the connection counts as
/// dead. A node that stops answering without closing its connections
/// (frozen by SIGSTOP or a VM pause, or cut off by a black-holed link)
/// would otherwise hold an Events stream open and silent for as long as
/// the kernel keeps the socket: the client would hear of no change, however
/// important. Idle connections are not pinged: a call on one has its own
/// time limit ([`attempt_budget`]).
const PING_INTERVAL: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// How the time of a call is given to its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempts {
    /// Each attempt gets its share ([`attempt_budget`]): for calls a node
    /// answers at once when it can.
    Shared,
    /// Each attempt may take all the time left: for calls that wait on the
    /// cluster by design (adding a node waits for it to catch up).
    Whole,
}

/// How long one endpoint may take out of the `remaining` time of a call:
/// half of it (all of it once only a sliver is left). A node that never
/// answers then costs part of the budget, not all of it, and the next
/// endpoint still gets its try — a keep-alive, whose budget is one beat,
/// reaches a live node within that beat.
fn attempt_budget(remaining: Duration) -> Duration {
    (remaining / 2).max(MIN_ATTEMPT).min(remaining)
}

/// A fresh request id: above every id this process handed out before and,
/// being the wall clock in microseconds, above those of earlier processes
/// using the same client id. The cluster refuses ids at or below the
/// highest it applied for a client (DESIGN §3), so ids must increase.
pub fn next_request_id() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
        .max(1);
    let previous = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(micros.max(last.saturating_add(1)))
        })
        .unwrap_or(0);
    micros.max(previous.saturating_add(1))
}

/// Whether another endpoint may serve a call that failed with `status`: the
/// node could not (UNAVAILABLE), or the connection broke under the call
/// (tonic reports a reset connection as UNKNOWN "transport error", and a
/// call its connection dropped before answering — a node killed under it —
/// as CANCELLED "operation was canceled"; Baton itself never answers either
/// code). Writes keep their request id, so trying again elsewhere cannot
/// apply them twice.
pub fn is_transient(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Cancelled => true,
        Code::Unknown => status.message().contains("transport error"),
        _ => false,
    }
}

/// Wraps `message` with `remaining` as its gRPC deadline.
pub fn with_deadline<T>(message: T, remaining: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(remaining);
    request
}

/// Where a call (or a feed) stands among the endpoints: the endpoint whose
/// turn it is, and the one being tried, which differs while a leader hint
/// is followed.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    in_turn: usize,
    at: usize,
}

impl Rotation {
    /// The endpoint to try now.
    pub fn index(&self) -> usize {
        self.at
    }
}

/// Endpoints learned from leader hints beyond those given: enough for a
/// cluster that grew, bounded against a flood of odd hints.
const MAX_LEARNED_ENDPOINTS: usize = 16;

/// Lazily connected channels to every endpoint, and which one answered
/// last. A leader hint naming an address not in the list adds it (a node
/// added to the cluster after the client was configured).
#[derive(Debug)]
pub struct Endpoints {
    known: RwLock<Vec<(String, Channel)>>,
    given: usize,
    tls: Option<ClientTlsConfig>,
    preferred: AtomicUsize,
}

fn lazy_channel(address: &str, tls: Option<&ClientTlsConfig>) -> Result<Channel> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let bad = |source| Error::BadEndpoint {
        endpoint: address.to_owned(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(bad)?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(false);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.clone()).map_err(bad)?;
    }
    Ok(endpoint.connect_lazy())
}

impl Endpoints {
    /// Channels to `addresses` (`host:port`), with Nagle off: requests are
    /// small and latency-bound.
    pub fn new(addresses: &[String]) -> Result<Self> {
        Endpoints::with_tls(addresses, None)
    }

    /// Like [`Endpoints::new`], over TLS when `tls` is given (the server's
    /// certificate must name the host of each address).
    pub fn with_tls(addresses: &[String], tls: Option<ClientTlsConfig>) -> Result<Self> {
        if addresses.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let known = addresses
            .iter()
            .map(|address| Ok((address.clone(), lazy_channel(address, tls.as_ref())?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Endpoints {
            given: known.len(),
            known: RwLock::new(known),
            tls,
            preferred: AtomicUsize::new(0),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<(String, Channel)>> {
        self.known.read().unwrap_or_else(|p| p.into_inner())
    }

    /// How many endpoints there are (given and learned).
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Always false: there is at least one endpoint.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The channel to endpoint `index` (modulo the number of endpoints).
    pub fn channel(&self, index: usize) -> Channel {
        let known = self.read();
        known[index % known.len()].1.clone()
    }

    /// The endpoint that answered last.
    pub fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed) % self.len()
    }

    /// Remembers `index` as the endpoint to try first.
    pub fn prefer(&self, index: usize) {
        self.preferred.store(index % self.len(), Ordering::Relaxed);
    }

    /// The index of `address`, learning it if it is new and there is room.
    fn index_of(&self, address: &str) -> Option<usize> {
        if let Some(index) = self.read().iter().position(|(a, _)| a == address) {
            return Some(index);
        }
        let channel = lazy_channel(address, self.tls.as_ref()).ok()?;
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if let Some(index) = known.iter().position(|(a, _)| a == address) {
            return Some(index);
        }
        if known.len() >= self.given + MAX_LEARNED_ENDPOINTS {
            return None;
        }
        known.push((address.to_owned(), channel));
        Some(known.len() - 1)
    }

    /// A rotation over the endpoints starting at the one that answered
    /// last.
    pub fn rotation(&self) -> Rotation {
        let preferred = self.preferred();
        Rotation {
            in_turn: preferred,
            at: preferred,
        }
    }

    /// Moves `rotation` on after its endpoint failed with `status`, and
    /// returns the endpoint to try next: the leader it hinted at (learned
    /// if it is not one of ours yet), unless the failed try was itself such
    /// a detour; else the endpoint after the last one tried in turn. So a
    /// stale hint to an unreachable node costs one try, instead of keeping
    /// the call between those two nodes and away from the others.
    pub fn after_failure(&self, rotation: &mut Rotation, status: &Status) -> usize {
        let len = self.len();
        let hinted = status
            .metadata()
            .get(LEADER_HINT_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|address| self.index_of(address));
        let detour = rotation.at != rotation.in_turn;
        match hinted {
            Some(hinted) if !detour && hinted != rotation.at % len => rotation.at = hinted,
            _ => {
                rotation.in_turn = (rotation.in_turn + 1) % len;
                rotation.at = rotation.in_turn;
            }
        }
        rotation.at
    }

    /// Calls `rpc` (given a channel and the time it may take) on one
    /// endpoint after another until one answers with anything but
    /// UNAVAILABLE, for at most `timeout`; each attempt gets its share of
    /// the time left ([`attempt_budget`]), and one that runs out of it is
    /// tried elsewhere. Retrying is safe for writes that keep their request
    /// id: the cluster applies each id once.
    pub async fn call<T, F, Fut>(&self, timeout: Duration, rpc: F) -> Result<T>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        self.call_with(timeout, Attempts::Shared, rpc).await
    }

    /// [`Endpoints::call`], each attempt taking the time `per_attempt` says.
    pub(crate) async fn call_with<T, F, Fut>(
        &self,
        timeout: Duration,
        per_attempt: Attempts,
        mut rpc: F,
    ) -> Result<T>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + timeout;
        let mut rotation = self.rotation();
        let mut index = rotation.index();
        let mut attempts = 0usize;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let budget = match per_attempt {
                Attempts::Shared => attempt_budget(remaining),
                Attempts::Whole => remaining,
            };
            let answer = tokio::time::timeout(budget, rpc(self.channel(index), budget)).await;
            let status = match answer {
                Ok(Ok(response)) => {
                    self.prefer(index);
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) if is_transient(&status) => status,
                // The attempt's share of the time, passed on to the node,
                // ran out there.
                Ok(Err(status))
                    if status.code() == Code::DeadlineExceeded && Instant::now() < deadline =>
                {
                    status
                }
                Ok(Err(status)) => return Err(status.into()),
                Err(_) if Instant::now() < deadline => {
                    Status::deadline_exceeded("the endpoint did not answer in time")
                }
                Err(_) => {
                    return Err(Status::deadline_exceeded("no endpoint answered in time").into())
                }
            };
            attempts += 1;
            index = self.after_failure(&mut rotation, &status);
            if attempts.is_multiple_of(self.len()) {
                tokio::time::sleep(ROUND_PAUSE.min(remaining)).await;
            }
            if Instant::now() >= deadline {
                return Err(status.into());
            }
        }
    }
}

/// The outcome of a call whose answer carries nothing but success: ABORTED
/// answers a retried request id that was applied before (its primitive has
/// changed since, so the first answer cannot be given again), which for
/// such a call is success.
pub(crate) fn applied<T>(answer: Result<T>) -> Result<()> {
    match answer {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Code::Aborted => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tests/administration.rs` failed once on a write whose node was
    /// killed under it: hyper had cancelled the call with its connection.
    #[test]
    fn a_call_dropped_with_its_connection_is_tried_elsewhere() {
        assert!(is_transient(&Status::cancelled("operation was canceled")));
        assert!(is_transient(&Status::unavailable("no leader")));
        assert!(is_transient(&Status::unknown("transport error")));
        assert!(!is_transient(&Status::unknown("something else")));
        assert!(!is_transient(&Status::invalid_argument("bad name")));
        assert!(!is_transient(&Status::deadline_exceeded("too late")));
    }

    /// A stale hint to a node the client cannot reach sent every other try
    /// back to the node that gave it: with `[a, b, c]`, `a` hinting at `c`
    /// and `c` unreachable, `b` was never tried.
    // A runtime: a learned endpoint's channel is made on one.
    #[tokio::test]
    async fn a_hint_is_one_detour_and_the_rotation_goes_on_past_the_node_that_gave_it() {
        let given = ["a:1", "b:2", "c:3"].map(String::from);
        let endpoints = Endpoints::new(&given).expect("endpoints");
        let mut hinting = Status::unavailable("not the leader");
        hinting
            .metadata_mut()
            .insert(LEADER_HINT_METADATA, "c:3".parse().expect("metadata value"));
        let unreachable = Status::unavailable("connection refused");
        let mut rotation = endpoints.rotation();
        assert_eq!(rotation.index(), 0);
        assert_eq!(endpoints.after_failure(&mut rotation, &hinting), 2);
        assert_eq!(endpoints.after_failure(&mut rotation, &unreachable), 1);
        // `b` hints at `c` too: one more detour, then on to `c` in turn.
        assert_eq!(endpoints.after_failure(&mut rotation, &hinting), 2);
        assert_eq!(endpoints.after_failure(&mut rotation, &unreachable), 2);
        assert_eq!(endpoints.after_failure(&mut rotation, &unreachable), 0);
        // A hint naming the endpoint that gave it is no detour.
        let mut rotation = endpoints.rotation();
        let mut own = Status::unavailable("no quorum");
        own.metadata_mut()
            .insert(LEADER_HINT_METADATA, "a:1".parse().expect("metadata value"));
        assert_eq!(endpoints.after_failure(&mut rotation, &own), 1);
        // A hint naming a node not given is learned and tried.
        let mut rotation = endpoints.rotation();
        let mut new = Status::unavailable("not the leader");
        new.metadata_mut()
            .insert(LEADER_HINT_METADATA, "d:4".parse().expect("metadata value"));
        assert_eq!(endpoints.after_failure(&mut rotation, &new), 3);
        assert_eq!(endpoints.after_failure(&mut rotation, &unreachable), 1);
    }

    #[test]
    fn an_attempt_gets_half_the_time_left_but_never_a_mere_sliver() {
        let ms = Duration::from_millis;
        assert_eq!(attempt_budget(ms(1_000)), ms(500));
        assert_eq!(attempt_budget(ms(80)), ms(50));
        assert_eq!(attempt_budget(ms(30)), ms(30));
        assert_eq!(attempt_budget(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn aborted_means_applied_before_and_other_errors_stay() {
        assert!(applied(Ok::<_, Error>(5)).is_ok());
        assert!(applied::<()>(Err(Status::aborted("already applied").into())).is_ok());
        let refused = applied::<()>(Err(Status::failed_precondition("no").into()));
        assert_eq!(refused.unwrap_err().code(), Code::FailedPrecondition);
    }
}
