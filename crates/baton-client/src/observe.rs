//! The stream `observe()` returns: a feed that stops when dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::client::Client;
use crate::error::Result;
use crate::feed::spawn_feed;
use crate::view::{Kind, View};

/// Views of one primitive, newest epoch last; dropping it stops the feed.
pub(crate) struct Observer {
    feed: mpsc::Receiver<Result<View>>,
    _stop: DropGuard,
}

impl Observer {
    /// Starts the feed of `name` for `client`.
    pub fn start(client: Client, kind: Kind, name: String) -> Self {
        let stop = CancellationToken::new();
        Observer {
            feed: spawn_feed(client, kind, name, stop.clone()),
            _stop: stop.drop_guard(),
        }
    }
}

impl Stream for Observer {
    type Item = Result<View>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.feed.poll_recv(cx)
    }
}
