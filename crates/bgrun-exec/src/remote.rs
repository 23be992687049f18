//! Following what other engines on the same store do: the store's notifications wake readers of
//! runs executed elsewhere, and reach runs executed here with cancels requested elsewhere.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bgrun_core::{RunId, StoreNotification};
use futures::StreamExt;
use tokio::sync::watch;

use crate::engine::Engine;

/// How long a reader of a run executed elsewhere waits for a notification before it looks at
/// the store anyway (a notification is a hint and may be lost).
const NOTIFIED_FALLBACK: Duration = Duration::from_secs(1);

/// Readers waiting on runs this engine does not execute, by run.
#[derive(Debug, Default)]
pub(crate) struct RemoteRuns {
    watchers: Mutex<HashMap<RunId, watch::Sender<u64>>>,
    /// Whether the store notifies at all; without, readers look at the store on a timer.
    notified: std::sync::atomic::AtomicBool,
}

impl RemoteRuns {
    fn watchers(&self) -> MutexGuard<'_, HashMap<RunId, watch::Sender<u64>>> {
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver that changes whenever the store says the run's log grew (or on a re-sync).
    pub(crate) fn watch(&self, run_id: &RunId) -> watch::Receiver<u64> {
        let mut watchers = self.watchers();
        watchers.retain(|_, sender| sender.receiver_count() > 0);
        watchers
            .entry(run_id.clone())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    fn durable(&self, run_id: &RunId, last_event_index: u64) {
        if let Some(sender) = self.watchers().get(run_id) {
            sender.send_replace(last_event_index);
        }
    }

    fn wake_all(&self) {
        for sender in self.watchers().values() {
            sender.send_modify(|_| {});
        }
    }

    /// Waits until the run may have changed: a notification, or the fallback period (with no
    /// notifications at all, a short backoff that grows with `idle` rounds).
    pub(crate) async fn changed(&self, receiver: &mut watch::Receiver<u64>, idle: u32) {
        let wait = if self.notified.load(std::sync::atomic::Ordering::Relaxed) {
            NOTIFIED_FALLBACK
        } else {
            Duration::from_millis(5u64 << idle.min(7))
        };
        let _ = tokio::time::timeout(wait, receiver.changed()).await;
    }
}

/// Spawns the task that turns the store's notifications into wake-ups and cancels.
pub(crate) fn spawn_listener(engine: &Engine) {
    let inner = &engine.inner;
    let Some(mut notifications) = inner.store.notifications() else {
        return;
    };
    inner
        .remote
        .notified
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let engine = engine.clone();
    inner.tracker.spawn(async move {
        let inner = &engine.inner;
        loop {
            let notification = tokio::select! {
                _ = inner.closing.cancelled() => return,
                next = notifications.next() => match next {
                    Some(notification) => notification,
                    None => return,
                },
            };
            match notification {
                StoreNotification::Durable {
                    run_id,
                    last_event_index,
                } => inner.remote.durable(&run_id, last_event_index),
                StoreNotification::Cancel { run_id } => {
                    // Also kept for a run about to launch here (see `ActiveRuns`).
                    inner.cancel_active(&run_id);
                }
                StoreNotification::Stream { id } => inner.streams.changed_elsewhere(id),
                StoreNotification::Resync => {
                    inner.remote.wake_all();
                    inner.streams.resync();
                    check_cancel_intents(&engine).await;
                }
                _ => {}
            }
        }
    });
}

/// Cancels every run executing here whose cancel intent is in the store: the fallback for
/// cancel notifications that never arrived.
pub(crate) async fn check_cancel_intents(engine: &Engine) {
    let inner = &engine.inner;
    for active in inner.active_runs_snapshot() {
        if active.cancel.is_cancelled() || active.status.borrow().is_terminal() {
            continue;
        }
        match inner.store.cancel_requested(&active.run_id).await {
            Ok(true) => active.cancel.cancel(),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(run_id = %active.run_id, %error, "cannot read cancel intent");
            }
        }
    }
}
