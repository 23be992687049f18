//! A reader that follows one stream: held events first, then live ones, durable only.

use std::sync::Arc;

use bgrun_core::Event;
use tokio::sync::watch;

use crate::stream::StreamSlot;

/// What [`Subscription::next_batch`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// The next durable events, in order, without gaps.
    Events(Vec<Event>),
    /// Events `from..to` left memory (they are in the store). Read them there, then
    /// [`seek`](Subscription::seek) to `to`.
    Evicted {
        /// The first missing index.
        from: u64,
        /// The first index memory holds again.
        to: u64,
    },
    /// The stream is closed and every event was yielded.
    End,
}

/// Follows one stream from an index on. Never yields an event the writer has not marked durable,
/// never skips one, never repeats one.
#[derive(Debug)]
pub struct Subscription {
    slot: Arc<StreamSlot>,
    durable_rx: watch::Receiver<u64>,
    next: u64,
}

impl Subscription {
    pub(crate) fn new(slot: Arc<StreamSlot>, next: u64) -> Self {
        let durable_rx = slot.durable_tx.subscribe();
        Self {
            slot,
            durable_rx,
            next,
        }
    }

    /// The index of the next event this subscription yields.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Continues from `next` (after reading evicted events elsewhere).
    pub fn seek(&mut self, next: u64) {
        self.next = next;
    }

    /// How many events the stream has made durable so far.
    pub fn durable(&self) -> u64 {
        self.slot.lock().durable
    }

    /// Whether the stream is closed.
    pub fn is_closed(&self) -> bool {
        self.slot.lock().closed
    }

    /// Waits for up to `max` events after the position, then advances past them.
    pub async fn next_batch(&mut self, max: usize) -> Batch {
        loop {
            {
                let state = self.slot.lock();
                if self.next < state.base {
                    return Batch::Evicted {
                        from: self.next,
                        to: state.base,
                    };
                }
                if self.next < state.durable {
                    let end = state
                        .durable
                        .min(self.next.saturating_add(max.max(1) as u64));
                    let batch = state.copy_range(self.next, end);
                    self.next = end;
                    self.durable_rx.mark_unchanged();
                    return Batch::Events(batch);
                }
                if state.closed {
                    return Batch::End;
                }
                self.durable_rx.mark_unchanged();
            }
            // The writer lives as long as the log holds the slot; a dropped sender means the
            // stream is gone, and nothing more will come.
            if self.durable_rx.changed().await.is_err() {
                return Batch::End;
            }
        }
    }
}
