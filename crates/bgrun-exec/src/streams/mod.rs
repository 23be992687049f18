//! Durable streams over the engine's store: what the Durable Streams protocol asks of a server
//! beyond storing (JSON mode, forks resolved against their source, expiry applied on access and
//! by a periodic sweep, reads across a fork's segments, waiting at the tail), so that any front
//! end (bgrun-http's `/v1/stream`) only maps its requests.
//!
//! Delivery follows durability: a reader is woken only once the store has committed the write,
//! and reads come from the store.

mod flight;
mod hub;
pub mod json;
pub(crate) mod sweep;

use std::sync::Arc;
use std::time::Duration;

use bgrun_core::stream::{
    media_type, now_millis, AppendOutcome, CreateStreamOutcome, DeleteStreamOutcome, Millis,
    NewFork, NewStream, ProducerClaim, StreamAppend, StreamExpiry, StreamId, StreamInfo,
    StreamMessage, StreamOffset,
};
use bgrun_core::{Store, StoreError};
use bytes::Bytes;

pub(crate) use hub::Hub;

/// What a stream operation can fail with, beyond what the protocol answers as an outcome.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// No stream lives at the path (or it has expired).
    #[error("stream not found")]
    NotFound,
    /// The stream was deleted while forked: gone until its forks are.
    #[error("stream is gone")]
    Gone,
    /// A stream with another configuration lives at the path.
    #[error("stream already exists with a different configuration")]
    Conflict,
    /// The path belongs to a stream deleted while forked.
    #[error(
        "the stream at this path was deleted but still has forks; the path cannot be reused yet"
    )]
    PathGone,
    /// The fork's source does not exist.
    #[error("source stream not found")]
    SourceNotFound,
    /// The fork's source was deleted while forked.
    #[error("source stream was deleted but still has forks")]
    SourceGone,
    /// The content type is not the (source) stream's.
    #[error("content type mismatch")]
    ContentTypeMismatch,
    /// The fork offset lies past the source's tail.
    #[error("fork offset beyond the source stream's tail")]
    ForkOffsetBeyondTail,
    /// The fork would inherit from more streams than [`MAX_FORK_SEGMENTS`] (a chain of forks
    /// that deep makes every read that many store reads).
    #[error("a fork inherits from at most {MAX_FORK_SEGMENTS} streams")]
    ForkTooDeep,
    /// The fork sub-offset cannot be satisfied.
    #[error("invalid fork sub-offset: {0}")]
    InvalidSubOffset(&'static str),
    /// A JSON stream's body is not one JSON value.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// A JSON append of an empty array.
    #[error("empty JSON arrays are not allowed")]
    EmptyJsonArray,
    /// The store does not keep durable streams.
    #[error("this server's store does not support durable streams")]
    Unsupported,
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for StreamError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unsupported(_) => Self::Unsupported,
            other => Self::Store(other),
        }
    }
}

/// The most streams a fork's messages may come from (its own included).
pub const MAX_FORK_SEGMENTS: usize = 64;

/// A fork to create ([`CreateStream::fork`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkRequest {
    /// The source's path.
    pub source: String,
    /// The fork offset; `None`: the source's tail.
    pub offset: Option<StreamOffset>,
    /// Bytes (or JSON values) of the source's message after the offset the fork starts with.
    pub sub_offset: u64,
}

/// A stream to create ([`Streams::create`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateStream {
    /// Its path.
    pub path: String,
    /// Its content type; `None`: the source's for a fork, else `application/octet-stream`.
    pub content_type: Option<String>,
    /// When it expires; `None`: a fork's source's expiry, else never.
    pub expiry: Option<StreamExpiry>,
    /// Create it closed.
    pub closed: bool,
    /// The stream it forks.
    pub fork: Option<ForkRequest>,
    /// The initial body (one message; a JSON array: its values; empty: none).
    pub body: Bytes,
}

