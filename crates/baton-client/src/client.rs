//! The client: endpoints, one session, and handles on primitives.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::election::Election;
use crate::error::{Error, Result};
use crate::latch::Latch;
use crate::proto::atomix::primitive::{PrimitiveId, RequestHeader};
use crate::proto::baton::v1::admin_service_client::AdminServiceClient;
use crate::proto::baton::v1::session_service_client::SessionServiceClient;
use crate::proto::baton::v1::{
    AddNodeRequest, CloseSessionRequest, KeepAliveRequest, OpenSessionRequest, RemoveNodeRequest,
    SaveSnapshotRequest, StatusRequest, StatusResponse,
};
use crate::session::{keep_alive, Ended, SessionState};
use crate::transport::{next_request_id, with_deadline, Attempts, Endpoints};
use crate::view::Kind;

/// Session timeout asked for unless the builder says otherwise.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one call may take, retries across endpoints included.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Share of the session timeout the client-side lease gives up for clock
/// rate differences between client and leader (real drift is far below
/// 1 %; the rest absorbs scheduling delays after the lease check).
pub const DEFAULT_LEASE_MARGIN: f64 = 0.1;

/// Builds a [`Client`]: endpoints, identity and timing.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    tls: Option<tonic::transport::ClientTlsConfig>,
    client_id: Option<String>,
    session_timeout: Duration,
    call_timeout: Duration,
    lease_margin: f64,
}

impl ClientBuilder {
    /// The client id (default: `baton-` and 16 random hex digits). Two
    /// processes must never share one.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// The session timeout to ask for (default 10 s); the cluster may cap it.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// How long one call may take, retries included (default 5 s).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Share of the session timeout the client-side lease gives up for
    /// drift (default 0.1, clamped to 0.01..=0.5; NaN means the default).
    pub fn lease_margin(mut self, margin: f64) -> Self {
        self.lease_margin = margin;
        self
    }

    /// Talks TLS, trusting the certificate authority in `ca_pem` (PEM) for
    /// the nodes' client port.
    pub fn tls_ca_pem(mut self, ca_pem: impl AsRef<[u8]>) -> Self {
        let ca = tonic::transport::Certificate::from_pem(ca_pem);
        self.tls = Some(tonic::transport::ClientTlsConfig::new().ca_certificate(ca));
        self
    }

    /// Talks TLS with this configuration (client certificates, a fixed
    /// server name, ...).
    pub fn tls(mut self, tls: tonic::transport::ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Opens the session and starts keeping it alive.
    pub async fn connect(self) -> Result<Client> {
        let mut inner = self.build(true)?;
        let opened_at = Instant::now();
        let granted = inner.open_session().await?;
        let session = Arc::new(SessionState::new(granted, inner.lease_margin, opened_at));
        inner.session = session.clone();
        let inner = Arc::new(inner);
        tokio::spawn(keep_alive(Arc::downgrade(&inner), session));
        Ok(Client { inner })
    }

    /// A client for a session someone else opens and keeps alive (the
    /// CLI's one-shot commands): nothing is opened or renewed, and it can
    /// call every RPC but cannot hold a [`crate::Leadership`].
    pub fn attach(self) -> Result<Client> {
        Ok(Client {
            inner: Arc::new(self.build(false)?),
        })
    }

    fn build(self, managed: bool) -> Result<Inner> {
        let endpoints = Endpoints::with_tls(&self.endpoints, self.tls)?;
        let client_id = self
            .client_id
            .unwrap_or_else(|| format!("baton-{:016x}", rand::random::<u64>()));
        let lease_margin = if self.lease_margin.is_nan() {
            DEFAULT_LEASE_MARGIN
        } else {
            self.lease_margin.clamp(0.01, 0.5)
        };
        Ok(Inner {
            endpoints,
            client_id,
            call_timeout: self.call_timeout,
            asked_timeout: self.session_timeout,
            lease_margin,
            managed,
            session: Arc::new(SessionState::unmanaged()),
            releases: tokio::sync::watch::Sender::new(0),
        })
    }
}

/// What every handle of one client shares.
#[derive(Debug)]
pub(crate) struct Inner {
    pub endpoints: Endpoints,
    pub client_id: String,
    pub call_timeout: Duration,
    /// The session timeout asked for when opening.
    pub asked_timeout: Duration,
    pub lease_margin: f64,
    /// Whether this client opened its session and keeps it alive (only
    /// such a client can lead).
    pub managed: bool,
    pub session: Arc<SessionState>,
    /// Releases of dropped leaderships still on their way to the cluster;
    /// campaigning waits for them, so a late withdraw cannot undo a
    /// leadership won after it.
    pub releases: tokio::sync::watch::Sender<usize>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.managed {
            return;
        }
        // Stops the keep-alives; the cluster ends the session after its
        // timeout. `Client::close` ends it at once.
        self.session.end(Ended::Closed);
    }
}

