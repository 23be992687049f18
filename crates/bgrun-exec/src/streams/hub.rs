//! Wakes the readers waiting on a stream (long-poll and SSE at the tail) when it changes.
//!
//! Keyed by path, so an append wakes readers without first looking up the stream's id; the id
//! is kept beside it for changes other processes report by id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bgrun_core::stream::StreamId;
use tokio::sync::watch;

/// One version counter per stream path that somebody waits on.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    inner: Mutex<Watchers>,
    /// Bumped by every notification, before anyone is woken: a store read that started at this
    /// version or later sees what was notified (see `flight`).
    version: AtomicU64,
}

#[derive(Debug, Default)]
struct Watchers {
    by_path: HashMap<String, Watched>,
    /// The path of each stream id in `by_path`, for notifications by id.
    paths: HashMap<StreamId, String>,
    /// `by_path` is swept of entries nobody waits on once it reaches this size (which then
    /// doubles past what is left, so sweeping stays rare however many paths are waited on).
    sweep_at: usize,
}

#[derive(Debug)]
struct Watched {
    sender: watch::Sender<u64>,
    /// The stream the waiters last saw at the path.
    id: Option<StreamId>,
}

/// The smallest sweep threshold.
const SWEEP_AT: usize = 1024;

impl Watchers {
    fn remove(&mut self, path: &str) {
        if let Some(Watched { id: Some(id), .. }) = self.by_path.remove(path) {
            self.paths.remove(&id);
        }
    }

    fn sweep(&mut self) {
        let Self { by_path, paths, .. } = self;
        by_path.retain(|_, watched| watched.sender.receiver_count() > 0);
        paths.retain(|_, path| by_path.contains_key(path));
        self.sweep_at = (2 * self.by_path.len()).max(SWEEP_AT);
    }
}

impl Hub {
    /// The current version: how many notifications there have been.
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// A receiver that sees every later notification of the stream at `path`.
    pub(crate) fn subscribe(&self, path: &str) -> watch::Receiver<u64> {
        let mut watchers = self.lock();
        if watchers.by_path.len() >= watchers.sweep_at.max(SWEEP_AT) {
            watchers.sweep();
        }
        watchers
            .by_path
            .entry(path.to_owned())
            .or_insert_with(|| Watched {
                sender: watch::channel(0).0,
                id: None,
            })
            .sender
            .subscribe()
    }

    /// Notes that stream `id` lives at `path` (which somebody has subscribed to), for
    /// [`notify_id`](Self::notify_id).
    pub(crate) fn remember(&self, id: StreamId, path: &str) {
        let mut watchers = self.lock();
        let Some(watched) = watchers.by_path.get_mut(path) else {
            return;
        };
        if let Some(old) = watched.id.replace(id) {
            watchers.paths.remove(&old);
        }
        watchers.paths.insert(id, path.to_owned());
    }

    /// Wakes whoever waits on the stream at `path`.
    pub(crate) fn notify(&self, path: &str) {
        self.version.fetch_add(1, Ordering::SeqCst);
        let mut watchers = self.lock();
        if let Some(watched) = watchers.by_path.get(path) {
            if watched.sender.receiver_count() == 0 {
                watchers.remove(path);
            } else {
                watched.sender.send_modify(|version| *version += 1);
            }
        }
    }

    /// Wakes whoever waits on stream `id`.
    pub(crate) fn notify_id(&self, id: StreamId) {
        self.version.fetch_add(1, Ordering::SeqCst);
        let path = self.lock().paths.get(&id).cloned();
        if let Some(path) = path {
            self.notify(&path);
        }
    }

    /// How many readers wait now.
    pub(crate) fn waiting(&self) -> usize {
        self.lock()
            .by_path
            .values()
            .map(|watched| watched.sender.receiver_count())
            .sum()
    }

    /// Wakes every waiter (notifications may have been missed).
    pub(crate) fn notify_all(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
        let watchers = self.lock();
        for watched in watchers.by_path.values() {
            watched.sender.send_modify(|version| *version += 1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watchers> {
        // The maps hold no invariant a panic could break halfway.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_forgotten_with_their_path() {
        let hub = Hub::default();
        let id = StreamId::new(7);
        let receiver = hub.subscribe("a");
        hub.remember(id, "a");
        hub.remember(StreamId::new(8), "a");
        assert_eq!(hub.lock().paths.len(), 1, "a path's old id is forgotten");
        drop(receiver);
        hub.notify("a");
        let watchers = hub.lock();
        assert!(watchers.by_path.is_empty() && watchers.paths.is_empty());
    }

    #[test]
    fn every_notification_moves_the_version() {
        let hub = Hub::default();
        let before = hub.version();
        hub.notify("nobody-waits");
        hub.notify_id(StreamId::new(1));
        hub.notify_all();
        assert_eq!(hub.version(), before + 3);
    }
}
