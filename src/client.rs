//! A small gRPC client for Baton: endpoint failover that follows the
//! leader hint, and typed helpers for every RPC. Used by the CLI and tests.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::error::LEADER_ADDR_METADATA;
use crate::proto::atomix::primitive::{PrimitiveId, RequestHeader};

/// Connections to every endpoint of a cluster.
pub struct Client {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    preferred: AtomicUsize,
    timeout: Duration,
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No endpoints given.
    #[error("no endpoints given")]
    NoEndpoints,
    /// An endpoint is not a valid address.
    #[error("bad endpoint {endpoint:?}: {source}")]
    BadEndpoint {
        /// The endpoint.
        endpoint: String,
        /// Why.
        source: tonic::transport::Error,
    },
}

/// A fresh request id, above every id this process handed out before and,
/// being the wall clock in microseconds, above those of earlier processes
/// using the same client id: the cluster refuses request ids at or below
/// the highest it applied for a client (DESIGN §3), so they must increase.
pub fn next_request_id() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let micros = crate::clock::wall_clock_ms().saturating_mul(1_000).max(1);
    let previous = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(micros.max(last.saturating_add(1)))
        })
        .unwrap_or(0);
    micros.max(previous.saturating_add(1))
}

/// A request header for `client_id` on the primitive `name` of `type_name`.
pub fn header(
    client_id: &str,
    type_name: &str,
    name: &str,
    request_id: u64,
) -> Option<RequestHeader> {
    Some(RequestHeader {
        client_id: client_id.to_owned(),
        primitive_id: Some(PrimitiveId {
            r#type: type_name.to_owned(),
            name: name.to_owned(),
        }),
        request_id,
        request_type: 0,
    })
}

impl Client {
    /// A client for `endpoints` (host:port) whose calls give up after `timeout`.
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let channels = endpoints
            .iter()
            .map(|endpoint| {
                Endpoint::from_shared(format!("http://{endpoint}"))
                    .map(|e| {
                        e.connect_timeout(Duration::from_millis(500))
                            .tcp_nodelay(true)
                            .connect_lazy()
                    })
                    .map_err(|source| ClientError::BadEndpoint {
                        endpoint: endpoint.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Client {
            endpoints: endpoints.to_vec(),
            channels,
            preferred: AtomicUsize::new(0),
            timeout,
        })
    }

    /// The channel to endpoint `index`.
    pub fn channel(&self, index: usize) -> Channel {
        self.channels[index % self.channels.len()].clone()
    }

    /// Calls `rpc` on one endpoint after another until one answers with
    /// anything but UNAVAILABLE, following the leader hint when there is one,
    /// for at most the client's timeout. Retrying is safe for writes that
    /// carry a request id (the cluster applies them once).
    pub async fn call<T, F, Fut>(&self, mut rpc: F) -> Result<T, Status>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut index = self.preferred.load(Ordering::Relaxed);
        let mut attempts = 0usize;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = tokio::time::timeout(remaining, rpc(self.channel(index), remaining)).await;
            let status = match result {
                Ok(Ok(response)) => {
                    self.preferred
                        .store(index % self.channels.len(), Ordering::Relaxed);
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) if status.code() == Code::Unavailable => status,
                Ok(Err(status)) => return Err(status),
                Err(_) => return Err(Status::deadline_exceeded("no endpoint answered in time")),
            };
            attempts += 1;
            let hinted = status
                .metadata()
                .get(LEADER_ADDR_METADATA)
                .and_then(|v| v.to_str().ok())
                .and_then(|addr| self.endpoints.iter().position(|e| e == addr));
            index = match hinted {
                Some(hinted) if hinted != index % self.channels.len() => hinted,
                _ => index + 1,
            };
            if attempts.is_multiple_of(self.channels.len()) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if Instant::now() >= deadline {
                return Err(status);
            }
        }
    }
}

/// Adds the remaining time as the request's gRPC deadline.
pub fn with_deadline<T>(message: T, remaining: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(remaining);
    request
}
