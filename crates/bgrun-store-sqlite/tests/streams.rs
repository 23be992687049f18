//! Durable streams in the SQLite store, through the public `Store` trait.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;

use bgrun_core::stream::{
    AppendOutcome, CreateStreamOutcome, DeleteStreamOutcome, NewFork, NewStream, ProducerClaim,
    StreamAppend, StreamExpiry, StreamId, StreamInfo, StreamMessage, StreamOffset,
};
use bgrun_core::Store;
use bgrun_store_sqlite::SqliteStore;
use bytes::Bytes;
use tempfile::TempDir;

const T0: i64 = 1_000_000;

async fn store() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("bgrun.db"))
        .await
        .unwrap();
    (dir, store)
}

fn bytes(items: &[&str]) -> Vec<Bytes> {
    items
        .iter()
        .map(|item| Bytes::copy_from_slice(item.as_bytes()))
        .collect()
}

fn new_stream(path: &str, messages: &[&str]) -> NewStream {
    NewStream {
        path: path.into(),
        content_type: "text/plain".into(),
        expiry: None,
        closed: false,
        fork: None,
        messages: bytes(messages),
        now: T0,
    }
}

fn append(messages: &[&str]) -> StreamAppend {
    StreamAppend {
        messages: bytes(messages),
        content_type: Some("text/plain".into()),
        now: T0 + 1,
        ..StreamAppend::default()
    }
}

fn produced(messages: &[&str], id: &str, epoch: u64, seq: u64) -> StreamAppend {
    StreamAppend {
        producer: Some(ProducerClaim {
            id: id.into(),
            epoch,
            seq,
        }),
        ..append(messages)
    }
}

async fn create(store: &SqliteStore, new: NewStream) -> StreamInfo {
    match store.create_stream(new).await.unwrap() {
        CreateStreamOutcome::Created(info) => info,
        other => panic!("expected Created, got {other:?}"),
    }
}

async fn info(store: &SqliteStore, path: &str) -> StreamInfo {
    store.stream_info(path).await.unwrap().unwrap()
}

/// A fork of `source` at `offset`, as the engine resolves one.
fn fork_of(path: &str, source: &StreamInfo, offset: u64, messages: &[&str]) -> NewStream {
    let offset = StreamOffset::new(offset);
    NewStream {
        fork: Some(NewFork {
            source_path: source.path.clone(),
            source_id: source.id,
            offset,
            requested_offset: Some(offset),
            sub_offset: 0,
            inherited: source.segments_upto(offset),
        }),
        ..new_stream(path, messages)
    }
}

fn texts(messages: &[StreamMessage]) -> Vec<(u64, String)> {
    messages
        .iter()
        .map(|m| (m.offset.get(), String::from_utf8(m.data.to_vec()).unwrap()))
        .collect()
}

async fn read(
    store: &SqliteStore,
    id: StreamId,
    after: u64,
    upto: Option<u64>,
    max_bytes: usize,
) -> Vec<(u64, String)> {
    texts(
        &store
            .read_stream(
                id,
                StreamOffset::new(after),
                upto.map(StreamOffset::new),
                max_bytes,
            )
            .await
            .unwrap(),
    )
}

/// Every message of a stream, read through its segments as the engine does.
async fn read_all(store: &SqliteStore, info: &StreamInfo) -> Vec<(u64, String)> {
    let mut all = Vec::new();
    for segment in info.segments() {
        all.extend(texts(
            &store
                .read_stream(segment.stream_id, segment.after, segment.upto, usize::MAX)
                .await
                .unwrap(),
        ));
    }
    all
}

fn numbered(items: &[(u64, &str)]) -> Vec<(u64, String)> {
    items.iter().map(|(o, s)| (*o, (*s).to_owned())).collect()
}

