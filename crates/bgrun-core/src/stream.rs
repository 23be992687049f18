//! Durable streams: named, append-only logs of opaque messages, as the Durable Streams protocol
//! serves them under `/v1/stream/{path}`.
//!
//! A stream lives at a path. Each append adds one message (a byte string; a JSON stream's
//! message holds the values of one append, comma-separated). A message's offset is its
//! position: the number of messages up to and including it, so offsets grow by one per
//! message and the stream's tail offset is its message count. A path deleted and created again
//! is a new stream with a new [`StreamId`]: messages belong to the id, never to the path.
//!
//! A fork is a stream that starts as another stream's prefix: it reads its source's messages up
//! to the fork offset (through the source's own fork chain), then its own. The chain is fixed
//! when the fork is created and recorded as its [`StreamSegment`]s, so a read never walks
//! sources. A stream with live forks is only soft-deleted (gone for its readers and writers,
//! its messages kept for the forks) until its last fork is deleted.
//!
//! The decisions every store makes the same way live here as plain functions:
//! [`plan_append`] (closure, content type, idempotent producers, `Stream-Seq`),
//! [`NewStream::matches`] (an idempotent create) and [`StreamInfo::is_expired`].

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;

/// Milliseconds since the Unix epoch: the unit of stream times (TTLs are short).
pub type Millis = i64;

/// The current time in [`Millis`].
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// One stream: a path's current incarnation. Opaque; stores hand them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamId(i64);

impl StreamId {
    /// The id a store assigned.
    pub const fn new(id: i64) -> Self {
        Self(id)
    }

    /// The number a store keeps.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A position in a stream: the number of messages before it. Written as the protocol's opaque,
/// lexicographically ordered `0000000000000000_0000000000000042`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct StreamOffset(u64);

impl StreamOffset {
    /// The start of every stream.
    pub const ZERO: Self = Self(0);
    /// Past every message of every stream (an offset this server never hands out).
    pub const BEYOND: Self = Self(u64::MAX);

    /// The offset after `messages` messages.
    pub const fn new(messages: u64) -> Self {
        Self(messages)
    }

    /// The number of messages before this offset.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Parses `<digits>_<digits>`. Offsets this server hands out have a zero first part; one
    /// with another first part, or too large to count, lies past every stream's tail.
    pub fn parse(text: &str) -> Result<Self, InvalidInput> {
        let invalid = || InvalidInput::new(format!("invalid offset {text:?}"));
        let (epoch, position) = text.split_once('_').ok_or_else(invalid)?;
        let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !digits(epoch) || !digits(position) {
            return Err(invalid());
        }
        if epoch.bytes().any(|b| b != b'0') {
            return Ok(Self::BEYOND);
        }
        Ok(Self(position.parse().unwrap_or(u64::MAX)))
    }
}

impl fmt::Display for StreamOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016}_{:016}", 0, self.0)
    }
}

/// Where some of a stream's messages are stored: those of `stream_id` with offsets in
/// `(after, upto]` (`upto` `None`: to its tail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSegment {
    /// The stream whose messages these are.
    pub stream_id: StreamId,
    /// The offset before the first of them.
    pub after: StreamOffset,
    /// The offset of the last of them; `None`: the stream's tail.
    pub upto: Option<StreamOffset>,
}

/// A stream's expiry, as it was asked for (a stream has at most one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamExpiry {
    /// Expires `secs` seconds after its last read or write (`Stream-TTL`).
    Ttl {
        /// The idle time allowed, in seconds.
        secs: u64,
    },
    /// Expires at a fixed time (`Stream-Expires-At`).
    At {
        /// The timestamp as the client wrote it (echoed back on `HEAD`).
        text: String,
        /// The same time.
        at: Millis,
    },
}

/// The producer whose write closed a stream, or who writes now (`Producer-Id`, `-Epoch`,
/// `-Seq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerClaim {
    /// The producer's id (not empty).
    pub id: String,
    /// Its epoch: a higher one fences every lower one.
    pub epoch: u64,
    /// The sequence number of this write within the epoch.
    pub seq: u64,
}

