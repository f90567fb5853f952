//! The two systems under test, behind the same few operations.

use std::time::Duration;

use baton::proto::atomix::primitive::election::leader_election_service_client::LeaderElectionServiceClient;
use baton::proto::atomix::primitive::election::{self as el, Term};
use baton::proto::baton::v1::session_service_client::SessionServiceClient;
use baton::proto::baton::v1::CloseSessionRequest;
use baton_client::{next_request_id, request_header, Kind};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::etcd::etcdserverpb::kv_client::KvClient;
use crate::etcd::etcdserverpb::lease_client::LeaseClient;
use crate::etcd::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest,
};
use crate::etcd::v3electionpb::election_client::ElectionClient;
use crate::etcd::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, LeaderResponse, ResignRequest,
};

/// A cluster to drive, by its client endpoints (host:port).
#[derive(Debug, Clone)]
pub enum Target {
    /// Baton's Atomix election API.
    Baton(Vec<String>),
    /// etcd's v3 election API.
    Etcd(Vec<String>),
}

impl Target {
    /// "baton" or "etcd".
    pub fn name(&self) -> &'static str {
        match self {
            Target::Baton(_) => "baton",
            Target::Etcd(_) => "etcd",
        }
    }

    /// The client endpoints.
    pub fn endpoints(&self) -> &[String] {
        match self {
            Target::Baton(e) | Target::Etcd(e) => e,
        }
    }

    /// A session of client `index`, connected to one endpoint (clients are
    /// spread over the nodes, as real processes would be).
    pub async fn session(&self, index: usize) -> Result<Session, Status> {
        let endpoints = self.endpoints();
        let channel = channel(&endpoints[index % endpoints.len()]);
        let id = format!("bench-{}-{index}", std::process::id());
        Ok(match self {
            Target::Baton(_) => Session::Baton {
                client: LeaderElectionServiceClient::new(channel.clone()),
                sessions: SessionServiceClient::new(channel),
                id,
            },
            Target::Etcd(_) => {
                let mut leases = LeaseClient::new(channel.clone());
                let grant = leases
                    .lease_grant(LeaseGrantRequest {
                        ttl: ETCD_LEASE_TTL.as_secs() as i64,
                        id: 0,
                    })
                    .await?
                    .into_inner();
                Session::Etcd {
                    election: ElectionClient::new(channel.clone()),
                    kv: KvClient::new(channel),
                    leases,
                    lease: grant.id,
                    id,
                }
            }
        })
    }
}

/// TTL of an etcd session's lease (a Baton session's default timeout is
/// 10 s; etcd's `concurrency` sessions default to 60 s).
const ETCD_LEASE_TTL: Duration = Duration::from_secs(60);

/// A lazily connected channel to `endpoint`, with Nagle off as gRPC clients
/// have it.
pub fn channel(endpoint: &str) -> Channel {
    Endpoint::from_shared(format!("http://{endpoint}"))
        .expect("endpoint is host:port")
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .connect_lazy()
}

/// One benchmark client's connection and identity.
pub enum Session {
    /// A Baton client (its session opens with its first request).
    Baton {
        /// The election service on one node.
        client: LeaderElectionServiceClient<Channel>,
        /// The session service on the same node.
        sessions: SessionServiceClient<Channel>,
        /// Its candidate id.
        id: String,
    },
    /// An etcd client with a lease.
    Etcd {
        /// The election service on one member.
        election: ElectionClient<Channel>,
        /// The KV service on the same member.
        kv: KvClient<Channel>,
        /// The lease service on the same member.
        leases: LeaseClient<Channel>,
        /// The lease its candidacies hang on.
        lease: i64,
        /// Its value in elections.
        id: String,
    },
}

/// Proof of candidacy, to withdraw or resign with.
pub enum Candidacy {
    /// Baton: the election's state after entering.
    Baton(Term),
    /// etcd: the leader key a campaign returned.
    Etcd(LeaderKey),
}

/// A stream of one election's changes: Baton's Events, etcd's Observe.
pub enum Observation {
    /// Baton: the election's state, then every change.
    Baton(tonic::Streaming<el::EventsResponse>),
    /// etcd: the leader, then every new leader.
    Etcd(tonic::Streaming<LeaderResponse>),
}

impl Observation {
    /// Waits for the next message; `None` once the stream has ended.
    pub async fn next(&mut self) -> Result<Option<()>, Status> {
        Ok(match self {
            Observation::Baton(stream) => stream.message().await?.map(|_| ()),
            Observation::Etcd(stream) => stream.message().await?.map(|_| ()),
        })
    }
}

fn baton_header(
    id: &str,
    election: &str,
) -> Option<baton::proto::atomix::primitive::RequestHeader> {
    request_header(id, Kind::Election, election, next_request_id())
}

impl Session {
    /// This client's id.
    pub fn id(&self) -> &str {
        match self {
            Session::Baton { id, .. } | Session::Etcd { id, .. } => id,
        }
    }

