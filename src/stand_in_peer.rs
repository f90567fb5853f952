//! A peer service for unit tests of the peer streams' client side: a real
//! gRPC server on loopback that echoes payloads, can act as a node of an
//! older version (no streams: UNIMPLEMENTED), can break a stream, and counts
//! what it was sent.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::proto::baton::v1::raft_service_server::{RaftService, RaftServiceServer};
use crate::proto::baton::v1::{
    JoinRequest, Members, NodeInfoRequest, NodeInfoResponse, PreVoteRequest, PreVoteResponse,
    RaftPayload, ReadIndexRequest, ReadIndexResponse, RemoveRequest, TaggedPayload,
};

/// What the stand-in does and has seen.
#[derive(Default)]
pub struct StandIn {
    /// Answer the stream methods UNIMPLEMENTED, as a node of an older
    /// version does.
    pub without_streams: bool,
    /// Streams (either kind) still to be ended with an error after their
    /// first request, unanswered.
    pub streams_to_break: AtomicUsize,
    /// Streams opened (either kind).
    pub streams_opened: AtomicUsize,
    /// Streams refused UNIMPLEMENTED (either kind).
    pub streams_refused: AtomicUsize,
    /// Unary AppendEntries and Propose calls.
    pub unary_calls: AtomicUsize,
}

/// Serves `stand_in` on a free loopback port; returns its address.
pub async fn serve(stand_in: Arc<StandIn>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftServiceServer::from_arc(stand_in))
            .serve_with_incoming(incoming),
    );
    addr
}

/// A tagged request's payload names how long to wait before echoing it
/// (its first byte, in milliseconds), so replies can overtake each other.
async fn echo_later(request: TaggedPayload) -> Result<TaggedPayload, Status> {
    let millis = request.payload.first().copied().unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(u64::from(millis))).await;
    Ok(request)
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl StandIn {
    /// A stream method's start: the requests to serve, or its whole answer
    /// (refused as by an older node, or a stream to break).
    fn opened<T: Send + 'static>(
        &self,
        request: Request<Streaming<T>>,
    ) -> Result<Streaming<T>, Result<Response<Boxed<T>>, Status>> {
        if self.without_streams {
            self.streams_refused.fetch_add(1, Ordering::SeqCst);
            return Err(Err(Status::unimplemented("an older node")));
        }
        self.streams_opened.fetch_add(1, Ordering::SeqCst);
        let requests = request.into_inner();
        let breaks = self
            .streams_to_break
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if breaks {
            // Reads one request and ends with an error instead of a reply.
            let broken = requests
                .take(1)
                .map(|_| Err(Status::internal("a broken stream")));
            return Err(Ok(Response::new(Box::pin(broken))));
        }
        Ok(requests)
    }
}

#[tonic::async_trait]
impl RaftService for StandIn {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.unary_calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(request.into_inner()))
    }

    type AppendEntriesStreamStream = Boxed<RaftPayload>;

    async fn append_entries_stream(
        &self,
        request: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<Self::AppendEntriesStreamStream>, Status> {
        let requests = match self.opened(request) {
            Ok(requests) => requests,
            Err(answer) => return answer,
        };
        Ok(Response::new(Box::pin(requests)))
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn propose(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.unary_calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(request.into_inner()))
    }

    type ProposeStreamStream = Boxed<TaggedPayload>;

    async fn propose_stream(
        &self,
        request: Request<Streaming<TaggedPayload>>,
    ) -> Result<Response<Self::ProposeStreamStream>, Status> {
        let requests = match self.opened(request) {
            Ok(requests) => requests,
            Err(answer) => return answer,
        };
        let replies = requests
            .map(|request| async move { echo_later(request?).await })
            .buffer_unordered(64);
        Ok(Response::new(Box::pin(replies)))
    }

    async fn pre_vote(
        &self,
        _request: Request<PreVoteRequest>,
    ) -> Result<Response<PreVoteResponse>, Status> {
        Err(Status::unimplemented("not part of the stand-in"))
    }

    async fn read_index(
        &self,
        _request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        Err(Status::unimplemented("not part of the stand-in"))
    }

    async fn node_info(
        &self,
        _request: Request<NodeInfoRequest>,
    ) -> Result<Response<NodeInfoResponse>, Status> {
        Err(Status::unimplemented("not part of the stand-in"))
    }

    async fn join(&self, _request: Request<JoinRequest>) -> Result<Response<Members>, Status> {
        Err(Status::unimplemented("not part of the stand-in"))
    }

    async fn remove(&self, _request: Request<RemoveRequest>) -> Result<Response<Members>, Status> {
        Err(Status::unimplemented("not part of the stand-in"))
    }
}