/// What a store keeps of one producer of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerState {
    /// The producer's current epoch.
    pub epoch: u64,
    /// The highest sequence number accepted in it.
    pub last_seq: u64,
    /// When it last wrote.
    pub updated: Millis,
}

/// The source of a stream being forked, resolved by the engine from the source's
/// [`StreamInfo`] before [`Store::create_stream`](crate::Store::create_stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFork {
    /// The source's path (`Stream-Forked-From`).
    pub source_path: String,
    /// The source stream; the store refuses the fork if it is gone by the time it writes.
    pub source_id: StreamId,
    /// The fork offset: the fork inherits the source's messages up to it.
    pub offset: StreamOffset,
    /// The offset the client named (`Stream-Fork-Offset`), if it named one.
    pub requested_offset: Option<StreamOffset>,
    /// `Stream-Fork-Sub-Offset`: how much of the source's message after `offset` the fork
    /// starts with (bytes, or values of a JSON stream); 0: none.
    pub sub_offset: u64,
    /// Where the inherited messages are: the source's segments cut at `offset`.
    pub inherited: Vec<StreamSegment>,
}

/// A stream to create ([`Store::create_stream`](crate::Store::create_stream)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStream {
    /// Where it lives (the part of the URL after `/v1/stream/`).
    pub path: String,
    /// Its content type, as given (compared case-insensitively, without parameters).
    pub content_type: String,
    /// When it expires, if ever.
    pub expiry: Option<StreamExpiry>,
    /// Created closed (`Stream-Closed: true`).
    pub closed: bool,
    /// The stream it forks, if any.
    pub fork: Option<NewFork>,
    /// Its first messages: a fork's sub-offset prefix first, then the initial body's.
    pub messages: Vec<Bytes>,
    /// The time of the request.
    pub now: Millis,
}

/// A content type without parameters, lower case: what two content types are compared by.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

impl NewStream {
    /// Whether `existing` is this very stream, so that creating it again changes nothing (an
    /// idempotent `PUT`); otherwise the create is a conflict.
    pub fn matches(&self, existing: &StreamInfo) -> bool {
        let fork_matches = match (&self.fork, &existing.fork) {
            (None, None) => true,
            (Some(new), Some(old)) => {
                new.source_path == old.source_path
                    && new
                        .requested_offset
                        .is_none_or(|offset| offset == old.offset)
                    && new.sub_offset == old.sub_offset
            }
            _ => false,
        };
        // An expiry is the same when it is the same instant, however it was written.
        let same_expiry = match (&self.expiry, &existing.expiry) {
            (Some(StreamExpiry::At { at: a, .. }), Some(StreamExpiry::At { at: b, .. })) => a == b,
            (a, b) => a == b,
        };
        media_type(&self.content_type) == media_type(&existing.content_type)
            && same_expiry
            && self.closed == existing.closed
            && fork_matches
    }
}

/// Where a fork came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkOrigin {
    /// The source's path.
    pub source_path: String,
    /// The source stream.
    pub source_id: StreamId,
    /// The fork offset.
    pub offset: StreamOffset,
    /// The sub-offset it was created with (0: none).
    pub sub_offset: u64,
}

/// A stream as a store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// This incarnation of the path.
    pub id: StreamId,
    /// Where it lives.
    pub path: String,
    /// Its content type, as created.
    pub content_type: String,
    /// When it expires, if ever.
    pub expiry: Option<StreamExpiry>,
    /// When it was created.
    pub created: Millis,
    /// When it was last read or written (what a TTL counts from).
    pub last_access: Millis,
    /// Its tail: the offset after its last message.
    pub tail: StreamOffset,
    /// Closed: it takes no more messages.
    pub closed: bool,
    /// The producer write that closed it, if one did.
    pub closed_by: Option<ProducerClaim>,
    /// The last `Stream-Seq` an append carried.
    pub last_stream_seq: Option<String>,
    /// The stream it forks, if any.
    pub fork: Option<ForkOrigin>,
    /// Where its inherited messages are (empty unless a fork).
    pub inherited: Vec<StreamSegment>,
    /// How many streams fork it and are not removed (a soft-deleted fork still counts).
    pub forks: u64,
    /// Deleted while forked: gone for readers and writers, kept for its forks.
    pub soft_deleted: bool,
}