    /// Enters `election`. Baton answers at once (the client may be queued
    /// behind others); etcd's campaign returns only once this client leads.
    pub async fn enter(&mut self, election: &str) -> Result<Candidacy, Status> {
        match self {
            Session::Baton { client, id, .. } => {
                let term = client
                    .enter(el::EnterRequest {
                        header: baton_header(id, election),
                        input: Some(el::EnterInput {}),
                    })
                    .await?
                    .into_inner()
                    .output
                    .and_then(|o| o.term)
                    .unwrap_or_default();
                Ok(Candidacy::Baton(term))
            }
            Session::Etcd {
                election: service,
                lease,
                id,
                ..
            } => {
                let leader = service
                    .campaign(CampaignRequest {
                        name: election.as_bytes().to_vec(),
                        lease: *lease,
                        value: id.as_bytes().to_vec(),
                    })
                    .await?
                    .into_inner()
                    .leader
                    .unwrap_or_default();
                Ok(Candidacy::Etcd(leader))
            }
        }
    }

    /// Withdraws from `election` (etcd: resigns the candidacy).
    pub async fn withdraw(&mut self, election: &str, candidacy: Candidacy) -> Result<(), Status> {
        match (self, candidacy) {
            (Session::Baton { client, id, .. }, _) => {
                client
                    .withdraw(el::WithdrawRequest {
                        header: baton_header(id, election),
                        input: Some(el::WithdrawInput {}),
                    })
                    .await?;
                Ok(())
            }
            (
                Session::Etcd {
                    election: service, ..
                },
                Candidacy::Etcd(leader),
            ) => {
                service
                    .resign(ResignRequest {
                        leader: Some(leader),
                    })
                    .await?;
                Ok(())
            }
            (Session::Etcd { .. }, Candidacy::Baton(_)) => {
                Err(Status::internal("an etcd session holds etcd candidacies"))
            }
        }
    }

    /// Opens a stream of `election`'s changes (Baton: Events; etcd:
    /// Observe, which says nothing until the election has a leader).
    pub async fn observe(&mut self, election: &str) -> Result<Observation, Status> {
        match self {
            Session::Baton { client, id, .. } => {
                let stream = client
                    .events(el::EventsRequest {
                        header: request_header(id, Kind::Election, election, 0),
                        input: None,
                    })
                    .await?
                    .into_inner();
                Ok(Observation::Baton(stream))
            }
            Session::Etcd {
                election: service, ..
            } => {
                let stream = service
                    .observe(LeaderRequest {
                        name: election.as_bytes().to_vec(),
                    })
                    .await?
                    .into_inner();
                Ok(Observation::Etcd(stream))
            }
        }
    }

    /// Keeps this client's session alive, as a real client does, until an
    /// error: etcd's lease by a keep-alive every third of its TTL (etcd
    /// `concurrency` sessions do the same); Baton's is kept alive by the
    /// node serving the client's Events stream, so there is nothing to do.
    pub async fn keep_alive(&self) -> Result<(), Status> {
        match self {
            Session::Baton { .. } => std::future::pending().await,
            Session::Etcd { leases, lease, .. } => {
                let lease = *lease;
                let ticks = tokio::time::interval(ETCD_LEASE_TTL / 3);
                let requests = futures::stream::unfold(ticks, move |mut ticks| async move {
                    ticks.tick().await;
                    Some((LeaseKeepAliveRequest { id: lease }, ticks))
                });
                let mut replies = leases
                    .clone()
                    .lease_keep_alive(requests)
                    .await?
                    .into_inner();
                while replies.message().await?.is_some() {}
                Err(Status::unavailable("the lease keep-alive stream ended"))
            }
        }
    }

    /// Ends this client's session (Baton: CloseSession; etcd: revokes the
    /// lease), giving up whatever it held.
    pub async fn close(&self) -> Result<(), Status> {
        match self {
            Session::Baton { sessions, id, .. } => {
                sessions
                    .clone()
                    .close_session(CloseSessionRequest {
                        client_id: id.clone(),
                        ..CloseSessionRequest::default()
                    })
                    .await?;
            }
            Session::Etcd { leases, lease, .. } => {
                leases
                    .clone()
                    .lease_revoke(LeaseRevokeRequest { id: *lease })
                    .await?;
            }
        }
        Ok(())
    }

    /// One small durable write (Baton: enter or withdraw, alternately;
    /// etcd: a put), with a per-call deadline.
    pub async fn write(&mut self, seq: u64, deadline: Duration) -> Result<(), Status> {
        match self {
            Session::Baton { client, id, .. } => {
                let header = baton_header(id, "bench-writes");
                let result = if seq.is_multiple_of(2) {
                    let mut request = tonic::Request::new(el::EnterRequest {
                        header,
                        input: Some(el::EnterInput {}),
                    });
                    request.set_timeout(deadline);
                    client.enter(request).await.map(|_| ())
                } else {
                    let mut request = tonic::Request::new(el::WithdrawRequest {
                        header,
                        input: Some(el::WithdrawInput {}),
                    });
                    request.set_timeout(deadline);
                    client.withdraw(request).await.map(|_| ())
                };
                result
            }
            Session::Etcd { kv, .. } => {
                let mut request = tonic::Request::new(PutRequest {
                    key: b"bench-writes".to_vec(),
                    value: seq.to_be_bytes().to_vec(),
                    lease: 0,
                });
                request.set_timeout(deadline);
                kv.put(request).await.map(|_| ())
            }
        }
    }
}
