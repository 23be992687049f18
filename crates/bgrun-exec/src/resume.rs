//! Resuming a run's stream: the meta frame, then exactly the events after an index, from memory
//! or from the store.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bgrun_buffer::{Batch, Subscription};
use bgrun_core::{Event, Frames, RunId, RunStatus, Store, StoreError, StoreResult};
use futures::future::BoxFuture;
use futures::Stream;
use serde_json::{json, Value};

use crate::engine::Engine;
use crate::error::{EngineError, EngineResult};

/// How many events one store read takes.
const STORE_PAGE: usize = 4096;
/// How many store pages are read ahead of the one being delivered: each read decodes on a
/// blocking thread of its own, so a replay's reads use more than one core.
const READ_AHEAD: usize = 2;
/// How many events one read from memory takes.
const MEMORY_BATCH: usize = 2048;

/// A resume stream's meta frame, sent before its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaFrame {
    /// The run is not terminal and events were missed; they follow, then live ones.
    CatchUp {
        /// The run.
        run_id: RunId,
        /// Its current status.
        status: RunStatus,
        /// Events after the requested index up to now.
        missed_events: u64,
        /// Events the run has emitted so far.
        current_event_count: u64,
    },
    /// The run is not terminal: the missed events, then live ones, follow.
    Subscribed {
        /// The run.
        run_id: RunId,
        /// Its current status.
        status: RunStatus,
        /// Events the run has emitted so far.
        current_event_count: u64,
    },
    /// The run is terminal: every event after the requested index follows, then the end.
    Replay {
        /// The run.
        run_id: RunId,
        /// Its terminal status.
        status: RunStatus,
        /// How many events follow.
        total_events: u64,
        /// The index asked for, -1 for none.
        last_event_index_requested: i64,
    },
    /// The run does not exist or cannot be read; nothing follows.
    Error {
        /// The run.
        run_id: RunId,
        /// Why.
        error: String,
    },
}

impl MetaFrame {
    /// The frame's name: `catch_up`, `subscribed`, `replay` or `error`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CatchUp { .. } => "catch_up",
            Self::Subscribed { .. } => "subscribed",
            Self::Replay { .. } => "replay",
            Self::Error { .. } => "error",
        }
    }

    /// The frame's JSON data, as the HTTP API sends it.
    pub fn to_json(&self) -> Value {
        match self {
            Self::CatchUp {
                run_id,
                status,
                missed_events,
                current_event_count,
            } => json!({"event": "catch_up", "run_id": run_id, "status": status,
                "missed_events": missed_events, "current_event_count": current_event_count}),
            Self::Subscribed {
                run_id,
                status,
                current_event_count,
            } => json!({"event": "subscribed", "run_id": run_id, "status": status,
                "current_event_count": current_event_count}),
            Self::Replay {
                run_id,
                status,
                total_events,
                last_event_index_requested,
            } => json!({"event": "replay", "run_id": run_id, "status": status,
                "total_events": total_events,
                "last_event_index_requested": last_event_index_requested}),
            Self::Error { run_id, error } => {
                json!({"event": "error", "run_id": run_id, "error": error})
            }
        }
    }
}

/// A resumed stream: meta frames first, then the events.
#[derive(Debug)]
pub struct Resume {
    /// The meta frames, in order.
    pub meta: Vec<MetaFrame>,
    /// The events after the requested index, to the terminal one (empty after an `error` frame).
    pub events: EventStream,
}

pub(crate) async fn open(
    engine: &Engine,
    run_id: &RunId,
    last_event_index: Option<u64>,
) -> EngineResult<Resume> {
    let requested = last_event_index.map_or(-1, |index| index as i64);
    let next = last_event_index.map_or(0, |index| index.saturating_add(1));
    let run = match engine.inner.store.get_run(run_id).await {
        Ok(Some(run)) => run,
        Ok(None) => {
            return Ok(Resume {
                meta: vec![Engine::error_frame(
                    run_id,
                    format!("run {run_id} not found"),
                )],
                events: EventStream::empty(engine.clone(), run_id.clone()),
            })
        }
        Err(error) => {
            return Ok(Resume {
                meta: vec![Engine::error_frame(run_id, error.to_string())],
                events: EventStream::empty(engine.clone(), run_id.clone()),
            })
        }
    };
    // A run executing here is ahead of the store's record: ask its log.
    let (status, count) = match engine.inner.active(run_id) {
        Some(active) => (*active.status.borrow(), active.writer.durable()),
        None => (run.status, run.event_count()),
    };
    let status = if status.is_terminal() {
        status
    } else {
        further_along(run.status, status)
    };
    let meta = if status.is_terminal() {
        let run = match engine.inner.store.get_run(run_id).await? {
            Some(run) => run,
            None => run,
        };
        vec![MetaFrame::Replay {
            run_id: run_id.clone(),
            status: run.status,
            total_events: run.event_count().saturating_sub(next),
            last_event_index_requested: requested,
        }]
    } else {
        let mut frames = Vec::with_capacity(2);
        if count > next {
            frames.push(MetaFrame::CatchUp {
                run_id: run_id.clone(),
                status,
                missed_events: count - next,
                current_event_count: count,
            });
        }
        frames.push(MetaFrame::Subscribed {
            run_id: run_id.clone(),
            status,
            current_event_count: count,
        });
        frames
    };
    Ok(Resume {
        meta,
        events: EventStream::new(engine.clone(), run_id.clone(), last_event_index),
    })
}

