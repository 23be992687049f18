//! Durable streams on PostgreSQL, beyond the shared contract (which `conformance.rs` checks):
//! several replicas on one schema, notifications, reads spanning many statements, stored
//! number ranges, killed connections and cancelled calls.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use bgrun_core::stream::{
    AppendOutcome, CreateStreamOutcome, DeleteStreamOutcome, Millis, NewFork, NewStream,
    ProducerClaim, StreamAppend, StreamExpiry, StreamId, StreamInfo, StreamMessage, StreamOffset,
};
use bgrun_core::{Store, StoreNotification};
use bgrun_store_postgres::testing::TestSchema;
use bgrun_store_postgres::{Notification, PostgresStore};
use futures::StreamExt;
use tokio::sync::broadcast;

/// How long a test waits for something that should happen at once before it fails.
const BOUND: Duration = Duration::from_secs(20);

const NOW: Millis = 1_700_000_000_000;

fn new_stream(path: &str, messages: &[&[u8]]) -> NewStream {
    NewStream {
        path: path.into(),
        content_type: "application/octet-stream".into(),
        expiry: None,
        closed: false,
        fork: None,
        messages: messages.iter().map(|m| m.to_vec().into()).collect(),
        now: NOW,
    }
}

fn appending(messages: &[&[u8]]) -> StreamAppend {
    StreamAppend {
        messages: messages.iter().map(|m| m.to_vec().into()).collect(),
        now: NOW,
        ..StreamAppend::default()
    }
}

fn claim(id: &str, epoch: u64, seq: u64) -> ProducerClaim {
    ProducerClaim {
        id: id.into(),
        epoch,
        seq,
    }
}

async fn create(store: &PostgresStore, new: NewStream) -> StreamInfo {
    match store.create_stream(new).await.unwrap() {
        CreateStreamOutcome::Created(info) => info,
        other => panic!("expected Created, got {other:?}"),
    }
}

fn appended(tail: u64, closed: bool) -> AppendOutcome {
    AppendOutcome::Appended {
        tail: StreamOffset::new(tail),
        closed,
    }
}

/// Every message of stream `id`, in one call.
async fn read_all(store: &PostgresStore, id: StreamId) -> Vec<StreamMessage> {
    store
        .read_stream(id, StreamOffset::ZERO, None, usize::MAX)
        .await
        .unwrap()
}

fn offsets(messages: &[StreamMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.offset.get()).collect()
}

