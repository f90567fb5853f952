//! Writes a follower forwards to its leader, many on one peer stream
//! (`ProposeStream`): each request carries an id, each reply the id it
//! answers, as the leader finishes them. One stream per leader
//! spares every forwarded write its own HTTP/2 call (headers, a task on
//! each side, a hop through the channel's buffer). A leader that does not
//! know the stream (an older version) gets unary `Propose` calls.
//! A write queued on a stream is sent even if its caller has given up
//! meanwhile; the caller was told its outcome is unknown, and a client's
//! request id keeps a late copy from being applied after its next request
//! (the exactly-once window).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Status;

use crate::network::{never_sent, PeerChannels};
use crate::proto::baton::v1::raft_service_client::RaftServiceClient;
use crate::proto::baton::v1::{RaftPayload, TaggedPayload};

/// Requests a follower may have queued on one stream before senders wait.
const QUEUED_REQUESTS: usize = 1024;

/// Why a forwarded request has no reply.
#[derive(Debug)]
pub enum ForwardFailure {
    /// The request never left this node: retrying cannot apply it twice.
    NotSent(String),
    /// The request may have reached the leader; its fate is unknown.
    Lost(String),
}

/// This node's way to the leader: one stream at a time (a new leader's
/// replaces the last), or unary calls to a leader that refused the stream.
#[derive(Clone)]
pub struct Forwarder {
    channels: PeerChannels,
    route: Arc<Mutex<Option<Route>>>,
}

enum Route {
    /// The stream open to a leader.
    Stream(Arc<Link>),
    /// The leader at this address answered the stream UNIMPLEMENTED (an
    /// older version). Forgotten when writes go to another leader, so a
    /// node upgraded since (its restart moved leadership away) is offered
    /// the stream again.
    Unary(String),
}

/// One stream to a leader. Dropping the last handle ends the request
/// side; the leader then answers what it has and ends its side too.
struct Link {
    addr: String,
    requests: mpsc::Sender<TaggedPayload>,
    waiting: Arc<Mutex<Waiting>>,
}

#[derive(Default)]
struct Waiting {
    next_id: u64,
    /// Set (under the lock) once the stream has ended: nothing registered
    /// after that would ever be answered.
    ended: Option<String>,
    replies: HashMap<u64, oneshot::Sender<Result<Vec<u8>, String>>>,
}

impl Forwarder {
    /// A forwarder that reaches leaders through `channels`.
    pub fn new(channels: PeerChannels) -> Self {
        Forwarder {
            channels,
            route: Arc::default(),
        }
    }

    /// Sends `request` (an encoded command) to the leader at `addr` and
    /// returns its encoded reply.
    pub async fn forward(
        &self,
        addr: &str,
        request: RaftPayload,
    ) -> Result<RaftPayload, ForwardFailure> {
        let link = match self.route_to(addr) {
            Some(Route::Stream(link)) => link,
            Some(Route::Unary(_)) => return unary(self.client(addr)?, request).await,
            None => {
                let mut client = self.client(addr)?;
                match self.open(addr, &mut client).await {
                    Ok(link) => link,
                    Err(status) if status.code() == tonic::Code::Unimplemented => {
                        *lock(&self.route) = Some(Route::Unary(addr.to_owned()));
                        return unary(client, request).await;
                    }
                    Err(status) => {
                        return Err(ForwardFailure::NotSent(status.message().to_owned()))
                    }
                }
            }
        };
        let payload = link.exchange(request.payload).await?;
        Ok(RaftPayload { payload })
    }

    /// A client of the leader at `addr`, to open a stream or call it unary.
    fn client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, ForwardFailure> {
        self.channels
            .client(addr)
            .map_err(|e| ForwardFailure::NotSent(e.to_string()))
    }

    /// The way to `addr` if there is one (a stream still open, or the
    /// leader there refused streams).
    fn route_to(&self, addr: &str) -> Option<Route> {
        match lock(&self.route).as_ref()? {
            Route::Stream(link) if link.addr == addr && link.is_open() => {
                Some(Route::Stream(link.clone()))
            }
            Route::Unary(to) if to == addr => Some(Route::Unary(to.clone())),
            _ => None,
        }
    }