#[tokio::test]
async fn a_created_stream_is_stored_with_its_first_messages() {
    let (_dir, store) = store().await;
    assert!(store.supports_streams());
    assert_eq!(store.stream_info("a").await.unwrap(), None);
    let mut new = new_stream("a", &["one", "two"]);
    new.expiry = Some(StreamExpiry::At {
        text: "2100-01-01T00:00:00Z".into(),
        at: 4_102_444_800_000,
    });
    let created = create(&store, new).await;
    assert_eq!(created.path, "a");
    assert_eq!(created.tail, StreamOffset::new(2));
    assert_eq!((created.created, created.last_access), (T0, T0));
    assert!(!created.closed && !created.soft_deleted && created.fork.is_none());
    assert_eq!(info(&store, "a").await, created);
    assert_eq!(
        read(&store, created.id, 0, None, usize::MAX).await,
        numbered(&[(1, "one"), (2, "two")])
    );
    let other = create(&store, new_stream("b", &[])).await;
    assert_ne!(other.id, created.id);
    assert_eq!(other.tail, StreamOffset::ZERO);
    assert!(read(&store, other.id, 0, None, usize::MAX).await.is_empty());
}

#[tokio::test]
async fn creating_again_is_idempotent_or_a_conflict() {
    let (_dir, store) = store().await;
    let created = create(&store, new_stream("a", &["x"])).await;
    // Same configuration (content type compared without parameters, case-insensitively):
    // nothing changes, not even with other initial messages.
    let mut again = new_stream("a", &["y", "z"]);
    again.content_type = "Text/Plain; charset=utf-8".into();
    again.now = T0 + 5;
    assert_eq!(
        store.create_stream(again).await.unwrap(),
        CreateStreamOutcome::Existing(created.clone())
    );
    let mut json = new_stream("a", &[]);
    json.content_type = "application/json".into();
    assert_eq!(
        store.create_stream(json).await.unwrap(),
        CreateStreamOutcome::Conflict(created.clone())
    );
    let mut closed = new_stream("a", &[]);
    closed.closed = true;
    assert_eq!(
        store.create_stream(closed).await.unwrap(),
        CreateStreamOutcome::Conflict(created.clone())
    );
    assert_eq!(info(&store, "a").await, created);
    assert_eq!(
        read(&store, created.id, 0, None, usize::MAX).await,
        numbered(&[(1, "x")])
    );
}

#[tokio::test]
async fn appends_take_the_next_offsets_and_reads_take_ranges() {
    let (_dir, store) = store().await;
    let s = create(&store, new_stream("s", &["a"])).await;
    assert_eq!(
        store
            .append_stream("s", append(&["bb", "ccc"]))
            .await
            .unwrap(),
        AppendOutcome::Appended {
            tail: StreamOffset::new(3),
            closed: false
        }
    );
    assert_eq!(
        store
            .append_stream("s", append(&["dddd", "e"]))
            .await
            .unwrap(),
        AppendOutcome::Appended {
            tail: StreamOffset::new(5),
            closed: false
        }
    );
    let after = info(&store, "s").await;
    assert_eq!(after.tail, StreamOffset::new(5));
    assert_eq!(after.last_access, T0 + 1);
    assert_eq!(after.created, T0);

    let all = numbered(&[(1, "a"), (2, "bb"), (3, "ccc"), (4, "dddd"), (5, "e")]);
    assert_eq!(read(&store, s.id, 0, None, usize::MAX).await, all);
    assert_eq!(read(&store, s.id, 1, Some(3), usize::MAX).await, all[1..3]);
    assert_eq!(read(&store, s.id, 3, Some(99), usize::MAX).await, all[3..]);
    assert!(read(&store, s.id, 5, None, usize::MAX).await.is_empty());
    assert!(read(&store, s.id, 3, Some(3), usize::MAX).await.is_empty());
    assert!(read(&store, s.id, 4, Some(2), usize::MAX).await.is_empty());
    assert!(store
        .read_stream(s.id, StreamOffset::BEYOND, None, usize::MAX)
        .await
        .unwrap()
        .is_empty());
    // max_bytes: stops after the message that reaches it, so one at least.
    assert_eq!(read(&store, s.id, 0, None, 0).await, all[..1]);
    assert_eq!(read(&store, s.id, 0, None, 3).await, all[..2]);
    assert_eq!(read(&store, s.id, 0, None, 4).await, all[..3]);
    assert_eq!(read(&store, s.id, 2, None, 1).await, all[2..3]);
    // Another stream's messages are its own.
    let t = create(&store, new_stream("t", &["other"])).await;
    assert_eq!(
        read(&store, t.id, 0, None, usize::MAX).await,
        numbered(&[(1, "other")])
    );
    assert_eq!(
        store
            .append_stream("missing", append(&["x"]))
            .await
            .unwrap(),
        AppendOutcome::NotFound
    );
}

