//! Durable streams: creates, appends, reads, idempotent producers, `Stream-Seq`, closure, forks,
//! expiry, concurrent writers and persistence, as the stream methods of [`Store`] document them.
//!
//! Stream times are inputs (every call carries its `now`), so the checks choose them and test
//! expiry without waiting.

use std::collections::HashSet;
use std::fmt::Display;
use std::sync::Arc;

use bgrun_core::stream::{
    AppendOutcome, CreateStreamOutcome, DeleteStreamOutcome, ForkOrigin, Millis, NewFork,
    NewStream, ProducerClaim, StreamAppend, StreamExpiry, StreamId, StreamInfo, StreamMessage,
    StreamOffset,
};
use bgrun_core::Store;
use futures::future::join_all;
use tokio::sync::Barrier;

use crate::checks::Persistence;
use crate::support::{ensure, expect_eq, fail, CheckResult, Succeeds};
use crate::{CheckFailure, StoreHarness};

/// Why the suite skips the stream checks of a store that does not keep streams.
pub const STREAMS_UNSUPPORTED: &str =
    "the store does not keep durable streams (Store::supports_streams is false)";

/// A fixed time, in milliseconds, that the checks count from.
const NOW: Millis = 1_700_000_000_000;

/// The content type of the byte streams the checks create.
const BYTES: &str = "application/octet-stream";

/// More than any stream of the checks holds: a read with this limit is not cut short.
const UNLIMITED: usize = usize::MAX;

/// A message as the checks expect it: its offset and its bytes.
type Expected = (u64, Vec<u8>);

fn offset(messages: u64) -> StreamOffset {
    StreamOffset::new(messages)
}

/// A new byte stream at `path` without messages, expiry or source.
fn new_stream(path: &str, now: Millis) -> NewStream {
    NewStream {
        path: path.into(),
        content_type: BYTES.into(),
        expiry: None,
        closed: false,
        fork: None,
        messages: Vec::new(),
        now,
    }
}

/// `new` with these initial messages.
fn with_messages(mut new: NewStream, messages: &[&[u8]]) -> NewStream {
    new.messages = messages.iter().map(|m| m.to_vec().into()).collect();
    new
}

/// An append of `messages` at `now`, without producer, `Stream-Seq` or close.
fn appending(messages: &[&[u8]], now: Millis) -> StreamAppend {
    StreamAppend {
        messages: messages.iter().map(|m| m.to_vec().into()).collect(),
        now,
        ..StreamAppend::default()
    }
}

/// `append` written by producer `id`.
fn by(mut append: StreamAppend, id: &str, epoch: u64, seq: u64) -> StreamAppend {
    append.producer = Some(claim(id, epoch, seq));
    append
}

fn claim(id: &str, epoch: u64, seq: u64) -> ProducerClaim {
    ProducerClaim {
        id: id.into(),
        epoch,
        seq,
    }
}

/// A fork of `source` at `at`, inheriting what [`StreamInfo::segments_upto`] says.
fn fork_of(source: &StreamInfo, at: u64) -> NewFork {
    NewFork {
        source_path: source.path.clone(),
        source_id: source.id,
        offset: offset(at),
        requested_offset: Some(offset(at)),
        sub_offset: 0,
        inherited: source.segments_upto(offset(at)),
    }
}

/// The stream a create of `new` must report as `Created`, given the id the store chose.
fn created_info(new: &NewStream, id: StreamId) -> StreamInfo {
    let start = new.fork.as_ref().map_or(0, |fork| fork.offset.get());
    StreamInfo {
        id,
        path: new.path.clone(),
        content_type: new.content_type.clone(),
        expiry: new.expiry.clone(),
        created: new.now,
        last_access: new.now,
        tail: offset(start + new.messages.len() as u64),
        closed: new.closed,
        closed_by: None,
        last_stream_seq: None,
        fork: new.fork.as_ref().map(|fork| ForkOrigin {
            source_path: fork.source_path.clone(),
            source_id: fork.source_id,
            offset: fork.offset,
            sub_offset: fork.sub_offset,
        }),
        inherited: new
            .fork
            .as_ref()
            .map(|fork| fork.inherited.clone())
            .unwrap_or_default(),
        forks: 0,
        soft_deleted: false,
    }
}

fn describe_create(new: &NewStream) -> String {
    let mut what = format!("create_stream({}", new.path);
    if let Some(fork) = &new.fork {
        what += &format!(
            ", forking {} (id {}) at {}",
            fork.source_path,
            fork.source_id,
            fork.offset.get()
        );
    }
    format!("{what}, {} initial messages)", new.messages.len())
}

/// Creates `new`, expecting `Created` with exactly the stream it describes; returns it.
async fn create(store: &dyn Store, new: NewStream) -> CheckResult<StreamInfo> {
    let what = describe_create(&new);
    match store.create_stream(new.clone()).await.succeeds(&what)? {
        CreateStreamOutcome::Created(info) => {
            expect_eq(
                format!("{what}: the stream it reports Created"),
                &info,
                &created_info(&new, info.id),
            )?;
            expect_eq(
                format!("stream_info({}) right after {what}", new.path),
                &stream_info(store, &new.path).await?,
                &Some(info.clone()),
            )?;
            Ok(info)
        }
        other => fail!("{what}: expected Created, got {other:?}"),
    }
}

/// Creates `new`, expecting exactly `expected`.
async fn create_expecting(
    store: &dyn Store,
    new: NewStream,
    expected: CreateStreamOutcome,
    context: impl Display,
) -> CheckResult {
    let what = format!("{} {context}", describe_create(&new));
    expect_eq(
        &what,
        &store.create_stream(new).await.succeeds(&what)?,
        &expected,
    )
}

async fn stream_info(store: &dyn Store, path: &str) -> CheckResult<Option<StreamInfo>> {
    store
        .stream_info(path)
        .await
        .succeeds(format!("stream_info({path})"))
}

/// The stream at `path`, which must exist.
async fn info(store: &dyn Store, path: &str, context: impl Display) -> CheckResult<StreamInfo> {
    match stream_info(store, path).await? {
        Some(info) => Ok(info),
        None => fail!("stream_info({path}) {context}: expected the stream, got None"),
    }
}

/// Fails unless no stream lives at `path`.
async fn no_stream(store: &dyn Store, path: &str, context: impl Display) -> CheckResult {
    match stream_info(store, path).await? {
        None => Ok(()),
        Some(info) => fail!("stream_info({path}) {context}: expected None, got {info:?}"),
    }
}

/// Fails unless the stream at `path` is `expected`, exactly.
async fn expect_info(
    store: &dyn Store,
    path: &str,
    expected: &StreamInfo,
    context: impl Display,
) -> CheckResult {
    expect_eq(
        format!("stream_info({path}) {context}"),
        &info(store, path, &context).await?,
        expected,
    )
}

fn describe_append(path: &str, append: &StreamAppend) -> String {
    let count = append.messages.len();
    let plural = if count == 1 { "" } else { "s" };
    let mut what = format!("append_stream({path}, {count} message{plural}");
    if let Some(claim) = &append.producer {
        what += &format!(
            ", producer {} epoch {} seq {}",
            claim.id, claim.epoch, claim.seq
        );
    }
    if let Some(seq) = &append.stream_seq {
        what += &format!(", Stream-Seq {seq:?}");
    }
    if let Some(content_type) = &append.content_type {
        what += &format!(", content type {content_type:?}");
    }
    if append.close {
        what += ", close";
    }
    format!("{what}, now {})", append.now)
}

/// Appends, expecting `expected`.
async fn append(
    store: &dyn Store,
    path: &str,
    append: StreamAppend,
    expected: AppendOutcome,
    context: impl Display,
) -> CheckResult {
    let what = format!("{} {context}", describe_append(path, &append));
    expect_eq(
        &what,
        &store.append_stream(path, append).await.succeeds(&what)?,
        &expected,
    )
}

fn appended(tail: u64) -> AppendOutcome {
    AppendOutcome::Appended {
        tail: offset(tail),
        closed: false,
    }
}

fn duplicate(tail: u64, last_seq: u64) -> AppendOutcome {
    AppendOutcome::Duplicate {
        tail: offset(tail),
        last_seq,
        closed: false,
    }
}

/// One `read_stream` call, checked to be in order, inside the range and no longer than the
/// byte limit allows.
async fn read(
    store: &dyn Store,
    id: StreamId,
    after: u64,
    upto: Option<u64>,
    max_bytes: usize,
) -> CheckResult<Vec<StreamMessage>> {
    let what = format!("read_stream(id {id}, after {after}, upto {upto:?}, max_bytes {max_bytes})");
    let messages = store
        .read_stream(id, offset(after), upto.map(offset), max_bytes)
        .await
        .succeeds(&what)?;
    let mut previous = after;
    let mut size = 0usize;
    for (position, message) in messages.iter().enumerate() {
        let at = message.offset.get();
        ensure!(
            at > previous && upto.is_none_or(|upto| at <= upto),
            "{what}: expected increasing offsets after {after}, at most {upto:?}, got {:?}",
            offsets(&messages)
        );
        ensure!(
            position == 0 || size < max_bytes,
            "{what}: it went on after the message that reached {max_bytes} bytes (offsets {:?}, sizes {:?})",
            offsets(&messages),
            messages.iter().map(|m| m.data.len()).collect::<Vec<_>>()
        );
        previous = at;
        size = size.saturating_add(message.data.len());
    }
    Ok(messages)
}

fn offsets(messages: &[StreamMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.offset.get()).collect()
}

