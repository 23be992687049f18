use std::time::Duration;

use bgrun_core::Event;
use tokio::time::Instant;

use crate::{Batch, EventLog, LogConfig, LogError};

fn event(index: u64) -> Event {
    Event::from_parts(index, "E", format!(r#"{{"i":{index},"pad":"0123456789"}}"#))
}

fn indices(batch: &Batch) -> Vec<u64> {
    match batch {
        Batch::Events(events) => events.iter().map(Event::index).collect(),
        other => panic!("expected events, got {other:?}"),
    }
}

#[tokio::test]
async fn subscribers_see_only_durable_events_in_order() {
    let log = EventLog::new(LogConfig::default());
    let writer = log.open(1u32, 0).unwrap();
    for _ in 0..5 {
        writer.append(event).await.unwrap();
    }
    let mut reader = log.subscribe(&1, Some(0)).unwrap();
    let taken = writer.take(3);
    assert_eq!(
        taken.iter().map(Event::index).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    writer.mark_durable(3).unwrap();
    assert_eq!(indices(&reader.next_batch(100).await), [1, 2]);
    // Nothing more is durable yet: the reader must wait, and wakes once 3..5 are marked.
    let waiting = tokio::spawn(async move {
        let batch = reader.next_batch(100).await;
        (indices(&batch), reader)
    });
    assert_eq!(writer.take(100).len(), 2);
    writer.mark_durable(5).unwrap();
    let (seen, mut reader) = waiting.await.unwrap();
    assert_eq!(seen, [3, 4]);
    writer.close();
    assert_eq!(reader.next_batch(100).await, Batch::End);
}

#[tokio::test]
async fn racing_appends_and_subscriptions_have_no_gap_or_duplicate() {
    let log = EventLog::new(LogConfig::default());
    let writer = log.open("s", 0).unwrap();
    let total = 20_000u64;
    let mut readers = Vec::new();
    for start in [None, Some(0), Some(99), Some(5_000)] {
        let log = log.clone();
        readers.push(tokio::spawn(async move {
            // Subscribe while the writer is already appending.
            tokio::task::yield_now().await;
            let mut reader = log.subscribe(&"s", start).unwrap();
            let mut seen = Vec::new();
            loop {
                match reader.next_batch(97).await {
                    Batch::Events(events) => seen.extend(events.iter().map(Event::index)),
                    Batch::End => return (start, seen),
                    Batch::Evicted { .. } => panic!("nothing is evicted under default bounds"),
                }
            }
        }));
    }
    let mut appended = 0;
    while appended < total {
        for _ in 0..100 {
            writer.append(event).await.unwrap();
            appended += 1;
        }
        let batch = writer.take(64);
        if let Some(last) = batch.last() {
            writer.mark_durable(last.index() + 1).unwrap();
        }
        tokio::task::yield_now().await;
    }
    while !writer.take(1000).is_empty() {}
    writer.mark_durable(total).unwrap();
    writer.close();
    for reader in readers {
        let (start, seen) = reader.await.unwrap();
        let first = start.map_or(0, |index| index + 1);
        assert_eq!(seen, (first..total).collect::<Vec<_>>(), "after {start:?}");
    }
}

#[tokio::test]
async fn memory_is_bounded_and_a_slow_reader_learns_what_left() {
    let config = LogConfig {
        max_stream_bytes: 10 * event(0).json().len(),
        min_stream_events: 4,
        ..LogConfig::default()
    };
    let log = EventLog::new(config);
    let writer = log.open("s", 0).unwrap();
    let mut slow = log.subscribe(&"s", None).unwrap();
    for _ in 0..100 {
        writer.append(event).await.unwrap();
    }
    writer.take(100);
    writer.mark_durable(100).unwrap();
    assert!(log.held_bytes() <= 10 * event(0).json().len());
    let Batch::Evicted { from, to } = slow.next_batch(10).await else {
        panic!("the slow reader must be told")
    };
    assert_eq!(from, 0);
    assert!((90..100).contains(&to));
    slow.seek(to);
    assert_eq!(
        indices(&slow.next_batch(1000).await),
        (to..100).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn events_not_yet_durable_never_leave_memory_and_appenders_wait_for_room() {
    let one = event(0).json().len();
    let config = LogConfig {
        max_stream_bytes: one,
        max_total_bytes: one,
        min_stream_events: 0,
        max_pending_bytes: 3 * one,
        ..LogConfig::default()
    };
    let log = EventLog::new(config);
    let writer = std::sync::Arc::new(log.open("s", 0).unwrap());
    for _ in 0..3 {
        writer.append(event).await.unwrap();
    }
    // The fourth append is over the pending bound: it waits until the store catches up.
    let appender = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.append(event).await })
    };
    writer.pending().await;
    let batch = writer.take(2);
    assert_eq!(batch.len(), 2);
    writer.mark_durable(2).unwrap();
    assert_eq!(appender.await.unwrap(), Ok(3));
    assert_eq!(writer.next_index(), 4);
    // Memory is over every bound: durable 0 and 1 went, 2 and 3 are not durable and stayed.
    assert_eq!(log.held_bytes(), 2 * one);
    let mut late = log.subscribe(&"s", None).unwrap();
    assert_eq!(late.next_batch(10).await, Batch::Evicted { from: 0, to: 2 });
}

#[tokio::test(start_paused = true)]
async fn finished_streams_leave_after_the_ttl() {
    let config = LogConfig {
        finished_ttl: Duration::from_secs(60),
        ..LogConfig::default()
    };
    let log = EventLog::new(config);
    let done = log.open("done", 0).unwrap();
    let _live = log.open("live", 0).unwrap();
    done.push(event).unwrap();
    done.take(1);
    done.mark_durable(1).unwrap();
    done.close();
    assert_eq!(log.evict(Instant::now()), 0);
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(log.evict(Instant::now()), 1);
    assert!(!log.contains(&"done") && log.contains(&"live"));
    assert_eq!(log.held_bytes(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_stopped_reading_does_not_keep_an_evicted_stream_in_memory() {
    let config = LogConfig {
        finished_ttl: Duration::from_secs(60),
        ..LogConfig::default()
    };
    let log = EventLog::new(config);
    let done = log.open("done", 0).unwrap();
    for _ in 0..3 {
        done.push(event).unwrap();
    }
    done.take(3);
    done.mark_durable(3).unwrap();
    done.close();
    let mut stalled = log.subscribe(&"done", None).unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(log.evict(Instant::now()), 1);
    assert_eq!(log.held_bytes(), 0);
    // Its events are gone from memory too: the subscriber is sent to the store for them.
    assert_eq!(
        stalled.next_batch(10).await,
        Batch::Evicted { from: 0, to: 3 }
    );
}

#[tokio::test]
async fn a_subscription_after_the_last_possible_index_sees_nothing_rather_than_wrapping() {
    let log = EventLog::new(LogConfig::default());
    let writer = log.open("s", 0).unwrap();
    writer.push(event).unwrap();
    writer.take(1);
    writer.mark_durable(1).unwrap();
    writer.close();
    let mut past_everything = log.subscribe(&"s", Some(u64::MAX)).unwrap();
    assert_eq!(past_everything.next_batch(10).await, Batch::End);
}

#[tokio::test]
async fn misuse_is_an_error() {
    let log = EventLog::new(LogConfig::default());
    let writer = log.open("s", 10).unwrap();
    assert_eq!(log.open("s", 0).unwrap_err(), LogError::AlreadyOpen);
    assert_eq!(writer.push(event).unwrap(), 10);
    assert!(matches!(
        writer.mark_durable(12),
        Err(LogError::MarkPastEnd { mark: 12, next: 11 })
    ));
    writer.close();
    assert_eq!(writer.push(event).unwrap_err(), LogError::Closed);
    // A closed stream can be opened again (a run re-queued after recovery).
    assert!(log.open("s", 11).is_ok());
}

#[tokio::test]
async fn frames_are_the_frames_of_the_same_events() {
    let log = EventLog::new(LogConfig::default());
    let writer = log.open(1u32, 0).unwrap();
    for _ in 0..5 {
        writer.append(event).await.unwrap();
    }
    assert_eq!(writer.take(100).len(), 5);
    writer.mark_durable(5).unwrap();
    writer.close();
    let mut reader = log.subscribe(&1, Some(0)).unwrap();
    let expected: Vec<Event> = (1..4).map(event).collect();
    assert_eq!(
        reader.next_frames(3).await,
        Batch::Events(bgrun_core::Frames::of(&expected))
    );
    assert_eq!(indices(&reader.next_batch(100).await), [4]);
    assert_eq!(reader.next_frames(100).await, Batch::End);
}