/// Of two non-terminal views of one run (the store's and this engine's), the one further along.
fn further_along(stored: RunStatus, local: RunStatus) -> RunStatus {
    if stored == RunStatus::Pending {
        local
    } else {
        stored
    }
}

/// A run's events after an index, in order, each once, ending after its terminal event.
///
/// Reads memory while the run's log is there and the store for what memory no longer holds,
/// switching between the two without a gap.
pub struct EventStream {
    engine: Engine,
    run_id: RunId,
    next: u64,
    subscription: Option<Subscription>,
    ready: VecDeque<Event>,
    done: bool,
    idle_polls: u32,
    ahead: VecDeque<ReadAhead>,
    /// Whether pages the store keeps as frames are taken as frames ([`FramedStream`]).
    frames: bool,
    pending: Option<BoxFuture<'static, (FetchState, EngineResult<Chunk>)>>,
}

/// What a [`FramedStream`] gives at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Events, in order (a live run's from memory, or from a store that keeps no frames).
    Events(Vec<Event>),
    /// Consecutive events as their frames (as the store keeps them, or a finished run's from
    /// memory).
    Frames(Frames),
}

impl Chunk {
    /// Whether it holds no event (the stream has ended).
    pub fn is_empty(&self) -> bool {
        match self {
            Self::Events(events) => events.is_empty(),
            Self::Frames(frames) => frames.is_empty(),
        }
    }

    fn first_index(&self) -> Option<u64> {
        match self {
            Self::Events(events) => events.first().map(Event::index),
            Self::Frames(frames) => (!frames.is_empty()).then_some(frames.first_index),
        }
    }

    fn last_index(&self) -> Option<u64> {
        match self {
            Self::Events(events) => events.last().map(Event::index),
            Self::Frames(frames) => frames.last_index(),
        }
    }

    fn len(&self) -> u64 {
        match self {
            Self::Events(events) => events.len() as u64,
            Self::Frames(frames) => frames.count,
        }
    }
}

/// An [`EventStream`] that takes what the store keeps as frames as frames: for a consumer that
/// sends server-sent events, which then sends them as they are.
#[derive(Debug)]
pub struct FramedStream(EventStream);

impl FramedStream {
    /// The index of the next event this stream yields.
    pub fn position(&self) -> u64 {
        self.0.next
    }

    /// Waits for the next events or frames (an empty chunk once the stream has ended).
    ///
    /// Cancel-safe, as [`EventStream::next_batch`].
    pub async fn next_chunk(&mut self) -> EngineResult<Chunk> {
        futures::future::poll_fn(|cx| self.0.poll_chunk(cx))
            .await
            .unwrap_or_else(|| Ok(Chunk::Events(Vec::new())))
    }
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("run_id", &self.run_id)
            .field("next", &self.next)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// A store page being read ahead: the index it starts at, and the read.
type ReadAhead = (u64, tokio::task::JoinHandle<StoreResult<Chunk>>);

/// What a fetch needs and hands back.
struct FetchState {
    engine: Engine,
    run_id: RunId,
    next: u64,
    subscription: Option<Subscription>,
    done: bool,
    idle_polls: u32,
    ahead: VecDeque<ReadAhead>,
    frames: bool,
}

impl EventStream {
    pub(crate) fn new(engine: Engine, run_id: RunId, last_event_index: Option<u64>) -> Self {
        let subscription = engine.inner.log.subscribe(&run_id, last_event_index);
        Self {
            engine,
            run_id,
            next: last_event_index.map_or(0, |index| index.saturating_add(1)),
            subscription,
            ready: VecDeque::new(),
            done: false,
            idle_polls: 0,
            ahead: VecDeque::new(),
            frames: false,
            pending: None,
        }
    }

