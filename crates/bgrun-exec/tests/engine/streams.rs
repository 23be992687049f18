//! Durable streams through `Engine::streams`: JSON mode, forks with sub-offsets, reads across
//! segments in chunks, waiting at the tail, expired streams swept without being touched; on
//! PostgreSQL, a reader on one replica woken by an append on another.

use std::time::Duration;

use bgrun_core::stream::{now_millis, AppendOutcome, StreamExpiry, StreamInfo, StreamOffset};
use bgrun_exec::streams::{AppendStream, CreateStream, ForkRequest, StreamError, Streams};
use bgrun_exec::{Engine, EngineConfig};
use bytes::Bytes;

use crate::fixture::*;

/// An append of `body` to a `text/plain` stream.
fn text_append(body: &'static [u8]) -> AppendStream {
    AppendStream {
        body: Bytes::from_static(body),
        content_type: Some("text/plain".into()),
        ..AppendStream::default()
    }
}

/// A `text/plain` stream at `path` holding `body` (nothing when empty).
fn text_stream(path: &str, body: &'static [u8]) -> CreateStream {
    CreateStream {
        path: path.into(),
        content_type: Some("text/plain".into()),
        body: Bytes::from_static(body),
        ..CreateStream::default()
    }
}

fn json_append(body: &str) -> AppendStream {
    AppendStream {
        body: Bytes::from(body.to_owned()),
        content_type: Some("application/json".into()),
        ..AppendStream::default()
    }
}

async fn texts(streams: &Streams, path: &str, after: u64, max_bytes: usize) -> Vec<String> {
    let info = streams.get(path).await.unwrap();
    streams
        .read(&info, StreamOffset::new(after), max_bytes)
        .await
        .unwrap()
        .into_iter()
        .map(|m| String::from_utf8(m.data.to_vec()).unwrap())
        .collect()
}

/// A task waiting (30 s at most) for `path` to hold a message.
fn wait_at_the_start(
    streams: &Streams,
    path: &'static str,
) -> tokio::task::JoinHandle<Result<bgrun_exec::streams::Waited, StreamError>> {
    let streams = streams.clone();
    tokio::spawn(async move {
        streams
            .wait(path, StreamOffset::ZERO, Duration::from_secs(30))
            .await
    })
}

