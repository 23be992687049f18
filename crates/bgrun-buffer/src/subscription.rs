//! A reader that follows one stream: held events first, then live ones, durable only.

use std::sync::Arc;

use bgrun_core::{Event, Frames};
use tokio::sync::watch;

use crate::stream::{StreamSlot, StreamState};

/// What [`Subscription::next_batch`] yields (and [`Subscription::next_frames`], with the
/// events as their frames).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch<T = Vec<Event>> {
    /// The next durable events, in order, without gaps.
    Events(T),
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

impl<T> Batch<T> {
    /// The same batch, its events turned into `f(events)`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Batch<U> {
        match self {
            Self::Events(events) => Batch::Events(f(events)),
            Self::Evicted { from, to } => Batch::Evicted { from, to },
            Self::End => Batch::End,
        }
    }
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
        self.next_with(max, StreamState::copy_range).await
    }

    /// As [`next_batch`](Self::next_batch), the events as their frames, in one chunk: written
    /// while the stream is locked, with no event copied (a replay from memory sends them as
    /// they are).
    pub async fn next_frames(&mut self, max: usize) -> Batch<Frames> {
        self.next_with(max, StreamState::frames_range).await
    }

    async fn next_with<T>(
        &mut self,
        max: usize,
        take: impl Fn(&StreamState, u64, u64) -> T,
    ) -> Batch<T> {
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
                    let batch = take(&state, self.next, end);
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