/// Every message of stream `id` in `(after, upto]`, read in pieces of about `max_bytes`.
async fn read_range(
    store: &dyn Store,
    id: StreamId,
    after: u64,
    upto: Option<u64>,
    max_bytes: usize,
) -> CheckResult<Vec<StreamMessage>> {
    let mut all: Vec<StreamMessage> = Vec::new();
    loop {
        let from = all.last().map_or(after, |m| m.offset.get());
        let messages = read(store, id, from, upto, max_bytes).await?;
        if messages.is_empty() {
            return Ok(all);
        }
        all.extend(messages);
        ensure!(
            all.len() <= 1_000_000,
            "read_stream(id {id}) never stops returning messages"
        );
    }
}

/// Every message of stream `id` itself (a fork's inherited ones are not its own).
async fn read_own(store: &dyn Store, id: StreamId) -> CheckResult<Vec<StreamMessage>> {
    read_range(store, id, 0, None, 64 * 1024).await
}

/// Every message of `stream`, inherited ones included, read segment by segment the way the
/// engine reads a fork.
async fn read_segments(store: &dyn Store, stream: &StreamInfo) -> CheckResult<Vec<StreamMessage>> {
    let mut all = Vec::new();
    for segment in stream.segments() {
        all.extend(
            read_range(
                store,
                segment.stream_id,
                segment.after.get(),
                segment.upto.map(StreamOffset::get),
                4 * 1024,
            )
            .await?,
        );
    }
    Ok(all)
}

/// Bytes shown in a failure: short ones whole, long ones by length and ends.
fn show(data: &[u8]) -> String {
    if data.len() <= 24 {
        return format!("{:?}", String::from_utf8_lossy(data));
    }
    format!(
        "{} bytes {:?}..{:?}",
        data.len(),
        String::from_utf8_lossy(&data[..8]),
        String::from_utf8_lossy(&data[data.len() - 8..])
    )
}

/// `Ok` when `actual` holds exactly the `expected` offsets and bytes.
fn expect_messages(
    what: impl Display,
    actual: &[StreamMessage],
    expected: &[Expected],
) -> CheckResult {
    for (got, (at, data)) in actual.iter().zip(expected) {
        ensure!(
            got.offset.get() == *at && got.data[..] == data[..],
            "{what}: expected offset {at} with {}, got offset {} with {}",
            show(data),
            got.offset.get(),
            show(&got.data)
        );
    }
    ensure!(
        actual.len() == expected.len(),
        "{what}: expected {} messages (offsets {:?}), got {} (offsets {:?})",
        expected.len(),
        expected.iter().map(|(at, _)| *at).collect::<Vec<_>>(),
        actual.len(),
        offsets(actual)
    );
    Ok(())
}

/// The expected messages numbered from `first`.
fn numbered(first: u64, messages: &[&[u8]]) -> Vec<Expected> {
    (first..).zip(messages.iter().map(|m| m.to_vec())).collect()
}

/// Deletes the stream at `path`, expecting `expected`.
async fn delete(
    store: &dyn Store,
    path: &str,
    only: Option<StreamId>,
    expected: DeleteStreamOutcome,
    context: impl Display,
) -> CheckResult {
    let what = format!("delete_stream({path}, only {only:?}) {context}");
    expect_eq(
        &what,
        &store.delete_stream(path, only).await.succeeds(&what)?,
        &expected,
    )
}

/// Fails with a clear message when a check runs on its own against a store without streams.
fn require_streams(store: &dyn Store) -> CheckResult {
    ensure!(store.supports_streams(), "{STREAMS_UNSUPPORTED}");
    Ok(())
}

/// Creating streams: `Created` with the stream exactly as asked (tail after the initial
/// messages, `created` and `last_access` the request's time), the same stream from
/// `stream_info`; creating it again is `Existing` (the stored stream, unchanged, whatever the
/// new body and time), with media types compared case-insensitively and without parameters;
/// another media type, expiry or closed flag is `Conflict` and changes nothing. A stream created
/// closed takes no appends. Every stream gets an id of its own.
pub async fn streams_create(store: Arc<dyn Store>) -> CheckResult {
    let store = &*store;
    require_streams(store)?;
    no_stream(store, "create/plain", "on a fresh store").await?;
    let plain = with_messages(
        NewStream {
            content_type: "text/plain; charset=utf-8".into(),
            ..new_stream("create/plain", NOW)
        },
        &[b"a", b"bc"],
    );
    let created = create(store, plain.clone()).await?;
    expect_messages(
        "the initial messages of create/plain",
        &read_own(store, created.id).await?,
        &numbered(1, &[b"a", b"bc"]),
    )?;

    let again = |content_type: &str| NewStream {
        content_type: content_type.into(),
        now: NOW + 1_000,
        ..plain.clone()
    };
    for content_type in [
        "text/plain; charset=utf-8",
        "text/plain",
        "TEXT/Plain",
        "text/plain ; charset=latin1",
    ] {
        create_expecting(
            store,
            again(content_type),
            CreateStreamOutcome::Existing(created.clone()),
            format!(
                "again, a second later, with content type {content_type:?} (the same media type)"
            ),
        )
        .await?;
    }
    create_expecting(
        store,
        with_messages(again("text/plain"), &[b"other", b"body"]),
        CreateStreamOutcome::Existing(created.clone()),
        "again with another initial body (an idempotent create writes nothing)",
    )
    .await?;
    let conflicts = [
        ("another content type", again("application/json")),
        (
            "an expiry",
            NewStream {
                expiry: Some(StreamExpiry::Ttl { secs: 60 }),
                ..again("text/plain")
            },
        ),
        (
            "closed",
            NewStream {
                closed: true,
                ..again("text/plain")
            },
        ),
    ];
    for (what, new) in conflicts {
        create_expecting(
            store,
            new,
            CreateStreamOutcome::Conflict(created.clone()),
            format!("again with {what}"),
        )
        .await?;
    }
    expect_info(
        store,
        "create/plain",
        &created,
        "after creating it again and conflicting creates (nothing changes)",
    )
    .await?;
    expect_messages(
        "the messages of create/plain after creating it again",
        &read_own(store, created.id).await?,
        &numbered(1, &[b"a", b"bc"]),
    )?;

    let ttl = NewStream {
        expiry: Some(StreamExpiry::Ttl { secs: 60 }),
        ..new_stream("create/ttl", NOW)
    };
    let ttl_info = create(store, ttl.clone()).await?;
    create_expecting(
        store,
        NewStream {
            now: NOW + 5_000,
            ..ttl.clone()
        },
        CreateStreamOutcome::Existing(ttl_info.clone()),
        "again with the same Stream-TTL",
    )
    .await?;
    let expiries = [
        ("another Stream-TTL", Some(StreamExpiry::Ttl { secs: 61 })),
        (
            "a Stream-Expires-At",
            Some(StreamExpiry::At {
                text: "2030-01-01T00:00:00Z".into(),
                at: 1_893_456_000_000,
            }),
        ),
        ("no expiry", None),
    ];
    for (what, expiry) in expiries {
        create_expecting(
            store,
            NewStream {
                expiry,
                ..ttl.clone()
            },
            CreateStreamOutcome::Conflict(ttl_info.clone()),
            format!("again with {what}"),
        )
        .await?;
    }

    let at = NewStream {
        expiry: Some(StreamExpiry::At {
            text: "2030-01-01T00:00:00Z".into(),
            at: 1_893_456_000_000,
        }),
        ..new_stream("create/at", NOW)
    };
    let at_info = create(store, at.clone()).await?;
    create_expecting(
        store,
        at,
        CreateStreamOutcome::Existing(at_info.clone()),
        "again with the same Stream-Expires-At",
    )
    .await?;

    let closed = with_messages(
        NewStream {
            closed: true,
            ..new_stream("create/closed", NOW)
        },
        &[b"all there is"],
    );
    let closed_info = create(store, closed.clone()).await?;
    create_expecting(
        store,
        closed,
        CreateStreamOutcome::Existing(closed_info.clone()),
        "again, closed as well",
    )
    .await?;
    create_expecting(
        store,
        new_stream("create/closed", NOW),
        CreateStreamOutcome::Conflict(closed_info.clone()),
        "again, not closed",
    )
    .await?;
    append(
        store,
        "create/closed",
        appending(&[b"late"], NOW + 1),
        AppendOutcome::Closed { tail: offset(1) },
        "to a stream created closed",
    )
    .await?;

    let empty = create(store, new_stream("create/empty", NOW)).await?;
    expect_messages(
        "the messages of a stream created without any",
        &read_own(store, empty.id).await?,
        &[],
    )?;

    let ids: HashSet<StreamId> = [
        created.id,
        ttl_info.id,
        at_info.id,
        closed_info.id,
        empty.id,
    ]
    .into_iter()
    .collect();
    ensure!(
        ids.len() == 5,
        "five streams created: expected five ids, got {:?}",
        [
            created.id,
            ttl_info.id,
            at_info.id,
            closed_info.id,
            empty.id
        ]
    );
    no_stream(store, "create/missing", "of a path never created").await
}

