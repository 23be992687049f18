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
    by_path: HashMap<String, watch::Sender<u64>>,
    paths: HashMap<StreamId, String>,
}

/// Past this many entries, a subscribe first drops those nobody waits on any more.
const SWEEP_AT: usize = 1024;

impl Hub {
    /// A receiver that sees every later notification of the stream at `path`.
    pub(crate) fn subscribe(&self, path: &str) -> watch::Receiver<u64> {
        let mut watchers = self.lock();
        if watchers.by_path.len() >= SWEEP_AT {
            watchers
                .by_path
                .retain(|_, sender| sender.receiver_count() > 0);
            let Watchers { by_path, paths } = &mut *watchers;
            paths.retain(|_, path| by_path.contains_key(path));
        }
        watchers
            .by_path
            .entry(path.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Notes that stream `id` lives at `path`, for [`notify_id`](Self::notify_id).
    pub(crate) fn remember(&self, id: StreamId, path: &str) {
        self.lock().paths.insert(id, path.to_owned());
    }

    /// The current version: how many notifications there have been.
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// Wakes whoever waits on the stream at `path`.
    pub(crate) fn notify(&self, path: &str) {
        self.version.fetch_add(1, Ordering::SeqCst);
        let mut watchers = self.lock();
        if let Some(sender) = watchers.by_path.get(path) {
            if sender.receiver_count() == 0 {
                watchers.by_path.remove(path);
            } else {
                sender.send_modify(|version| *version += 1);
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
            .map(watch::Sender::receiver_count)
            .sum()
    }

    /// Wakes every waiter (notifications may have been missed).
    pub(crate) fn notify_all(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
        let watchers = self.lock();
        for sender in watchers.by_path.values() {
            sender.send_modify(|version| *version += 1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watchers> {
        // The maps hold no invariant a panic could break halfway.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