impl StreamInfo {
    /// Where all of its messages are, in order: the inherited segments, then its own.
    pub fn segments(&self) -> Vec<StreamSegment> {
        let own = StreamSegment {
            stream_id: self.id,
            after: self.fork.as_ref().map_or(StreamOffset::ZERO, |f| f.offset),
            upto: None,
        };
        self.inherited.iter().copied().chain([own]).collect()
    }

    /// The segments a fork of this stream at `offset` inherits.
    pub fn segments_upto(&self, offset: StreamOffset) -> Vec<StreamSegment> {
        self.segments()
            .into_iter()
            .filter_map(|segment| {
                let upto = segment.upto.map_or(offset, |upto| upto.min(offset));
                (upto > segment.after).then_some(StreamSegment {
                    upto: Some(upto),
                    ..segment
                })
            })
            .collect()
    }

    /// The first time at which it is expired ([`is_expired`](Self::is_expired)): its
    /// `Stream-Expires-At`, or its last access plus its `Stream-TTL`; `None`: it never expires.
    /// Saturates at [`Millis::MAX`] rather than overflowing, so a TTL too large to count never
    /// expires in practice. Stores order expired streams by it
    /// ([`Store::expired_streams`](crate::Store::expired_streams)).
    pub fn expiry_deadline(&self) -> Option<Millis> {
        match &self.expiry {
            None => None,
            Some(StreamExpiry::At { at, .. }) => Some(*at),
            Some(StreamExpiry::Ttl { secs }) => {
                let idle = i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
                Some(self.last_access.saturating_add(idle))
            }
        }
    }

    /// Whether it has expired at `now`: past its `Stream-Expires-At`, or idle for longer than
    /// its `Stream-TTL` (`now` at or past its [`expiry_deadline`](Self::expiry_deadline)).
    pub fn is_expired(&self, now: Millis) -> bool {
        self.expiry_deadline()
            .is_some_and(|deadline| now >= deadline)
    }
}

/// What [`Store::create_stream`](crate::Store::create_stream) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateStreamOutcome {
    /// The stream was created.
    Created(StreamInfo),
    /// The stream existed with the same configuration ([`NewStream::matches`]); nothing changed.
    Existing(StreamInfo),
    /// A stream with another configuration lives at the path; nothing changed.
    Conflict(StreamInfo),
    /// The stream at the path was deleted while forked: the path is not free yet.
    PathGone,
    /// The fork's source no longer exists.
    SourceMissing,
    /// The fork's source was deleted while forked.
    SourceGone,
}

/// An append to a stream ([`Store::append_stream`](crate::Store::append_stream)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamAppend {
    /// The messages, in order; none: a close-only request.
    pub messages: Vec<Bytes>,
    /// The request's content type, checked against the stream's when there are messages.
    pub content_type: Option<String>,
    /// The idempotent producer writing, if any.
    pub producer: Option<ProducerClaim>,
    /// `Stream-Seq`: must sort after the last one the stream took (compared as strings).
    pub stream_seq: Option<String>,
    /// Close the stream with this write (`Stream-Closed: true`).
    pub close: bool,
    /// The time of the request.
    pub now: Millis,
}

/// What [`Store::append_stream`](crate::Store::append_stream) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Written (and closed, if asked).
    Appended {
        /// The stream's tail after the write.
        tail: StreamOffset,
        /// Whether the stream is closed now.
        closed: bool,
    },
    /// The producer's write was already taken: nothing written, which is success.
    Duplicate {
        /// The stream's tail.
        tail: StreamOffset,
        /// The producer's highest accepted sequence number.
        last_seq: u64,
        /// Whether the stream is closed.
        closed: bool,
    },
    /// The stream is closed and takes no more messages.
    Closed {
        /// Its final tail.
        tail: StreamOffset,
    },
    /// The producer's epoch is older than its current one: fenced.
    StaleEpoch {
        /// The producer's current epoch.
        current_epoch: u64,
    },
    /// A new epoch must start at sequence number 0.
    InvalidEpochSeq,
    /// The producer skipped sequence numbers.
    SequenceGap {
        /// The sequence number expected next.
        expected: u64,
        /// The one received.
        received: u64,
    },
    /// `Stream-Seq` does not sort after the stream's last one.
    SeqConflict,
    /// The request's content type is not the stream's.
    ContentTypeMismatch,
    /// No stream lives at the path (or it has expired).
    NotFound,
    /// The stream was deleted while forked.
    Gone,
}