/// Appends and reads: each append puts its messages after the tail, one offset each (1, 2, ...
/// without gaps) and reports the new tail, which `stream_info` shows with `last_access` the
/// append's time; `read_stream` returns exactly the messages in `(after, upto]` for every
/// range, stops after the message that reaches `max_bytes` (returning at least one) and
/// returns the bytes as written, all 256 byte values and a 100 KB message included. The
/// request's content type is compared by media type (`ContentTypeMismatch` writes nothing). An
/// append to a missing path is `NotFound`. A path deleted and created again is a new stream
/// with a new id; the old id's messages are gone and the new ones are not the old id's.
pub async fn streams_append_and_read(store: Arc<dyn Store>) -> CheckResult {
    let store = &*store;
    require_streams(store)?;
    let log = create(store, new_stream("log", NOW)).await?;
    let mut all: Vec<Expected> = Vec::new();
    let payload = |n: u64| format!("message {n};").repeat((n % 7 + 1) as usize);
    for (batch, size) in [1u64, 2, 5, 1, 9, 3].into_iter().enumerate() {
        let first = all.len() as u64 + 1;
        let texts: Vec<String> = (first..first + size).map(payload).collect();
        let messages: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
        let now = NOW + 10 * (batch as Millis + 1);
        append(
            store,
            "log",
            appending(&messages, now),
            appended(first + size - 1),
            format!("after {} messages", first - 1),
        )
        .await?;
        all.extend(numbered(first, &messages));
        let expected = StreamInfo {
            tail: offset(all.len() as u64),
            last_access: now,
            ..log.clone()
        };
        expect_info(store, "log", &expected, "after an append").await?;
    }

    let total = all.len() as u64;
    for after in 0..=total + 2 {
        for upto in [
            None,
            Some(after),
            Some(after + 1),
            Some(after + 3),
            Some(total),
            Some(total + 5),
        ] {
            let expected: Vec<Expected> = all
                .iter()
                .filter(|(at, _)| *at > after && upto.is_none_or(|upto| *at <= upto))
                .cloned()
                .collect();
            expect_messages(
                format!("read_stream(log, after {after}, upto {upto:?}) of offsets 1..={total}"),
                &read(store, log.id, after, upto, UNLIMITED).await?,
                &expected,
            )?;
        }
    }
    for after in [0u64, 3, 10, total - 1] {
        let rest: Vec<Expected> = all.iter().filter(|(at, _)| *at > after).cloned().collect();
        let first = rest[0].1.len();
        let second = rest.get(1).map_or(0, |(_, data)| data.len());
        for max_bytes in [
            0,
            1,
            first - 1,
            first,
            first + 1,
            first + second,
            first + second + 1,
            UNLIMITED,
        ] {
            // The messages up to and including the one that brings the total to max_bytes.
            let mut size = 0usize;
            let mut expected = Vec::new();
            for message in &rest {
                expected.push(message.clone());
                size += message.1.len();
                if size >= max_bytes {
                    break;
                }
            }
            expect_messages(
                format!(
                    "read_stream(log, after {after}, max_bytes {max_bytes}) with messages of {first}, {second}, ... bytes (it stops after the message that reaches the limit, and returns at least one)"
                ),
                &read(store, log.id, after, None, max_bytes).await?,
                &expected,
            )?;
        }
    }

    // Byte-exact: every byte value, alone and together, and one large message.
    let every: Vec<u8> = (0..=255).collect();
    let singles: Vec<[u8; 1]> = (0..=255).map(|b| [b]).collect();
    let large: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let bytes = create(store, with_messages(new_stream("bytes", NOW), &[&every])).await?;
    let single_refs: Vec<&[u8]> = singles.iter().map(|s| &s[..]).collect();
    append(
        store,
        "bytes",
        appending(&single_refs, NOW + 1),
        appended(257),
        "of every byte value, one per message",
    )
    .await?;
    append(
        store,
        "bytes",
        appending(&[&large, b"\0", b"\r\n\xff\xfe"], NOW + 2),
        appended(260),
        "of a 100 KB message and two short ones",
    )
    .await?;
    let mut expected = numbered(1, &[&every]);
    expected.extend(numbered(2, &single_refs));
    expected.extend(numbered(258, &[&large, b"\0", b"\r\n\xff\xfe"]));
    expect_messages(
        "the messages of bytes",
        &read_own(store, bytes.id).await?,
        &expected,
    )?;
    expect_messages(
        "read_stream(bytes, after 1, max_bytes 10) over one-byte messages",
        &read(store, bytes.id, 1, None, 10).await?,
        &expected[1..11],
    )?;

    let tail = all.len() as u64;
    let typed = |content_type: &str| StreamAppend {
        content_type: Some(content_type.into()),
        ..appending(&[b"typed"], NOW + 100)
    };
    append(
        store,
        "log",
        typed("text/plain"),
        AppendOutcome::ContentTypeMismatch,
        "to an application/octet-stream stream",
    )
    .await?;
    for (n, content_type) in ["Application/Octet-Stream; x=y", BYTES]
        .into_iter()
        .enumerate()
    {
        append(
            store,
            "log",
            typed(content_type),
            appended(tail + n as u64 + 1),
            "to an application/octet-stream stream (the same media type)",
        )
        .await?;
        all.push((tail + n as u64 + 1, b"typed".to_vec()));
    }
    expect_messages(
        "the messages of log after appends with content types",
        &read_own(store, log.id).await?,
        &all,
    )?;
    append(
        store,
        "missing",
        appending(&[b"x"], NOW),
        AppendOutcome::NotFound,
        "to a path without a stream",
    )
    .await?;
    no_stream(store, "missing", "after an append to it").await?;

    // Messages belong to the id: a reader of the old stream never sees the new one's.
    let first = create(
        store,
        with_messages(new_stream("again", NOW), &[b"a1", b"a2"]),
    )
    .await?;
    delete(store, "again", None, DeleteStreamOutcome::Deleted, "").await?;
    no_stream(store, "again", "after deleting it").await?;
    expect_messages(
        "read_stream of a deleted stream's id",
        &read_own(store, first.id).await?,
        &[],
    )?;
    append(
        store,
        "again",
        appending(&[b"x"], NOW + 1),
        AppendOutcome::NotFound,
        "after deleting it",
    )
    .await?;
    let second = create(store, with_messages(new_stream("again", NOW + 2), &[b"b1"])).await?;
    let earlier = [log.id, bytes.id, first.id];
    ensure!(
        !earlier.contains(&second.id),
        "a stream created at a deleted stream's path: expected a new id, never one handed out before ({earlier:?}), got {}",
        second.id
    );
    append(
        store,
        "again",
        appending(&[b"b2"], NOW + 3),
        appended(2),
        "to the stream created again",
    )
    .await?;
    expect_messages(
        "the messages of the stream created again",
        &read_own(store, second.id).await?,
        &numbered(1, &[b"b1", b"b2"]),
    )?;
    expect_messages(
        "read_stream of the deleted stream's id after its path was created again",
        &read_own(store, first.id).await?,
        &[],
    )?;
    delete(
        store,
        "again",
        Some(first.id),
        DeleteStreamOutcome::NotFound,
        "naming the deleted stream's id (the path holds another stream)",
    )
    .await?;
    expect_info(
        store,
        "again",
        &StreamInfo {
            tail: offset(2),
            last_access: NOW + 3,
            ..second
        },
        "after a delete_stream naming another id",
    )
    .await
}