impl Inner {
    /// The request id of a write, taken once every dropped leadership's
    /// release has reached the cluster: a release numbered after the write
    /// could undo it, and one numbered before it but arriving later would
    /// be refused as overtaken (or, on a cluster without ordered requests,
    /// undo it all the same).
    pub async fn write_id(&self) -> Result<u64> {
        // At most a call's time: a release is retried until the cluster
        // takes it, which an outage delays (then UNAVAILABLE).
        let mut pending = self.releases.subscribe();
        let landed = pending.wait_for(|pending| *pending == 0);
        if tokio::time::timeout(self.call_timeout, landed)
            .await
            .is_err()
        {
            return Err(tonic::Status::unavailable(
                "a dropped leadership's release has not reached the cluster yet",
            )
            .into());
        }
        Ok(next_request_id())
    }

    /// A request header for this client on `name` of `kind`.
    pub fn header(&self, kind: Kind, name: &str, request_id: u64) -> Option<RequestHeader> {
        request_header(&self.client_id, kind, name, request_id)
    }

    /// Sends OpenSession for this client id with the timeout asked for and
    /// returns the timeout granted (opening an open session renews it).
    pub async fn open_session(&self) -> Result<Duration> {
        let client_id = self.client_id.clone();
        let timeout_ms = u64::try_from(self.asked_timeout.as_millis()).unwrap_or(u64::MAX);
        let opened = self
            .endpoints
            .call(self.call_timeout, |channel, remaining| {
                let request = OpenSessionRequest {
                    client_id: client_id.clone(),
                    timeout_ms,
                };
                async move {
                    SessionServiceClient::new(channel)
                        .open_session(with_deadline(request, remaining))
                        .await
                }
            })
            .await?;
        Ok(Duration::from_millis(opened.timeout_ms))
    }

    /// Sends one KeepAlive (for at most `timeout`) and returns the session
    /// timeout. A managed client's lease then runs from the send time; if
    /// the cluster no longer knows the session, it is over for good.
    pub async fn renew(&self, timeout: Duration) -> Result<Duration> {
        let sent_at = Instant::now();
        let client_id = self.client_id.clone();
        let renewed = self
            .endpoints
            .call(timeout, |channel, remaining| {
                let request = KeepAliveRequest {
                    client_id: client_id.clone(),
                };
                async move {
                    SessionServiceClient::new(channel)
                        .keep_alive(with_deadline(request, remaining))
                        .await
                }
            })
            .await;
        match renewed {
            Ok(renewed) => {
                let timeout = Duration::from_millis(renewed.timeout_ms);
                if self.managed {
                    self.session.confirmed(sent_at, timeout);
                }
                Ok(timeout)
            }
            Err(error) => {
                if self.managed && is_session_gone(&error) {
                    self.session.end(Ended::SessionLost(error.to_string()));
                }
                Err(error)
            }
        }
    }

    /// Refuses calls once the session is over.
    pub fn check_session(&self) -> Result<()> {
        match self.session.ended_because() {
            Some(why) => Err(Error::SessionLost(why.to_string())),
            None => Ok(()),
        }
    }

