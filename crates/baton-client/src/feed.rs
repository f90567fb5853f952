//! A feed of a primitive's views that survives node loss: it opens Events
//! on one endpoint after another, and never hands out an older state after
//! a newer one. Each node's first message is linearizable (DESIGN §6), so
//! reconnecting cannot go back in time, and a repeat of the last view is
//! dropped; an epoch that goes back means the primitive was deleted.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, Streaming};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::proto::atomix::primitive::election as el;
use crate::proto::atomix::primitive::leader as la;
use crate::session::Ended;
use crate::transport::is_transient;
use crate::view::{Kind, View};

/// Whether opening Events again (elsewhere) may succeed: whatever a call may
/// be retried on ([`is_transient`]), and a stream's deadline or any UNKNOWN
/// end (a long-lived stream breaks in more ways than a call). Anything else
/// is the caller's error.
fn is_retryable(status: &Status) -> bool {
    is_transient(status) || matches!(status.code(), Code::DeadlineExceeded | Code::Unknown)
}

/// Pause before trying the endpoints again after a full round failed.
const REOPEN_PAUSE: Duration = Duration::from_millis(50);

/// Views buffered between the feed task and its reader.
const FEED_BUFFER: usize = 16;

enum Events {
    Latch(Streaming<la::EventsResponse>),
    Election(Streaming<el::EventsResponse>),
}

impl Events {
    async fn open(
        client: &Client,
        kind: Kind,
        name: &str,
        index: usize,
    ) -> Result<Events, Box<Status>> {
        let inner = &client.inner;
        let channel = inner.endpoints.channel(index);
        let header = inner.header(kind, name, 0);
        Ok(match kind {
            Kind::Latch => {
                let request = la::EventsRequest {
                    header,
                    input: Some(la::EventsInput {}),
                };
                let mut service =
                    la::leader_latch_service_client::LeaderLatchServiceClient::new(channel);
                Events::Latch(service.events(request).await?.into_inner())
            }
            Kind::Election => {
                let request = el::EventsRequest {
                    header,
                    input: Some(el::EventsInput {}),
                };
                let mut service =
                    el::leader_election_service_client::LeaderElectionServiceClient::new(channel);
                Events::Election(service.events(request).await?.into_inner())
            }
        })
    }

    /// The next message carrying a view (handshake messages carry none);
    /// `Ok(None)` when the stream ended.
    async fn next_view(&mut self) -> Result<Option<View>, Box<Status>> {
        loop {
            let view = match self {
                Events::Latch(stream) => match stream.message().await? {
                    None => return Ok(None),
                    Some(message) => message.output.and_then(|o| o.latch).map(View::from),
                },
                Events::Election(stream) => match stream.message().await? {
                    None => return Ok(None),
                    Some(message) => message.output.and_then(|o| o.term).map(View::from),
                },
            };
            if view.is_some() {
                return Ok(view);
            }
        }
    }
}

/// Whether `view` is news after `last`: anything but a repeat (a reopened
/// stream starts with the state last seen). A stream never shows a state
/// older than one already seen (each stream's first message is a
/// linearizable read, and a node sends changes in log order), so a lower
/// epoch means the primitive was deleted since: its epochs start again.
fn is_news(last: Option<&View>, view: &View) -> bool {
    last != Some(view)
}

/// Starts the feed of `name`'s views for `client`; it runs until `stop` is
/// cancelled, the receiver is dropped, or the session ends (then the last
/// item is the error).
pub(crate) fn spawn_feed(
    client: Client,
    kind: Kind,
    name: String,
    stop: CancellationToken,
) -> mpsc::Receiver<Result<View>> {
    let (tx, rx) = mpsc::channel(FEED_BUFFER);
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tx.closed() => {}
            _ = run_feed(&client, kind, &name, &tx) => {}
        }
    });
    rx
}

async fn run_feed(client: &Client, kind: Kind, name: &str, tx: &mpsc::Sender<Result<View>>) {
    let endpoints = &client.inner.endpoints;
    let mut rotation = endpoints.rotation();
    let mut last: Option<View> = None;
    let mut failures = 0usize;
    loop {
        match client.inner.confirm_session().await {
            Ok(()) => {}
            Err(e) if client.inner.check_session().is_err() => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            // The cluster could not say yet: try again shortly.
            Err(e) => {
                tracing::debug!("session not confirmed: {e}");
                tokio::time::sleep(REOPEN_PAUSE).await;
                continue;
            }
        }
        let opened = tokio::time::timeout(
            client.inner.call_timeout,
            Events::open(client, kind, name, rotation.index()),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Box::new(Status::deadline_exceeded(
                "Events did not open in time",
            )))
        });
        let mut events = match opened {
            Ok(events) => events,
            Err(status) if is_retryable(&status) => {
                tracing::debug!(index = rotation.index(), "Events refused: {status}");
                endpoints.after_failure(&mut rotation, &status);
                failures += 1;
                if failures.is_multiple_of(endpoints.len()) {
                    tokio::time::sleep(REOPEN_PAUSE).await;
                }
                continue;
            }
            Err(status) => {
                let error = if crate::transport::is_session_gone(&status) {
                    let why = status.message().to_owned();
                    client.inner.session.end(Ended::SessionLost(why.clone()));
                    Error::SessionLost(why)
                } else {
                    Error::from(*status)
                };
                let _ = tx.send(Err(error)).await;
                return;
            }
        };
        let ended = &client.inner.session.ended;
        loop {
            // A session over on this side (closed, or found gone) ends the
            // feed at once: its open stream would otherwise keep the session
            // alive on the cluster.
            let next = tokio::select! {
                _ = ended.cancelled() => return end_feed(client, events, tx).await,
                next = events.next_view() => next,
            };
            match next {
                Ok(Some(view)) => {
                    // Only a stream that delivers counts as a success: one
                    // that opens and then fails at once (its first read
                    // refused during an election) waits its turn like a
                    // refused open.
                    failures = 0;
                    if is_news(last.as_ref(), &view) {
                        last = Some(view.clone());
                        // A reader that fell behind holds this up: the
                        // session's end must not wait for it.
                        let sent = tokio::select! {
                            sent = tx.send(Ok(view)) => sent,
                            _ = ended.cancelled() => return end_feed(client, events, tx).await,
                        };
                        if sent.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(index = rotation.index(), "Events ended: {status}");
                    endpoints.after_failure(&mut rotation, &status);
                    break;
                }
            }
        }
        failures += 1;
        if failures.is_multiple_of(endpoints.len()) {
            tokio::time::sleep(REOPEN_PAUSE).await;
        }
    }
}

/// Ends a feed whose session is over on this side (closed, or found gone):
/// its Events stream first, which would otherwise keep the session alive on
/// the cluster, then the feed, with the error once the reader has room.
async fn end_feed(client: &Client, events: Events, tx: &mpsc::Sender<Result<View>>) {
    drop(events);
    if let Err(error) = client.inner.check_session() {
        let _ = tx.send(Err(error)).await;
    }
}

/// Reads a unary answer's view, or `Malformed` if it carries none.
pub(crate) fn view_of<T: Into<View>>(part: Option<T>, what: &'static str) -> Result<View> {
    part.map(Into::into).ok_or(Error::Malformed(what))
}
