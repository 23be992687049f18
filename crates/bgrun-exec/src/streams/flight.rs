//! Shared store reads: readers that ask for the same thing at the same moment (say, a thousand
//! SSE readers woken by one append) share one store read instead of making one each.
//!
//! Sharing must never hand a reader data older than it may see. Every committed local write,
//! deletion and remote change bumps the hub's version before anyone hears of it; a read records
//! the version at which it started, and a caller joins a read in flight only if that read
//! started at (or after) the version the caller saw when it asked. A read that started earlier
//! might miss a write the caller already knows of (its own append, or the one that woke it).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bgrun_core::StoreError;
use futures::future::{BoxFuture, FutureExt, Shared, WeakShared};

use super::StreamError;

/// A read's outcome, as every caller sharing it gets it.
type Outcome<T> = Result<T, Arc<StoreError>>;

struct Flight<T> {
    /// The hub's version when the read started.
    version: u64,
    /// Weak: a read whose every reader has gone away is dropped (with the connection it may
    /// hold), never kept alive by this map for a later joiner.
    read: WeakShared<BoxFuture<'static, Outcome<T>>>,
}

/// Reads in flight, by what they read.
pub(crate) struct Flights<K, T> {
    in_flight: Mutex<HashMap<K, Flight<T>>>,
    joined: AtomicU64,
}

impl<K, T> Default for Flights<K, T> {
    fn default() -> Self {
        Self {
            in_flight: Mutex::new(HashMap::new()),
            joined: AtomicU64::new(0),
        }
    }
}

