//! Applied changes, fanned out by primitive: a watcher subscribes to one
//! key and is woken only by the entries that change it. One broadcast for
//! every change woke every open Events stream on every applied entry: with
//! 1,000 idle watchers, 16 clients' churn on three nodes ran at half its
//! rate (`baton-bench run --watchers`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use baton_state::{ChangeEvent, Primitive, PrimitiveKey};
use tokio::sync::broadcast;

/// Applied batches changing one key a watcher may fall behind by before it
/// is told it lagged (it then re-reads the latest state: intermediate
/// states coalesce, the latest is never lost). Every watched key holds
/// this many slots (~40 bytes each), so it is not large; a batch's changes
/// to a key take one slot however many entries and commands made them.
const KEY_BUFFER: usize = 32;

/// The states one applied batch of log entries took a primitive through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    /// Log index of the batch's last entry (or of the installed snapshot):
    /// a read of the applied state sees all of a batch or none of it.
    pub index: u64,
    /// The primitive's full state after each change, in order (a batch
    /// may carry several commands that change it: group commit, and
    /// openraft applying several entries at once).
    pub states: Vec<Primitive>,
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

    /// Sends the changes a batch applied up to `index` made to each watched
    /// key to that key's watchers, in order, as one message per key.
    pub(crate) fn publish(&self, index: u64, events: Vec<ChangeEvent>) {
        // A batch that changed no primitive (keep-alives, session opens)
        // takes no lock.
        if events.is_empty() {
            return;
        }
        let mut by_key: HashMap<PrimitiveKey, (Sender, Vec<Primitive>)> = HashMap::new();
        {
            let feeds = self.lock();
            if feeds.is_empty() {
                return;
            }
            for event in events {
                let Some(feed) = feeds.get(&event.key) else {
                    continue;
                };
                by_key
                    .entry(event.key)
                    .or_insert_with(|| (feed.clone(), Vec::new()))
                    .1
                    .push(event.state);
            }
        }
        for (feed, states) in by_key.into_values() {
            // Its last receiver may have gone meanwhile: nobody to tell.
            let _ = feed.send(Arc::new(KeyChange { index, states }));
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
    /// state). Never `Closed`: the feed lives as long as a subscription.
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
        feeds.publish(7, vec![event(&a, 1), event(&b, 1), event(&a, 2)]);
        feeds.publish(8, vec![event(&b, 2)]);
        feeds.publish(9, vec![event(&a, 3)]);
        let epochs: Vec<_> = std::iter::from_fn(|| watching_a.try_recv().ok())
            .map(|change| {
                let epochs: Vec<_> = change.states.iter().map(|s| s.epoch).collect();
                (change.index, epochs)
            })
            .collect();
        assert_eq!(epochs, vec![(7, vec![1, 2]), (9, vec![3])]);
    }

    #[test]
    fn many_changes_to_a_key_in_one_batch_take_one_slot() {
        let feeds = Arc::new(ChangeFeeds::default());
        let key = PrimitiveKey::latch("a");
        let mut watcher = feeds.subscribe(&key);
        let burst: Vec<_> = (1..=128).map(|epoch| event(&key, epoch)).collect();
        feeds.publish(1, burst);
        let change = watcher.try_recv().expect("no lag");
        assert_eq!(change.states.len(), 128);
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
            feeds.publish(epoch, vec![event(&key, epoch)]);
        }
        assert!(matches!(
            watcher.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(1))
        ));
    }
}
