//! The log of many streams, and the writer of one.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bgrun_core::Event;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::LogConfig;
use crate::stream::StreamSlot;
use crate::subscription::Subscription;

/// What can go wrong writing to the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// A stream with this key is already open.
    #[error("the stream is already open")]
    AlreadyOpen,
    /// The stream was closed; it takes no more events.
    #[error("the stream is closed")]
    Closed,
    /// `mark_durable` named events that were never appended.
    #[error("durable mark {mark} is past the stream's end {next}")]
    MarkPastEnd {
        /// The mark asked for.
        mark: u64,
        /// The stream's next index.
        next: u64,
    },
}

/// Many append-only streams of [`Event`]s, keyed by `K`, held in memory within bounds.
///
/// Subscribers see only events the writer marked durable. Cloning is cheap and shares the log.
#[derive(Debug)]
pub struct EventLog<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for EventLog<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

#[derive(Debug)]
struct Shared<K> {
    config: LogConfig,
    streams: Mutex<HashMap<K, Arc<StreamSlot>>>,
    total_bytes: AtomicUsize,
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> EventLog<K> {
    /// An empty log.
    pub fn new(config: LogConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                streams: Mutex::new(HashMap::new()),
                total_bytes: AtomicUsize::new(0),
            }),
        }
    }

    /// The bounds it keeps.
    pub fn config(&self) -> &LogConfig {
        &self.shared.config
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<K, Arc<StreamSlot>>> {
        self.shared
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a stream whose next event takes `first_index` (0 for a new stream; the store's count
    /// for one that already has events). Its writer is the only way to append to it.
    pub fn open(&self, key: K, first_index: u64) -> Result<StreamWriter<K>, LogError> {
        let mut streams = self.streams();
        if streams.get(&key).is_some_and(|slot| !slot.lock().closed) {
            return Err(LogError::AlreadyOpen);
        }
        let slot = Arc::new(StreamSlot::new(first_index));
        if let Some(old) = streams.insert(key.clone(), slot.clone()) {
            self.release(old.lock().held_bytes);
        }
        Ok(StreamWriter {
            log: self.clone(),
            key,
            slot,
        })
    }

    /// Follows a stream from after `after` (from its start when `None`), or `None` when the stream
    /// is not in memory.
    pub fn subscribe(&self, key: &K, after: Option<u64>) -> Option<Subscription> {
        let slot = self.streams().get(key)?.clone();
        // No index follows `u64::MAX`: such a subscriber waits at a position nothing reaches.
        Some(Subscription::new(
            slot,
            after.map_or(0, |index| index.saturating_add(1)),
        ))
    }

    /// Takes a stream out of memory at once (its store is the truth now). Subscribers holding it
    /// get what is not in the store yet; for the rest they are sent to the store
    /// ([`Batch::Evicted`](crate::Batch::Evicted)).
    pub fn remove(&self, key: &K) -> bool {
        let Some(slot) = self.streams().remove(key) else {
            return false;
        };
        let mut state = slot.lock();
        state.closed = true;
        let held = let_go(&mut state);
        let durable = state.durable;
        drop(state);
        self.release(held);
        slot.durable_tx.send_replace(durable);
        slot.room.notify_waiters();
        true
    }

    /// Whether a stream is in memory.
    pub fn contains(&self, key: &K) -> bool {
        self.streams().contains_key(key)
    }

    /// How many streams are in memory.
    pub fn len(&self) -> usize {
        self.streams().len()
    }

    /// True when no stream is in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of events held across all streams.
    pub fn held_bytes(&self) -> usize {
        self.shared.total_bytes.load(Ordering::Relaxed)
    }

    /// Removes finished streams older than the TTL at `now`, and, while memory is over its total
    /// bound, finished streams oldest first. Returns how many were removed.
    pub fn evict(&self, now: Instant) -> usize {
        let ttl = self.shared.config.finished_ttl;
        let mut streams = self.streams();
        let mut finished: Vec<(Instant, K)> = Vec::new();
        let mut removed = 0;
        streams.retain(|key, slot| {
            let mut state = slot.lock();
            match state.finished_at {
                Some(at) if now.saturating_duration_since(at) >= ttl => {
                    self.release(let_go(&mut state));
                    removed += 1;
                    false
                }
                Some(at) => {
                    finished.push((at, key.clone()));
                    true
                }
                None => true,
            }
        });
        finished.sort_by_key(|(at, _)| *at);
        for (_, key) in finished {
            if self.held_bytes() <= self.shared.config.max_total_bytes {
                break;
            }
            if let Some(slot) = streams.remove(&key) {
                self.release(let_go(&mut slot.lock()));
                removed += 1;
            }
        }
        removed
    }

    /// Runs [`evict`](Self::evict) every `period` until `stop` is cancelled.
    pub async fn run_evictor(self, period: std::time::Duration, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => { self.evict(Instant::now()); }
            }
        }
    }

    fn reserve(&self, bytes: usize) {
        self.shared.total_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn release(&self, bytes: usize) {
        self.shared.total_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn over_total(&self) -> bool {
        self.held_bytes() > self.shared.config.max_total_bytes
    }
}

/// Lets go of a stream leaving memory: drops its durable events (a subscriber still holding the
/// stream, one that stopped reading say, would otherwise keep them alive, uncounted) and returns
/// the bytes it held.
fn let_go(state: &mut crate::stream::StreamState) -> usize {
    let freed = state.trim(0, 0);
    freed + std::mem::take(&mut state.held_bytes)
}

/// The single writer of one stream: appends, hands batches to the store, marks them durable.
#[derive(Debug)]
pub struct StreamWriter<K: Clone + Eq + Hash + Send + Sync + 'static> {
    log: EventLog<K>,
    key: K,
    slot: Arc<StreamSlot>,
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> StreamWriter<K> {
    /// The stream's key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The index the next appended event takes.
    pub fn next_index(&self) -> u64 {
        self.slot.lock().next()
    }

    /// The durable mark: every event below it is in the store.
    pub fn durable(&self) -> u64 {
        self.slot.lock().durable
    }

    /// Appends the event `make` builds for the next index, and returns that index. Subscribers see
    /// it once marked durable. Waits while the stream holds more than `max_pending_bytes` of events
    /// not yet durable, so a producer faster than the store is slowed, not buffered without bound.
    pub async fn append(&self, make: impl FnOnce(u64) -> Event) -> Result<u64, LogError> {
        let index = self.push(make)?;
        loop {
            let room = self.slot.room.notified();
            {
                let state = self.slot.lock();
                if state.pending_bytes <= self.log.config().max_pending_bytes || state.closed {
                    return Ok(index);
                }
            }
            room.await;
        }
    }

    /// Appends without waiting for room (the caller bounds what it appends).
    pub fn push(&self, make: impl FnOnce(u64) -> Event) -> Result<u64, LogError> {
        let mut state = self.slot.lock();
        if state.closed {
            return Err(LogError::Closed);
        }
        let index = state.next();
        let event = make(index);
        let size = event.json().len();
        state.events.push_back(event);
        state.held_bytes += size;
        state.pending_bytes += size;
        drop(state);
        self.log.reserve(size);
        self.slot.pending.notify_one();
        Ok(index)
    }

    /// Waits until events are waiting to be taken.
    pub async fn pending(&self) {
        loop {
            let notified = self.slot.pending.notified();
            {
                let state = self.slot.lock();
                if state.taken < state.next() {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Takes up to `max` appended events not yet taken, in order, for the store.
    pub fn take(&self, max: usize) -> Vec<Event> {
        let mut state = self.slot.lock();
        let end = state.next().min(state.taken.saturating_add(max as u64));
        let batch: Vec<Event> = (state.taken..end)
            .filter_map(|index| state.get(index).cloned())
            .collect();
        state.taken = end;
        batch
    }

    /// Hands every taken but not durable event out again (the store write failed).
    pub fn untake(&self) {
        let mut state = self.slot.lock();
        state.taken = state.durable;
    }

    /// Marks every event below `mark` durable: subscribers may now see them, and they may leave
    /// memory when bounds require.
    pub fn mark_durable(&self, mark: u64) -> Result<(), LogError> {
        let config = self.log.config();
        let mut state = self.slot.lock();
        if mark > state.next() {
            return Err(LogError::MarkPastEnd {
                mark,
                next: state.next(),
            });
        }
        if mark <= state.durable {
            return Ok(());
        }
        let newly: usize = (state.durable..mark)
            .filter_map(|index| state.get(index))
            .map(|event| event.json().len())
            .sum();
        state.pending_bytes -= newly;
        state.durable = mark;
        state.taken = state.taken.max(mark);
        let keep = config.min_stream_events;
        let mut freed = state.trim(config.max_stream_bytes, keep);
        if self.log.over_total() {
            freed += state.trim(0, keep);
        }
        drop(state);
        self.log.release(freed);
        self.slot.durable_tx.send_replace(mark);
        self.slot.room.notify_waiters();
        Ok(())
    }

    /// Ends the stream: no more appends; subscribers finish after the last durable event. The
    /// stream stays in memory for the TTL.
    pub fn close(&self) {
        let mut state = self.slot.lock();
        state.closed = true;
        state.finished_at = Some(Instant::now());
        let durable = state.durable;
        drop(state);
        self.slot.durable_tx.send_replace(durable);
        self.slot.room.notify_waiters();
    }
}