/// What [`Streams::create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedStream {
    /// The stream.
    pub info: StreamInfo,
    /// Created now (else it existed with the same configuration).
    pub created: bool,
}

/// An append ([`Streams::append`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppendStream {
    /// The body: one message (a JSON stream: one value, or an array of values); empty with
    /// `close`: close only.
    pub body: Bytes,
    /// The request's content type.
    pub content_type: Option<String>,
    /// The idempotent producer writing.
    pub producer: Option<ProducerClaim>,
    /// `Stream-Seq`.
    pub stream_seq: Option<String>,
    /// Close the stream with this write.
    pub close: bool,
}

/// What [`Streams::wait`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waited {
    /// The stream when the wait ended.
    pub info: StreamInfo,
    /// Nothing happened before the timeout.
    pub timed_out: bool,
}

/// What a segment read is keyed by when readers share it: stream, after, upto, byte budget.
type ReadKey = (StreamId, StreamOffset, Option<StreamOffset>, usize);

/// The durable streams of an engine ([`Engine::streams`](crate::Engine::streams)).
#[derive(Clone)]
pub struct Streams {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    /// `stream_info` reads shared by readers asking at once (woken by one append, say).
    infos: Arc<flight::Flights<String, Option<StreamInfo>>>,
    /// `read_stream` reads shared likewise.
    reads: Arc<flight::Flights<ReadKey, Vec<StreamMessage>>>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams").finish_non_exhaustive()
    }
}

impl Streams {
    pub(crate) fn new(store: Arc<dyn Store>, hub: Arc<Hub>) -> Self {
        Self {
            store,
            hub,
            infos: Arc::default(),
            reads: Arc::default(),
        }
    }

    /// How many reads were shared: a reader joined a store read another reader had started
    /// (and that started late enough to see everything the joiner may see).
    pub fn shared_reads(&self) -> u64 {
        self.infos.joined() + self.reads.joined()
    }

    /// How many readers wait at a stream's tail now (long-poll and SSE reads).
    pub fn waiting_readers(&self) -> usize {
        self.hub.waiting()
    }

    /// Whether the store keeps durable streams.
    pub fn supported(&self) -> bool {
        self.store.supports_streams()
    }

    /// The live stream at `path`: `NotFound` when there is none, `Gone` when it was deleted
    /// while forked. An expired stream is deleted here (soft-deleted when forked).
    pub async fn get(&self, path: &str) -> Result<StreamInfo, StreamError> {
        let store = self.store.clone();
        let owned = path.to_owned();
        let info = self
            .infos
            .run(path.to_owned(), self.hub.version(), move || async move {
                store.stream_info(&owned).await
            })
            .await?;
        self.live(info, now_millis()).await
    }

    async fn live(&self, info: Option<StreamInfo>, now: Millis) -> Result<StreamInfo, StreamError> {
        let info = info.ok_or(StreamError::NotFound)?;
        if info.soft_deleted {
            return Err(StreamError::Gone);
        }
        if info.is_expired(now) {
            // Judged again by the store in the delete itself: a write that kept the stream
            // alive since `info` was read is never deleted with it.
            match self.store.expire_stream(&info.path, info.id, now).await? {
                DeleteStreamOutcome::NotExpired => {
                    let fresh = self.store.stream_info(&info.path).await?;
                    return match fresh {
                        Some(fresh) if fresh.id == info.id && !fresh.soft_deleted => Ok(fresh),
                        Some(fresh) if fresh.soft_deleted => Err(StreamError::Gone),
                        _ => Err(StreamError::NotFound),
                    };
                }
                DeleteStreamOutcome::SoftDeleted | DeleteStreamOutcome::Gone => {
                    self.hub.notify(&info.path);
                    return Err(StreamError::Gone);
                }
                DeleteStreamOutcome::Deleted | DeleteStreamOutcome::NotFound => {
                    self.hub.notify(&info.path);
                    return Err(StreamError::NotFound);
                }
            }
        }
        Ok(info)
    }

