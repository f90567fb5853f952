//! A handle on one leader election: one method per RPC, plus `campaign`
//! and `observe`.

use std::time::Duration;

use futures::Stream;
use tonic::Code;

use crate::client::Client;
use crate::error::Result;
use crate::feed::view_of;
use crate::leadership::{lead_after, Leadership, Release};
use crate::observe::Observer;
use crate::proto::atomix::primitive::election as el;
use crate::proto::atomix::primitive::election::leader_election_service_client::LeaderElectionServiceClient as Service;
use crate::proto::atomix::primitive::RequestHeader;
use crate::transport::{applied, with_deadline};
use crate::view::{Kind, View};

/// The leader election `name`, as seen by one client.
#[derive(Debug, Clone)]
pub struct Election {
    client: Client,
    name: String,
}

/// Which candidate-naming operation to run.
#[derive(Debug, Clone, Copy)]
enum Naming {
    Anoint,
    Promote,
    Evict,
}

impl Election {
    pub(crate) fn new(client: Client, name: String) -> Self {
        Election { client, name }
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn header(&self, request_id: u64) -> Option<RequestHeader> {
        self.client
            .inner
            .header(Kind::Election, &self.name, request_id)
    }

    /// The answer to a write; ABORTED means it was applied earlier but its
    /// answer is gone (the election changed since), so the current term is
    /// the answer.
    async fn written(&self, answer: Result<Option<el::Term>>) -> Result<View> {
        match answer {
            Ok(term) => view_of(term, "term"),
            Err(e) if e.code() == Code::Aborted => self.term().await,
            Err(e) => Err(e),
        }
    }

    /// Enters this client as a candidate (once, however often retried).
    pub async fn enter(&self) -> Result<View> {
        let header = self.header(self.client.inner.write_id().await?);
        let answer = self
            .client
            .call(|channel, left| {
                let request = el::EnterRequest {
                    header: header.clone(),
                    input: Some(el::EnterInput {}),
                };
                async move {
                    Service::new(channel)
                        .enter(with_deadline(request, left))
                        .await
                }
            })
            .await;
        self.written(answer.map(|r| r.output.and_then(|o| o.term)))
            .await
    }

    /// Withdraws this client's candidacy; if it led, the next candidate
    /// leads with a higher epoch.
    pub async fn withdraw(&self) -> Result<View> {
        self.withdraw_as(self.client.inner.write_id().await?).await
    }

    /// Withdraws with a request id taken earlier (a dropped leadership's
    /// release, numbered when it was dropped).
    pub(crate) async fn withdraw_as(&self, request_id: u64) -> Result<View> {
        let header = self.header(request_id);
        let answer = self
            .client
            .call(|channel, left| {
                let request = el::WithdrawRequest {
                    header: header.clone(),
                    input: Some(el::WithdrawInput {}),
                };
                async move {
                    Service::new(channel)
                        .withdraw(with_deadline(request, left))
                        .await
                }
            })
            .await;
        self.written(answer.map(|r| r.output.and_then(|o| o.term)))
            .await
    }

    async fn name_candidate(&self, naming: Naming, candidate: &str) -> Result<View> {
        let header = self.header(self.client.inner.write_id().await?);
        let candidate_id = candidate.to_owned();
        let answer = self
            .client
            .call(|channel, left| {
                let (header, candidate_id) = (header.clone(), candidate_id.clone());
                async move {
                    let mut service = Service::new(channel);
                    let term = match naming {
                        Naming::Anoint => {
                            let input = Some(el::AnointInput { candidate_id });
                            let request = el::AnointRequest { header, input };
                            let reply = service.anoint(with_deadline(request, left)).await?;
                            reply.map(|r| r.output.and_then(|o| o.term))
                        }
                        Naming::Promote => {
                            let input = Some(el::PromoteInput { candidate_id });
                            let request = el::PromoteRequest { header, input };
                            let reply = service.promote(with_deadline(request, left)).await?;
                            reply.map(|r| r.output.and_then(|o| o.term))
                        }
                        Naming::Evict => {
                            let input = Some(el::EvictInput { candidate_id });
                            let request = el::EvictRequest { header, input };
                            let reply = service.evict(with_deadline(request, left)).await?;
                            reply.map(|r| r.output.and_then(|o| o.term))
                        }
                    };
                    Ok(term)
                }
            })
            .await;
        self.written(answer).await
    }

    /// Makes `candidate` the leader at once.
    pub async fn anoint(&self, candidate: &str) -> Result<View> {
        self.name_candidate(Naming::Anoint, candidate).await
    }

    /// Moves `candidate` one place up the line.
    pub async fn promote(&self, candidate: &str) -> Result<View> {
        self.name_candidate(Naming::Promote, candidate).await
    }

    /// Removes `candidate` from the election.
    pub async fn evict(&self, candidate: &str) -> Result<View> {
        self.name_candidate(Naming::Evict, candidate).await
    }

    /// The current term (a linearizable read).
    pub async fn term(&self) -> Result<View> {
        let header = self.header(0);
        let answer = self
            .client
            .call(|channel, left| {
                let request = el::GetTermRequest {
                    header: header.clone(),
                    input: Some(el::GetTermInput {}),
                };
                async move {
                    Service::new(channel)
                        .get_term(with_deadline(request, left))
                        .await
                }
            })
            .await?;
        view_of(answer.output.and_then(|o| o.term), "term")
    }

    /// The election's state for a backup.
    pub async fn snapshot(&self) -> Result<View> {
        let header = self.header(0);
        let answer = self
            .client
            .call(|channel, left| {
                let request = el::SnapshotRequest {
                    header: header.clone(),
                };
                async move {
                    Service::new(channel)
                        .snapshot(with_deadline(request, left))
                        .await
                }
            })
            .await?;
        view_of(answer.snapshot.and_then(|s| s.term), "snapshot.term")
    }

    /// Replaces the election's state with `view` (its epoch may not go
    /// backwards).
    pub async fn restore(&self, view: &View) -> Result<()> {
        let header = self.header(self.client.inner.write_id().await?);
        let term = el::Term::from(view);
        let answer = self
            .client
            .call(|channel, left| {
                let request = el::RestoreRequest {
                    header: header.clone(),
                    snapshot: Some(el::Snapshot {
                        term: Some(term.clone()),
                    }),
                };
                async move {
                    Service::new(channel)
                        .restore(with_deadline(request, left))
                        .await
                }
            })
            .await;
        applied(answer)
    }

    /// Changes of the election from now on, across node failures, never an
    /// older state after a newer one (the epoch goes back only when the
    /// election is deleted). Ends with an error when the session ends.
    pub fn observe(&self) -> impl Stream<Item = Result<View>> {
        Observer::start(self.client.clone(), Kind::Election, self.name.clone())
    }

    /// Enters the election and waits until this client leads. Dropping the
    /// future leaves the candidacy standing; [`Election::withdraw`] ends it.
    pub async fn campaign(&self) -> Result<Leadership> {
        self.campaign_for(None)
            .await?
            .ok_or_else(|| tonic::Status::deadline_exceeded("not elected in time").into())
    }

    /// Like [`Election::campaign`], giving up after `wait` (the candidacy
    /// stays): `Ok(None)` if this client did not lead by then.
    pub async fn campaign_for(&self, wait: Option<Duration>) -> Result<Option<Leadership>> {
        let join = self.enter();
        lead_after(
            &self.client,
            Kind::Election,
            &self.name,
            join,
            wait,
            Release::Withdraw,
        )
        .await
    }

    /// Leaves the election (`PrimitiveService.Close`); the session stays open.
    pub async fn close(&self) -> Result<()> {
        let request_id = self.client.inner.write_id().await?;
        crate::lifecycle::close(&self.client, Kind::Election, &self.name, request_id).await
    }

    /// Removes the election (`PrimitiveService.Delete`): every member loses its
    /// place, and its next use starts again from epoch 0, so tokens from
    /// before mean nothing afterwards. NOT_FOUND if it does not exist.
    pub async fn delete(&self) -> Result<()> {
        crate::lifecycle::delete(&self.client, Kind::Election, &self.name).await
    }
}