    /// This stream, taking what the store keeps as frames as frames.
    pub fn framed(mut self) -> FramedStream {
        self.frames = true;
        FramedStream(self)
    }

    fn empty(engine: Engine, run_id: RunId) -> Self {
        let mut stream = Self::new(engine, run_id, None);
        stream.subscription = None;
        stream.done = true;
        stream
    }

    /// The index of the next event this stream yields.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Waits for the next batch of events (empty once the stream has ended).
    ///
    /// Cancel-safe: a read in flight when the future is dropped is kept, and the next call (or
    /// poll of the stream) takes it up, so no event is lost or repeated.
    pub async fn next_batch(&mut self) -> EngineResult<Vec<Event>> {
        futures::future::poll_fn(|cx| self.poll_batch(cx))
            .await
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    /// Polls for every event that is ready, at least one; `None` once the stream has ended.
    fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<Option<EngineResult<Vec<Event>>>> {
        Poll::Ready(match futures::ready!(self.poll_chunk(cx)) {
            Some(Ok(Chunk::Events(events))) => Some(Ok(events)),
            // Only a `FramedStream` asks for frames, and it reads them with `next_chunk`.
            Some(Ok(Chunk::Frames(_))) => Some(Err(StoreError::backend(
                format!("reading run {}", self.run_id),
                "frames where events were asked for",
            )
            .into())),
            Some(Err(error)) => Some(Err(error)),
            None => None,
        })
    }

    /// Polls for what is ready, at least one event; `None` once the stream has ended.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<EngineResult<Chunk>>> {
        loop {
            if !self.ready.is_empty() {
                return Poll::Ready(Some(Ok(Chunk::Events(self.ready.drain(..).collect()))));
            }
            if self.pending.is_none() {
                if self.done {
                    return Poll::Ready(None);
                }
                let state = self.take_state();
                self.pending = Some(Box::pin(fetch(state)));
            }
            let Some(pending) = self.pending.as_mut() else {
                return Poll::Ready(None);
            };
            let (state, result) = futures::ready!(pending.as_mut().poll(cx));
            self.pending = None;
            self.restore(state);
            match result {
                Ok(chunk) if chunk.is_empty() => {
                    if self.done {
                        return Poll::Ready(None);
                    }
                }
                Ok(chunk) => return Poll::Ready(Some(Ok(chunk))),
                Err(error) => return Poll::Ready(Some(Err(error))),
            }
        }
    }

    fn take_state(&mut self) -> FetchState {
        FetchState {
            engine: self.engine.clone(),
            run_id: self.run_id.clone(),
            next: self.next,
            subscription: self.subscription.take(),
            done: self.done,
            idle_polls: self.idle_polls,
            ahead: std::mem::take(&mut self.ahead),
            frames: self.frames,
        }
    }