    /// Creates a stream, or confirms one created with the same configuration.
    pub async fn create(&self, request: CreateStream) -> Result<CreatedStream, StreamError> {
        let now = now_millis();
        if let Some(existing) = self.store.stream_info(&request.path).await? {
            if existing.soft_deleted {
                return Err(StreamError::PathGone);
            }
            if !existing.is_expired(now) {
                // Compared before resolving the fork: a confirmation needs no live source.
                return if confirms(&request, &existing) {
                    Ok(CreatedStream {
                        info: existing,
                        created: false,
                    })
                } else {
                    Err(StreamError::Conflict)
                };
            }
        }
        let mut messages = Vec::new();
        let (content_type, expiry, fork) = match &request.fork {
            None => (
                request
                    .content_type
                    .clone()
                    .unwrap_or_else(|| "application/octet-stream".to_owned()),
                request.expiry.clone(),
                None,
            ),
            Some(fork) => {
                let (content_type, expiry, resolved, prefix) =
                    self.resolve_fork(&request, fork, now).await?;
                messages.extend(prefix);
                (content_type, expiry, Some(resolved))
            }
        };
        if !request.body.is_empty() {
            if media_type(&content_type) == json::JSON {
                messages.extend(json::parse(&request.body, true).await?);
            } else {
                messages.push(request.body.clone());
            }
        }
        let outcome = self
            .store
            .create_stream(NewStream {
                path: request.path.clone(),
                content_type,
                expiry,
                closed: request.closed,
                fork,
                messages,
                now,
            })
            .await?;
        if matches!(
            outcome,
            CreateStreamOutcome::Created(_) | CreateStreamOutcome::PathGone
        ) {
            // A reader asking after this answer must not share a look taken before it (see
            // `flight`): a create (or the soft delete behind PathGone) moves the version.
            self.hub.notify(&request.path);
        }
        match outcome {
            CreateStreamOutcome::Created(info) => Ok(CreatedStream {
                info,
                created: true,
            }),
            CreateStreamOutcome::Existing(info) => Ok(CreatedStream {
                info,
                created: false,
            }),
            CreateStreamOutcome::Conflict(_) => Err(StreamError::Conflict),
            CreateStreamOutcome::PathGone => Err(StreamError::PathGone),
            CreateStreamOutcome::SourceMissing => Err(StreamError::SourceNotFound),
            CreateStreamOutcome::SourceGone => Err(StreamError::SourceGone),
        }
    }

    /// The content type, expiry, store-ready fork and sub-offset prefix of a fork request.
    async fn resolve_fork(
        &self,
        request: &CreateStream,
        fork: &ForkRequest,
        now: Millis,
    ) -> Result<(String, Option<StreamExpiry>, NewFork, Option<Bytes>), StreamError> {
        let source = match self
            .live(self.store.stream_info(&fork.source).await?, now)
            .await
        {
            Ok(source) => source,
            Err(StreamError::NotFound) => return Err(StreamError::SourceNotFound),
            Err(StreamError::Gone) => return Err(StreamError::SourceGone),
            Err(other) => return Err(other),
        };
        let content_type = match &request.content_type {
            Some(asked) if media_type(asked) != media_type(&source.content_type) => {
                return Err(StreamError::ContentTypeMismatch)
            }
            Some(asked) => asked.clone(),
            None => source.content_type.clone(),
        };
        let offset = fork.offset.unwrap_or(source.tail);
        if offset > source.tail {
            return Err(StreamError::ForkOffsetBeyondTail);
        }
        let prefix = if fork.sub_offset > 0 {
            let next = self.read(&source, offset, 1).await?;
            let message = next.first().ok_or(StreamError::InvalidSubOffset(
                "no message after the fork offset",
            ))?;
            Some(if media_type(&source.content_type) == json::JSON {
                json::prefix_of(&message.data, fork.sub_offset)
                    .await?
                    .ok_or(StreamError::InvalidSubOffset(
                        "more values than the message holds",
                    ))?
            } else {
                let end = usize::try_from(fork.sub_offset)
                    .ok()
                    .filter(|end| *end <= message.data.len())
                    .ok_or(StreamError::InvalidSubOffset(
                        "more bytes than the message holds",
                    ))?;
                message.data.slice(..end)
            })
        } else {
            None
        };
        let inherited = source.segments_upto(offset);
        if inherited.len() >= MAX_FORK_SEGMENTS {
            return Err(StreamError::ForkTooDeep);
        }
        let expiry = request.expiry.clone().or_else(|| source.expiry.clone());
        let resolved = NewFork {
            source_path: source.path.clone(),
            source_id: source.id,
            offset,
            requested_offset: fork.offset,
            sub_offset: fork.sub_offset,
            inherited,
        };
        Ok((content_type, expiry, resolved, prefix))
    }

