//! One stream's state: held events, the durable mark, and the wake-ups around them.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bgrun_core::{Event, Frames};
use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// A stream's events in memory: indices `base..next`, of which `..durable` are in the store and
/// `..taken` were handed to the writer.
#[derive(Debug)]
pub(crate) struct StreamState {
    pub(crate) base: u64,
    pub(crate) events: VecDeque<Event>,
    pub(crate) taken: u64,
    pub(crate) durable: u64,
    pub(crate) held_bytes: usize,
    pub(crate) pending_bytes: usize,
    pub(crate) closed: bool,
    pub(crate) finished_at: Option<Instant>,
}

impl StreamState {
    pub(crate) fn next(&self) -> u64 {
        self.base + self.events.len() as u64
    }

    pub(crate) fn get(&self, index: u64) -> Option<&Event> {
        index
            .checked_sub(self.base)
            .and_then(|offset| self.events.get(offset as usize))
    }

    /// The positions in `events` of the indices `from..to` (as many as are held there).
    fn offsets(&self, from: u64, to: u64) -> std::ops::Range<usize> {
        let offset = |index: u64| {
            usize::try_from(index.saturating_sub(self.base))
                .unwrap_or(usize::MAX)
                .min(self.events.len())
        };
        let (start, end) = (offset(from), offset(to));
        start..end.max(start)
    }

    /// Copies of the events held in `from..to` (as many as are held there), in order.
    pub(crate) fn copy_range(&self, from: u64, to: u64) -> Vec<Event> {
        // Exactly sized: no growing and copying of the batch as it is filled.
        self.events.range(self.offsets(from, to)).cloned().collect()
    }

    /// The frames of the events held in `from..to` (as many as are held there), in one chunk.
    pub(crate) fn frames_range(&self, from: u64, to: u64) -> Frames {
        let range = self.offsets(from, to);
        let (first_index, count) = (self.base + range.start as u64, range.len() as u64);
        let events = self.events.range(range);
        let mut out = Vec::with_capacity(events.clone().map(Event::frame_len).sum());
        for event in events {
            event.push_frame(&mut out);
        }
        Frames {
            first_index,
            count,
            chunks: vec![Bytes::from(out)],
        }
    }

    /// Drops durable events from the front until `held_bytes <= max_bytes` or only `keep` remain;
    /// returns the bytes freed. Events not yet durable never leave memory.
    pub(crate) fn trim(&mut self, max_bytes: usize, keep: usize) -> usize {
        let mut freed = 0;
        while self.held_bytes > max_bytes && self.events.len() > keep && self.base < self.durable {
            let Some(event) = self.events.pop_front() else {
                break;
            };
            let size = event.json().len();
            self.held_bytes -= size;
            freed += size;
            self.base += 1;
        }
        freed
    }
}

/// A stream shared by its writer and its subscribers.
#[derive(Debug)]
pub(crate) struct StreamSlot {
    state: Mutex<StreamState>,
    /// Carries the durable mark; subscribers wait on it. Also signalled on close.
    pub(crate) durable_tx: watch::Sender<u64>,
    /// Wakes the writer's flusher when events wait to be taken.
    pub(crate) pending: Notify,
    /// Wakes an appender waiting for room.
    pub(crate) room: Notify,
}

impl StreamSlot {
    pub(crate) fn new(first_index: u64) -> Self {
        let (durable_tx, _) = watch::channel(first_index);
        Self {
            state: Mutex::new(StreamState {
                base: first_index,
                events: VecDeque::new(),
                taken: first_index,
                durable: first_index,
                held_bytes: 0,
                pending_bytes: 0,
                closed: false,
                finished_at: None,
            }),
            durable_tx,
            pending: Notify::new(),
            room: Notify::new(),
        }
    }

    /// The state, also after a panic elsewhere poisoned the lock: every mutation keeps the state
    /// consistent before anything that could panic, so it stays usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