/// Waits until `count` readers wait at a tail on `engine` (the wait is observable; no sleep).
async fn readers_waiting(engine: &Engine, count: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while engine.streams().waiting_readers() < count {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("no reader started waiting");
}

async fn json_values_are_kept_as_sent_and_forks_read_through_their_source(backend: Backend) {
    let f = fixture(backend).await;
    let streams = f.engine.streams();
    let created = streams
        .create(CreateStream {
            path: "events".into(),
            content_type: Some("application/json".into()),
            body: Bytes::from_static(br#"[{"a": 1}, 2]"#),
            ..CreateStream::default()
        })
        .await
        .unwrap();
    assert!(created.created);
    assert_eq!(created.info.tail, StreamOffset::new(1));
    streams
        .append("events", json_append(r#"[3, "four", [5]]"#))
        .await
        .unwrap();
    assert_eq!(
        texts(streams, "events", 0, usize::MAX).await,
        [r#"{"a": 1},2"#, r#"3,"four",[5]"#]
    );
    assert!(matches!(
        streams.append("events", json_append("[]")).await,
        Err(StreamError::EmptyJsonArray)
    ));
    // A body large enough to be parsed on a blocking thread: the same rules.
    let values: Vec<String> = (0..40_000).map(|i| format!("\"value {i}\"")).collect();
    let large = format!("[{}]", values.join(", "));
    assert!(large.len() > 256 << 10);
    let mut broken = large.clone();
    broken.pop();
    let missing = streams.append("events-large", json_append(&large)).await;
    assert!(
        matches!(missing, Ok(AppendOutcome::NotFound)),
        "{missing:?}"
    );
    streams
        .create(CreateStream {
            path: "events-large".into(),
            content_type: Some("application/json".into()),
            ..CreateStream::default()
        })
        .await
        .unwrap();
    assert!(matches!(
        streams.append("events-large", json_append(&broken)).await,
        Err(StreamError::InvalidJson(_))
    ));
    streams
        .append("events-large", json_append(&large))
        .await
        .unwrap();
    assert_eq!(
        texts(streams, "events-large", 0, usize::MAX).await,
        [values.join(",")]
    );
    // A fork taking the first 30,000 values of that large message (read on a blocking thread).
    streams
        .create(CreateStream {
            path: "events-large-fork".into(),
            fork: Some(ForkRequest {
                source: "events-large".into(),
                offset: Some(StreamOffset::ZERO),
                sub_offset: 30_000,
            }),
            ..CreateStream::default()
        })
        .await
        .unwrap();
    assert_eq!(
        texts(streams, "events-large-fork", 0, usize::MAX).await,
        [values[..30_000].join(",")]
    );
    let too_many = streams
        .create(CreateStream {
            path: "events-large-fork-2".into(),
            fork: Some(ForkRequest {
                source: "events-large".into(),
                offset: Some(StreamOffset::ZERO),
                sub_offset: 40_001,
            }),
            ..CreateStream::default()
        })
        .await;
    assert!(
        matches!(too_many, Err(StreamError::InvalidSubOffset(_))),
        "{too_many:?}"
    );
    // A fork at offset 1 taking the first two values of the source's second message.
    let fork = streams
        .create(CreateStream {
            path: "events-fork".into(),
            fork: Some(ForkRequest {
                source: "events".into(),
                offset: Some(StreamOffset::new(1)),
                sub_offset: 2,
            }),
            ..CreateStream::default()
        })
        .await
        .unwrap();
    assert_eq!(fork.info.content_type, "application/json");
    assert_eq!(fork.info.tail, StreamOffset::new(2));
    streams
        .append("events-fork", json_append("6"))
        .await
        .unwrap();
    assert_eq!(
        texts(streams, "events-fork", 0, usize::MAX).await,
        [r#"{"a": 1},2"#, r#"3,"four""#, "6"]
    );
    // Reads stop after the message that reaches the byte budget, across segments.
    assert_eq!(texts(streams, "events-fork", 0, 1).await, [r#"{"a": 1},2"#]);
    assert_eq!(texts(streams, "events-fork", 1, 1).await, [r#"3,"four""#]);
    assert!(matches!(
        streams
            .create(CreateStream {
                path: "too-far".into(),
                fork: Some(ForkRequest {
                    source: "events".into(),
                    offset: Some(StreamOffset::new(3)),
                    sub_offset: 0,
                }),
                ..CreateStream::default()
            })
            .await,
        Err(StreamError::ForkOffsetBeyondTail)
    ));
}

async fn a_reader_waiting_at_the_tail_is_woken_by_the_next_append(backend: Backend) {
    let f = fixture(backend).await;
    let streams = f.engine.streams().clone();
    streams.create(text_stream("tail", b"")).await.unwrap();
    let waiter = wait_at_the_start(&streams, "tail");
    readers_waiting(&f.engine, 1).await;
    let appended = streams.append("tail", text_append(b"x")).await.unwrap();
    assert_eq!(
        appended,
        AppendOutcome::Appended {
            tail: StreamOffset::new(1),
            closed: false
        }
    );
    let waited = waiter.await.unwrap().unwrap();
    assert!(!waited.timed_out);
    assert_eq!(waited.info.tail, StreamOffset::new(1));
}

async fn an_append_whose_caller_goes_away_still_wakes_the_readers(backend: Backend) {
    let f = fixture(backend).await;
    let streams = f.engine.streams().clone();
    streams
        .create(text_stream("gone-producer", b""))
        .await
        .unwrap();
    let waiter = wait_at_the_start(&streams, "gone-producer");
    readers_waiting(&f.engine, 1).await;
    // Polled once (the write is under way, or done), then dropped: a producer hanging up.
    let mut append = Box::pin(streams.append("gone-producer", text_append(b"x")));
    let _ = futures::poll!(append.as_mut());
    drop(append);
    let waited = waiter.await.unwrap().unwrap();
    assert!(!waited.timed_out, "woken by the append, not by the timeout");
    assert_eq!(waited.info.tail, StreamOffset::new(1));
}

/// Polls the store (no sleep standing in for the sweep: the loop ends as soon as `done` holds)
/// until `done` holds for the streams at `paths`, or fails after a bound.
async fn until_store_shows(
    engine: &Engine,
    paths: &[&str],
    done: impl Fn(&[Option<StreamInfo>]) -> bool,
) -> Vec<Option<StreamInfo>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen = Vec::new();
        for path in paths {
            seen.push(engine.store().stream_info(path).await.unwrap());
        }
        if done(&seen) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweep did not get to {paths:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn expired_streams_are_swept_without_being_touched(backend: Backend) {
    let f = fixture_with(backend, |config| EngineConfig {
        stream_sweep_every: Duration::from_millis(50),
        ..config
    })
    .await;
    let streams = f.engine.streams().clone();
    let soon = now_millis() + 300;
    let text = |path: &str, expiry: Option<StreamExpiry>, body: &'static [u8]| CreateStream {
        path: path.into(),
        content_type: Some("text/plain".into()),
        expiry,
        body: Bytes::from_static(body),
        ..CreateStream::default()
    };
    let at = || {
        Some(StreamExpiry::At {
            text: "in 300 ms".into(),
            at: soon,
        })
    };
    let ttl = streams
        .create(text("swept/ttl", Some(StreamExpiry::Ttl { secs: 1 }), b"t"))
        .await
        .unwrap()
        .info;
    let source = streams
        .create(text("swept/source", at(), b"s"))
        .await
        .unwrap()
        .info;
    // Its fork outlives it: the sweep can only soft-delete the source.
    streams
        .create(CreateStream {
            path: "swept/fork".into(),
            expiry: Some(StreamExpiry::Ttl { secs: 3600 }),
            fork: Some(ForkRequest {
                source: "swept/source".into(),
                offset: None,
                sub_offset: 0,
            }),
            ..CreateStream::default()
        })
        .await
        .unwrap();
    streams
        .create(text("swept/kept", None, b"k"))
        .await
        .unwrap();
    streams
        .create(text("swept/waited", at(), b""))
        .await
        .unwrap();
    let waiter = wait_at_the_start(&streams, "swept/waited");
    readers_waiting(&f.engine, 1).await;

    // From here on nobody reads, appends to or creates these streams: only the sweep can
    // delete them.
    let paths = ["swept/ttl", "swept/source", "swept/waited"];
    let seen = until_store_shows(&f.engine, &paths, |seen| {
        seen[0].is_none() && seen[1].as_ref().is_some_and(|s| s.soft_deleted) && seen[2].is_none()
    })
    .await;
    assert_eq!(seen[1].as_ref().unwrap().id, source.id);
    // The TTL stream's messages went with it.
    assert!(f
        .engine
        .store()
        .read_stream(ttl.id, StreamOffset::ZERO, None, usize::MAX)
        .await
        .unwrap()
        .is_empty());
    // The reader waiting at the tail was woken by the sweep (long before its 30 s) and found
    // the stream gone.
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiting reader was not woken")
        .unwrap();
    assert!(matches!(waited, Err(StreamError::NotFound)), "{waited:?}");
    // The fork still reads the soft-deleted source's message; what does not expire stays.
    assert_eq!(texts(&streams, "swept/fork", 0, usize::MAX).await, ["s"]);
    assert_eq!(texts(&streams, "swept/kept", 0, usize::MAX).await, ["k"]);
}

async fn many_readers_woken_by_one_append_each_get_it(backend: Backend) {
    let f = fixture(backend).await;
    let streams = f.engine.streams().clone();
    streams.create(text_stream("fan", b"first")).await.unwrap();
    let readers: Vec<_> = (0..50)
        .map(|_| {
            let streams = streams.clone();
            tokio::spawn(async move {
                let waited = streams
                    .wait("fan", StreamOffset::new(1), Duration::from_secs(30))
                    .await
                    .unwrap();
                streams
                    .read(&waited.info, StreamOffset::new(1), 1 << 20)
                    .await
                    .unwrap()
            })
        })
        .collect();
    readers_waiting(&f.engine, 50).await;
    streams.append("fan", text_append(b"second")).await.unwrap();
    for reader in readers {
        let messages = reader.await.unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(&messages[0].data[..], b"second");
        assert_eq!(messages[0].offset, StreamOffset::new(2));
    }
}

async fn fork_chains_are_bounded(backend: Backend) {
    let f = fixture(backend).await;
    let streams = f.engine.streams();
    let text = |path: String, fork: Option<ForkRequest>| CreateStream {
        path,
        content_type: Some("text/plain".into()),
        fork,
        body: Bytes::from_static(b"x"),
        ..CreateStream::default()
    };
    streams.create(text("chain/0".into(), None)).await.unwrap();
    // Each level adds a message of its own: level k reads from k + 1 streams.
    let mut level = 0;
    let refused = loop {
        let fork = ForkRequest {
            source: format!("chain/{level}"),
            offset: None,
            sub_offset: 0,
        };
        match streams
            .create(text(format!("chain/{}", level + 1), Some(fork)))
            .await
        {
            Ok(_) => level += 1,
            Err(error) => break error,
        }
    };
    assert!(matches!(refused, StreamError::ForkTooDeep), "{refused}");
    assert_eq!(level + 1, bgrun_exec::streams::MAX_FORK_SEGMENTS);
    let deepest = streams.get(&format!("chain/{level}")).await.unwrap();
    assert_eq!(
        deepest.segments().len(),
        bgrun_exec::streams::MAX_FORK_SEGMENTS
    );
    assert_eq!(
        streams
            .read(&deepest, StreamOffset::ZERO, usize::MAX)
            .await
            .unwrap()
            .len(),
        bgrun_exec::streams::MAX_FORK_SEGMENTS
    );
}

crate::on_every_store!(
    fork_chains_are_bounded,
    json_values_are_kept_as_sent_and_forks_read_through_their_source,
    a_reader_waiting_at_the_tail_is_woken_by_the_next_append,
    an_append_whose_caller_goes_away_still_wakes_the_readers,
    many_readers_woken_by_one_append_each_get_it,
    expired_streams_are_swept_without_being_touched,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_append_on_one_replica_wakes_a_reader_on_another() {
    let schema = bgrun_store_postgres::testing::TestSchema::new();
    let mut engines = Vec::new();
    for _ in 0..2 {
        let store = std::sync::Arc::new(schema.store().await.unwrap());
        engines.push(
            Engine::open(store, bgrun_exec::demo::registry(), EngineConfig::default())
                .await
                .unwrap(),
        );
    }
    let (a, b) = (&engines[0], &engines[1]);
    a.streams()
        .create(text_stream("shared", b""))
        .await
        .unwrap();
    let waiter = {
        let streams = b.streams().clone();
        tokio::spawn(async move {
            streams
                .wait("shared", StreamOffset::ZERO, Duration::from_secs(30))
                .await
        })
    };
    readers_waiting(b, 1).await;
    a.streams()
        .append("shared", text_append(b"from a"))
        .await
        .unwrap();
    // Woken by the store's notification long before the 30 s timeout.
    let waited = waiter.await.unwrap().unwrap();
    assert!(!waited.timed_out);
    assert_eq!(
        texts(b.streams(), "shared", 0, usize::MAX).await,
        ["from a"]
    );
}