    fn restore(&mut self, state: FetchState) {
        self.next = state.next;
        self.subscription = state.subscription;
        self.done = state.done;
        self.idle_polls = state.idle_polls;
        self.ahead = state.ahead;
    }
}

/// Fetches the next batch: from memory, from the store where memory lacks it, and tells the end.
async fn fetch(mut state: FetchState) -> (FetchState, EngineResult<Chunk>) {
    let result = fetch_inner(&mut state).await;
    if let Ok(chunk) = &result {
        if let Some(last) = chunk.last_index() {
            state.next = last + 1;
        }
    }
    if result.is_err() {
        state.done = true;
    }
    (state, result)
}

/// At most `limit` events after `after` from the store: as frames when `frames` is asked for
/// and the store keeps them so.
async fn read_page(
    store: &dyn Store,
    run_id: &RunId,
    after: Option<u64>,
    limit: usize,
    frames: bool,
) -> StoreResult<Chunk> {
    if frames {
        if let Some(frames) = store.read_event_frames(run_id, after, limit).await? {
            return Ok(Chunk::Frames(frames));
        }
    }
    Ok(Chunk::Events(
        store.read_events(run_id, after, limit).await?,
    ))
}

async fn fetch_inner(state: &mut FetchState) -> EngineResult<Chunk> {
    let store = state.engine.inner.store.clone();
    loop {
        if state.done {
            return Ok(Chunk::Events(Vec::new()));
        }
        if let Some(subscription) = state.subscription.as_mut() {
            subscription.seek(state.next);
            // A finished run's events are framed as they are taken from memory, with none
            // copied. A live stream takes events, whose types say where the run ends.
            let batch = if state.frames && subscription.is_closed() {
                subscription
                    .next_frames(MEMORY_BATCH)
                    .await
                    .map(Chunk::Frames)
            } else {
                subscription
                    .next_batch(MEMORY_BATCH)
                    .await
                    .map(Chunk::Events)
            };
            match batch {
                Batch::Events(chunk) => return Ok(chunk),
                Batch::Evicted { from, to } => {
                    let limit = ((to - from) as usize).min(STORE_PAGE);
                    let chunk = read_page(
                        &*store,
                        &state.run_id,
                        from.checked_sub(1),
                        limit,
                        state.frames,
                    )
                    .await?;
                    if chunk.first_index() != Some(from) {
                        return Err(EngineError::Store(StoreError::backend(
                            format!("reading run {} from {from}", state.run_id),
                            "the store lacks events that left memory",
                        )));
                    }
                    return Ok(chunk);
                }
                Batch::End => {
                    // The log is closed; anything past it (a log taken out of memory) is in the
                    // store, which the next round reads.
                    state.subscription = None;
                    continue;
                }
            }
        }
        // Watch before reading, so that a notification after the read is not missed.
        let mut changed = state.engine.inner.remote.watch(&state.run_id);
        let ahead = loop {
            match state.ahead.pop_front() {
                Some((from, read)) if from == state.next => break read.await.ok(),
                // Made for a place the stream has not come to: this and those after it.
                Some((_, read)) => read.abort(),
                None => break None,
            }
        };
        let chunk = match ahead {
            // A read ahead that found nothing was made before the watch above: what was
            // stored and announced since would be waited for in vain. Read again.
            Some(Ok(chunk)) if !chunk.is_empty() => chunk,
            Some(Err(error)) => return Err(error.into()),
            _ => {
                read_page(
                    &*store,
                    &state.run_id,
                    state.next.checked_sub(1),
                    STORE_PAGE,
                    state.frames,
                )
                .await?
            }
        };
        if let Some(last) = chunk
            .last_index()
            .filter(|_| chunk.len() == STORE_PAGE as u64)
        {
            // A full page: the next ones are read while this one is delivered.
            let page = STORE_PAGE as u64;
            let mut after = state.ahead.back().map_or(last, |(from, _)| from + page - 1);
            while state.ahead.len() < READ_AHEAD {
                let (store, run_id, frames) = (store.clone(), state.run_id.clone(), state.frames);
                let read = tokio::spawn(async move {
                    read_page(&*store, &run_id, Some(after), STORE_PAGE, frames).await
                });
                state.ahead.push_back((after + 1, read));
                after += page;
            }
        }
        if !chunk.is_empty() {
            state.idle_polls = 0;
            return Ok(chunk);
        }
        let Some(run) = store.get_run(&state.run_id).await? else {
            state.done = true;
            return Ok(Chunk::Events(Vec::new()));
        };
        if run.has_completed() && state.next >= run.event_count() {
            state.done = true;
            return Ok(Chunk::Events(Vec::new()));
        }
        if let Some(subscription) = state
            .engine
            .inner
            .log
            .subscribe(&state.run_id, state.next.checked_sub(1))
            // A closed log (kept a while after its run went on elsewhere) holds nothing the
            // store lacks: taking it again and again would read the store in a busy loop.
            .filter(|subscription| !subscription.is_closed())
        {
            // Memory holds what follows: reads ahead in the store are of no use, and would
            // keep what they read as long as the stream lives.
            for (_, read) in state.ahead.drain(..) {
                read.abort();
            }
            state.subscription = Some(subscription);
            continue;
        }
        // Another engine executes the run: wait for its next write.
        state
            .engine
            .inner
            .remote
            .changed(&mut changed, state.idle_polls)
            .await;
        state.idle_polls = state.idle_polls.saturating_add(1);
    }
}

impl Stream for EventStream {
    type Item = EngineResult<Event>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(event) = this.ready.pop_front() {
            return Poll::Ready(Some(Ok(event)));
        }
        match futures::ready!(this.poll_batch(cx)) {
            Some(Ok(events)) => {
                this.ready.extend(events);
                Poll::Ready(this.ready.pop_front().map(Ok))
            }
            Some(Err(error)) => Poll::Ready(Some(Err(error))),
            None => Poll::Ready(None),
        }
    }
}