/// Idempotent producers (Kafka-style): a new producer's first write is seq 0 (else
/// `SequenceGap { expected: 0 }`); a seq already taken is `Duplicate` with the producer's last
/// seq and writes nothing; skipping one is `SequenceGap`; a lower epoch is `StaleEpoch`; a
/// higher one must start at 0 (`InvalidEpochSeq`). Producers are independent of each other and
/// per stream. A refused write (content type, `Stream-Seq`) writes neither the messages nor the
/// producer's state, nor `last_access`.
pub async fn streams_producers(store: Arc<dyn Store>) -> CheckResult {
    let store = &*store;
    require_streams(store)?;
    let path = "producers";
    let stream = create(store, new_stream(path, NOW)).await?;
    let mut expected: Vec<Expected> = Vec::new();
    let mut now = NOW;
    let mut tick = || {
        now += 10;
        now
    };
    // (producer, epoch, seq, outcome, why); an accepted write appends one message.
    let steps: [(&str, u64, u64, AppendOutcome, &str); 14] = [
        (
            "p",
            0,
            1,
            AppendOutcome::SequenceGap {
                expected: 0,
                received: 1,
            },
            "(a new producer starts at 0)",
        ),
        ("p", 0, 0, appended(1), "(its first write)"),
        ("p", 0, 0, duplicate(1, 0), "(a retry)"),
        (
            "p",
            0,
            2,
            AppendOutcome::SequenceGap {
                expected: 1,
                received: 2,
            },
            "(seq 1 is next)",
        ),
        ("p", 0, 1, appended(2), "(the next seq)"),
        ("q", 0, 0, appended(3), "(another producer, independent)"),
        ("p", 0, 0, duplicate(3, 1), "(an older seq)"),
        (
            "p",
            1,
            1,
            AppendOutcome::InvalidEpochSeq,
            "(a new epoch starts at 0)",
        ),
        ("p", 1, 0, appended(4), "(a new epoch)"),
        (
            "p",
            0,
            2,
            AppendOutcome::StaleEpoch { current_epoch: 1 },
            "(fenced by epoch 1)",
        ),
        ("p", 1, 0, duplicate(4, 0), "(a retry in the new epoch)"),
        ("q", 0, 1, appended(5), "(q is not fenced by p's epoch)"),
        (
            "q",
            0,
            3,
            AppendOutcome::SequenceGap {
                expected: 2,
                received: 3,
            },
            "(q's seq 2 is next)",
        ),
        ("q", 0, 2, appended(6), "(q's next seq)"),
    ];
    for (producer, epoch, seq, outcome, why) in steps {
        let text = format!("{producer} epoch {epoch} seq {seq}");
        let at = tick();
        let accepted = matches!(outcome, AppendOutcome::Appended { .. });
        append(
            store,
            path,
            by(appending(&[text.as_bytes()], at), producer, epoch, seq),
            outcome,
            why,
        )
        .await?;
        if accepted {
            expected.push((expected.len() as u64 + 1, text.as_bytes().to_vec()));
        }
        expect_messages(
            format!("the messages of {path} after a write of producer {text} {why}"),
            &read_own(store, stream.id).await?,
            &expected,
        )?;
    }

    // Refused writes change nothing, the producer's state included: the same seq is then
    // accepted, not a duplicate.
    let mismatched = StreamAppend {
        content_type: Some("text/plain".into()),
        ..by(appending(&[b"p 1 1"], tick()), "p", 1, 1)
    };
    append(
        store,
        path,
        mismatched,
        AppendOutcome::ContentTypeMismatch,
        "(another content type)",
    )
    .await?;
    let at = tick();
    append(
        store,
        path,
        by(appending(&[b"p 1 1"], at), "p", 1, 1),
        appended(7),
        "after the same write was refused for its content type (the refusal wrote no producer state)",
    )
    .await?;
    expected.push((7, b"p 1 1".to_vec()));
    let at = tick();
    append(
        store,
        path,
        StreamAppend {
            stream_seq: Some("5".into()),
            ..appending(&[b"seq 5"], at)
        },
        appended(8),
        "(no producer)",
    )
    .await?;
    expected.push((8, b"seq 5".to_vec()));
    append(
        store,
        path,
        StreamAppend {
            stream_seq: Some("4".into()),
            ..by(appending(&[b"p 1 2"], tick()), "p", 1, 2)
        },
        AppendOutcome::SeqConflict,
        "(Stream-Seq 4 after 5)",
    )
    .await?;
    let at = tick();
    append(
        store,
        path,
        StreamAppend {
            stream_seq: Some("6".into()),
            ..by(appending(&[b"p 1 2"], at), "p", 1, 2)
        },
        appended(9),
        "after the same write was refused for its Stream-Seq (the refusal wrote no producer state)",
    )
    .await?;
    expected.push((9, b"p 1 2".to_vec()));
    // The last accepted write; the duplicate below comes later and must not count.
    let last_access = at;
    append(
        store,
        path,
        by(appending(&[b"p 1 2 again"], tick()), "p", 1, 2),
        duplicate(9, 2),
        "(a retry)",
    )
    .await?;
    expect_messages(
        format!("the messages of {path} after refused writes"),
        &read_own(store, stream.id).await?,
        &expected,
    )?;
    expect_info(
        store,
        path,
        &StreamInfo {
            tail: offset(9),
            last_access,
            last_stream_seq: Some("6".into()),
            ..stream
        },
        "after producers wrote (refused writes and duplicates leave last_access alone)",
    )
    .await?;

    // Producer state belongs to the stream.
    let other = create(store, new_stream("producers-other", NOW)).await?;
    append(
        store,
        "producers-other",
        by(appending(&[b"p 1 3"], NOW + 1), "p", 1, 3),
        AppendOutcome::SequenceGap {
            expected: 0,
            received: 3,
        },
        "(p is new to this stream)",
    )
    .await?;
    append(
        store,
        "producers-other",
        by(appending(&[b"p 0 0"], NOW + 2), "p", 0, 0),
        appended(1),
        "(p is new to this stream: epoch 0 is not stale here)",
    )
    .await?;
    expect_messages(
        "the messages of producers-other",
        &read_own(store, other.id).await?,
        &numbered(1, &[b"p 0 0"]),
    )?;

    // A path created again is a new stream: its producers start over.
    delete(
        store,
        "producers-other",
        None,
        DeleteStreamOutcome::Deleted,
        "",
    )
    .await?;
    create(store, new_stream("producers-other", NOW + 3)).await?;
    append(
        store,
        "producers-other",
        by(appending(&[b"p 0 0"], NOW + 4), "p", 0, 0),
        appended(1),
        "to the stream created again at a deleted stream's path (its producers are new)",
    )
    .await
}

/// `Stream-Seq`: each one must sort after the last one the stream took, compared as strings
/// ("10" sorts before "9"), else `SeqConflict` and nothing is written; an append without one
/// keeps the last; a close can carry one.
pub async fn streams_stream_seq(store: Arc<dyn Store>) -> CheckResult {
    let store = &*store;
    require_streams(store)?;
    let path = "seq";
    let stream = create(store, new_stream(path, NOW)).await?;
    let seq = |seq: &str, now: Millis| StreamAppend {
        stream_seq: Some(seq.into()),
        ..appending(&[seq.as_bytes()], now)
    };
    let mut expected: Vec<Expected> = Vec::new();
    let steps: [(&str, bool, &str); 8] = [
        ("b", true, "(the first)"),
        ("b", false, "(the same again)"),
        ("a", false, "(sorts before b)"),
        ("ba", true, "(sorts after b)"),
        ("c", true, "(sorts after ba)"),
        ("9", false, "(sorts before c)"),
        ("c0", true, "(sorts after c)"),
        ("c", false, "(sorts before c0)"),
    ];
    let mut last = None;
    for (n, (text, accepted, why)) in steps.into_iter().enumerate() {
        let now = NOW + n as Millis + 1;
        let tail = expected.len() as u64;
        let outcome = if accepted {
            appended(tail + 1)
        } else {
            AppendOutcome::SeqConflict
        };
        append(store, path, seq(text, now), outcome, why).await?;
        if accepted {
            expected.push((tail + 1, text.as_bytes().to_vec()));
            last = Some((text, now));
        }
        let Some((last_seq, last_access)) = last else {
            continue;
        };
        expect_info(
            store,
            path,
            &StreamInfo {
                tail: offset(expected.len() as u64),
                last_access,
                last_stream_seq: Some(last_seq.into()),
                ..stream.clone()
            },
            format!("after an append with Stream-Seq {text:?} {why}"),
        )
        .await?;
    }
    append(
        store,
        path,
        appending(&[b"no seq"], NOW + 20),
        appended(5),
        "without Stream-Seq",
    )
    .await?;
    expected.push((5, b"no seq".to_vec()));
    append(
        store,
        path,
        seq("c0", NOW + 21),
        AppendOutcome::SeqConflict,
        "(an append without Stream-Seq keeps the last one, c0)",
    )
    .await?;
    append(
        store,
        path,
        StreamAppend {
            close: true,
            ..seq("d", NOW + 22)
        },
        AppendOutcome::Appended {
            tail: offset(6),
            closed: true,
        },
        "(sorts after c0)",
    )
    .await?;
    expected.push((6, b"d".to_vec()));
    expect_info(
        store,
        path,
        &StreamInfo {
            tail: offset(6),
            last_access: NOW + 22,
            last_stream_seq: Some("d".into()),
            closed: true,
            ..stream.clone()
        },
        "after a closing append with Stream-Seq \"d\"",
    )
    .await?;
    expect_messages(
        "the messages of seq",
        &read_own(store, stream.id).await?,
        &expected,
    )?;

    let numbers = create(store, new_stream("seq-numbers", NOW)).await?;
    append(store, "seq-numbers", seq("9", NOW + 1), appended(1), "").await?;
    append(
        store,
        "seq-numbers",
        seq("10", NOW + 2),
        AppendOutcome::SeqConflict,
        "(as strings, \"10\" sorts before \"9\")",
    )
    .await?;
    append(store, "seq-numbers", seq("90", NOW + 3), appended(2), "").await?;
    expect_messages(
        "the messages of seq-numbers",
        &read_own(store, numbers.id).await?,
        &numbered(1, &[b"9", b"90"]),
    )
}

/// Closing: a close-only append closes without writing a message, an append can close with its
/// messages; `stream_info` shows the stream closed (and by which producer write). A closed
/// stream takes nothing more (`Closed` with its final tail), except the very producer write
/// that closed it, retried: `Duplicate` with `closed: true`.
pub async fn streams_close(store: Arc<dyn Store>) -> CheckResult {
    let store = &*store;
    require_streams(store)?;
    let only = create(store, with_messages(new_stream("close/only", NOW), &[b"a"])).await?;
    let close = |now: Millis| StreamAppend {
        close: true,
        ..appending(&[], now)
    };
    append(
        store,
        "close/only",
        close(NOW + 10),
        AppendOutcome::Appended {
            tail: offset(1),
            closed: true,
        },
        "(close only)",
    )
    .await?;
    let closed = StreamInfo {
        closed: true,
        last_access: NOW + 10,
        ..only.clone()
    };
    expect_info(store, "close/only", &closed, "after closing it").await?;
    let refused = [
        (appending(&[b"b"], NOW + 11), "an append"),
        (close(NOW + 12), "a close"),
        (
            by(appending(&[b"b"], NOW + 13), "p", 0, 0),
            "a producer's first write",
        ),
    ];
    for (late, what) in refused {
        append(
            store,
            "close/only",
            late,
            AppendOutcome::Closed { tail: offset(1) },
            format!("({what} after the close)"),
        )
        .await?;
    }
    expect_info(
        store,
        "close/only",
        &closed,
        "after writes to the closed stream",
    )
    .await?;
    expect_messages(
        "the messages of close/only",
        &read_own(store, only.id).await?,
        &numbered(1, &[b"a"]),
    )?;

    let path = "close/with-append";
    let stream = create(store, new_stream(path, NOW)).await?;
    append(
        store,
        path,
        by(appending(&[b"x"], NOW + 1), "p", 0, 0),
        appended(1),
        "",
    )
    .await?;
    let closing = || StreamAppend {
        close: true,
        ..by(appending(&[b"y", b"z"], NOW + 2), "p", 0, 1)
    };
    append(
        store,
        path,
        closing(),
        AppendOutcome::Appended {
            tail: offset(3),
            closed: true,
        },
        "(the last messages, closing)",
    )
    .await?;
    let closed = StreamInfo {
        tail: offset(3),
        closed: true,
        closed_by: Some(claim("p", 0, 1)),
        last_access: NOW + 2,
        ..stream.clone()
    };
    expect_info(store, path, &closed, "after producer p closed it").await?;
    append(
        store,
        path,
        StreamAppend {
            now: NOW + 3,
            ..closing()
        },
        AppendOutcome::Duplicate {
            tail: offset(3),
            last_seq: 1,
            closed: true,
        },
        "(a retry of the write that closed it)",
    )
    .await?;
    let refused = [
        (by(appending(&[b"w"], NOW + 4), "p", 0, 2), "p's next seq"),
        (
            by(appending(&[b"x"], NOW + 5), "p", 0, 0),
            "p's earlier seq",
        ),
        (
            by(appending(&[b"q"], NOW + 6), "q", 0, 0),
            "another producer",
        ),
        (appending(&[b"w"], NOW + 7), "no producer"),
    ];
    for (late, what) in refused {
        append(
            store,
            path,
            late,
            AppendOutcome::Closed { tail: offset(3) },
            format!("({what}, after p's write closed it)"),
        )
        .await?;
    }
    expect_info(store, path, &closed, "after writes to the closed stream").await?;
    expect_messages(
        format!("the messages of {path}"),
        &read_own(store, stream.id).await?,
        &numbered(1, &[b"x", b"y", b"z"]),
    )?;

    let path = "close/producer-only";
    let stream = create(store, new_stream(path, NOW)).await?;
    let closing = StreamAppend {
        close: true,
        ..by(appending(&[], NOW + 1), "p", 0, 0)
    };
    append(
        store,
        path,
        closing.clone(),
        AppendOutcome::Appended {
            tail: offset(0),
            closed: true,
        },
        "(producer p closes it without messages)",
    )
    .await?;
    append(
        store,
        path,
        closing,
        AppendOutcome::Duplicate {
            tail: offset(0),
            last_seq: 0,
            closed: true,
        },
        "(a retry of the close)",
    )
    .await?;
    expect_info(
        store,
        path,
        &StreamInfo {
            closed: true,
            closed_by: Some(claim("p", 0, 0)),
            last_access: NOW + 1,
            ..stream
        },
        "after producer p closed it",
    )
    .await
}