#[tokio::test]
async fn refused_appends_write_nothing() {
    let (_dir, store) = store().await;
    let s = create(&store, new_stream("s", &["a"])).await;
    let mut json = append(&["{}"]);
    json.content_type = Some("application/json".into());
    assert_eq!(
        store.append_stream("s", json).await.unwrap(),
        AppendOutcome::ContentTypeMismatch
    );
    let mut seq = append(&["b"]);
    seq.stream_seq = Some("5".into());
    assert!(matches!(
        store.append_stream("s", seq.clone()).await.unwrap(),
        AppendOutcome::Appended { .. }
    ));
    assert_eq!(
        info(&store, "s").await.last_stream_seq.as_deref(),
        Some("5")
    );
    seq.messages = bytes(&["c"]);
    assert_eq!(
        store.append_stream("s", seq.clone()).await.unwrap(),
        AppendOutcome::SeqConflict
    );
    // An append without a Stream-Seq keeps the last one.
    store.append_stream("s", append(&["c"])).await.unwrap();
    let now = info(&store, "s").await;
    assert_eq!(now.last_stream_seq.as_deref(), Some("5"));
    assert_eq!(now.tail, StreamOffset::new(3));
    assert_eq!(
        read(&store, s.id, 0, None, usize::MAX).await,
        numbered(&[(1, "a"), (2, "b"), (3, "c")])
    );
}

