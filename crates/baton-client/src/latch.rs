//! A handle on one leader latch: one method per RPC, plus `acquire` and
//! `observe`.

use std::time::Duration;

use futures::Stream;
use tonic::Code;

use crate::client::Client;
use crate::error::Result;
use crate::feed::view_of;
use crate::leadership::{lead_after, Leadership, Release};
use crate::observe::Observer;
use crate::proto::atomix::primitive::leader as la;
use crate::proto::atomix::primitive::leader::leader_latch_service_client::LeaderLatchServiceClient as Service;
use crate::proto::atomix::primitive::RequestHeader;
use crate::transport::{applied, with_deadline};
use crate::view::{Kind, View};

/// The leader latch `name`, as seen by one client.
#[derive(Debug, Clone)]
pub struct Latch {
    client: Client,
    name: String,
}

impl Latch {
    pub(crate) fn new(client: Client, name: String) -> Self {
        Latch { client, name }
    }

    /// The latch's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn header(&self, request_id: u64) -> Option<RequestHeader> {
        self.client
            .inner
            .header(Kind::Latch, &self.name, request_id)
    }

    /// Joins the latch (once, however often retried); the first participant
    /// leads.
    pub async fn join(&self) -> Result<View> {
        let header = self.header(self.client.inner.write_id().await?);
        let answer = self
            .client
            .call(|channel, left| {
                let request = la::LatchRequest {
                    header: header.clone(),
                    input: Some(la::LatchInput {}),
                };
                async move {
                    Service::new(channel)
                        .latch(with_deadline(request, left))
                        .await
                }
            })
            .await;
        match answer {
            Ok(reply) => view_of(reply.output.and_then(|o| o.latch), "latch"),
            Err(e) if e.code() == Code::Aborted => self.get().await,
            Err(e) => Err(e),
        }
    }

    /// The latch now (a linearizable read).
    pub async fn get(&self) -> Result<View> {
        let header = self.header(0);
        let answer = self
            .client
            .call(|channel, left| {
                let request = la::GetRequest {
                    header: header.clone(),
                    input: Some(la::GetInput {}),
                };
                async move {
                    Service::new(channel)
                        .get(with_deadline(request, left))
                        .await
                }
            })
            .await?;
        view_of(answer.output.and_then(|o| o.latch), "latch")
    }

    /// The latch's state for a backup.
    pub async fn snapshot(&self) -> Result<View> {
        let header = self.header(0);
        let answer = self
            .client
            .call(|channel, left| {
                let request = la::SnapshotRequest {
                    header: header.clone(),
                };
                async move {
                    Service::new(channel)
                        .snapshot(with_deadline(request, left))
                        .await
                }
            })
            .await?;
        view_of(answer.snapshot.and_then(|s| s.latch), "snapshot.latch")
    }

    /// Replaces the latch's state with `view` (its epoch may not go
    /// backwards).
    pub async fn restore(&self, view: &View) -> Result<()> {
        let header = self.header(self.client.inner.write_id().await?);
        let latch = la::Latch::from(view);
        let answer = self
            .client
            .call(|channel, left| {
                let request = la::RestoreRequest {
                    header: header.clone(),
                    snapshot: Some(la::Snapshot {
                        latch: Some(latch.clone()),
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

    /// Changes of the latch from now on, across node failures, never an
    /// older state after a newer one (the epoch goes back only when the
    /// latch is deleted).
    pub fn observe(&self) -> impl Stream<Item = Result<View>> {
        Observer::start(self.client.clone(), Kind::Latch, self.name.clone())
    }

    /// Joins and waits up to `wait` (forever if `None`) to lead: `Ok(None)`
    /// if it did not lead by then (still a participant). Resigning the
    /// returned leadership leaves the latch.
    pub async fn acquire(&self, wait: Option<Duration>) -> Result<Option<Leadership>> {
        let join = self.join();
        lead_after(
            &self.client,
            Kind::Latch,
            &self.name,
            join,
            wait,
            Release::Leave,
        )
        .await
    }

    /// Leaves the latch (`PrimitiveService.Close`); the session stays open.
    pub async fn close(&self) -> Result<()> {
        let request_id = self.client.inner.write_id().await?;
        crate::lifecycle::close(&self.client, Kind::Latch, &self.name, request_id).await
    }

    /// Removes the latch (`PrimitiveService.Delete`): every member loses its
    /// place, and its next use starts again from epoch 0, so tokens from
    /// before mean nothing afterwards. NOT_FOUND if it does not exist.
    pub async fn delete(&self) -> Result<()> {
        crate::lifecycle::delete(&self.client, Kind::Latch, &self.name).await
    }
}