async fn next_stream_notification(
    receiver: &mut broadcast::Receiver<Notification>,
) -> Notification {
    tokio::time::timeout(BOUND, async {
        loop {
            match receiver.recv().await {
                Ok(notification @ Notification::Stream { .. }) => return notification,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("notifications closed"),
            }
        }
    })
    .await
    .expect("the notification did not arrive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_replicas_hear_of_appends_closes_and_deletes() {
    let schema = TestSchema::new();
    let writer = schema.store().await.unwrap();
    let reader = schema.store().await.unwrap();
    let mut heard = reader.notifications();
    let mut engine_side = Store::notifications(&reader).unwrap();

    let stream = create(&writer, new_stream("heard", &[])).await;
    assert_eq!(
        writer
            .append_stream("heard", appending(&[b"one"]))
            .await
            .unwrap(),
        appended(1, false)
    );
    let expected = Notification::Stream { id: stream.id };
    assert_eq!(next_stream_notification(&mut heard).await, expected);
    // The engine's view of the same notification.
    let first = tokio::time::timeout(BOUND, async {
        loop {
            match engine_side.next().await {
                Some(StoreNotification::Stream { id }) => return id,
                Some(_) => {}
                None => panic!("notifications ended"),
            }
        }
    })
    .await
    .expect("the notification did not arrive");
    assert_eq!(first, stream.id);

    let close = StreamAppend {
        close: true,
        ..appending(&[])
    };
    assert_eq!(
        writer.append_stream("heard", close).await.unwrap(),
        appended(1, true)
    );
    assert_eq!(next_stream_notification(&mut heard).await, expected);

    assert_eq!(
        writer.delete_stream("heard", None).await.unwrap(),
        DeleteStreamOutcome::Deleted
    );
    assert_eq!(next_stream_notification(&mut heard).await, expected);
    // And the reader replica sees the truth in the tables.
    assert_eq!(reader.stream_info("heard").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_path_make_one_stream() {
    let schema = TestSchema::new();
    let stores = [schema.store().await.unwrap(), schema.store().await.unwrap()];
    let creates = (0..12).map(|i| {
        let store = stores[i % 2].clone();
        tokio::spawn(async move { store.create_stream(new_stream("once", &[b"first"])).await })
    });
    let outcomes: Vec<CreateStreamOutcome> = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(|joined| joined.unwrap().unwrap())
        .collect();
    let created: Vec<&StreamInfo> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            CreateStreamOutcome::Created(info) => Some(info),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 1, "{outcomes:?}");
    let stream = created[0].clone();
    for outcome in &outcomes {
        assert!(
            matches!(outcome, CreateStreamOutcome::Created(info) | CreateStreamOutcome::Existing(info) if *info == stream),
            "{outcome:?}"
        );
    }
    assert_eq!(offsets(&read_all(&stores[0], stream.id).await), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_through_two_replicas_are_gapless() {
    const TASKS: usize = 20;
    const APPENDS: usize = 25;
    let schema = TestSchema::new();
    let stores = [schema.store().await.unwrap(), schema.store().await.unwrap()];
    let stream = create(&stores[0], new_stream("shared", &[])).await;
    let tasks = (0..TASKS).map(|task| {
        let store = stores[task % 2].clone();
        tokio::spawn(async move {
            let mut tails = Vec::new();
            for n in 0..APPENDS {
                let text = format!("{task}/{n}");
                match store
                    .append_stream("shared", appending(&[text.as_bytes()]))
                    .await
                    .unwrap()
                {
                    AppendOutcome::Appended { tail, .. } => tails.push((tail.get(), text)),
                    other => panic!("expected Appended, got {other:?}"),
                }
            }
            tails
        })
    });
    let mut written: Vec<(u64, String)> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    written.sort();
    let total = (TASKS * APPENDS) as u64;
    assert_eq!(
        written.iter().map(|(tail, _)| *tail).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    let stored = read_all(&stores[1], stream.id).await;
    let stored: Vec<(u64, String)> = stored
        .iter()
        .map(|m| (m.offset.get(), String::from_utf8(m.data.to_vec()).unwrap()))
        .collect();
    assert_eq!(stored, written);
    assert_eq!(
        stores[1].stream_info("shared").await.unwrap().unwrap().tail,
        StreamOffset::new(total)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_span_many_statements_and_stop_at_the_byte_budget() {
    let schema = TestSchema::new();
    let store = schema.store().await.unwrap();
    // More one-byte messages than one read statement looks at.
    let bytes: Vec<Vec<u8>> = (0..2_500u32).map(|i| vec![(i % 251) as u8]).collect();
    let slices: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let small = create(&store, new_stream("small", &slices)).await;
    assert_eq!(small.tail, StreamOffset::new(2_500));

    let all = read_all(&store, small.id).await;
    assert_eq!(offsets(&all), (1..=2_500).collect::<Vec<_>>());
    assert!(all.iter().zip(&bytes).all(|(m, b)| m.data[..] == b[..]));
    let read = |after: u64, upto: Option<u64>, max_bytes: usize| {
        let store = store.clone();
        async move {
            offsets(
                &store
                    .read_stream(
                        small.id,
                        StreamOffset::new(after),
                        upto.map(StreamOffset::new),
                        max_bytes,
                    )
                    .await
                    .unwrap(),
            )
        }
    };
    assert_eq!(read(0, None, 2_000).await, (1..=2_000).collect::<Vec<_>>());
    assert_eq!(
        read(10, None, 1_500).await,
        (11..=1_510).collect::<Vec<_>>()
    );
    assert_eq!(
        read(0, Some(1_800), usize::MAX).await,
        (1..=1_800).collect::<Vec<_>>()
    );
    assert_eq!(read(100, None, 0).await, [101]);
    assert_eq!(read(2_500, None, usize::MAX).await, Vec::<u64>::new());
    assert_eq!(read(5, Some(5), usize::MAX).await, Vec::<u64>::new());
    assert_eq!(read(u64::MAX, None, usize::MAX).await, Vec::<u64>::new());

    // Large messages (stored out of line): a read stops after the one that spends the budget.
    let big: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1 << 20]).collect();
    let slices: Vec<&[u8]> = big.iter().map(Vec::as_slice).collect();
    let large = create(&store, new_stream("large", &slices)).await;
    let first = store
        .read_stream(large.id, StreamOffset::ZERO, None, 1)
        .await
        .unwrap();
    assert_eq!(offsets(&first), [1]);
    assert_eq!(first[0].data[..], big[0][..]);
    let two = store
        .read_stream(large.id, StreamOffset::ZERO, None, (1 << 20) + 1)
        .await
        .unwrap();
    assert_eq!(offsets(&two), [1, 2]);
    assert_eq!(two[1].data[..], big[1][..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chosen_numbers_round_trip_whatever_their_size() {
    let schema = TestSchema::new();
    let store = schema.store().await.unwrap();
    let source = create(
        &store,
        NewStream {
            expiry: Some(StreamExpiry::Ttl { secs: u64::MAX }),
            ..new_stream("huge/source", &[b"a", b"b"])
        },
    )
    .await;
    let big = u64::MAX - 1;
    let first = StreamAppend {
        producer: Some(claim("p", big, 0)),
        ..appending(&[b"c"])
    };
    assert_eq!(
        store.append_stream("huge/source", first).await.unwrap(),
        appended(3, false)
    );
    let close = StreamAppend {
        producer: Some(claim("p", big, 1)),
        close: true,
        stream_seq: Some("seq".into()),
        ..appending(&[])
    };
    assert_eq!(
        store.append_stream("huge/source", close).await.unwrap(),
        appended(3, true)
    );
    let closed = store.stream_info("huge/source").await.unwrap().unwrap();
    assert_eq!(closed.expiry, Some(StreamExpiry::Ttl { secs: u64::MAX }));
    assert_eq!(closed.closed_by, Some(claim("p", big, 1)));
    assert_eq!(closed.last_stream_seq.as_deref(), Some("seq"));
    // A stale epoch is told the current one, stored and read back whole.
    let stale = StreamAppend {
        producer: Some(claim("p", big - 1, 0)),
        ..appending(&[b"x"])
    };
    assert_eq!(
        store.append_stream("huge/source", stale).await.unwrap(),
        AppendOutcome::Closed {
            tail: StreamOffset::new(3)
        }
    );

    let fork = NewStream {
        expiry: Some(StreamExpiry::At {
            text: "Tue, 14 Nov 2023 22:13:20 GMT".into(),
            at: NOW + 1,
        }),
        fork: Some(NewFork {
            source_path: "huge/source".into(),
            source_id: source.id,
            offset: StreamOffset::new(2),
            requested_offset: None,
            sub_offset: u64::MAX,
            inherited: closed.segments_upto(StreamOffset::new(2)),
        }),
        ..new_stream("huge/fork", &[b"tail"])
    };
    let created = create(&store, fork.clone()).await;
    assert_eq!(created.fork.as_ref().unwrap().sub_offset, u64::MAX);
    assert_eq!(created.tail, StreamOffset::new(3));
    assert_eq!(
        store.create_stream(fork).await.unwrap(),
        CreateStreamOutcome::Existing(created.clone())
    );
    let mut read = Vec::new();
    for segment in created.segments() {
        read.extend(
            store
                .read_stream(segment.stream_id, segment.after, segment.upto, usize::MAX)
                .await
                .unwrap()
                .into_iter()
                .map(|m| (m.offset.get(), m.data.to_vec())),
        );
    }
    assert_eq!(
        read,
        [
            (1, b"a".to_vec()),
            (2, b"b".to_vec()),
            (3, b"tail".to_vec())
        ]
    );
}

/// `expired_streams` computes deadlines in SQL from TTLs stored as bit patterns: at extreme
/// TTLs, last accesses and times it lists exactly what `StreamInfo::is_expired` says, in
/// `StreamInfo::expiry_deadline` order, and never fails with an overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_streams_agree_with_the_model_at_extreme_values() {
    let schema = TestSchema::new();
    let store = schema.store().await.unwrap();
    let times = [Millis::MIN, -5_000, 0, NOW, Millis::MAX - 1, Millis::MAX];
    let ttls = [
        0,
        1,
        9_223_372_036_854_775,
        9_223_372_036_854_776,
        i64::MAX as u64,
        1 << 63,
        u64::MAX,
    ];
    let mut made = Vec::new();
    for (n, created) in times.into_iter().enumerate() {
        let expiries = ttls
            .iter()
            .map(|&secs| StreamExpiry::Ttl { secs })
            .chain(times.map(|at| StreamExpiry::At {
                text: at.to_string(),
                at,
            }));
        for (m, expiry) in expiries.enumerate() {
            let new = NewStream {
                expiry: Some(expiry),
                now: created,
                ..new_stream(&format!("edge/{n}/{m}"), &[])
            };
            made.push(create(&store, new).await);
        }
    }
    made.push(create(&store, new_stream("edge/never", &[])).await);
    for now in times {
        let mut expected: Vec<&StreamInfo> = made.iter().filter(|s| s.is_expired(now)).collect();
        expected.sort_by_key(|s| (s.expiry_deadline(), s.id));
        let expected: Vec<(String, StreamId)> = expected
            .into_iter()
            .map(|s| (s.path.clone(), s.id))
            .collect();
        assert_eq!(
            store.expired_streams(now, usize::MAX).await.unwrap(),
            expected,
            "at {now}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_last_fork_removes_soft_deleted_sources_up_the_chain() {
    let schema = TestSchema::new();
    let store = schema.store().await.unwrap();
    let fork = |source: &StreamInfo, path: &str| NewStream {
        fork: Some(NewFork {
            source_path: source.path.clone(),
            source_id: source.id,
            offset: source.tail,
            requested_offset: None,
            sub_offset: 0,
            inherited: source.segments_upto(source.tail),
        }),
        ..new_stream(path, &[path.as_bytes()])
    };
    let root = create(&store, new_stream("chain/root", &[b"root"])).await;
    let middle = create(&store, fork(&root, "chain/middle")).await;
    let leaf = create(&store, fork(&middle, "chain/leaf")).await;
    // A second fork of the root keeps it alive.
    let other = create(&store, fork(&root, "chain/other")).await;

    for path in ["chain/root", "chain/middle"] {
        assert_eq!(
            store.delete_stream(path, None).await.unwrap(),
            DeleteStreamOutcome::SoftDeleted
        );
    }
    assert_eq!(
        store
            .delete_stream("chain/leaf", Some(root.id))
            .await
            .unwrap(),
        DeleteStreamOutcome::NotFound,
        "another stream's id"
    );
    assert_eq!(
        store
            .delete_stream("chain/leaf", Some(leaf.id))
            .await
            .unwrap(),
        DeleteStreamOutcome::Deleted
    );
    // The middle went with its last fork; the root is still forked by `other`.
    assert_eq!(store.stream_info("chain/middle").await.unwrap(), None);
    assert!(read_all(&store, middle.id).await.is_empty());
    let root_now = store.stream_info("chain/root").await.unwrap().unwrap();
    assert!(root_now.soft_deleted);
    assert_eq!(root_now.forks, 1);
    assert_eq!(offsets(&read_all(&store, root.id).await), [1]);

    assert_eq!(
        store.delete_stream("chain/other", None).await.unwrap(),
        DeleteStreamOutcome::Deleted
    );
    assert_eq!(store.stream_info("chain/root").await.unwrap(), None);
    assert!(read_all(&store, root.id).await.is_empty());
    assert!(read_all(&store, other.id).await.is_empty());
    // Every path is free again, for new streams.
    let again = create(&store, new_stream("chain/root", &[])).await;
    assert_ne!(again.id, root.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_retries_over_killed_connections_store_each_write_once() {
    const WRITES: u64 = 150;
    let schema = TestSchema::new();
    let store = schema.store().await.unwrap();
    let mut heard = store.notifications();
    let stream = create(&store, new_stream("killed", &[])).await;

    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut unknown = 0;
            for seq in 0..WRITES {
                loop {
                    let write = StreamAppend {
                        producer: Some(claim("p", 0, seq)),
                        ..appending(&[format!("m{seq}").as_bytes()])
                    };
                    match store.append_stream("killed", write).await {
                        Ok(AppendOutcome::Appended { .. }) => break,
                        // An earlier attempt whose commit's answer was lost did store it.
                        Ok(AppendOutcome::Duplicate { last_seq, .. }) if last_seq == seq => break,
                        Ok(other) => panic!("seq {seq}: {other:?}"),
                        // A commit with an unknown outcome: the producer retries, as a client
                        // would.
                        Err(_) => unknown += 1,
                    }
                }
            }
            unknown
        })
    };
    // Kill the store's connections every 30 appends heard of, until the writer is done.
    let mut writer = writer;
    let (mut kills, mut appends) = (0, 0);
    let unknown = loop {
        tokio::select! {
            finished = &mut writer => break finished.unwrap(),
            _ = next_stream_notification(&mut heard) => {
                appends += 1;
                if appends % 30 == 0 {
                    kills += schema.terminate_connections().await.unwrap();
                }
            }
        }
    };
    assert!(kills > 0, "no connection was killed");
    eprintln!("{kills} connections killed, {unknown} appends with an unknown outcome");

    let stored = read_all(&store, stream.id).await;
    let expected: Vec<(u64, Vec<u8>)> = (0..WRITES)
        .map(|seq| (seq + 1, format!("m{seq}").into_bytes()))
        .collect();
    let stored: Vec<(u64, Vec<u8>)> = stored
        .into_iter()
        .map(|m| (m.offset.get(), m.data.to_vec()))
        .collect();
    assert_eq!(stored, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_dropped_half_way_leave_no_transaction_behind() {
    let schema = TestSchema::new();
    let store = Arc::new(schema.store().await.unwrap());
    let stream = create(&store, new_stream("dropped", &[])).await;
    let mut acknowledged = 0;
    for round in 0..40u64 {
        // Give up on an append at some point of its course (before, during or after its round
        // trips), as a caller whose client went away does.
        let cut = Duration::from_micros(round * 37 % 1_500);
        let _ =
            tokio::time::timeout(cut, store.append_stream("dropped", appending(&[b"maybe"]))).await;
        // Were a transaction left open on a pooled connection, holding the stream's row lock,
        // this append would wait forever (or run inside it).
        let outcome =
            tokio::time::timeout(BOUND, store.append_stream("dropped", appending(&[b"sure"])))
                .await
                .expect("an append waited for a transaction left open")
                .unwrap();
        assert!(
            matches!(outcome, AppendOutcome::Appended { .. }),
            "{outcome:?}"
        );
        acknowledged += 1;
    }
    let stored = read_all(&store, stream.id).await;
    let tail = store
        .stream_info("dropped")
        .await
        .unwrap()
        .unwrap()
        .tail
        .get();
    assert_eq!(offsets(&stored), (1..=tail).collect::<Vec<_>>());
    let sure = stored.iter().filter(|m| m.data[..] == b"sure"[..]).count();
    assert_eq!(sure, acknowledged);
}

/// A connection of the test's own (not a store's) to the test database.
async fn side_connection(schema: &TestSchema) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(schema.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Makes every commit of a transaction that inserted stream messages wait (in a deferred
/// trigger) for the advisory lock `key`, which `holder` takes.
async fn hold_commits(schema: &TestSchema, holder: &tokio_postgres::Client, key: i64) {
    let s = format!("\"{}\"", schema.name());
    holder
        .batch_execute(&format!(
            "CREATE FUNCTION {s}.hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM pg_advisory_xact_lock({key}); RETURN NULL; END $$; \
             CREATE CONSTRAINT TRIGGER hold_commit AFTER INSERT ON {s}.stream_messages \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {s}.hold_commit(); \
             SELECT pg_advisory_lock({key});"
        ))
        .await
        .unwrap();
}

/// The server process of the store connection that waits at its commit.
async fn waiting_at_commit(schema: &TestSchema, observer: &tokio_postgres::Client) -> i32 {
    waiting_at_commit_but(schema, observer, 0).await
}

/// [`waiting_at_commit`], but not backend `gone` (one just terminated stays in
/// `pg_stat_activity`, still waiting, until it has exited).
async fn waiting_at_commit_but(
    schema: &TestSchema,
    observer: &tokio_postgres::Client,
    gone: i32,
) -> i32 {
    tokio::time::timeout(BOUND, async {
        loop {
            let row = observer
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
                     AND wait_event_type = 'Lock' AND wait_event = 'advisory' AND pid <> $2 \
                     LIMIT 1",
                    &[&schema.name(), &gone],
                )
                .await
                .unwrap();
            if let Some(row) = row {
                return row.get(0);
            }
            // Polls the server's view until the commit is blocked; nothing to be told by.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("no store connection waited at its commit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_commit_outcome_is_unknown_fails_instead_of_being_repeated() {
    const KEY: i64 = 0x7374_7265_616d_0001;
    let schema = TestSchema::new();
    let store = schema.store().await.unwrap();
    let stream = create(&store, new_stream("unknown", &[])).await;
    let holder = side_connection(&schema).await;
    hold_commits(&schema, &holder, KEY).await;

    let append = {
        let store = store.clone();
        tokio::spawn(async move { store.append_stream("unknown", appending(&[b"lost?"])).await })
    };
    // The append's COMMIT has been sent and is being executed: its connection dies now.
    let pid = waiting_at_commit(&schema, &holder).await;
    holder
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let error = tokio::time::timeout(BOUND, append)
        .await
        .expect("the append was retried behind the caller's back (and waits at its commit)")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&error, bgrun_core::StoreError::Backend { .. })
            && error
                .to_string()
                .contains("may or may not have been stored"),
        "{error}"
    );
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&KEY])
        .await
        .unwrap();
    // It was not repeated behind the caller's back: here the commit never completed.
    assert!(read_all(&store, stream.id).await.is_empty());
    assert_eq!(
        store
            .append_stream("unknown", appending(&[b"next"]))
            .await
            .unwrap(),
        appended(1, false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_commit_outcome_is_unknown_is_retried() {
    const KEY: i64 = 0x7374_7265_616d_0002;
    let schema = TestSchema::new();
    let store = schema.store().await.unwrap();
    let holder = side_connection(&schema).await;
    hold_commits(&schema, &holder, KEY).await;

    let create = {
        let store = store.clone();
        tokio::spawn(async move { store.create_stream(new_stream("retried", &[b"body"])).await })
    };
    let pid = waiting_at_commit(&schema, &holder).await;
    holder
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    // Its retry waits at its own commit until the lock is free.
    let retry = waiting_at_commit_but(&schema, &holder, pid).await;
    assert_ne!(retry, pid);
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&KEY])
        .await
        .unwrap();
    let created = match create.await.unwrap().unwrap() {
        CreateStreamOutcome::Created(info) => info,
        other => panic!("expected Created, got {other:?}"),
    };
    assert_eq!(offsets(&read_all(&store, created.id).await), [1]);
    assert_eq!(store.stream_info("retried").await.unwrap(), Some(created));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_dropped_inside_its_transaction_leaves_no_transaction_behind() {
    let schema = TestSchema::new();
    let store = schema.store().await.unwrap();
    let stream = create(&store, new_stream("held", &[b"kept"])).await;
    // Another session holds the stream's row: the delete will wait inside its transaction.
    let mut side = side_connection(&schema).await;
    let held = side.transaction().await.unwrap();
    held.execute(
        &format!(
            "SELECT 1 FROM \"{}\".streams WHERE path = 'held' FOR UPDATE",
            schema.name()
        ),
        &[],
    )
    .await
    .unwrap();
    let delete = {
        let store = store.clone();
        tokio::spawn(async move { store.delete_stream("held", None).await })
    };
    let observer = side_connection(&schema).await;
    let pid: i32 = tokio::time::timeout(BOUND, async {
        loop {
            let waiting = observer
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
                     AND wait_event_type = 'Lock'",
                    &[&schema.name()],
                )
                .await
                .unwrap();
            if let Some(row) = waiting {
                return row.get(0);
            }
            // Polls the server's view until the delete waits; nothing to be told by.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the delete never waited for the row");
    delete.abort();
    assert!(delete.await.unwrap_err().is_cancelled());
    held.commit().await.unwrap();
    // Its connection was closed rather than pooled inside the open transaction: its server
    // process ends (once it has the row and finds nobody to answer), rolling the delete back.
    tokio::time::timeout(BOUND, async {
        loop {
            let alive = observer
                .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
                .await
                .unwrap();
            if alive.is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the dropped delete's connection is still open");

    assert_eq!(
        store.stream_info("held").await.unwrap().map(|info| info.id),
        Some(stream.id)
    );
    // Every pooled connection is used again (more calls than the pool holds), none of them
    // inside the dropped delete's transaction.
    for tail in 2..=9 {
        let outcome = tokio::time::timeout(BOUND, store.append_stream("held", appending(&[b"x"])))
            .await
            .expect("an append waited for the dropped delete's transaction")
            .unwrap();
        assert_eq!(outcome, appended(tail, false));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_queued_behind_a_transaction_share_the_next_one_in_order() {
    let schema = TestSchema::new();
    let store = schema.store().await.unwrap();
    create(&store, new_stream("queued", &[])).await;
    // Hold the stream's row so that the first append waits inside its transaction and the
    // others queue behind it.
    let mut side = side_connection(&schema).await;
    let held = side.transaction().await.unwrap();
    held.execute(
        &format!(
            "SELECT 1 FROM \"{}\".streams WHERE path = 'queued' FOR UPDATE",
            schema.name()
        ),
        &[],
    )
    .await
    .unwrap();
    let first = {
        let store = store.clone();
        tokio::spawn(async move { store.append_stream("queued", appending(&[b"first"])).await })
    };
    let observer = side_connection(&schema).await;
    waiting_for_lock(&schema, &observer).await;
    // Queued behind it: a producer's write, its retry, its next write, a gap, and a close.
    let by = |seq: u64, text: &[u8]| StreamAppend {
        producer: Some(claim("p", 0, seq)),
        ..appending(&[text])
    };
    let queued = [
        by(0, b"p0"),
        by(0, b"p0 again"),
        by(1, b"p1"),
        by(3, b"p3"),
        StreamAppend {
            close: true,
            ..appending(&[b"last"])
        },
        appending(&[b"too late"]),
    ];
    let mut answers = Vec::new();
    for append in queued {
        let mut answer = Box::pin(store.append_stream("queued", append));
        // Its first poll queues it (the stream's transaction is under way): the order is known.
        assert!(futures::poll!(answer.as_mut()).is_pending());
        answers.push(answer);
    }
    held.commit().await.unwrap();
    assert_eq!(first.await.unwrap().unwrap(), appended(1, false));
    let outcomes: Vec<AppendOutcome> = futures::future::join_all(answers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        outcomes,
        [
            appended(2, false),
            AppendOutcome::Duplicate {
                tail: StreamOffset::new(2),
                last_seq: 0,
                closed: false
            },
            appended(3, false),
            AppendOutcome::SequenceGap {
                expected: 2,
                received: 3
            },
            appended(4, true),
            AppendOutcome::Closed {
                tail: StreamOffset::new(4)
            },
        ]
    );
    let stream = store.stream_info("queued").await.unwrap().unwrap();
    assert!(stream.closed);
    let stored: Vec<Vec<u8>> = read_all(&store, stream.id)
        .await
        .into_iter()
        .map(|m| m.data.to_vec())
        .collect();
    assert_eq!(stored, [&b"first"[..], b"p0", b"p1", b"last"]);
    // The queued ones were written by one transaction.
    let writers = observer
        .query_one(
            &format!(
                "SELECT count(DISTINCT xmin::text) FROM \"{}\".stream_messages \
                 WHERE stream_id = $1 AND msg_offset > 1",
                schema.name()
            ),
            &[&stream.id.get()],
        )
        .await
        .unwrap();
    assert_eq!(writers.get::<_, i64>(0), 1);
}

/// Waits until a store connection of `schema` waits for a row lock.
async fn waiting_for_lock(schema: &TestSchema, observer: &tokio_postgres::Client) {
    tokio::time::timeout(BOUND, async {
        loop {
            let waiting = observer
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
                     AND wait_event_type = 'Lock'",
                    &[&schema.name()],
                )
                .await
                .unwrap();
            if waiting.is_some() {
                return;
            }
            // Polls the server's view until the call waits; nothing to be told by.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("no store connection waited for the row");
}