/// Forks: a fork starts with its source's messages up to the fork offset (its tail starts
/// there; it keeps the inherited segments it was given, and [`StreamInfo::segments`] reads
/// them) and goes on with its own; the source counts its forks. Creating a fork again is
/// `Existing`, at another offset or as a plain stream `Conflict`. A source deleted while forked
/// is only soft-deleted: `stream_info` shows it, its messages stay readable for its forks, and
/// at its path a create is `PathGone`, an append `Gone`, a delete `Gone`. A fork of a deleted
/// source is `SourceMissing` (sources are named by id), of a soft-deleted one `SourceGone`.
/// Deleting the last fork removes soft-deleted sources up the chain, freeing their paths.
pub async fn streams_forks(store: Arc<dyn Store>) -> CheckResult {
    let store = &*store;
    require_streams(store)?;
    let s_messages: [&[u8]; 5] = [b"s1", b"s2", b"s3", b"s4", b"s5"];
    let source = create(
        store,
        with_messages(new_stream("fork/source", NOW), &s_messages),
    )
    .await?;

    let f1_new = NewStream {
        fork: Some(fork_of(&source, 3)),
        ..new_stream("fork/f1", NOW + 1)
    };
    let f1 = create(store, f1_new.clone()).await?;
    let mut source_now = StreamInfo { forks: 1, ..source };
    expect_info(store, "fork/source", &source_now, "after forking it once").await?;
    append(
        store,
        "fork/source",
        appending(&[b"s6"], NOW + 2),
        appended(6),
        "(the source, after the fork)",
    )
    .await?;
    source_now.tail = offset(6);
    source_now.last_access = NOW + 2;
    append(
        store,
        "fork/f1",
        appending(&[b"f1-4", b"f1-5"], NOW + 3),
        appended(5),
        "(the fork at 3 goes on from there)",
    )
    .await?;
    let f1_now = StreamInfo {
        tail: offset(5),
        last_access: NOW + 3,
        ..f1.clone()
    };
    expect_info(store, "fork/f1", &f1_now, "after appending to it").await?;
    expect_messages(
        "read_stream of fork/f1's own messages (after the fork offset)",
        &read_own(store, f1.id).await?,
        &numbered(4, &[b"f1-4", b"f1-5"]),
    )?;
    expect_messages(
        "fork/f1 read through its segments",
        &read_segments(store, &f1_now).await?,
        &numbered(1, &[b"s1", b"s2", b"s3", b"f1-4", b"f1-5"]),
    )?;

    // A fork with a sub-offset: the engine passes the cut message as the first one.
    let f2_new = with_messages(
        NewStream {
            fork: Some(NewFork {
                requested_offset: None,
                sub_offset: 1,
                ..fork_of(&source_now, 5)
            }),
            ..new_stream("fork/f2", NOW + 4)
        },
        &[b"s"],
    );
    let f2 = create(store, f2_new).await?;
    source_now.forks = 2;
    expect_info(store, "fork/source", &source_now, "after forking it twice").await?;
    expect_messages(
        "fork/f2 (forked at 5 with a sub-offset) read through its segments",
        &read_segments(store, &f2).await?,
        &numbered(1, &[b"s1", b"s2", b"s3", b"s4", b"s5", b"s"]),
    )?;

    // A fork of a fork inherits through the chain.
    let g = create(
        store,
        NewStream {
            fork: Some(fork_of(&f1_now, 4)),
            ..new_stream("fork/g", NOW + 5)
        },
    )
    .await?;
    append(
        store,
        "fork/g",
        appending(&[b"g5"], NOW + 6),
        appended(5),
        "",
    )
    .await?;
    let g_now = StreamInfo {
        tail: offset(5),
        last_access: NOW + 6,
        ..g.clone()
    };
    expect_messages(
        "fork/g (a fork of fork/f1 at 4) read through its segments",
        &read_segments(store, &g_now).await?,
        &numbered(1, &[b"s1", b"s2", b"s3", b"f1-4", b"g5"]),
    )?;
    let f1_now = StreamInfo { forks: 1, ..f1_now };
    expect_info(store, "fork/f1", &f1_now, "after forking it").await?;

    // Creating a fork again.
    create_expecting(
        store,
        f1_new.clone(),
        CreateStreamOutcome::Existing(f1_now.clone()),
        "again",
    )
    .await?;
    create_expecting(
        store,
        NewStream {
            fork: Some(NewFork {
                requested_offset: None,
                ..fork_of(&source_now, 3)
            }),
            ..f1_new.clone()
        },
        CreateStreamOutcome::Existing(f1_now.clone()),
        "again without naming the offset",
    )
    .await?;
    create_expecting(
        store,
        NewStream {
            fork: Some(fork_of(&source_now, 2)),
            ..f1_new.clone()
        },
        CreateStreamOutcome::Conflict(f1_now.clone()),
        "again at another offset",
    )
    .await?;
    create_expecting(
        store,
        new_stream("fork/f1", NOW + 7),
        CreateStreamOutcome::Conflict(f1_now.clone()),
        "as a plain stream, where a fork lives",
    )
    .await?;
    create_expecting(
        store,
        NewStream {
            fork: Some(fork_of(&f1_now, 4)),
            ..new_stream("fork/source", NOW + 7)
        },
        CreateStreamOutcome::Conflict(source_now.clone()),
        "as a fork, where a plain stream lives",
    )
    .await?;
    expect_info(
        store,
        "fork/source",
        &source_now,
        "after creates that found existing streams (they count no forks)",
    )
    .await?;

    // Sources are named by id.
    let x = create(store, with_messages(new_stream("fork/x", NOW), &[b"x"])).await?;
    delete(store, "fork/x", None, DeleteStreamOutcome::Deleted, "").await?;
    let of_x = NewStream {
        fork: Some(fork_of(&x, 1)),
        ..new_stream("fork/of-x", NOW + 8)
    };
    create_expecting(
        store,
        of_x.clone(),
        CreateStreamOutcome::SourceMissing,
        "(the source was deleted)",
    )
    .await?;
    let x_again = create(store, with_messages(new_stream("fork/x", NOW + 9), &[b"x"])).await?;
    create_expecting(
        store,
        of_x,
        CreateStreamOutcome::SourceMissing,
        "(the source was deleted; another stream lives at its path now)",
    )
    .await?;
    no_stream(store, "fork/of-x", "after forks of a missing source").await?;
    expect_info(
        store,
        "fork/x",
        &x_again,
        "after a fork of the stream deleted at its path (it counts no fork)",
    )
    .await?;

    // Deleting a forked source only soft-deletes it.
    delete(
        store,
        "fork/source",
        None,
        DeleteStreamOutcome::SoftDeleted,
        "(forked twice)",
    )
    .await?;
    source_now.soft_deleted = true;
    expect_info(
        store,
        "fork/source",
        &source_now,
        "after deleting it while forked",
    )
    .await?;
    create_expecting(
        store,
        new_stream("fork/source", NOW + 10),
        CreateStreamOutcome::PathGone,
        "(the soft-deleted stream's path)",
    )
    .await?;
    append(
        store,
        "fork/source",
        appending(&[b"s7"], NOW + 11),
        AppendOutcome::Gone,
        "(soft-deleted)",
    )
    .await?;
    delete(
        store,
        "fork/source",
        None,
        DeleteStreamOutcome::Gone,
        "(already soft-deleted)",
    )
    .await?;
    create_expecting(
        store,
        NewStream {
            fork: Some(fork_of(&source_now, 2)),
            ..new_stream("fork/f3", NOW + 12)
        },
        CreateStreamOutcome::SourceGone,
        "(the source is soft-deleted)",
    )
    .await?;
    no_stream(store, "fork/f3", "after a fork of a soft-deleted source").await?;
    expect_info(
        store,
        "fork/source",
        &source_now,
        "after a create, an append, a delete and a fork refused (nothing changes)",
    )
    .await?;
    expect_messages(
        "read_stream of the soft-deleted source (kept for its forks)",
        &read_own(store, source.id).await?,
        &numbered(1, &[b"s1", b"s2", b"s3", b"s4", b"s5", b"s6"]),
    )?;
    expect_messages(
        "fork/f1 read through its segments after its source was soft-deleted",
        &read_segments(store, &f1_now).await?,
        &numbered(1, &[b"s1", b"s2", b"s3", b"f1-4", b"f1-5"]),
    )?;

    // Deleting forks.
    delete(
        store,
        "fork/f2",
        Some(f1.id),
        DeleteStreamOutcome::NotFound,
        "naming fork/f1's id",
    )
    .await?;
    expect_info(store, "fork/f2", &f2, "after a delete naming another id").await?;
    delete(store, "fork/f2", None, DeleteStreamOutcome::Deleted, "").await?;
    no_stream(store, "fork/f2", "after deleting it").await?;
    source_now.forks = 1;
    expect_info(
        store,
        "fork/source",
        &source_now,
        "after deleting one of its two forks (still soft-deleted, fork/f1 reads it)",
    )
    .await?;
    delete(
        store,
        "fork/f1",
        Some(f1.id),
        DeleteStreamOutcome::SoftDeleted,
        "(forked by fork/g)",
    )
    .await?;
    expect_info(
        store,
        "fork/source",
        &source_now,
        "after soft-deleting its fork fork/f1 (fork/g still reads both)",
    )
    .await?;
    expect_messages(
        "fork/g read through its segments after fork/f1 and fork/source were soft-deleted",
        &read_segments(store, &g_now).await?,
        &numbered(1, &[b"s1", b"s2", b"s3", b"f1-4", b"g5"]),
    )?;
    delete(
        store,
        "fork/g",
        None,
        DeleteStreamOutcome::Deleted,
        "(the last fork of the chain)",
    )
    .await?;
    for path in ["fork/g", "fork/f1", "fork/source"] {
        no_stream(
            store,
            path,
            "after deleting fork/g, the last fork of soft-deleted fork/f1, the last fork of soft-deleted fork/source",
        )
        .await?;
    }
    for (name, id) in [
        ("fork/source", source.id),
        ("fork/f1", f1.id),
        ("fork/g", g.id),
    ] {
        expect_messages(
            format!("read_stream of {name}'s id once the chain is removed"),
            &read_own(store, id).await?,
            &[],
        )?;
    }
    let reborn = create(store, new_stream("fork/source", NOW + 20)).await?;
    ensure!(
        ![source.id, f1.id, f2.id, g.id, x.id, x_again.id].contains(&reborn.id),
        "a stream created at a removed source's path: expected a new id, got {}",
        reborn.id
    );

    // A fork of a live source: deleting it gives the fork back.
    let h = create(
        store,
        NewStream {
            fork: Some(fork_of(&x_again, 1)),
            ..new_stream("fork/h", NOW + 21)
        },
    )
    .await?;
    expect_info(
        store,
        "fork/x",
        &StreamInfo {
            forks: 1,
            ..x_again.clone()
        },
        "after forking it",
    )
    .await?;
    delete(
        store,
        "fork/h",
        Some(h.id),
        DeleteStreamOutcome::Deleted,
        "",
    )
    .await?;
    expect_info(store, "fork/x", &x_again, "after deleting its only fork").await?;
    delete(
        store,
        "fork/x",
        None,
        DeleteStreamOutcome::Deleted,
        "(no forks left)",
    )
    .await?;
    delete(
        store,
        "fork/x",
        None,
        DeleteStreamOutcome::NotFound,
        "(deleted already)",
    )
    .await
}