/// What an append does to a stream, once [`plan_append`] has accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendPlan {
    /// The producer's state to keep (insert or replace), if a producer writes.
    pub producer: Option<(String, ProducerState)>,
    /// Whether the stream is closed after the write.
    pub close: bool,
    /// The producer write that closes it, when it does.
    pub closed_by: Option<ProducerClaim>,
    /// The `Stream-Seq` to keep as the last one; `None`: keep the last one as it is.
    pub stream_seq: Option<String>,
}

/// Decides an append, the same way in every store, from what the store read inside the
/// transaction that will write it: the stream (`None`: no stream at the path) and the
/// producer's state, if a producer writes and the store has its state.
///
/// `Ok`: write `append.messages` after the tail and apply the plan. `Err`: the outcome to
/// return, with nothing written.
pub fn plan_append(
    stream: Option<&StreamInfo>,
    producer: Option<&ProducerState>,
    append: &StreamAppend,
) -> Result<AppendPlan, AppendOutcome> {
    let Some(stream) = stream else {
        return Err(AppendOutcome::NotFound);
    };
    if stream.soft_deleted {
        return Err(AppendOutcome::Gone);
    }
    if stream.is_expired(append.now) {
        return Err(if stream.forks > 0 {
            AppendOutcome::Gone
        } else {
            AppendOutcome::NotFound
        });
    }
    if stream.closed {
        // A retry of the very write that closed the stream succeeds again.
        return Err(match (&append.producer, &stream.closed_by) {
            (Some(claim), Some(closer)) if claim == closer => AppendOutcome::Duplicate {
                tail: stream.tail,
                last_seq: claim.seq,
                closed: true,
            },
            _ => AppendOutcome::Closed { tail: stream.tail },
        });
    }
    if !append.messages.is_empty() {
        if let Some(content_type) = &append.content_type {
            if media_type(content_type) != media_type(&stream.content_type) {
                return Err(AppendOutcome::ContentTypeMismatch);
            }
        }
    }
    let producer = match &append.producer {
        None => None,
        Some(claim) => Some(check_producer(claim, producer, stream, append.now)?),
    };
    if let (Some(seq), Some(last)) = (&append.stream_seq, &stream.last_stream_seq) {
        if seq <= last {
            return Err(AppendOutcome::SeqConflict);
        }
    }
    Ok(AppendPlan {
        producer,
        close: append.close,
        closed_by: append.producer.clone().filter(|_| append.close),
        stream_seq: append.stream_seq.clone(),
    })
}