    /// Opens a stream to `addr` and makes it the way there (unless a
    /// concurrent caller's got there first: then that one is used).
    async fn open(
        &self,
        addr: &str,
        client: &mut RaftServiceClient<Channel>,
    ) -> Result<Arc<Link>, Status> {
        let (requests, outbound) = mpsc::channel(QUEUED_REQUESTS);
        let replies = client
            .propose_stream(ReceiverStream::new(outbound))
            .await?
            .into_inner();
        let link = Arc::new(Link {
            addr: addr.to_owned(),
            requests,
            waiting: Arc::default(),
        });
        let mut route = lock(&self.route);
        if let Some(Route::Stream(existing)) = route.as_ref() {
            if existing.addr == addr && existing.is_open() {
                return Ok(existing.clone());
            }
        }
        *route = Some(Route::Stream(link.clone()));
        drop(route);
        tokio::spawn(dispatch(link.waiting.clone(), replies));
        Ok(link)
    }
}

impl Link {
    fn is_open(&self) -> bool {
        lock(&self.waiting).ended.is_none()
    }

    async fn exchange(&self, payload: Vec<u8>) -> Result<Vec<u8>, ForwardFailure> {
        let (reply_to, reply) = oneshot::channel();
        let id = {
            let mut waiting = lock(&self.waiting);
            if let Some(reason) = &waiting.ended {
                return Err(ForwardFailure::NotSent(reason.clone()));
            }
            let id = waiting.next_id;
            waiting.next_id += 1;
            waiting.replies.insert(id, reply_to);
            id
        };
        // A caller that gives up (its deadline) takes its entry with it.
        let _registered = Registered { link: self, id };
        if self
            .requests
            .send(TaggedPayload { id, payload })
            .await
            .is_err()
        {
            return Err(ForwardFailure::NotSent(
                "the stream to the leader closed".into(),
            ));
        }
        match reply.await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(reason)) => Err(ForwardFailure::Lost(reason)),
            Err(_) => Err(ForwardFailure::Lost(
                "the stream to the leader ended".into(),
            )),
        }
    }
}

/// Hands each reply to its caller until the stream ends; then fails
/// whoever is still waiting (their requests may have been applied).
async fn dispatch(waiting: Arc<Mutex<Waiting>>, mut replies: tonic::Streaming<TaggedPayload>) {
    let reason = loop {
        match replies.message().await {
            Ok(Some(TaggedPayload { id, payload })) => {
                if let Some(caller) = lock(&waiting).replies.remove(&id) {
                    let _ = caller.send(Ok(payload));
                }
            }
            Ok(None) => break "the leader ended the stream".to_owned(),
            Err(status) => break format!("forwarding stream failed: {}", status.message()),
        }
    };
    let callers = {
        let mut waiting = lock(&waiting);
        waiting.ended = Some(reason.clone());
        std::mem::take(&mut waiting.replies)
    };
    for caller in callers.into_values() {
        let _ = caller.send(Err(reason.clone()));
    }
}

struct Registered<'a> {
    link: &'a Link,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(&self.link.waiting).replies.remove(&self.id);
    }
}