/// Expiry, with times the check chooses: a `Stream-TTL` counts from the last access (appends
/// and `touch_stream`, which never moves it back), a `Stream-Expires-At` from nothing. An
/// append to an expired stream is `NotFound` (`Gone` when it has forks) and writes nothing;
/// `stream_info` still shows it. A create at an expired stream's path replaces it (a new id,
/// the old messages gone, its source's fork given back), unless it has forks: then it is
/// soft-deleted and the create is `PathGone`. `expire_stream` deletes a stream only if it is
/// expired at the time given (`NotExpired` otherwise, nothing changed), and only the id named.
pub async fn streams_expiry(store: Arc<dyn Store>) -> CheckResult {
    let store = &*store;
    require_streams(store)?;
    let ttl = NewStream {
        expiry: Some(StreamExpiry::Ttl { secs: 10 }),
        ..with_messages(new_stream("expiry/ttl", NOW), &[b"t1"])
    };
    let stream = create(store, ttl.clone()).await?;
    append(
        store,
        "expiry/ttl",
        appending(&[b"t2"], NOW + 9_999),
        appended(2),
        "(idle for 9.999 s of its 10 s TTL)",
    )
    .await?;
    let mut now_info = StreamInfo {
        tail: offset(2),
        last_access: NOW + 9_999,
        ..stream.clone()
    };
    expect_info(store, "expiry/ttl", &now_info, "after an append").await?;
    let touch = |id, now| async move {
        store
            .touch_stream(id, now)
            .await
            .succeeds(format!("touch_stream(id {id}, {now})"))
    };
    touch(stream.id, NOW + 15_000).await?;
    now_info.last_access = NOW + 15_000;
    expect_info(store, "expiry/ttl", &now_info, "after touch_stream").await?;
    // expire_stream judges expiry itself, in the write: this stream was touched at NOW + 15 s,
    // so a reader that judged it expired from an older look deletes nothing.
    let expire = |path: &'static str, id, now| async move {
        let what = format!("expire_stream({path}, id {id}, {now})");
        store.expire_stream(path, id, now).await.succeeds(what)
    };
    let kept = expire("expiry/ttl", stream.id, NOW + 24_999).await?;
    expect_eq(
        "expire_stream of a stream alive at that time",
        &kept,
        &DeleteStreamOutcome::NotExpired,
    )?;
    expect_info(
        store,
        "expiry/ttl",
        &now_info,
        "after expire_stream kept it",
    )
    .await?;
    let other = StreamId::new(stream.id.get().wrapping_add(1_000_000));
    let wrong = expire("expiry/ttl", other, NOW + 1_000_000).await?;
    expect_eq(
        "expire_stream naming another stream's id",
        &wrong,
        &DeleteStreamOutcome::NotFound,
    )?;
    expect_info(
        store,
        "expiry/ttl",
        &now_info,
        "after expire_stream of another id",
    )
    .await?;
    let doomed = create(
        store,
        NewStream {
            expiry: Some(StreamExpiry::Ttl { secs: 10 }),
            ..new_stream("expiry/expire", NOW)
        },
    )
    .await?;
    let removed = expire("expiry/expire", doomed.id, NOW + 10_000).await?;
    expect_eq(
        "expire_stream of a stream expired at that time",
        &removed,
        &DeleteStreamOutcome::Deleted,
    )?;
    ensure!(
        stream_info(store, "expiry/expire").await?.is_none(),
        "expire_stream reported Deleted but stream_info still has the stream"
    );
    touch(stream.id, NOW + 1).await?;
    expect_info(
        store,
        "expiry/ttl",
        &now_info,
        "after touch_stream with an earlier time (it never moves back)",
    )
    .await?;
    append(
        store,
        "expiry/ttl",
        appending(&[b"t3"], NOW + 24_999),
        appended(3),
        "(idle for 9.999 s since the touch)",
    )
    .await?;
    now_info.tail = offset(3);
    now_info.last_access = NOW + 24_999;
    append(
        store,
        "expiry/ttl",
        appending(&[b"late"], NOW + 34_999),
        AppendOutcome::NotFound,
        "(idle for 10 s of its 10 s TTL: expired)",
    )
    .await?;
    expect_info(
        store,
        "expiry/ttl",
        &now_info,
        "after an append to it once expired (stream_info still shows it; nothing written)",
    )
    .await?;
    let replaced = create(
        store,
        NewStream {
            now: NOW + 35_000,
            ..ttl.clone()
        },
    )
    .await?;
    ensure!(
        replaced.id != stream.id,
        "create_stream(expiry/ttl) over the expired stream: expected a new id, got the old one ({})",
        stream.id
    );
    expect_messages(
        "read_stream of the expired stream a create replaced",
        &read_own(store, stream.id).await?,
        &[],
    )?;
    expect_messages(
        "the messages of the stream that replaced the expired one",
        &read_own(store, replaced.id).await?,
        &numbered(1, &[b"t1"]),
    )?;
    touch(stream.id, NOW + 40_000).await?;

    let at = NewStream {
        expiry: Some(StreamExpiry::At {
            text: "at NOW + 5 s".into(),
            at: NOW + 5_000,
        }),
        ..new_stream("expiry/at", NOW)
    };
    let at_info = create(store, at).await?;
    append(
        store,
        "expiry/at",
        appending(&[b"a1"], NOW + 4_999),
        appended(1),
        "(1 ms before its Stream-Expires-At)",
    )
    .await?;
    touch(at_info.id, NOW + 4_999).await?;
    append(
        store,
        "expiry/at",
        appending(&[b"a2"], NOW + 5_000),
        AppendOutcome::NotFound,
        "(at its Stream-Expires-At, whatever the last access)",
    )
    .await?;
    expect_messages(
        "the messages of expiry/at",
        &read_own(store, at_info.id).await?,
        &numbered(1, &[b"a1"]),
    )?;

    // An expired stream with forks is soft-deleted, not replaced.
    let source = create(
        store,
        NewStream {
            expiry: Some(StreamExpiry::Ttl { secs: 10 }),
            ..with_messages(new_stream("expiry/source", NOW), &[b"s1", b"s2"])
        },
    )
    .await?;
    let fork = create(
        store,
        NewStream {
            fork: Some(fork_of(&source, 2)),
            ..new_stream("expiry/fork", NOW)
        },
    )
    .await?;
    append(
        store,
        "expiry/source",
        appending(&[b"s3"], NOW + 10_000),
        AppendOutcome::Gone,
        "(expired, with a fork)",
    )
    .await?;
    create_expecting(
        store,
        new_stream("expiry/source", NOW + 10_000),
        CreateStreamOutcome::PathGone,
        "(an expired stream with a fork lives there)",
    )
    .await?;
    expect_info(
        store,
        "expiry/source",
        &StreamInfo {
            forks: 1,
            soft_deleted: true,
            ..source.clone()
        },
        "after a create at its path once expired with a fork (it is soft-deleted)",
    )
    .await?;
    expect_messages(
        "expiry/fork read through its segments after its source expired",
        &read_segments(store, &fork).await?,
        &numbered(1, &[b"s1", b"s2"]),
    )?;
    delete(store, "expiry/fork", None, DeleteStreamOutcome::Deleted, "").await?;
    no_stream(
        store,
        "expiry/source",
        "after deleting the last fork of the expired, soft-deleted source",
    )
    .await?;
    create(store, new_stream("expiry/source", NOW + 10_001)).await?;

    // An expired fork without forks is replaced, giving its source the fork back.
    let live = create(
        store,
        with_messages(new_stream("expiry/live", NOW), &[b"l1"]),
    )
    .await?;
    create(
        store,
        NewStream {
            expiry: Some(StreamExpiry::Ttl { secs: 1 }),
            fork: Some(fork_of(&live, 1)),
            ..new_stream("expiry/short-fork", NOW)
        },
    )
    .await?;
    expect_info(
        store,
        "expiry/live",
        &StreamInfo {
            forks: 1,
            ..live.clone()
        },
        "after forking it",
    )
    .await?;
    create(store, new_stream("expiry/short-fork", NOW + 1_000)).await?;
    expect_info(
        store,
        "expiry/live",
        &live,
        "after its expired fork was replaced by a plain stream (the fork was deleted)",
    )
    .await
}