    /// Appends to (or closes) the stream at `path`; wakes its waiting readers once written.
    pub async fn append(
        &self,
        path: &str,
        request: AppendStream,
    ) -> Result<AppendOutcome, StreamError> {
        let is_json = request
            .content_type
            .as_deref()
            .is_some_and(|content_type| media_type(content_type) == json::JSON);
        let messages = if request.body.is_empty() {
            Vec::new()
        } else if is_json {
            // The stream's content type is checked by the store: a JSON body can only land in
            // a JSON stream. A body that is not valid JSON is refused here, unless the stream
            // is no JSON stream at all: that is the conflict to report.
            match json::parse(&request.body, false).await {
                Ok(message) => message.into_iter().collect(),
                Err(error) => {
                    let info = self.get(path).await?;
                    return if media_type(&info.content_type) == json::JSON {
                        Err(error)
                    } else {
                        Ok(AppendOutcome::ContentTypeMismatch)
                    };
                }
            }
        } else {
            vec![request.body]
        };
        let append = StreamAppend {
            messages,
            content_type: request.content_type,
            producer: request.producer,
            stream_seq: request.stream_seq,
            close: request.close,
            now: now_millis(),
        };
        // In a task of its own: the store write goes on if this future is dropped (a producer
        // hanging up), and the readers waiting at the tail must be woken once it commits.
        let (store, hub, path) = (
            Arc::clone(&self.store),
            Arc::clone(&self.hub),
            path.to_owned(),
        );
        let appended = tokio::spawn(async move {
            let outcome = store.append_stream(&path, append).await?;
            if matches!(outcome, AppendOutcome::Appended { .. }) {
                hub.notify(&path);
            }
            Ok::<_, StoreError>(outcome)
        });
        let outcome = appended
            .await
            .map_err(|error| StoreError::backend("appending to a stream", error))??;
        Ok(outcome)
    }