async fn unary(
    mut client: RaftServiceClient<Channel>,
    request: RaftPayload,
) -> Result<RaftPayload, ForwardFailure> {
    match client.propose(request).await {
        Ok(reply) => Ok(reply.into_inner()),
        // The leader was never reached.
        Err(status) if never_sent(&status) => {
            Err(ForwardFailure::NotSent(status.message().to_owned()))
        }
        Err(status) => Err(ForwardFailure::Lost(status.message().to_owned())),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::stand_in_peer::{serve, StandIn};

    fn payload(bytes: Vec<u8>) -> RaftPayload {
        RaftPayload { payload: bytes }
    }

    async fn stand_in(stand_in: StandIn) -> (Arc<StandIn>, String, Forwarder) {
        let stand_in = Arc::new(stand_in);
        let addr = serve(stand_in.clone()).await.to_string();
        (stand_in, addr, Forwarder::new(PeerChannels::default()))
    }

    #[tokio::test]
    async fn forwarded_writes_share_one_stream_and_each_gets_its_own_reply() {
        let (leader, addr, forwarder) = stand_in(StandIn::default()).await;
        assert_eq!(
            forwarder.forward(&addr, payload(vec![0])).await.ok(),
            Some(payload(vec![0]))
        );
        // The first sent wait longest: their replies come back last.
        let writes = (0..32u8).map(|i| {
            let forwarder = forwarder.clone();
            let addr = addr.clone();
            async move { forwarder.forward(&addr, payload(vec![64 - 2 * i, i])).await }
        });
        let replies = futures::future::join_all(writes).await;
        for (i, reply) in (0..32u8).zip(replies) {
            assert_eq!(reply.ok(), Some(payload(vec![64 - 2 * i, i])));
        }
        assert_eq!(leader.streams_opened.load(Ordering::SeqCst), 1);
        assert_eq!(leader.unary_calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_leader_without_the_stream_gets_unary_calls_until_another_leads() {
        let older = StandIn {
            without_streams: true,
            ..StandIn::default()
        };
        let (old_leader, old_addr, forwarder) = stand_in(older).await;
        for i in 0..3u8 {
            let reply = forwarder.forward(&old_addr, payload(vec![0, i])).await;
            assert_eq!(reply.ok(), Some(payload(vec![0, i])));
        }
        assert_eq!(old_leader.unary_calls.load(Ordering::SeqCst), 3);
        assert_eq!(old_leader.streams_refused.load(Ordering::SeqCst), 1);
        // Leadership moves on and comes back (the node may have been
        // upgraded meanwhile): the stream is offered again.
        let new_leader = Arc::new(StandIn::default());
        let new_addr = serve(new_leader.clone()).await.to_string();
        let reply = forwarder.forward(&new_addr, payload(vec![0, 9])).await;
        assert_eq!(reply.ok(), Some(payload(vec![0, 9])));
        assert_eq!(new_leader.streams_opened.load(Ordering::SeqCst), 1);
        let reply = forwarder.forward(&old_addr, payload(vec![0, 4])).await;
        assert_eq!(reply.ok(), Some(payload(vec![0, 4])));
        assert_eq!(old_leader.streams_refused.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_broken_stream_loses_its_writes_and_the_next_write_opens_another() {
        let breaking = StandIn::default();
        breaking.streams_to_break.store(1, Ordering::SeqCst);
        let (leader, addr, forwarder) = stand_in(breaking).await;
        // Sent, then the stream failed: it may have been applied.
        assert!(matches!(
            forwarder.forward(&addr, payload(vec![0, 1])).await,
            Err(ForwardFailure::Lost(_))
        ));
        assert_eq!(
            forwarder.forward(&addr, payload(vec![0, 2])).await.ok(),
            Some(payload(vec![0, 2]))
        );
        assert_eq!(leader.streams_opened.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_write_to_a_leader_that_is_not_listening_is_not_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        drop(listener);
        let forwarder = Forwarder::new(PeerChannels::default());
        assert!(matches!(
            forwarder.forward(&addr, payload(vec![0])).await,
            Err(ForwardFailure::NotSent(_))
        ));
    }

    #[tokio::test]
    async fn a_write_whose_caller_gives_up_leaves_nothing_waiting() {
        let (_leader, addr, forwarder) = stand_in(StandIn::default()).await;
        let slow = forwarder.forward(&addr, payload(vec![200]));
        assert!(tokio::time::timeout(Duration::from_millis(20), slow)
            .await
            .is_err());
        let Some(Route::Stream(link)) = forwarder.route_to(&addr) else {
            panic!("the stream stays open");
        };
        assert!(lock(&link.waiting).replies.is_empty());
        // The late reply is dropped; the next write gets its own.
        assert_eq!(
            forwarder.forward(&addr, payload(vec![0, 7])).await.ok(),
            Some(payload(vec![0, 7]))
        );
    }
}