/// Listing expired streams (`expired_streams`): exactly the streams expired at `now`
/// ([`StreamInfo::is_expired`]) that are not soft-deleted, as `(path, id)`, the earliest
/// [`StreamInfo::expiry_deadline`] first and equal deadlines by id; at most `limit` (0: none).
/// A TTL counts from the last access, which a touch moves; TTLs too large to count (past
/// i64::MAX seconds, or milliseconds, or past i64::MAX once added to the last access) expire at
/// `Millis::MAX`, with no overflow error. Streams that never expire, soft-deleted ones (an
/// expired stream with a fork, deleted) and deleted ones are never listed; listing writes
/// nothing.
pub async fn streams_expired_listing(store: Arc<dyn Store>) -> CheckResult {
    let store = &*store;
    require_streams(store)?;
    let list = |now: Millis, limit: usize| async move {
        store
            .expired_streams(now, limit)
            .await
            .succeeds(format!("expired_streams(now {now}, limit {limit})"))
    };
    let at = |after: Millis| {
        Some(StreamExpiry::At {
            text: format!("NOW + {after} ms"),
            at: NOW + after,
        })
    };
    let ttl = |secs| Some(StreamExpiry::Ttl { secs });
    expect_eq(
        "expired_streams(now Millis::MAX, limit 100) of a store without streams",
        &list(Millis::MAX, 100).await?,
        &Vec::new(),
    )?;

    let mut made: Vec<StreamInfo> = Vec::new();
    let source = create(
        store,
        NewStream {
            expiry: at(1_000),
            ..with_messages(new_stream("sweep/source", NOW), &[b"s1"])
        },
    )
    .await?;
    let fork = NewStream {
        fork: Some(fork_of(&source, 1)),
        ..new_stream("sweep/fork", NOW)
    };
    made.push(source);
    made.push(create(store, fork).await?);
    // TTLs past what a deadline can count, each overflowing another way: past i64::MAX
    // seconds (stored with the top bit set), past it as milliseconds, past it once added.
    let huge = [
        ("sweep/ttl-u64-max", u64::MAX),
        ("sweep/ttl-2^63", 1 << 63),
        ("sweep/ttl-ms-overflow", 9_223_372_036_854_776),
        ("sweep/ttl-sum-overflow", 9_223_372_036_854_775),
    ];
    let plain = [
        ("sweep/at-5", at(5_000)),
        ("sweep/ttl-10", ttl(10)),
        ("sweep/ttl-3", ttl(3)),
        ("sweep/at-7", at(7_000)),
        ("sweep/never", None),
    ];
    for (path, expiry) in plain
        .into_iter()
        .chain(huge.map(|(path, secs)| (path, ttl(secs))))
    {
        made.push(
            create(
                store,
                NewStream {
                    expiry,
                    ..new_stream(path, NOW)
                },
            )
            .await?,
        );
    }
    let id_of = |path: &str| made.iter().find(|s| s.path == path).map(|s| s.id);
    // The listing expected: groups in deadline order, each group's streams (equal deadlines)
    // by id.
    let expected = |groups: &[&[&str]]| -> Vec<(String, StreamId)> {
        let mut listed = Vec::new();
        for group in groups {
            let mut group: Vec<(StreamId, String)> = group
                .iter()
                .filter_map(|path| Some((id_of(path)?, (*path).to_owned())))
                .collect();
            group.sort();
            listed.extend(group.into_iter().map(|(id, path)| (path, id)));
        }
        listed
    };
    let expect_listed = |now: Millis, limit: usize, groups: &[&[&str]], context: &str| {
        let mut want = expected(groups);
        want.truncate(limit);
        let what = format!("expired_streams(now {now}, limit {limit}) {context}");
        async move { expect_eq(what, &list(now, limit).await?, &want) }
    };

    expect_listed(NOW + 999, 100, &[], "(1 ms before the first expiry)").await?;
    expect_listed(
        NOW + 1_000,
        100,
        &[&["sweep/source"]],
        "(at sweep/source's Stream-Expires-At; its fork does not expire)",
    )
    .await?;
    expect_listed(
        NOW + 3_000,
        100,
        &[&["sweep/source"], &["sweep/ttl-3"]],
        "(sweep/ttl-3 idle for its 3 s TTL)",
    )
    .await?;
    let ttl_3 = info(store, "sweep/ttl-3", "before touching it").await?;
    store
        .touch_stream(ttl_3.id, NOW + 4_000)
        .await
        .succeeds(format!("touch_stream(id {}, NOW + 4000)", ttl_3.id))?;
    expect_listed(
        NOW + 3_000,
        100,
        &[&["sweep/source"]],
        "after touching sweep/ttl-3 at NOW + 4000 (its TTL counts from the touch)",
    )
    .await?;
    let until_7 = [
        &["sweep/source"][..],
        &["sweep/at-5"],
        &["sweep/ttl-3", "sweep/at-7"],
    ];
    expect_listed(
        NOW + 7_000,
        100,
        &until_7,
        "(sweep/ttl-3, touched at NOW + 4000, and sweep/at-7 both expire at NOW + 7000: by id)",
    )
    .await?;
    for limit in [0, 1, 2, 3] {
        expect_listed(NOW + 7_000, limit, &until_7, "(a limited page)").await?;
    }
    expect_info(
        store,
        "sweep/ttl-3",
        &StreamInfo {
            last_access: NOW + 4_000,
            ..ttl_3.clone()
        },
        "after listing it as expired (listing writes nothing)",
    )
    .await?;

    let source_id = id_of("sweep/source");
    delete(
        store,
        "sweep/source",
        source_id,
        DeleteStreamOutcome::SoftDeleted,
        "(expired, with a fork)",
    )
    .await?;
    expect_listed(
        NOW + 7_000,
        100,
        &until_7[1..],
        "after sweep/source was soft-deleted (soft-deleted streams are not listed)",
    )
    .await?;
    delete(
        store,
        "sweep/at-5",
        id_of("sweep/at-5"),
        DeleteStreamOutcome::Deleted,
        "(expired)",
    )
    .await?;
    let expiring = [&["sweep/ttl-3", "sweep/at-7"][..], &["sweep/ttl-10"]];
    expect_listed(NOW + 10_000, 100, &expiring, "after sweep/at-5 was deleted").await?;
    expect_listed(
        Millis::MAX - 1,
        100,
        &expiring,
        "(the streams with TTLs too large to count expire at Millis::MAX)",
    )
    .await?;
    let huge_paths = huge.map(|(path, _)| path);
    let everything = [expiring[0], expiring[1], &huge_paths[..]];
    for limit in [100, 4] {
        expect_listed(
            Millis::MAX,
            limit,
            &everything,
            "(every stream that expires at all; sweep/never and sweep/fork do not)",
        )
        .await?;
    }
    Ok(())
}

/// How many tasks [`streams_concurrency`] runs, and how many appends each makes.
const TASKS: u64 = 20;
const APPENDS: u64 = 50;