    /// Up to `max_bytes` (at least one message, if any) of the stream's messages after
    /// `after`, across its fork segments.
    pub async fn read(
        &self,
        info: &StreamInfo,
        after: StreamOffset,
        max_bytes: usize,
    ) -> Result<Vec<StreamMessage>, StreamError> {
        let mut messages = Vec::new();
        let mut bytes = 0;
        for segment in info.segments() {
            let upto = segment.upto.unwrap_or(info.tail);
            if upto <= after {
                continue;
            }
            let from = segment.after.max(after);
            let budget = max_bytes.saturating_sub(bytes).max(1);
            // Messages up to a tail already read never change: any read of the same range
            // serves, whenever it started (version 0: always join).
            let store = self.store.clone();
            let id = segment.stream_id;
            let found = self
                .reads
                .run((id, from, Some(upto), budget), 0, move || async move {
                    store.read_stream(id, from, Some(upto), budget).await
                })
                .await?;
            bytes += found.iter().map(|m| m.data.len()).sum::<usize>();
            messages.extend(found);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(messages)
    }

    /// Records a read of a stream that expires after a TTL (the TTL counts from it).
    pub async fn touch(&self, info: &StreamInfo) -> Result<(), StreamError> {
        if matches!(info.expiry, Some(StreamExpiry::Ttl { .. })) {
            self.store.touch_stream(info.id, now_millis()).await?;
        }
        Ok(())
    }

    /// Waits until the stream at `path` has messages after `after`, is closed, or `timeout`
    /// passes.
    pub async fn wait(
        &self,
        path: &str,
        after: StreamOffset,
        timeout: Duration,
    ) -> Result<Waited, StreamError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribed before the first look: a write committed in between still wakes us. One
        // another replica reports by id before the id is remembered only moves the version:
        // then look again at once.
        let mut changes = self.hub.subscribe(path);
        let version = self.hub.version();
        let mut info = self.get(path).await?;
        self.hub.remember(info.id, path);
        if self.hub.version() != version {
            changes.mark_changed();
        }
        loop {
            if info.tail > after || info.closed {
                return Ok(Waited {
                    info,
                    timed_out: false,
                });
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                // A hub never drops a sender somebody waits on; treat it as a timeout.
                Ok(Err(_)) | Err(_) => {
                    return Ok(Waited {
                        info,
                        timed_out: true,
                    })
                }
            }
            let now = self.get(path).await?;
            if now.id != info.id {
                // Deleted and created again: the old stream is gone.
                return Err(StreamError::NotFound);
            }
            info = now;
        }
    }

    /// Deletes the stream at `path` (soft-deletes it while forked).
    pub async fn delete(&self, path: &str) -> Result<(), StreamError> {
        let info = self.get(path).await?;
        let outcome = self.store.delete_stream(path, Some(info.id)).await?;
        self.hub.notify(path);
        match outcome {
            DeleteStreamOutcome::Deleted | DeleteStreamOutcome::SoftDeleted => Ok(()),
            DeleteStreamOutcome::NotFound | DeleteStreamOutcome::NotExpired => {
                Err(StreamError::NotFound)
            }
            DeleteStreamOutcome::Gone => Err(StreamError::Gone),
        }
    }

    /// Wakes the readers of stream `id` (another process changed it).
    pub(crate) fn changed_elsewhere(&self, id: bgrun_core::stream::StreamId) {
        self.hub.notify_id(id);
    }

    /// Wakes every reader (notifications may have been missed).
    pub(crate) fn resync(&self) {
        self.hub.notify_all();
    }
}

/// Whether creating `request` again over `existing` is an idempotent confirmation.
fn confirms(request: &CreateStream, existing: &StreamInfo) -> bool {
    let content_type = request
        .content_type
        .clone()
        .or_else(|| request.fork.as_ref().map(|_| existing.content_type.clone()))
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let fork = match (&request.fork, &existing.fork) {
        (Some(asked), Some(origin)) => Some(NewFork {
            source_path: asked.source.clone(),
            source_id: origin.source_id,
            offset: origin.offset,
            requested_offset: asked.offset,
            sub_offset: asked.sub_offset,
            inherited: Vec::new(),
        }),
        (Some(asked), None) => Some(NewFork {
            source_path: asked.source.clone(),
            source_id: existing.id,
            offset: StreamOffset::ZERO,
            requested_offset: asked.offset,
            sub_offset: asked.sub_offset,
            inherited: Vec::new(),
        }),
        (None, _) => None,
    };
    // A fork asked for without an expiry has its source's: compare with what it got.
    let expiry = match (&request.expiry, &request.fork) {
        (None, Some(_)) => existing.expiry.clone(),
        (expiry, _) => expiry.clone(),
    };
    NewStream {
        path: request.path.clone(),
        content_type,
        expiry,
        closed: request.closed,
        fork,
        messages: Vec::new(),
        now: 0,
    }
    .matches(existing)
}