#[tokio::test]
async fn producers_are_deduplicated_and_fenced() {
    let (_dir, store) = store().await;
    let s = create(&store, new_stream("s", &[])).await;
    let write = |messages: &'static [&'static str], epoch, seq| {
        let store = &store;
        async move {
            store
                .append_stream("s", produced(messages, "p", epoch, seq))
                .await
                .unwrap()
        }
    };
    assert_eq!(
        write(&["a"], 0, 1).await,
        AppendOutcome::SequenceGap {
            expected: 0,
            received: 1
        }
    );
    assert!(matches!(
        write(&["a"], 0, 0).await,
        AppendOutcome::Appended { .. }
    ));
    assert!(matches!(
        write(&["b"], 0, 1).await,
        AppendOutcome::Appended { .. }
    ));
    assert_eq!(
        write(&["b"], 0, 1).await,
        AppendOutcome::Duplicate {
            tail: StreamOffset::new(2),
            last_seq: 1,
            closed: false
        }
    );
    assert_eq!(
        write(&["x"], 0, 3).await,
        AppendOutcome::SequenceGap {
            expected: 2,
            received: 3
        }
    );
    assert_eq!(write(&["x"], 1, 4).await, AppendOutcome::InvalidEpochSeq);
    assert!(matches!(
        write(&["c"], 1, 0).await,
        AppendOutcome::Appended { .. }
    ));
    assert_eq!(
        write(&["x"], 0, 2).await,
        AppendOutcome::StaleEpoch { current_epoch: 1 }
    );
    // Another producer keeps its own sequence.
    assert!(matches!(
        store
            .append_stream("s", produced(&["d"], "q", 7, 0))
            .await
            .unwrap(),
        AppendOutcome::Appended { .. }
    ));
    // Epochs and sequence numbers past i64::MAX survive the round trip.
    let big = u64::MAX - 1;
    assert!(matches!(
        store
            .append_stream("s", produced(&["e"], "r", big, 0))
            .await
            .unwrap(),
        AppendOutcome::Appended { .. }
    ));
    assert_eq!(
        store
            .append_stream("s", produced(&["x"], "r", big - 1, 0))
            .await
            .unwrap(),
        AppendOutcome::StaleEpoch { current_epoch: big }
    );
    assert_eq!(
        read(&store, s.id, 0, None, usize::MAX).await,
        numbered(&[(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")])
    );
}

#[tokio::test]
async fn a_closed_stream_takes_nothing_but_the_retry_of_its_closing_write() {
    let (_dir, store) = store().await;
    create(&store, new_stream("s", &["a"])).await;
    let mut closing = produced(&["b"], "p", 2, 0);
    closing.close = true;
    assert_eq!(
        store.append_stream("s", closing.clone()).await.unwrap(),
        AppendOutcome::Appended {
            tail: StreamOffset::new(2),
            closed: true
        }
    );
    let closed = info(&store, "s").await;
    assert!(closed.closed);
    assert_eq!(
        closed.closed_by,
        Some(ProducerClaim {
            id: "p".into(),
            epoch: 2,
            seq: 0
        })
    );
    assert_eq!(
        store.append_stream("s", closing).await.unwrap(),
        AppendOutcome::Duplicate {
            tail: StreamOffset::new(2),
            last_seq: 0,
            closed: true
        }
    );
    assert_eq!(
        store.append_stream("s", append(&["c"])).await.unwrap(),
        AppendOutcome::Closed {
            tail: StreamOffset::new(2)
        }
    );
    assert_eq!(info(&store, "s").await, closed);

    // Created closed; a close-only request without a producer leaves no closer.
    let mut born_closed = new_stream("c", &["only"]);
    born_closed.closed = true;
    assert!(create(&store, born_closed).await.closed);
    assert_eq!(
        store.append_stream("c", append(&["x"])).await.unwrap(),
        AppendOutcome::Closed {
            tail: StreamOffset::new(1)
        }
    );
    create(&store, new_stream("d", &[])).await;
    let close_only = StreamAppend {
        close: true,
        now: T0 + 9,
        ..StreamAppend::default()
    };
    assert_eq!(
        store.append_stream("d", close_only).await.unwrap(),
        AppendOutcome::Appended {
            tail: StreamOffset::ZERO,
            closed: true
        }
    );
    let d = info(&store, "d").await;
    assert!(d.closed && d.closed_by.is_none());
    assert_eq!(d.last_access, T0 + 9);
}

#[tokio::test]
async fn forks_read_their_sources_prefix_then_their_own_messages() {
    let (_dir, store) = store().await;
    let root = create(&store, new_stream("root", &["r1", "r2", "r3"])).await;
    let fork = create(&store, fork_of("fork", &root, 2, &["f3"])).await;
    assert_eq!(fork.tail, StreamOffset::new(3));
    assert_eq!(fork.inherited, root.segments_upto(StreamOffset::new(2)));
    assert_eq!(fork.fork.as_ref().unwrap().source_id, root.id);
    assert_eq!(info(&store, "fork").await, fork);
    assert_eq!(info(&store, "root").await.forks, 1);
    // Appends to either side stay on their side.
    store.append_stream("root", append(&["r4"])).await.unwrap();
    assert_eq!(
        store.append_stream("fork", append(&["f4"])).await.unwrap(),
        AppendOutcome::Appended {
            tail: StreamOffset::new(4),
            closed: false
        }
    );
    let fork = info(&store, "fork").await;
    assert_eq!(
        read_all(&store, &fork).await,
        numbered(&[(1, "r1"), (2, "r2"), (3, "f3"), (4, "f4")])
    );
    assert_eq!(
        read(&store, fork.id, 0, None, usize::MAX).await,
        numbered(&[(3, "f3"), (4, "f4")])
    );
    // A fork of the fork inherits through it.
    let grandchild = create(&store, fork_of("grandchild", &fork, 3, &[])).await;
    assert_eq!(grandchild.tail, StreamOffset::new(3));
    assert_eq!(
        read_all(&store, &grandchild).await,
        numbered(&[(1, "r1"), (2, "r2"), (3, "f3")])
    );
    assert_eq!(info(&store, "fork").await.forks, 1);
    // A second fork of the root counts too; a fork at 0 inherits nothing.
    let empty = create(&store, fork_of("empty", &root, 0, &["e1"])).await;
    assert!(empty.inherited.is_empty());
    assert_eq!(read_all(&store, &empty).await, numbered(&[(1, "e1")]));
    assert_eq!(info(&store, "root").await.forks, 2);
    // Idempotent: the same fork again, with or without the offset named.
    let mut again = fork_of("grandchild", &fork, 3, &[]);
    assert_eq!(
        store.create_stream(again.clone()).await.unwrap(),
        CreateStreamOutcome::Existing(grandchild.clone())
    );
    if let Some(f) = again.fork.as_mut() {
        f.requested_offset = Some(StreamOffset::new(2));
    }
    assert!(matches!(
        store.create_stream(again).await.unwrap(),
        CreateStreamOutcome::Conflict(_)
    ));
    assert_eq!(info(&store, "fork").await.forks, 1);
}

#[tokio::test]
async fn deleting_a_forked_stream_soft_deletes_it_until_its_last_fork_goes() {
    let (_dir, store) = store().await;
    let a = create(&store, new_stream("a", &["a1", "a2"])).await;
    let b = create(&store, fork_of("b", &a, 2, &["b3"])).await;
    let c = create(&store, fork_of("c", &b, 3, &["c4"])).await;

    assert_eq!(
        store.delete_stream("a", Some(b.id)).await.unwrap(),
        DeleteStreamOutcome::NotFound
    );
    assert_eq!(
        store.delete_stream("a", Some(a.id)).await.unwrap(),
        DeleteStreamOutcome::SoftDeleted
    );
    let gone = info(&store, "a").await;
    assert!(gone.soft_deleted);
    assert_eq!(
        store.delete_stream("a", None).await.unwrap(),
        DeleteStreamOutcome::Gone
    );
    assert_eq!(
        store.append_stream("a", append(&["x"])).await.unwrap(),
        AppendOutcome::Gone
    );
    assert_eq!(
        store.create_stream(new_stream("a", &[])).await.unwrap(),
        CreateStreamOutcome::PathGone
    );
    assert_eq!(
        store
            .create_stream(fork_of("d", &gone, 1, &[]))
            .await
            .unwrap(),
        CreateStreamOutcome::SourceGone
    );
    assert_eq!(info(&store, "a").await.forks, 1);

    assert_eq!(
        store.delete_stream("b", None).await.unwrap(),
        DeleteStreamOutcome::SoftDeleted
    );
    // The forks still read everything they inherited.
    assert_eq!(
        read_all(&store, &c).await,
        numbered(&[(1, "a1"), (2, "a2"), (3, "b3"), (4, "c4")])
    );

    // Deleting the last fork removes it, then its soft-deleted source, then that one's.
    assert_eq!(
        store.delete_stream("c", None).await.unwrap(),
        DeleteStreamOutcome::Deleted
    );
    for path in ["a", "b", "c"] {
        assert_eq!(store.stream_info(path).await.unwrap(), None, "{path}");
    }
    for id in [a.id, b.id, c.id] {
        assert!(read(&store, id, 0, None, usize::MAX).await.is_empty());
    }
    assert_eq!(
        store.delete_stream("c", None).await.unwrap(),
        DeleteStreamOutcome::NotFound
    );
    // The paths are free again, for new streams with new ids.
    let a2 = create(&store, new_stream("a", &["new"])).await;
    assert!(![a.id, b.id, c.id].contains(&a2.id));
    assert_eq!(
        read(&store, a2.id, 0, None, usize::MAX).await,
        numbered(&[(1, "new")])
    );
    // A fork of a source that is gone altogether.
    assert_eq!(
        store.create_stream(fork_of("e", &a, 1, &[])).await.unwrap(),
        CreateStreamOutcome::SourceMissing
    );
    assert_eq!(store.stream_info("e").await.unwrap(), None);
}

#[tokio::test]
async fn a_cascade_stops_at_a_live_source_or_one_with_forks_left() {
    let (_dir, store) = store().await;
    let root = create(&store, new_stream("root", &["r"])).await;
    create(&store, fork_of("x", &root, 1, &[])).await;
    create(&store, fork_of("y", &root, 1, &[])).await;
    store.delete_stream("root", None).await.unwrap();
    assert_eq!(
        store.delete_stream("x", None).await.unwrap(),
        DeleteStreamOutcome::Deleted
    );
    let left = info(&store, "root").await;
    assert!(left.soft_deleted);
    assert_eq!(left.forks, 1);
    assert_eq!(
        store.delete_stream("y", None).await.unwrap(),
        DeleteStreamOutcome::Deleted
    );
    assert_eq!(store.stream_info("root").await.unwrap(), None);

    // A live source only counts its forks down.
    let live = create(&store, new_stream("live", &["l"])).await;
    create(&store, fork_of("z", &live, 1, &[])).await;
    store.delete_stream("z", None).await.unwrap();
    let live = info(&store, "live").await;
    assert_eq!((live.forks, live.soft_deleted), (0, false));
    assert_eq!(
        store.delete_stream("live", None).await.unwrap(),
        DeleteStreamOutcome::Deleted
    );
}

#[tokio::test]
async fn expired_streams_free_their_path_unless_forked() {
    let (_dir, store) = store().await;
    let mut ttl = new_stream("ttl", &["old"]);
    ttl.expiry = Some(StreamExpiry::Ttl { secs: 10 });
    let old = create(&store, ttl.clone()).await;
    // Reads keep it alive; touching never moves the last access back.
    store.touch_stream(old.id, T0 + 8_000).await.unwrap();
    store.touch_stream(old.id, T0 + 2_000).await.unwrap();
    assert_eq!(info(&store, "ttl").await.last_access, T0 + 8_000);
    store.touch_stream(StreamId::new(999), T0).await.unwrap();
    let mut late = append(&["x"]);
    late.now = T0 + 18_000;
    assert_eq!(
        store.append_stream("ttl", late).await.unwrap(),
        AppendOutcome::NotFound
    );
    // Expired: the create replaces it, with a new id and none of its messages.
    let mut again = ttl.clone();
    again.messages = bytes(&["new"]);
    again.now = T0 + 18_000;
    let new = create(&store, again).await;
    assert_ne!(new.id, old.id);
    assert!(read(&store, old.id, 0, None, usize::MAX).await.is_empty());
    assert_eq!(
        read(&store, new.id, 0, None, usize::MAX).await,
        numbered(&[(1, "new")])
    );

    // Expired with forks: soft-deleted by the create, which finds the path gone.
    let mut at = new_stream("at", &["a"]);
    at.expiry = Some(StreamExpiry::At {
        text: "soon".into(),
        at: T0 + 100,
    });
    let source = create(&store, at.clone()).await;
    let fork = create(&store, fork_of("at-fork", &source, 1, &[])).await;
    at.now = T0 + 100;
    assert_eq!(
        store.create_stream(at.clone()).await.unwrap(),
        CreateStreamOutcome::PathGone
    );
    assert!(info(&store, "at").await.soft_deleted);
    assert_eq!(read_all(&store, &fork).await, numbered(&[(1, "a")]));
    store.delete_stream("at-fork", None).await.unwrap();
    assert_eq!(store.stream_info("at").await.unwrap(), None);
    create(&store, at).await;
}

#[tokio::test]
async fn an_expired_source_replaced_by_its_own_fork_is_missing() {
    let (_dir, store) = store().await;
    let mut ttl = new_stream("s", &["a"]);
    ttl.expiry = Some(StreamExpiry::Ttl { secs: 1 });
    let old = create(&store, ttl).await;
    let mut fork = fork_of("s", &old, 1, &[]);
    fork.now = T0 + 1_000;
    assert_eq!(
        store.create_stream(fork).await.unwrap(),
        CreateStreamOutcome::SourceMissing
    );
    // Refused: nothing changed, the expired stream included.
    assert_eq!(info(&store, "s").await, old);
}

#[tokio::test]
async fn streams_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bgrun.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let mut new = new_stream("s", &["a"]);
    new.expiry = Some(StreamExpiry::Ttl { secs: 60 });
    create(&store, new).await;
    let mut seq = produced(&["b"], "p", 3, 0);
    seq.stream_seq = Some("0001".into());
    store.append_stream("s", seq).await.unwrap();
    let s = info(&store, "s").await;
    let fork = create(&store, fork_of("f", &s, 1, &["f2"])).await;
    let mut closing = produced(&["f3"], "q", 1, 0);
    closing.close = true;
    store.append_stream("f", closing).await.unwrap();
    store.delete_stream("s", None).await.unwrap();
    let temporary = create(&store, new_stream("tmp", &[])).await;
    store.delete_stream("tmp", None).await.unwrap();
    let (s, f) = (info(&store, "s").await, info(&store, "f").await);
    drop(store);

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(info(&store, "s").await, s);
    assert_eq!(info(&store, "f").await, f);
    assert!(s.soft_deleted && f.closed);
    assert_eq!(
        read_all(&store, &f).await,
        numbered(&[(1, "a"), (2, "f2"), (3, "f3")])
    );
    assert_eq!(
        read(&store, s.id, 0, None, usize::MAX).await,
        numbered(&[(1, "a"), (2, "b")])
    );
    // The producers' state survived: their retries are still duplicates.
    assert_eq!(
        store
            .append_stream("f", {
                let mut retry = produced(&["f3"], "q", 1, 0);
                retry.close = true;
                retry
            })
            .await
            .unwrap(),
        AppendOutcome::Duplicate {
            tail: StreamOffset::new(3),
            last_seq: 0,
            closed: true
        }
    );
    // Ids are never handed out again, not even the last one after it was deleted.
    let later = create(&store, new_stream("later", &[])).await;
    assert!(later.id > temporary.id && later.id > fork.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_producers_all_land_in_order() {
    const PRODUCERS: u64 = 20;
    const WRITES: u64 = 25;
    let (_dir, store) = store().await;
    let store = Arc::new(store);
    let s = create(&store, new_stream("hot", &[])).await;
    let tasks: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for seq in 0..WRITES {
                    let message = format!("{p}:{seq}");
                    let outcome = store
                        .append_stream("hot", produced(&[&message], &format!("p{p}"), 0, seq))
                        .await
                        .unwrap();
                    assert!(
                        matches!(outcome, AppendOutcome::Appended { .. }),
                        "{outcome:?}"
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let total = PRODUCERS * WRITES;
    assert_eq!(info(&store, "hot").await.tail, StreamOffset::new(total));
    let messages = read(&store, s.id, 0, None, usize::MAX).await;
    assert_eq!(
        messages.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    for p in 0..PRODUCERS {
        let prefix = format!("{p}:");
        let seqs: Vec<u64> = messages
            .iter()
            .filter_map(|(_, m)| m.strip_prefix(&prefix))
            .map(|seq| seq.parse().unwrap())
            .collect();
        assert_eq!(seqs, (0..WRITES).collect::<Vec<_>>(), "producer {p}");
    }
}