/// Concurrent appends to one stream: 20 tokio tasks released together append 50 messages each;
/// half write as idempotent producers and send every write twice at once (a retry racing the
/// original). Each producer write is taken exactly once (the other copy is `Duplicate`), every
/// offset 1..=1000 is handed out exactly once, each task's appends get increasing offsets, and
/// the stream holds exactly the message each append was told it wrote.
pub async fn streams_concurrency(store: Arc<dyn Store>) -> CheckResult {
    require_streams(&*store)?;
    let stream = create(&*store, new_stream("concurrent", NOW)).await?;
    let barrier = Arc::new(Barrier::new(TASKS as usize));
    let tasks = (0..TASKS).map(|task| {
        let (store, barrier) = (store.clone(), barrier.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            let producer = (task % 2 == 1).then(|| format!("producer-{task}"));
            let mut written = Vec::new();
            for seq in 0..APPENDS {
                let text = format!("task {task} append {seq}");
                let now = NOW + 1 + seq as Millis;
                let write = appending(&[text.as_bytes()], now);
                let what = describe_append("concurrent", &write);
                let outcome = match &producer {
                    None => store.append_stream("concurrent", write).await,
                    Some(id) => {
                        // Two tasks, so that the copies can run on two threads at once.
                        let copies = [by(write.clone(), id, 0, seq), by(write, id, 0, seq)].map(
                            |write| {
                                let store = store.clone();
                                tokio::spawn(async move {
                                    store.append_stream("concurrent", write).await
                                })
                            },
                        );
                        let (a, b) = match join_all(copies).await[..] {
                            [Ok(Ok(ref a)), Ok(Ok(ref b))] => (a.clone(), b.clone()),
                            ref other => {
                                return Err(format!(
                                    "{what} by {id}, sent twice at once: expected success, got {other:?}"
                                ))
                            }
                        };
                        match (a, b) {
                            (
                                appended @ AppendOutcome::Appended { .. },
                                AppendOutcome::Duplicate { last_seq, .. },
                            )
                            | (
                                AppendOutcome::Duplicate { last_seq, .. },
                                appended @ AppendOutcome::Appended { .. },
                            ) if last_seq == seq => Ok(appended),
                            (a, b) => {
                                return Err(format!(
                                    "{what} by {id}, sent twice at once while 19 other tasks append: expected one Appended and one Duplicate {{ last_seq: {seq} }}, got {a:?} and {b:?}"
                                ))
                            }
                        }
                    }
                };
                match outcome {
                    Ok(AppendOutcome::Appended { tail, closed: false }) => {
                        written.push((tail.get(), text.into_bytes()));
                    }
                    Ok(other) => {
                        return Err(format!(
                            "{what} while 19 other tasks append: expected Appended, got {other:?}"
                        ))
                    }
                    Err(error) => {
                        return Err(format!(
                            "{what} while 19 other tasks append: expected success, got error {error}"
                        ))
                    }
                }
            }
            Ok(written)
        })
    });
    let mut all: Vec<Expected> = Vec::new();
    for (task, outcome) in join_all(tasks).await.into_iter().enumerate() {
        let written = match outcome {
            Ok(Ok(written)) => written,
            Ok(Err(message)) => fail!("{message}"),
            Err(join) => fail!("an appending task failed: {join}"),
        };
        ensure!(
            written.windows(2).all(|pair| pair[0].0 < pair[1].0),
            "task {task}'s appends, one after the other: expected increasing tails, got {:?}",
            written.iter().map(|(at, _)| *at).collect::<Vec<_>>()
        );
        all.extend(written);
    }
    all.sort_by_key(|(at, _)| *at);
    let total = TASKS * APPENDS;
    let tails: Vec<u64> = all.iter().map(|(at, _)| *at).collect();
    if tails != (1..=total).collect::<Vec<_>>() {
        let mut seen = HashSet::new();
        let twice: Vec<u64> = tails
            .iter()
            .copied()
            .filter(|at| !seen.insert(*at))
            .collect();
        let missing: Vec<u64> = (1..=total).filter(|at| !seen.contains(at)).collect();
        fail!(
            "{total} concurrent appends: expected the tails 1..={total}, each once; tails handed out twice: {twice:?}, never: {missing:?}"
        );
    }
    expect_messages(
        "the messages of concurrent, each at the tail its append reported",
        &read_own(&*store, stream.id).await?,
        &all,
    )?;
    expect_eq(
        "the tail of concurrent after 1000 appends",
        &info(&*store, "concurrent", "after the concurrent appends")
            .await?
            .tail,
        &offset(total),
    )
}

/// What [`streams_persistence`] wrote before the reopen.
struct Kept {
    /// Every stream kept, as `stream_info` showed it, with its own messages.
    streams: Vec<(StreamInfo, Vec<StreamMessage>)>,
}

/// Streams survive a new store instance: writes a stream with every byte value, an expiry, a
/// producer and a `Stream-Seq`; one closed by a producer write; a fork of a source then deleted
/// (soft-deleted); reopens the store through the harness and finds all of it (the same
/// `stream_info`, the same messages) and the state behind the rules: the producer's retry is a
/// `Duplicate`, its next write is taken, the `Stream-Seq` still orders, the closing write's
/// retry is a `Duplicate`, the soft-deleted source is `Gone` and goes with its last fork, and a
/// new stream gets an id never handed out before the reopen.
///
/// `store` is a fresh store from `harness`; the suite skips this check when the store keeps no
/// streams.
pub async fn streams_persistence(
    harness: &dyn StoreHarness,
    store: Arc<dyn Store>,
) -> CheckResult<Persistence> {
    require_streams(&*store)?;
    let kept = write_kept(&*store).await?;
    let Some(store) = harness.reopen(store).await else {
        return Ok(Persistence::NotPersistent);
    };
    verify_kept(&*store, &kept).await.map_err(|failure| {
        CheckFailure::new(format!("once reopened through the harness: {failure}"))
    })?;
    Ok(Persistence::Checked)
}

async fn write_kept(store: &dyn Store) -> CheckResult<Kept> {
    let every: Vec<u8> = (0..=255).collect();
    create(
        store,
        with_messages(
            NewStream {
                content_type: "text/plain; charset=utf-8".into(),
                expiry: Some(StreamExpiry::Ttl { secs: 3_600 }),
                ..new_stream("keep/plain", NOW)
            },
            &[&every],
        ),
    )
    .await?;
    append(
        store,
        "keep/plain",
        by(appending(&[b"p0"], NOW + 1), "p", 0, 0),
        appended(2),
        "",
    )
    .await?;
    append(
        store,
        "keep/plain",
        StreamAppend {
            stream_seq: Some("s1".into()),
            ..appending(&[b"s1"], NOW + 2)
        },
        appended(3),
        "",
    )
    .await?;
    create(store, new_stream("keep/closed", NOW)).await?;
    append(
        store,
        "keep/closed",
        StreamAppend {
            close: true,
            ..by(appending(&[b"q"], NOW + 3), "q", 1, 0)
        },
        AppendOutcome::Appended {
            tail: offset(1),
            closed: true,
        },
        "",
    )
    .await?;
    let source = create(
        store,
        with_messages(new_stream("keep/source", NOW), &[b"a", b"b", b"c"]),
    )
    .await?;
    create(
        store,
        with_messages(
            NewStream {
                fork: Some(fork_of(&source, 2)),
                ..new_stream("keep/fork", NOW + 4)
            },
            &[b"f3"],
        ),
    )
    .await?;
    delete(
        store,
        "keep/source",
        None,
        DeleteStreamOutcome::SoftDeleted,
        "(forked)",
    )
    .await?;
    let mut streams = Vec::new();
    for path in ["keep/plain", "keep/closed", "keep/source", "keep/fork"] {
        let stream = info(store, path, "before the reopen").await?;
        let messages = read_own(store, stream.id).await?;
        streams.push((stream, messages));
    }
    Ok(Kept { streams })
}

async fn verify_kept(store: &dyn Store, kept: &Kept) -> CheckResult {
    for (stream, messages) in &kept.streams {
        expect_info(store, &stream.path, stream, "after the reopen").await?;
        let expected: Vec<Expected> = messages
            .iter()
            .map(|m| (m.offset.get(), m.data.to_vec()))
            .collect();
        expect_messages(
            format!("the messages of {} after the reopen", stream.path),
            &read_own(store, stream.id).await?,
            &expected,
        )?;
    }
    append(
        store,
        "keep/plain",
        by(appending(&[b"p0"], NOW + 10), "p", 0, 0),
        duplicate(3, 0),
        "after the reopen (a retry of a write taken before)",
    )
    .await?;
    append(
        store,
        "keep/plain",
        StreamAppend {
            stream_seq: Some("s0".into()),
            ..by(appending(&[b"p1"], NOW + 11), "p", 0, 1)
        },
        AppendOutcome::SeqConflict,
        "after the reopen (Stream-Seq s1 was taken before)",
    )
    .await?;
    append(
        store,
        "keep/plain",
        StreamAppend {
            stream_seq: Some("s2".into()),
            ..by(appending(&[b"p1"], NOW + 12), "p", 0, 1)
        },
        appended(4),
        "after the reopen",
    )
    .await?;
    append(
        store,
        "keep/closed",
        StreamAppend {
            close: true,
            ..by(appending(&[b"q"], NOW + 13), "q", 1, 0)
        },
        AppendOutcome::Duplicate {
            tail: offset(1),
            last_seq: 0,
            closed: true,
        },
        "after the reopen (a retry of the write that closed it)",
    )
    .await?;
    append(
        store,
        "keep/source",
        appending(&[b"d"], NOW + 14),
        AppendOutcome::Gone,
        "after the reopen (soft-deleted)",
    )
    .await?;
    delete(
        store,
        "keep/fork",
        None,
        DeleteStreamOutcome::Deleted,
        "after the reopen (the last fork of soft-deleted keep/source)",
    )
    .await?;
    no_stream(
        store,
        "keep/source",
        "after deleting its last fork, once reopened",
    )
    .await?;
    let new = create(store, new_stream("keep/new", NOW + 15)).await?;
    let old: Vec<StreamId> = kept.streams.iter().map(|(s, _)| s.id).collect();
    ensure!(
        !old.contains(&new.id),
        "a stream created after the reopen: expected an id never handed out before ({old:?}), got {}",
        new.id
    );
    Ok(())
}