    /// [`Inner::check_session`], and for a managed client whose lease has
    /// run out, a keep-alive first: the cluster may have expired the
    /// session meanwhile, and a write or an Events stream would open it
    /// again, empty, behind the caller's back (a node opens a session for
    /// a client that has none). The keep-alive ends the session here if
    /// it is gone. While the lease runs, the cluster cannot have expired it.
    pub async fn confirm_session(&self) -> Result<()> {
        self.check_session()?;
        if self.managed && !self.session.alive() {
            self.renew(self.call_timeout).await?;
            self.check_session()?;
        }
        Ok(())
    }
}

/// The request header of `client_id` on the primitive `name` of `kind`
/// (`request_id` 0 for reads), for callers that build requests themselves.
pub fn request_header(
    client_id: &str,
    kind: Kind,
    name: &str,
    request_id: u64,
) -> Option<RequestHeader> {
    Some(RequestHeader {
        client_id: client_id.to_owned(),
        primitive_id: Some(PrimitiveId {
            r#type: kind.type_name().to_owned(),
            name: name.to_owned(),
        }),
        request_id,
        request_type: 0,
    })
}

/// A connection to a Baton cluster with one session, kept alive in the
/// background. Cheap to clone; every clone shares the session. Dropping the
/// last clone stops the keep-alives (the cluster then ends the session after
/// its timeout); [`Client::close`] ends it at once.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl Client {
    /// A builder for a client of the cluster at `endpoints` (`host:port`).
    pub fn builder<S: AsRef<str>>(endpoints: &[S]) -> ClientBuilder {
        ClientBuilder {
            endpoints: endpoints.iter().map(|e| e.as_ref().to_owned()).collect(),
            tls: None,
            client_id: None,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            lease_margin: DEFAULT_LEASE_MARGIN,
        }
    }

    /// Connects with the defaults: a random client id and a 10 s session.
    pub async fn connect<S: AsRef<str>>(endpoints: &[S]) -> Result<Client> {
        Client::builder(endpoints).connect().await
    }

    /// This client's id: its name as a latch participant or candidate.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The session timeout as the cluster last reported it: granted when
    /// the session opened, confirmed by every keep-alive since (another
    /// OpenSession for the same client id may have changed it). The
    /// client-side lease and the keep-alive rate follow it.
    pub fn session_timeout(&self) -> Duration {
        self.inner.session.timeout()
    }

    /// Whether the session is open and its client-side lease runs.
    pub fn is_alive(&self) -> bool {
        self.inner.session.alive()
    }

    /// Why the session ended, if it has.
    pub fn ended(&self) -> Option<Ended> {
        self.inner.session.ended_because()
    }

    /// Waits until the session ends for good and says why.
    pub async fn session_ended(&self) -> Ended {
        self.inner.session.ended.cancelled().await;
        self.inner.session.ended_because().unwrap_or(Ended::Closed)
    }

    /// Sends OpenSession for this client id with the timeout asked for and
    /// returns the timeout granted (opening an open session renews it).
    pub async fn open_session(&self) -> Result<Duration> {
        self.inner.open_session().await
    }

    /// Renews the session once, now (a managed client also does this in
    /// the background), and returns its timeout.
    pub async fn keep_alive(&self) -> Result<Duration> {
        self.inner.check_session()?;
        self.inner.renew(self.inner.call_timeout).await
    }

    /// A handle on the leader latch `name`.
    pub fn latch(&self, name: impl Into<String>) -> Latch {
        Latch::new(self.clone(), name.into())
    }

    /// A handle on the leader election `name`.
    pub fn election(&self, name: impl Into<String>) -> Election {
        Election::new(self.clone(), name.into())
    }

    /// Closes the session: the cluster drops this client from every latch
    /// and election at once, handing over what it led.
    pub async fn close(&self) -> Result<()> {
        if self.inner.managed {
            self.inner.check_session()?;
        }
        let request_id = next_request_id();
        let client_id = self.inner.client_id.clone();
        let closed = self
            .inner
            .endpoints
            .call(self.inner.call_timeout, |channel, remaining| {
                let request = CloseSessionRequest {
                    client_id: client_id.clone(),
                    request_id,
                };
                async move {
                    SessionServiceClient::new(channel)
                        .close_session(with_deadline(request, remaining))
                        .await
                }
            })
            .await;
        self.inner.session.end(Ended::Closed);
        closed.map(|_| ())
    }

    /// The Raft status of the node at endpoint `index` (no failover: it is
    /// that node's own view).
    pub async fn node_status(&self, index: usize) -> Result<StatusResponse> {
        let channel = self.inner.endpoints.channel(index);
        let request = with_deadline(StatusRequest {}, self.inner.call_timeout);
        Ok(AdminServiceClient::new(channel)
            .status(request)
            .await?
            .into_inner())
    }

    /// Adds node `id`, whose peer (Raft) port is `peer_addr`: it becomes a
    /// learner, then a voter once it has caught up. Returns (voters,
    /// learners). Takes as long as the catching up; give the client a call
    /// timeout to match.
    pub async fn add_node(&self, id: u64, peer_addr: &str) -> Result<(Vec<u64>, Vec<u64>)> {
        let request = AddNodeRequest {
            id,
            peer_addr: peer_addr.to_owned(),
        };
        let answer = self
            .call_with(Attempts::Whole, |channel, left| {
                let request = with_deadline(request.clone(), left);
                async move { AdminServiceClient::new(channel).add_node(request).await }
            })
            .await?;
        Ok((answer.voters, answer.learners))
    }

    /// Removes node `id`; FAILED_PRECONDITION if the voters left could not
    /// form a quorum with the nodes that answer now. Returns (voters,
    /// learners).
    pub async fn remove_node(&self, id: u64) -> Result<(Vec<u64>, Vec<u64>)> {
        let answer = self
            .call_with(Attempts::Whole, |channel, left| {
                let request = with_deadline(RemoveNodeRequest { id }, left);
                async move { AdminServiceClient::new(channel).remove_node(request).await }
            })
            .await?;
        Ok((answer.voters, answer.learners))
    }

    /// A backup of the whole cluster's state, as of a linearizable read:
    /// the bytes of a backup file (header line, then the state).
    pub async fn save_snapshot(&self) -> Result<Vec<u8>> {
        let mut chunks = self
            .call_with(Attempts::Whole, |channel, left| {
                let request = with_deadline(SaveSnapshotRequest {}, left);
                async move {
                    AdminServiceClient::new(channel)
                        .save_snapshot(request)
                        .await
                }
            })
            .await?;
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.message().await.map_err(Error::from)? {
            bytes.extend_from_slice(&chunk.data);
        }
        Ok(bytes)
    }

    /// Calls `rpc` with failover and this client's call timeout.
    pub(crate) async fn call<T, F, Fut>(&self, rpc: F) -> Result<T>
    where
        F: FnMut(tonic::transport::Channel, Duration) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(Attempts::Shared, rpc).await
    }

    /// [`Client::call`], each attempt taking the time `attempts` says.
    async fn call_with<T, F, Fut>(&self, attempts: Attempts, rpc: F) -> Result<T>
    where
        F: FnMut(tonic::transport::Channel, Duration) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.inner.confirm_session().await?;
        let answer = self
            .inner
            .endpoints
            .call_with(self.inner.call_timeout, attempts, rpc)
            .await;
        if let Err(e) = &answer {
            if is_session_gone(e) {
                self.inner.session.end(Ended::SessionLost(e.to_string()));
            }
        }
        answer
    }
}

/// Whether a failed call's answer says the session is gone (other
/// NOT_FOUNDs name a missing primitive).
fn is_session_gone(error: &Error) -> bool {
    error
        .status()
        .is_some_and(crate::transport::is_session_gone)
}