/// Kafka-style idempotent producer rules: a new producer starts at 0; a higher epoch starts
/// over at 0 and fences the lower ones; within an epoch, a sequence number already taken is a
/// duplicate and one past the next is a gap.
fn check_producer(
    claim: &ProducerClaim,
    state: Option<&ProducerState>,
    stream: &StreamInfo,
    now: Millis,
) -> Result<(String, ProducerState), AppendOutcome> {
    let accepted = |last_seq| {
        Ok((
            claim.id.clone(),
            ProducerState {
                epoch: claim.epoch,
                last_seq,
                updated: now,
            },
        ))
    };
    let Some(state) = state else {
        return if claim.seq == 0 {
            accepted(0)
        } else {
            Err(AppendOutcome::SequenceGap {
                expected: 0,
                received: claim.seq,
            })
        };
    };
    if claim.epoch < state.epoch {
        return Err(AppendOutcome::StaleEpoch {
            current_epoch: state.epoch,
        });
    }
    if claim.epoch > state.epoch {
        return if claim.seq == 0 {
            accepted(0)
        } else {
            Err(AppendOutcome::InvalidEpochSeq)
        };
    }
    if claim.seq <= state.last_seq {
        return Err(AppendOutcome::Duplicate {
            tail: stream.tail,
            last_seq: state.last_seq,
            closed: stream.closed,
        });
    }
    if claim.seq == state.last_seq + 1 {
        return accepted(claim.seq);
    }
    Err(AppendOutcome::SequenceGap {
        expected: state.last_seq + 1,
        received: claim.seq,
    })
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMessage {
    /// Its offset: the stream's tail right after it was appended.
    pub offset: StreamOffset,
    /// Its bytes.
    pub data: Bytes,
}

/// What [`Store::delete_stream`](crate::Store::delete_stream) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteStreamOutcome {
    /// Deleted, with its messages (and any soft-deleted source it was the last fork of).
    Deleted,
    /// Forked: gone for readers and writers, kept until its last fork is deleted.
    SoftDeleted,
    /// No such stream.
    NotFound,
    /// Already soft-deleted.
    Gone,
    /// [`Store::expire_stream`](crate::Store::expire_stream): the stream is not expired (it was
    /// read or written since it was judged so); nothing changed.
    NotExpired,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> StreamInfo {
        StreamInfo {
            id: StreamId::new(1),
            path: "s".into(),
            content_type: "text/plain".into(),
            expiry: None,
            created: 0,
            last_access: 0,
            tail: StreamOffset::new(3),
            closed: false,
            closed_by: None,
            last_stream_seq: None,
            fork: None,
            inherited: Vec::new(),
            forks: 0,
            soft_deleted: false,
        }
    }

    fn claim(epoch: u64, seq: u64) -> ProducerClaim {
        ProducerClaim {
            id: "p".into(),
            epoch,
            seq,
        }
    }

    fn append(claim: Option<ProducerClaim>) -> StreamAppend {
        StreamAppend {
            messages: vec![Bytes::from_static(b"x")],
            content_type: Some("text/plain; charset=utf-8".into()),
            producer: claim,
            ..StreamAppend::default()
        }
    }

    #[test]
    fn offsets_print_and_parse_in_the_protocol_format() {
        let offset = StreamOffset::new(42);
        assert_eq!(offset.to_string(), "0000000000000000_0000000000000042");
        assert_eq!(StreamOffset::parse(&offset.to_string()), Ok(offset));
        assert_eq!(StreamOffset::parse("0_7"), Ok(StreamOffset::new(7)));
        assert_eq!(
            StreamOffset::parse("0000000000000001_0000000000000000"),
            Ok(StreamOffset::BEYOND)
        );
        for bad in ["", "_", "1", "a_1", "1_", "1_2_3", " 1_2", "-1_2"] {
            assert!(StreamOffset::parse(bad).is_err(), "{bad:?}");
        }
        assert!(StreamOffset::new(9).to_string() < StreamOffset::new(10).to_string());
    }

    #[test]
    fn producers_follow_epoch_and_sequence_rules() {
        let s = stream();
        let state = |epoch, last_seq| ProducerState {
            epoch,
            last_seq,
            updated: 0,
        };
        assert!(plan_append(Some(&s), None, &append(Some(claim(0, 0)))).is_ok());
        assert_eq!(
            plan_append(Some(&s), None, &append(Some(claim(0, 1)))),
            Err(AppendOutcome::SequenceGap {
                expected: 0,
                received: 1
            })
        );
        let current = state(1, 4);
        let plan = |c| plan_append(Some(&s), Some(&current), &append(Some(c)));
        assert_eq!(
            plan(claim(0, 5)),
            Err(AppendOutcome::StaleEpoch { current_epoch: 1 })
        );
        assert_eq!(plan(claim(2, 1)), Err(AppendOutcome::InvalidEpochSeq));
        assert_eq!(
            plan(claim(1, 2)),
            Err(AppendOutcome::Duplicate {
                tail: s.tail,
                last_seq: 4,
                closed: false
            })
        );
        assert_eq!(
            plan(claim(1, 7)),
            Err(AppendOutcome::SequenceGap {
                expected: 5,
                received: 7
            })
        );
        let accepted = plan(claim(1, 5)).unwrap();
        assert_eq!(accepted.producer.unwrap().1.last_seq, 5);
        assert_eq!(plan(claim(2, 0)).unwrap().producer.unwrap().1.epoch, 2);
    }

    #[test]
    fn a_closed_stream_takes_only_the_retry_of_its_closing_write() {
        let mut s = stream();
        s.closed = true;
        s.closed_by = Some(claim(0, 3));
        assert_eq!(
            plan_append(Some(&s), None, &append(Some(claim(0, 3)))),
            Err(AppendOutcome::Duplicate {
                tail: s.tail,
                last_seq: 3,
                closed: true
            })
        );
        assert_eq!(
            plan_append(Some(&s), None, &append(Some(claim(0, 4)))),
            Err(AppendOutcome::Closed { tail: s.tail })
        );
    }

    #[test]
    fn content_type_and_stream_seq_are_checked() {
        let mut s = stream();
        let mut a = append(None);
        a.content_type = Some("application/json".into());
        assert_eq!(
            plan_append(Some(&s), None, &a),
            Err(AppendOutcome::ContentTypeMismatch)
        );
        s.last_stream_seq = Some("2".into());
        let mut a = append(None);
        a.stream_seq = Some("10".into());
        assert_eq!(
            plan_append(Some(&s), None, &a),
            Err(AppendOutcome::SeqConflict)
        );
        a.stream_seq = Some("3".into());
        assert!(plan_append(Some(&s), None, &a).is_ok());
    }

    #[test]
    fn expiry_counts_from_the_last_access() {
        let mut s = stream();
        assert_eq!(s.expiry_deadline(), None);
        assert!(!s.is_expired(Millis::MAX));
        s.expiry = Some(StreamExpiry::Ttl { secs: 2 });
        s.last_access = 10_000;
        assert_eq!(s.expiry_deadline(), Some(12_000));
        assert!(!s.is_expired(11_999));
        assert!(s.is_expired(12_000));
        s.forks = 1;
        let mut a = append(None);
        a.now = 12_000;
        assert_eq!(plan_append(Some(&s), None, &a), Err(AppendOutcome::Gone));
    }

    #[test]
    fn deadlines_saturate_instead_of_overflowing() {
        let mut s = stream();
        s.last_access = 10_000;
        // Past i64::MAX seconds, as milliseconds, past i64::MAX when added: all saturate.
        for secs in [
            u64::MAX,
            1 << 63,
            9_223_372_036_854_776,
            9_223_372_036_854_775,
        ] {
            s.expiry = Some(StreamExpiry::Ttl { secs });
            assert_eq!(s.expiry_deadline(), Some(Millis::MAX), "{secs}");
            assert!(!s.is_expired(Millis::MAX - 1), "{secs}");
            assert!(s.is_expired(Millis::MAX), "{secs}");
        }
        s.expiry = Some(StreamExpiry::At {
            text: "t".into(),
            at: 5,
        });
        assert_eq!(s.expiry_deadline(), Some(5));
    }

    #[test]
    fn a_fork_inherits_its_sources_segments_cut_at_the_fork_offset() {
        let root = stream();
        let fork = StreamInfo {
            id: StreamId::new(2),
            fork: Some(ForkOrigin {
                source_path: "s".into(),
                source_id: root.id,
                offset: StreamOffset::new(2),
                sub_offset: 0,
            }),
            inherited: root.segments_upto(StreamOffset::new(2)),
            tail: StreamOffset::new(5),
            ..stream()
        };
        let at = |after, upto: Option<u64>, id| StreamSegment {
            stream_id: StreamId::new(id),
            after: StreamOffset::new(after),
            upto: upto.map(StreamOffset::new),
        };
        assert_eq!(fork.segments(), vec![at(0, Some(2), 1), at(2, None, 2)]);
        assert_eq!(
            fork.segments_upto(StreamOffset::new(1)),
            vec![at(0, Some(1), 1)]
        );
        assert_eq!(
            fork.segments_upto(StreamOffset::new(4)),
            vec![at(0, Some(2), 1), at(2, Some(4), 2)]
        );
        assert!(fork.segments_upto(StreamOffset::ZERO).is_empty());
    }
}