impl<K, T> std::fmt::Debug for Flights<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights")
            .field("joined", &self.joined.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Past this many entries, starting a read first drops the finished or abandoned ones (an entry
/// is only a way to join; dropping it cancels nobody's read).
const SWEEP_AT: usize = 1024;

impl<K: Clone + Eq + Hash, T: Clone + Send + Sync + 'static> Flights<K, T> {
    /// The outcome of `read` for `key`, shared with a read of the same key in flight that started
    /// at `version` or later, else started now (recorded at `version`).
    pub(crate) async fn run<F>(
        &self,
        key: K,
        version: u64,
        read: impl FnOnce() -> F,
    ) -> Result<T, StreamError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let shared = {
            let mut in_flight = self.lock();
            let joinable = in_flight
                .get(&key)
                .filter(|flight| flight.version >= version)
                .and_then(|flight| flight.read.upgrade())
                .filter(|shared| shared.peek().is_none());
            match joinable {
                Some(shared) => {
                    self.joined.fetch_add(1, Ordering::Relaxed);
                    shared
                }
                None => {
                    if in_flight.len() >= SWEEP_AT {
                        in_flight.clear();
                    }
                    let started = read().map(|outcome| outcome.map_err(Arc::new));
                    let shared = started.boxed().shared();
                    let weak = shared.downgrade().ok_or_else(|| {
                        StreamError::Store(StoreError::backend(
                            "sharing a store read",
                            "a read just started was already done",
                        ))
                    })?;
                    in_flight.insert(
                        key.clone(),
                        Flight {
                            version,
                            read: weak,
                        },
                    );
                    shared
                }
            }
        };
        let outcome = shared.clone().await;
        {
            let mut in_flight = self.lock();
            let ours_or_gone = in_flight.get(&key).is_some_and(|flight| {
                flight
                    .read
                    .upgrade()
                    .is_none_or(|read| Shared::ptr_eq(&read, &shared))
            });
            if ours_or_gone {
                in_flight.remove(&key);
            }
        }
        outcome.map_err(|error| match &*error {
            StoreError::Unsupported(_) => StreamError::Unsupported,
            StoreError::Closed => StreamError::Store(StoreError::Closed),
            other => StreamError::Store(StoreError::backend(
                "a store read shared by several readers",
                other.to_string(),
            )),
        })
    }

    /// How many callers joined a read another started.
    pub(crate) fn joined(&self) -> u64 {
        self.joined.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Flight<T>>> {
        // The map holds no invariant a panic could break halfway.
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;

    /// A read that counts its starts and waits for the gate before answering `value`.
    fn gated(
        starts: &Arc<AtomicU64>,
        gate: &Arc<Semaphore>,
        value: u32,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<u32, StoreError>> {
        let (starts, gate) = (starts.clone(), gate.clone());
        move || {
            async move {
                starts.fetch_add(1, Ordering::SeqCst);
                let _permit = gate.acquire().await.map_err(|_| StoreError::Closed)?;
                Ok(value)
            }
            .boxed()
        }
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !done() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what} never happened"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_asking_at_once_share_one_read() {
        let flights: Arc<Flights<&str, u32>> = Arc::default();
        let starts = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let readers: Vec<_> = (0..20)
            .map(|_| {
                let (flights, read) = (flights.clone(), gated(&starts, &gate, 7));
                tokio::spawn(async move { flights.run("k", 3, read).await })
            })
            .collect();
        until("19 readers joining", || flights.joined() == 19).await;
        gate.add_permits(100);
        for reader in readers {
            assert_eq!(reader.await.unwrap().unwrap(), 7);
        }
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        // Finished, the read is not joined again: the next caller reads anew.
        assert_eq!(
            flights.run("k", 0, gated(&starts, &gate, 8)).await.unwrap(),
            8
        );
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_never_joins_a_read_older_than_what_it_may_see() {
        let flights: Arc<Flights<&str, u32>> = Arc::default();
        let starts = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let old = {
            let (flights, read) = (flights.clone(), gated(&starts, &gate, 1));
            tokio::spawn(async move { flights.run("k", 5, read).await })
        };
        until("the first read starting", || {
            starts.load(Ordering::SeqCst) == 1
        })
        .await;
        // A caller that knows of version 6 (an append the first read may miss) reads anew...
        let newer = {
            let (flights, read) = (flights.clone(), gated(&starts, &gate, 2));
            tokio::spawn(async move { flights.run("k", 6, read).await })
        };
        until("the second read starting", || {
            starts.load(Ordering::SeqCst) == 2
        })
        .await;
        // ...and one that knows of no more than version 6 joins that newer read.
        let joiner = {
            let (flights, read) = (flights.clone(), gated(&starts, &gate, 3));
            tokio::spawn(async move { flights.run("k", 6, read).await })
        };
        until("a reader joining", || flights.joined() == 1).await;
        gate.add_permits(100);
        assert_eq!(old.await.unwrap().unwrap(), 1);
        assert_eq!(newer.await.unwrap().unwrap(), 2);
        assert_eq!(joiner.await.unwrap().unwrap(), 2);
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_read_every_reader_left_is_dropped_not_kept_for_later_joiners() {
        let flights: Arc<Flights<&str, u32>> = Arc::default();
        let starts = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let abandoned = {
            let (flights, read) = (flights.clone(), gated(&starts, &gate, 1));
            tokio::spawn(async move { flights.run("k", 0, read).await })
        };
        until("the read starting", || starts.load(Ordering::SeqCst) == 1).await;
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled());
        // Its future (and whatever it held) is gone: the gate has no waiter left.
        assert_eq!(Arc::strong_count(&gate), 1);
        gate.add_permits(1);
        assert_eq!(
            flights.run("k", 0, gated(&starts, &gate, 2)).await.unwrap(),
            2
        );
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_read_fails_every_reader_that_shared_it() {
        let flights: Flights<&str, u32> = Flights::default();
        let failed = flights
            .run("k", 0, || async {
                Err(StoreError::backend("reading", "disk on fire"))
            })
            .await;
        assert!(matches!(failed, Err(StreamError::Store(_))));
        let unsupported = flights
            .run("k", 0, || async {
                Err(StoreError::Unsupported("durable streams"))
            })
            .await;
        assert!(matches!(unsupported, Err(StreamError::Unsupported)));
    }
}
