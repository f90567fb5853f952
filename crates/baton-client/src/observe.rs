//! The stream `observe()` returns: a feed that stops when dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::error::Result;
use crate::view::View;

/// Views of one primitive, newest epoch last; dropping it stops the feed.
pub(crate) struct Observer {
    feed: mpsc::Receiver<Result<View>>,
    _stop: DropGuard,
}

impl Observer {
    pub fn new(feed: mpsc::Receiver<Result<View>>, stop: CancellationToken) -> Self {
        Observer {
            feed,
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
