//! Applied changes, fanned out by primitive: a watcher subscribes to one
//! key and is woken only by the entries that change it. One broadcast for
//! every change woke every open Events stream on every applied entry: with
//! 1,000 idle watchers, 16 clients' churn on three nodes ran at half its
//! rate (`baton-bench run --watchers`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use baton_state::{ChangeEvent, Primitive, PrimitiveKey};
use tokio::sync::broadcast;

/// Changes of one key a watcher may fall behind by before it is told it
/// lagged (it then re-reads the latest state: intermediate states
/// coalesce, the latest is never lost). Small, because every watched key
/// holds this many slots.
const KEY_BUFFER: usize = 16;

/// One state a primitive went through, and the log entry that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    /// Log index of the entry (or of the installed snapshot).
    pub index: u64,
    /// The primitive's full state after the change.
    pub state: Primitive,
}

type Sender = broadcast::Sender<Arc<KeyChange>>;

/// The feeds of the keys someone watches.
#[derive(Default)]
pub(crate) struct ChangeFeeds {
    by_key: Mutex<HashMap<PrimitiveKey, Sender>>,
}

impl ChangeFeeds {
    fn lock(&self) -> MutexGuard<'_, HashMap<PrimitiveKey, Sender>> {
        // The map is never left half-updated: every critical section is a
        // single insert, lookup or remove.
        self.by_key
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends each change to its key's watchers, if it has any, in order.
    pub(crate) fn publish(&self, index: u64, events: &[ChangeEvent]) {
        let feeds = self.lock();
        if feeds.is_empty() {
            return;
        }
        for event in events {
            if let Some(feed) = feeds.get(&event.key) {
                // Its last receiver may be dropping: nobody to tell.
                let _ = feed.send(Arc::new(KeyChange {
                    index,
                    state: event.state.clone(),
                }));
            }
        }
    }

    /// Subscribes to `key`'s changes from now on.
    pub(crate) fn subscribe(self: &Arc<Self>, key: &PrimitiveKey) -> KeyChanges {
        let receiver = self
            .lock()
            .entry(key.clone())
            .or_insert_with(|| broadcast::channel(KEY_BUFFER).0)
            .subscribe();
        KeyChanges {
            receiver: Some(receiver),
            key: key.clone(),
            feeds: self.clone(),
        }
    }
}

/// The changes of one primitive applied from the moment of subscribing
/// ([`crate::StateHandle::watch`]). Dropping the last one of a key frees
/// its feed.
pub struct KeyChanges {
    /// Always `Some` until dropped.
    receiver: Option<broadcast::Receiver<Arc<KeyChange>>>,
    key: PrimitiveKey,
    feeds: Arc<ChangeFeeds>,
}

impl KeyChanges {
    /// The next change. `Lagged` when changes were missed (re-read the
    /// state), `Closed` when the store is gone.
    pub async fn recv(&mut self) -> Result<Arc<KeyChange>, broadcast::error::RecvError> {
        match self.receiver.as_mut() {
            Some(receiver) => receiver.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }

    /// The next change if one is waiting.
    pub fn try_recv(&mut self) -> Result<Arc<KeyChange>, broadcast::error::TryRecvError> {
        match self.receiver.as_mut() {
            Some(receiver) => receiver.try_recv(),
            None => Err(broadcast::error::TryRecvError::Closed),
        }
    }
}

impl Drop for KeyChanges {
    fn drop(&mut self) {
        // Dropped first, so the count below no longer includes it; a new
        // subscriber takes the same lock, so none can be cut off.
        drop(self.receiver.take());
        let mut feeds = self.feeds.lock();
        if feeds
            .get(&self.key)
            .is_some_and(|feed| feed.receiver_count() == 0)
        {
            feeds.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &PrimitiveKey, epoch: u64) -> ChangeEvent {
        ChangeEvent {
            key: key.clone(),
            state: Primitive {
                epoch,
                ..Primitive::default()
            },
            epoch_before: epoch.saturating_sub(1),
        }
    }

    #[test]
    fn a_watcher_gets_its_keys_changes_only_in_order() {
        let feeds = Arc::new(ChangeFeeds::default());
        let (a, b) = (PrimitiveKey::latch("a"), PrimitiveKey::latch("b"));
        let mut watching_a = feeds.subscribe(&a);
        feeds.publish(7, &[event(&a, 1), event(&b, 1), event(&a, 2)]);
        let epochs: Vec<_> = std::iter::from_fn(|| watching_a.try_recv().ok())
            .map(|change| (change.index, change.state.epoch))
            .collect();
        assert_eq!(epochs, vec![(7, 1), (7, 2)]);
    }

    #[test]
    fn the_last_watcher_of_a_key_frees_its_feed() {
        let feeds = Arc::new(ChangeFeeds::default());
        let key = PrimitiveKey::election("e");
        let first = feeds.subscribe(&key);
        let second = feeds.subscribe(&key);
        drop(first);
        assert_eq!(feeds.lock().len(), 1, "one watcher is left");
        drop(second);
        assert!(feeds.lock().is_empty());
    }

    #[test]
    fn a_watcher_that_falls_behind_is_told_so() {
        let feeds = Arc::new(ChangeFeeds::default());
        let key = PrimitiveKey::latch("a");
        let mut watcher = feeds.subscribe(&key);
        for epoch in 1..=(KEY_BUFFER as u64 + 1) {
            feeds.publish(epoch, &[event(&key, epoch)]);
        }
        assert!(matches!(
            watcher.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(1))
        ));
    }
}
