//! [`PostgresStore`]: the connection pool, the listener, and the [`Store`] implementation.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bgrun_core::stream::{
    AppendOutcome, CreateStreamOutcome, DeleteStreamOutcome, Millis, NewStream, StreamAppend,
    StreamId, StreamInfo, StreamMessage, StreamOffset,
};
use bgrun_core::{
    async_trait, CreateAndStart, CreateOutcome, Event, LeaseGrant, NewRun, RunFilter, RunId,
    RunPage, RunRecord, RunStatus, Store, StoreError, StoreResult, Timestamp, Transition,
    TransitionOutcome,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::broadcast;
use tokio_postgres::NoTls;

use crate::config::PostgresConfig;
use crate::fault::RetryPolicy;
use crate::finished::FinishedRuns;
use crate::migrate::{migrate, quoted};
use crate::notify::{spawn_listener, Channels, Notification};
use crate::writer::{Command, LeasedStart, Writers};
use crate::{cancel, events, lease, runs, streams};

/// A [`Store`] on PostgreSQL, shared by any number of replicas.
///
/// Cheap to clone: clones share the pool and the listener, which stops when the last clone is
/// dropped. See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

/// What a transition does to the lease of the owner it is fenced by.
#[derive(Debug, Clone, Copy)]
enum Leasing {
    Keep,
    /// Take it (lasting this long) before the transition.
    Take(Duration),
    /// Drop it once the transition is applied.
    Release,
}

/// What the operations share.
pub(crate) struct Inner {
    pub(crate) pool: Pool,
    schema: String,
    /// The quoted schema, substituted for `{s}` in statements.
    quoted_schema: String,
    pub(crate) channels: Channels,
    pub(crate) retry: RetryPolicy,
    notifications: broadcast::Sender<Notification>,
    listener: tokio::task::JoinHandle<()>,
    /// The group-commit writers of the hot writes (see [`crate::writer`]).
    pub(crate) writers: Writers,
    /// The set-based statements of the writers' fast path (see [`crate::bulk`]).
    pub(crate) bulk: crate::bulk::Sql,
    /// The durable streams' statements (see [`crate::streams`]).
    pub(crate) streams: streams::Sql,
    /// The appends waiting for their stream's next transaction (see [`crate::streams`]).
    pub(crate) stream_appends: streams::Queues,
    /// The finished runs it wrote or read (see [`crate::finished`]).
    pub(crate) finished: FinishedRuns,
}

impl Inner {
    /// `template` with every `{s}` replaced by the quoted schema name.
    pub(crate) fn sql(&self, template: &str) -> String {
        template.replace("{s}", &self.quoted_schema)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.inner.schema)
            .field("pool", &self.inner.pool.status())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, brings the schema up to date (safe with several replicas starting at once)
    /// and starts listening for notifications.
    ///
    /// Must be called within a tokio runtime.
    pub async fn connect(config: PostgresConfig) -> Result<PostgresStore, StoreError> {
        let pg_config = config.pg_config()?;
        let retry = RetryPolicy {
            max_retries: config.max_retries,
            base_delay: config.retry_base_delay,
        };
        let manager = Manager::from_config(
            pg_config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|error| StoreError::backend("building the PostgreSQL pool", error))?;
        migrate(&pool, &config.schema, &retry).await?;

        let channels = Channels::new(&config.schema);
        let (sender, _) = broadcast::channel(config.notification_capacity.max(1));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let listener = spawn_listener(pg_config, channels.clone(), sender.clone(), ready_tx);
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Err(StoreError::backend(
                    "opening the PostgreSQL LISTEN connection",
                    error,
                ))
            }
            Err(_) => return Err(StoreError::Closed),
        }
        let quoted_schema = quoted(&config.schema);
        Ok(Self {
            inner: Arc::new_cyclic(|weak| Inner {
                pool,
                bulk: crate::bulk::Sql::new(&quoted_schema),
                streams: streams::Sql::new(&quoted_schema),
                stream_appends: streams::Queues::default(),
                finished: FinishedRuns::new(crate::finished::MAX_BYTES),
                quoted_schema,
                schema: config.schema,
                channels,
                retry,
                notifications: sender,
                listener,
                writers: Writers::spawn(weak),
            }),
        })
    }

    /// Notifications of what any replica commits on this schema: runs' logs growing, cancels
    /// requested, durable streams changing, and [`Notification::Resync`] after the listener
    /// reconnected.
    ///
    /// A hint, not a log: on `Resync` or `RecvError::Lagged` re-read the store.
    pub fn notifications(&self) -> broadcast::Receiver<Notification> {
        self.inner.notifications.subscribe()
    }

    /// The schema holding this store's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// `append_events`, fenced by `owner` when given.
    async fn append(
        &self,
        run_id: &RunId,
        events: &[Event],
        owner: Option<&str>,
    ) -> StoreResult<()> {
        if events.is_empty() {
            // A no-op on a live run; a missing or ended run is told as for a non-empty append.
            return match runs::get(&self.inner, run_id).await? {
                None => Err(StoreError::RunNotFound(run_id.clone())),
                Some(run) if run.status.is_terminal() => Err(StoreError::RunEnded {
                    run_id: run_id.clone(),
                    status: run.status,
                }),
                Some(_) => Ok(()),
            };
        }
        events::check_contiguous(run_id, events)?;
        self.inner
            .writers
            .submit(run_id, |reply| Command::Append {
                run_id: run_id.clone(),
                events: events.to_vec(),
                fence: owner.map(str::to_owned),
                reply,
            })
            .await
    }

    /// `transition`, fenced by `owner` when given, with the lease changes `leasing` asks for.
    async fn transition_as(
        &self,
        run_id: &RunId,
        transition: &Transition,
        events: &[Event],
        owner: Option<&str>,
        leasing: Leasing,
    ) -> StoreResult<TransitionOutcome> {
        transition.from.check_transition(transition.to)?;
        events::check_contiguous(run_id, events)?;
        self.inner
            .writers
            .submit(run_id, |reply| Command::Transition {
                run_id: run_id.clone(),
                transition: Box::new(transition.clone()),
                events: events.to_vec(),
                fence: owner.map(str::to_owned),
                lease: match leasing {
                    Leasing::Take(ttl) => Some(ttl),
                    _ => None,
                },
                release: matches!(leasing, Leasing::Release),
                token: runs::write_token(),
                reply,
            })
            .await
    }

    /// Closes the pool and stops listening. Operations after this fail with
    /// [`StoreError::Closed`].
    pub fn close(&self) {
        self.inner.pool.close();
        self.inner.listener.abort();
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn notifications(&self) -> Option<bgrun_core::NotificationStream> {
        use futures::StreamExt;
        use tokio::sync::broadcast::error::RecvError;
        let receiver = self.inner.notifications.subscribe();
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            let notification = match receiver.recv().await {
                Ok(Notification::Durable {
                    run_id,
                    last_event_index,
                }) => bgrun_core::StoreNotification::Durable {
                    run_id,
                    last_event_index,
                },
                Ok(Notification::Cancel { run_id }) => {
                    bgrun_core::StoreNotification::Cancel { run_id }
                }
                Ok(Notification::Stream { id }) => bgrun_core::StoreNotification::Stream { id },
                // Fell behind the broadcast: what was dropped must be re-read from the tables.
                Ok(Notification::Resync) | Err(RecvError::Lagged(_)) => {
                    bgrun_core::StoreNotification::Resync
                }
                Err(RecvError::Closed) => return None,
            };
            Some((notification, receiver))
        });
        Some(stream.boxed())
    }

    async fn create_run(&self, run: NewRun) -> StoreResult<CreateOutcome> {
        let outcome = self
            .inner
            .writers
            .create(&self.inner, Box::new(run), None, runs::write_token())
            .await?;
        Ok(outcome.created)
    }

    async fn create_and_start_leased(
        &self,
        run: NewRun,
        started: &Event,
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<CreateAndStart> {
        // Checked before the create: a refused start must not leave the run created.
        if started.index() != 0 {
            return Err(StoreError::IndexConflict {
                run_id: run.run_id,
                expected: 0,
                got: started.index(),
            });
        }
        let start = LeasedStart {
            event: started.clone(),
            transition: Transition::new(RunStatus::Pending, RunStatus::Running),
            owner: owner.to_owned(),
            ttl,
        };
        self.inner
            .writers
            .create(
                &self.inner,
                Box::new(run),
                Some(Box::new(start)),
                runs::write_token(),
            )
            .await
    }

    async fn get_run(&self, run_id: &RunId) -> StoreResult<Option<RunRecord>> {
        if let Some(run) = self.inner.finished.get(run_id) {
            return Ok(Some(run));
        }
        let run = runs::get(&self.inner, run_id).await?;
        if let Some(run) = &run {
            self.inner.finished.remember(run);
        }
        Ok(run)
    }

    async fn list_runs(
        &self,
        filter: &RunFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<RunPage> {
        runs::list(&self.inner, filter, limit, cursor).await
    }

    async fn append_events(&self, run_id: &RunId, events: &[Event]) -> StoreResult<()> {
        self.append(run_id, events, None).await
    }

    async fn transition(
        &self,
        run_id: &RunId,
        transition: &Transition,
        events: &[Event],
    ) -> StoreResult<TransitionOutcome> {
        self.transition_as(run_id, transition, events, None, Leasing::Keep)
            .await
    }

    fn fences_writes(&self) -> bool {
        true
    }

    async fn append_events_fenced(
        &self,
        run_id: &RunId,
        events: &[Event],
        owner: &str,
    ) -> StoreResult<()> {
        self.append(run_id, events, Some(owner)).await
    }

    async fn transition_fenced(
        &self,
        run_id: &RunId,
        transition: &Transition,
        events: &[Event],
        owner: &str,
    ) -> StoreResult<TransitionOutcome> {
        self.transition_as(run_id, transition, events, Some(owner), Leasing::Keep)
            .await
    }

    async fn lease_and_transition(
        &self,
        run_id: &RunId,
        transition: &Transition,
        events: &[Event],
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<TransitionOutcome> {
        self.transition_as(run_id, transition, events, Some(owner), Leasing::Take(ttl))
            .await
    }

    async fn transition_and_release(
        &self,
        run_id: &RunId,
        transition: &Transition,
        events: &[Event],
        owner: &str,
    ) -> StoreResult<TransitionOutcome> {
        self.transition_as(run_id, transition, events, Some(owner), Leasing::Release)
            .await
    }

    async fn read_events(
        &self,
        run_id: &RunId,
        after: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        events::read(&self.inner, run_id, after, limit).await
    }

    async fn request_cancel(&self, run_id: &RunId, at: Timestamp) -> StoreResult<()> {
        cancel::request(&self.inner, run_id, at).await
    }

    async fn cancel_requested(&self, run_id: &RunId) -> StoreResult<bool> {
        cancel::requested(&self.inner, run_id).await
    }

    async fn acquire_lease(
        &self,
        run_id: &RunId,
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<LeaseGrant> {
        self.inner
            .writers
            .submit(run_id, |reply| Command::AcquireLease {
                run_id: run_id.clone(),
                owner: owner.to_owned(),
                ttl,
                reply,
            })
            .await
    }

    async fn renew_leases(&self, owner: &str, ttl: Duration) -> StoreResult<u64> {
        lease::renew(&self.inner, owner, ttl).await
    }

    async fn release_lease(&self, run_id: &RunId, owner: &str) -> StoreResult<()> {
        self.inner
            .writers
            .submit(run_id, |reply| Command::ReleaseLease {
                run_id: run_id.clone(),
                owner: owner.to_owned(),
                reply,
            })
            .await
    }

    async fn orphaned_runs(&self, limit: usize) -> StoreResult<Vec<RunRecord>> {
        lease::orphaned(&self.inner, limit).await
    }

    fn supports_streams(&self) -> bool {
        true
    }

    async fn create_stream(&self, stream: NewStream) -> StoreResult<CreateStreamOutcome> {
        streams::create(&self.inner, stream).await
    }

    async fn stream_info(&self, path: &str) -> StoreResult<Option<StreamInfo>> {
        streams::info_at(&self.inner, path).await
    }

    async fn append_stream(&self, path: &str, append: StreamAppend) -> StoreResult<AppendOutcome> {
        streams::append(&self.inner, path, append).await
    }

    async fn read_stream(
        &self,
        id: StreamId,
        after: StreamOffset,
        upto: Option<StreamOffset>,
        max_bytes: usize,
    ) -> StoreResult<Vec<StreamMessage>> {
        streams::read(&self.inner, id, after, upto, max_bytes).await
    }

    async fn delete_stream(
        &self,
        path: &str,
        only: Option<StreamId>,
    ) -> StoreResult<DeleteStreamOutcome> {
        streams::delete(&self.inner, path, only, None).await
    }

    async fn expire_stream(
        &self,
        path: &str,
        id: StreamId,
        now: Millis,
    ) -> StoreResult<DeleteStreamOutcome> {
        streams::delete(&self.inner, path, Some(id), Some(now)).await
    }

    async fn touch_stream(&self, id: StreamId, now: Millis) -> StoreResult<()> {
        streams::touch(&self.inner, id, now).await
    }

    async fn expired_streams(
        &self,
        now: Millis,
        limit: usize,
    ) -> StoreResult<Vec<(String, StreamId)>> {
        streams::expired(&self.inner, now, limit).await
    }
}
