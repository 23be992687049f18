//! The set-based fast path of a writer's batch: its common-case commands as one statement per
//! kind of command, all sent between `BEGIN` and `COMMIT` in one round trip.
//!
//! Executing a batch command by command costs a few round trips per command (savepoint, checks,
//! write), so a writer's throughput fell with the number of writes a run makes. Here a batch of
//! any size costs one round trip, as one autocommit `INSERT` does: the lease grants become one
//! upsert, the releases one `DELETE`, the transitions and the appends each one compare-and-set
//! `UPDATE` joined with the `INSERT` of their events (and, for a transition that ends a run, the
//! `DELETE` of its lease).
//!
//! Creates (a writer of their own takes them, so a batch holding one holds only creates) need no
//! transaction around them: their `INSERT .. SELECT FROM unnest(..)`, which also reads their
//! cancel intents, commits on its own ([`creates`]).
//!
//! Only commands whose outcome the set statements can decide take this path ([`is_fast`]): first
//! attempts without an idempotency key, one per run in the batch. A command the statements did
//! not apply (a lost compare-and-set, a taken id, a lease held elsewhere, a fenced write) goes on
//! to the command-by-command path, which finds out why and answers with the exact error. If the
//! server refuses any statement, it ignores the rest of the transaction and the pipelined
//! `COMMIT` rolls it back: every command goes that way too. If the connection fails with no
//! statement refused, the `COMMIT` may have been executed: the commands are retried as after a
//! `COMMIT` of unknown outcome.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use bgrun_core::{
    CreateAndStart, CreateOutcome, LeaseGrant, NewRun, RunId, RunStatus, TransitionOutcome,
};
use deadpool_postgres::Object;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::fault::Failure;
use crate::record::{from_row, storable, RUN_COLUMNS};
use crate::store::Inner;
use crate::writer::{Command, LeasedStart, Output, Queued};

/// The batch's commands split into the ones for the set statements and the others.
pub(crate) fn split(batch: Vec<Queued>) -> (Vec<Queued>, Vec<Queued>) {
    // Two commands for one run in one batch were sent concurrently; the command-by-command
    // path executes them one after the other (in the order received).
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for queued in &batch {
        *seen.entry(queued.command.run_id().as_str()).or_default() += 1;
    }
    let slow_runs: HashSet<String> = batch
        .iter()
        .filter(|queued| !is_fast(queued) || seen[queued.command.run_id().as_str()] > 1)
        .map(|queued| queued.command.run_id().as_str().to_owned())
        .collect();
    batch
        .into_iter()
        .partition(|queued| !slow_runs.contains(queued.command.run_id().as_str()))
}

/// Whether the set statements can decide `queued`'s outcome.
fn is_fast(queued: &Queued) -> bool {
    if queued.attempt > 0 {
        // A retry must first recognise an earlier attempt that did commit.
        return false;
    }
    match &queued.command {
        Command::Create { run, .. } => run.idempotency_key.is_none(),
        Command::Append { events, .. } => !events.is_empty(),
        Command::Transition { .. }
        | Command::AcquireLease { .. }
        | Command::ReleaseLease { .. } => true,
    }
}

/// What the set statements did.
pub(crate) struct Executed {
    /// Applied commands with their outputs, committed.
    pub(crate) applied: Vec<(Queued, Output)>,
    /// Commands the statements did not apply: for the command-by-command path.
    pub(crate) declined: Vec<Queued>,
}

/// Why the fast path did not commit.
pub(crate) enum Refused {
    /// A statement failed before `COMMIT` was sent: nothing was written, and every command may
    /// be executed again as a first attempt.
    Rolledback(Vec<Queued>),
    /// `COMMIT` failed: whether it took effect is unknown.
    Unknown(Vec<Queued>, Failure),
}

/// The columns of a run returned by an `UPDATE .. FROM`, qualified (the other table has a
/// `run_id` too).
fn qualified_run_columns() -> String {
    RUN_COLUMNS
        .split(", ")
        .map(|column| format!("r.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `NOT IN` list of the terminal statuses.
fn terminal_statuses() -> String {
    RunStatus::ALL
        .iter()
        .filter(|status| status.is_terminal())
        .map(|status| format!("'{}'", status.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The parameters of the create statement, one array per column.
#[derive(Default)]
struct Creates<'a> {
    run_ids: Vec<&'a str>,
    session_ids: Vec<&'a str>,
    user_ids: Vec<Option<&'a str>>,
    kinds: Vec<&'a str>,
    component_ids: Vec<&'a str>,
    parent_run_ids: Vec<Option<&'a str>>,
    inputs: Vec<&'a str>,
    params: Vec<String>,
    metadata: Vec<Option<String>>,
    created_at: Vec<i64>,
    tokens: Vec<&'a str>,
    /// For a run to start as well (`create_and_start_leased`): its lease's owner and ttl, the
    /// start's time and its event 0; `NULL`s for a run only created.
    owners: Vec<Option<&'a str>>,
    ttl_secs: Vec<Option<f64>>,
    started_at: Vec<Option<i64>>,
    event_types: Vec<Option<&'a str>>,
    event_jsons: Vec<Option<&'a str>>,
}

impl<'a> Creates<'a> {
    fn push(&mut self, run: &'a NewRun, start: Option<&'a LeasedStart>, token: &'a str) {
        self.owners.push(start.map(|start| start.owner.as_str()));
        self.ttl_secs
            .push(start.map(|start| start.ttl.as_secs_f64()));
        self.started_at.push(start.map(|start| start.transition.at));
        self.event_types
            .push(start.map(|start| start.event.event_type()));
        self.event_jsons.push(start.map(|start| start.event.json()));
        self.run_ids.push(run.run_id.as_str());
        self.session_ids.push(run.session_id.as_str());
        self.user_ids.push(run.user_id.as_deref());
        self.kinds.push(run.target.kind.as_str());
        self.component_ids.push(&run.target.component_id);
        self.parent_run_ids
            .push(run.parent_run_id.as_ref().map(RunId::as_str));
        self.inputs.push(&run.input);
        self.params
            .push(serde_json::Value::Object(run.params.clone()).to_string());
        self.metadata
            .push(run.metadata.as_ref().map(serde_json::Value::to_string));
        self.created_at.push(run.created_at);
        self.tokens.push(token);
    }
}

#[derive(Default)]
struct Leases<'a> {
    run_ids: Vec<&'a str>,
    owners: Vec<&'a str>,
    ttl_secs: Vec<f64>,
}

#[derive(Default)]
struct Releases<'a> {
    run_ids: Vec<&'a str>,
    owners: Vec<&'a str>,
}

#[derive(Default)]
struct Transitions<'a> {
    run_ids: Vec<&'a str>,
    from: Vec<&'a str>,
    to: Vec<&'a str>,
    content: Vec<Option<Cow<'a, str>>>,
    error: Vec<Option<Cow<'a, str>>>,
    stage: Vec<Option<&'a str>>,
    at: Vec<i64>,
    tokens: Vec<&'a str>,
    fences: Vec<Option<&'a str>>,
    first: Vec<Option<i64>>,
    last: Vec<Option<i64>>,
    release: Vec<bool>,
}

#[derive(Default)]
struct Appends<'a> {
    run_ids: Vec<&'a str>,
    fences: Vec<Option<&'a str>>,
    first: Vec<i64>,
    last: Vec<i64>,
}

/// Events to insert, one array per column.
#[derive(Default)]
struct Events<'a> {
    run_ids: Vec<&'a str>,
    indices: Vec<i64>,
    types: Vec<&'a str>,
    jsons: Vec<&'a str>,
}

impl<'a> Events<'a> {
    fn extend(
        &mut self,
        run_id: &'a RunId,
        events: &'a [bgrun_core::Event],
    ) -> Result<(), Failure> {
        for event in events {
            self.run_ids.push(run_id.as_str());
            self.indices.push(crate::record::to_stored(event.index())?);
            self.types.push(event.event_type());
            self.jsons.push(event.json());
        }
        Ok(())
    }
}

/// Executes `fast` (from [`split`]) in one transaction, in one round trip.
pub(crate) async fn execute(
    inner: &Inner,
    client: &Object,
    fast: Vec<Queued>,
) -> Result<Executed, Refused> {
    let pipelined = if fast
        .iter()
        .all(|queued| matches!(queued.command, Command::Create { .. }))
    {
        creates(inner, client, &fast).await
    } else {
        statements(inner, client, &fast).await
    };
    match pipelined {
        Pipelined::Committed(rows) => Ok(rows.sort(fast)),
        Pipelined::RolledBack(failure) => {
            tracing::debug!(error = ?failure, commands = fast.len(), "set-based batch failed; executing it command by command");
            Err(Refused::Rolledback(fast))
        }
        Pipelined::Unknown(failure) => Err(Refused::Unknown(fast, failure)),
    }
}

/// How a pipelined batch ended.
enum Pipelined {
    /// Every statement succeeded and `COMMIT` answered.
    Committed(Box<Returned>),
    /// Nothing was committed: a statement was refused by the server (which then aborts the
    /// transaction, so the pipelined `COMMIT` rolls it back), or nothing was sent.
    RolledBack(Failure),
    /// The connection failed with no statement refused: the `COMMIT` may have been executed.
    Unknown(Failure),
}

/// Whether the server itself reported `error` (so the statement, and its transaction, failed),
/// rather than the connection losing the answer.
fn refused_by_server(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some()
}

/// What the statements returned, keyed by run id.
#[derive(Default)]
struct Returned {
    /// The runs created (as asked: their record is the one [`NewRun::into_record`] makes).
    created: HashSet<String>,
    /// The created runs with a cancel intent.
    cancelled: HashSet<String>,
    /// The created runs also started (and leased).
    started: HashSet<String>,
    leased: HashSet<String>,
    transitioned: HashMap<String, Row>,
    appended: HashSet<String>,
}

impl Returned {
    /// Pairs each command with its output, or declines it.
    fn sort(mut self, fast: Vec<Queued>) -> Executed {
        let mut applied = Vec::with_capacity(fast.len());
        let mut declined = Vec::new();
        for queued in fast {
            let id = queued.command.run_id().as_str();
            let output = match &queued.command {
                Command::Create { run, start, .. } => self.created.contains(id).then(|| {
                    let created = NewRun::clone(run).into_record();
                    let started = match start {
                        Some(start) if self.started.contains(id) => {
                            let mut running = created.clone();
                            running.status = RunStatus::Running;
                            running.updated_at = start.transition.at;
                            running.last_event_index = Some(0);
                            Some(running)
                        }
                        _ => None,
                    };
                    Ok(Output::Created(Box::new(CreateAndStart {
                        created: CreateOutcome::Created {
                            run: created,
                            cancel_requested: self.cancelled.contains(id),
                        },
                        started,
                    })))
                }),
                Command::AcquireLease { .. } => self
                    .leased
                    .contains(id)
                    .then_some(Ok(Output::Lease(LeaseGrant::Granted))),
                Command::ReleaseLease { .. } => Some(Ok(Output::Unit)),
                Command::Transition { .. } => self.transitioned.remove(id).map(|row| {
                    from_row(&row).map(|record| {
                        Output::Transitioned(TransitionOutcome::Applied(Box::new(record)))
                    })
                }),
                Command::Append { .. } => self.appended.contains(id).then_some(Ok(Output::Unit)),
            };
            match output {
                Some(Ok(output)) => applied.push((queued, output)),
                // A row that does not decode: the command-by-command path reports it.
                Some(Err(_)) | None => declined.push(queued),
            }
        }
        Executed { applied, declined }
    }
}

/// `BEGIN`, every statement and `COMMIT`, pipelined: one round trip.
async fn statements(inner: &Inner, client: &Object, fast: &[Queued]) -> Pipelined {
    match pipeline(inner, client, fast).await {
        Ok(pipeline) => pipeline,
        Err(failure) => Pipelined::RolledBack(failure),
    }
}

/// [`statements`]; `Err` when nothing was sent.
async fn pipeline(inner: &Inner, client: &Object, fast: &[Queued]) -> Result<Pipelined, Failure> {
    let mut leases = Leases::default();
    let mut releases = Releases::default();
    let mut transitions = Transitions::default();
    let mut transition_events = Events::default();
    let mut appends = Appends::default();
    let mut append_events = Events::default();
    for queued in fast {
        match &queued.command {
            // Not batched with other writes (see [`creates`]): declined, if one ever is.
            Command::Create { .. } => {}
            Command::AcquireLease {
                run_id, owner, ttl, ..
            } => {
                leases.run_ids.push(run_id.as_str());
                leases.owners.push(owner);
                leases.ttl_secs.push(ttl.as_secs_f64());
            }
            Command::ReleaseLease { run_id, owner, .. } => {
                releases.run_ids.push(run_id.as_str());
                releases.owners.push(owner);
            }
            Command::Transition {
                run_id,
                transition,
                events,
                fence,
                lease,
                release,
                token,
                ..
            } => {
                // The lease is taken by the lease statement, which runs first; if it is not
                // granted, the transition's fence check fails and the command is declined.
                if let (Some(ttl), Some(owner)) = (lease, fence) {
                    leases.run_ids.push(run_id.as_str());
                    leases.owners.push(owner);
                    leases.ttl_secs.push(ttl.as_secs_f64());
                }
                transitions.release.push(*release && fence.is_some());
                transitions.run_ids.push(run_id.as_str());
                transitions.from.push(transition.from.as_str());
                transitions.to.push(transition.to.as_str());
                transitions
                    .content
                    .push(transition.content.as_deref().map(storable));
                transitions
                    .error
                    .push(transition.error.as_deref().map(storable));
                transitions
                    .stage
                    .push(transition.cancellation_stage.map(|stage| stage.as_str()));
                transitions.at.push(transition.at);
                transitions.tokens.push(token);
                transitions.fences.push(fence.as_deref());
                transitions.first.push(
                    events
                        .first()
                        .map(|event| crate::record::to_stored(event.index()))
                        .transpose()?,
                );
                transitions.last.push(
                    events
                        .last()
                        .map(|event| crate::record::to_stored(event.index()))
                        .transpose()?,
                );
                transition_events.extend(run_id, events)?;
            }
            Command::Append {
                run_id,
                events,
                fence,
                ..
            } => {
                let (Some(first), Some(last)) = (events.first(), events.last()) else {
                    continue;
                };
                appends.run_ids.push(run_id.as_str());
                appends.fences.push(fence.as_deref());
                appends.first.push(crate::record::to_stored(first.index())?);
                appends.last.push(crate::record::to_stored(last.index())?);
                append_events.extend(run_id, events)?;
            }
        }
    }

    // Prepared once per connection (cached): afterwards every statement goes out at once.
    let sql = &inner.bulk;
    let lease = client.prepare_cached(&sql.lease).await?;
    let release = client.prepare_cached(&sql.release).await?;
    let transition = client.prepare_cached(&sql.transition).await?;
    let append = client.prepare_cached(&sql.append).await?;

    let now = bgrun_core::now();
    let transition_params: [&(dyn ToSql + Sync); 16] = [
        &transitions.run_ids,
        &transitions.from,
        &transitions.to,
        &transitions.content,
        &transitions.error,
        &transitions.stage,
        &transitions.at,
        &transitions.tokens,
        &transitions.fences,
        &transitions.first,
        &transitions.last,
        &transition_events.run_ids,
        &transition_events.indices,
        &transition_events.types,
        &transition_events.jsons,
        &transitions.release,
    ];
    let append_params: [&(dyn ToSql + Sync); 9] = [
        &appends.run_ids,
        &appends.fences,
        &appends.first,
        &appends.last,
        &now,
        &append_events.run_ids,
        &append_events.indices,
        &append_events.types,
        &append_events.jsons,
    ];
    // `join!` polls in order, and a statement is queued on the connection when first polled:
    // they reach the server in this order, in one round trip. After a refused statement the
    // server ignores the rest of the transaction, and its `COMMIT` rolls back.
    let (begun, leased, released, transitioned, appended, committed) = futures::join!(
        client.batch_execute(concat!("BEGIN; ", crate::writer::by_key!())),
        async {
            if leases.run_ids.is_empty() {
                return None;
            }
            Some(
                client
                    .query(&lease, &[&leases.run_ids, &leases.owners, &leases.ttl_secs])
                    .await,
            )
        },
        async {
            if releases.run_ids.is_empty() {
                return None;
            }
            Some(
                client
                    .execute(&release, &[&releases.run_ids, &releases.owners])
                    .await,
            )
        },
        async {
            if transitions.run_ids.is_empty() {
                return None;
            }
            Some(client.query(&transition, &transition_params).await)
        },
        async {
            if appends.run_ids.is_empty() {
                return None;
            }
            Some(client.query(&append, &append_params).await)
        },
        client.batch_execute("COMMIT"),
    );
    let errors = [
        begun.as_ref().err(),
        leased.as_ref().and_then(|result| result.as_ref().err()),
        released.as_ref().and_then(|result| result.as_ref().err()),
        transitioned
            .as_ref()
            .and_then(|result| result.as_ref().err()),
        appended.as_ref().and_then(|result| result.as_ref().err()),
    ];
    if let Some(refused) = errors
        .iter()
        .flatten()
        .find(|error| refused_by_server(error))
    {
        return Ok(Pipelined::RolledBack(Failure::Batch {
            transient: crate::fault::is_transient_db(refused),
            why: crate::fault::describe(refused),
        }));
    }
    if let Some(lost) = errors.into_iter().flatten().next() {
        return Ok(Pipelined::Unknown(Failure::Batch {
            transient: crate::fault::is_transient_db(lost),
            why: crate::fault::describe(lost),
        }));
    }
    if let Err(error) = committed {
        return Ok(Pipelined::Unknown(Failure::Db(error)));
    }
    // Every statement succeeded (checked above): their rows.
    let rows = |result: Option<Result<Vec<Row>, tokio_postgres::Error>>| {
        result.and_then(Result::ok).unwrap_or_default()
    };
    let ids = |result| -> HashSet<String> {
        rows(result)
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect()
    };
    let by_id = |result| -> HashMap<String, Row> {
        rows(result)
            .into_iter()
            .map(|row| (row.get::<_, String>("run_id"), row))
            .collect()
    };
    Ok(Pipelined::Committed(Box::new(Returned {
        leased: ids(leased),
        transitioned: by_id(transitioned),
        appended: ids(appended),
        ..Returned::default()
    })))
}

/// A batch of creates: one autocommit statement that inserts the runs and reads their cancel
/// intents, and for the runs to start as well (`create_and_start_leased`) with no intent, stores
/// them `RUNNING` with their lease and event 0.
///
/// `request_cancel` records an intent and notifies in the same transaction. The statement reads
/// the intents committed before it began; the notification of one committed since is sent on
/// that commit and reaches this store's listener, and through it the engine, which cancels the
/// run if it is executing and otherwise keeps the cancel for the run's launch. (A read after the
/// `INSERT` committed, or a transaction and a lock around the two, would cost more statements
/// of each create's round trip, and decide nothing more.)
async fn creates(inner: &Inner, client: &Object, fast: &[Queued]) -> Pipelined {
    match creates_pipeline(inner, client, fast).await {
        Ok(pipelined) => pipelined,
        Err(failure) => Pipelined::RolledBack(failure),
    }
}

/// [`creates`]; `Err` when nothing was sent.
async fn creates_pipeline(
    inner: &Inner,
    client: &Object,
    fast: &[Queued],
) -> Result<Pipelined, Failure> {
    let mut creates = Creates::default();
    for queued in fast {
        if let Command::Create {
            run, start, token, ..
        } = &queued.command
        {
            creates.push(run, start.as_deref(), token);
        }
    }
    let inserted = if let [run_id] = creates.run_ids[..] {
        // One run (the common case, a create made in its caller's task): plain parameters,
        // which PostgreSQL plans faster than a set from arrays.
        let insert = client.prepare_cached(&inner.bulk.create_one).await?;
        let params: [&(dyn ToSql + Sync); 16] = [
            &run_id,
            &creates.session_ids[0],
            &creates.user_ids[0],
            &creates.kinds[0],
            &creates.component_ids[0],
            &creates.parent_run_ids[0],
            &creates.inputs[0],
            &creates.params[0],
            &creates.metadata[0],
            &creates.created_at[0],
            &creates.tokens[0],
            &creates.owners[0],
            &creates.ttl_secs[0],
            &creates.started_at[0],
            &creates.event_types[0],
            &creates.event_jsons[0],
        ];
        client.query(&insert, &params).await
    } else {
        let insert = client.prepare_cached(&inner.bulk.create).await?;
        let params: [&(dyn ToSql + Sync); 16] = [
            &creates.run_ids,
            &creates.session_ids,
            &creates.user_ids,
            &creates.kinds,
            &creates.component_ids,
            &creates.parent_run_ids,
            &creates.inputs,
            &creates.params,
            &creates.metadata,
            &creates.created_at,
            &creates.tokens,
            &creates.owners,
            &creates.ttl_secs,
            &creates.started_at,
            &creates.event_types,
            &creates.event_jsons,
        ];
        client.query(&insert, &params).await
    };
    let inserted = match inserted {
        Ok(rows) => rows,
        // The statement failed as a whole: nothing was written.
        Err(error) if refused_by_server(&error) => {
            return Ok(Pipelined::RolledBack(Failure::Batch {
                transient: crate::fault::is_transient_db(&error),
                why: crate::fault::describe(&error),
            }))
        }
        Err(error) => return Ok(Pipelined::Unknown(Failure::Db(error))),
    };
    Ok(Pipelined::Committed(Box::new(Returned {
        created: inserted.iter().map(|row| row.get::<_, String>(0)).collect(),
        cancelled: inserted
            .iter()
            .filter(|row| row.get::<_, bool>(1))
            .map(|row| row.get::<_, String>(0))
            .collect(),
        started: inserted
            .iter()
            .filter(|row| row.get::<_, bool>(2))
            .map(|row| row.get::<_, String>(0))
            .collect(),
        ..Returned::default()
    })))
}

/// The statements, in the store's schema (made once, when the store opens).
pub(crate) struct Sql {
    create: String,
    create_one: String,
    lease: String,
    release: String,
    transition: String,
    append: String,
}

impl Sql {
    pub(crate) fn new(quoted_schema: &str) -> Self {
        let in_schema = |template: &str| template.replace("{s}", quoted_schema);
        let r_columns = qualified_run_columns();
        let terminal = terminal_statuses();
        // The run ids whose lease `t.fence` holds, share-locked until the commit (as
        // `lease::check_fence` does for one write).
        // Locked in run id order, as every writer and the renewal lock leases: no cycle.
        let fenced = "fenced AS (SELECT l.run_id FROM {s}.leases l JOIN t \
             ON l.run_id = t.run_id AND l.owner = t.fence WHERE l.run_id = ANY($1::text[]) \
             ORDER BY l.run_id FOR SHARE OF l)";
        let insert_events = "INSERT INTO {s}.events (run_id, event_index, event_type, json) \
             SELECT e.run_id, e.event_index, e.event_type, e.json FROM unnest";
        // After `asked`, the runs to create (`owner` set for one to start and lease as well,
        // unless a cancel intent waits for it): inserted `PENDING` or `RUNNING` with event 0,
        // its lease taken on the database's clock, in one statement. With no `ON CONFLICT`
        // (11 of its 100 us in pg_stat_statements): a run id taken already (a client's choice)
        // fails the statement, nothing is written, and the command-by-command path reports
        // `RunExists`. No lease can be in the way: one is taken only for a run that exists.
        let start_created = "plan AS (SELECT asked.*, \
             asked.owner IS NOT NULL AND NOT asked.cancelled AS starts FROM asked), \
             created AS (INSERT INTO {s}.runs (run_id, session_id, user_id, kind, \
             component_id, parent_run_id, status, input, params, metadata, created_at, \
             updated_at, write_token, last_event_index) \
             SELECT plan.run_id, plan.session_id, plan.user_id, plan.kind, \
             plan.component_id, plan.parent_run_id, \
             CASE WHEN plan.starts THEN 'RUNNING' ELSE 'PENDING' END, plan.input, \
             plan.params, plan.metadata, plan.created_at, \
             CASE WHEN plan.starts THEN plan.started_at ELSE plan.created_at END, plan.token, \
             CASE WHEN plan.starts THEN 0 END FROM plan \
             RETURNING run_id, status = 'RUNNING' AS started), \
             leased AS (INSERT INTO {s}.leases (run_id, owner, expires_at) \
             SELECT plan.run_id, plan.owner, \
             clock_timestamp() + make_interval(secs => plan.secs) \
             FROM created c JOIN plan ON plan.run_id = c.run_id WHERE c.started), \
             stored AS (INSERT INTO {s}.events (run_id, event_index, event_type, json) \
             SELECT plan.run_id, 0, plan.event_type, plan.json \
             FROM created c JOIN plan ON plan.run_id = c.run_id WHERE c.started) \
             SELECT c.run_id, plan.cancelled, c.started \
             FROM created c JOIN plan ON plan.run_id = c.run_id";
        Self {
            create: in_schema(&format!(
                "WITH asked AS (SELECT u.*, EXISTS (SELECT 1 FROM {{s}}.cancel_intents i \
                 WHERE i.run_id = u.run_id) AS cancelled \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                 $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::text[], \
                 $12::text[], $13::float8[], $14::bigint[], $15::text[], $16::text[]) \
                 AS u(run_id, session_id, user_id, kind, component_id, parent_run_id, input, \
                 params, metadata, created_at, token, owner, secs, started_at, event_type, \
                 json)), \
                 {start_created}"
            )),
            create_one: in_schema(&format!(
                "WITH asked AS (SELECT $1::text AS run_id, $2::text AS session_id, \
                 $3::text AS user_id, $4::text AS kind, $5::text AS component_id, \
                 $6::text AS parent_run_id, $7::text AS input, $8::text AS params, \
                 $9::text AS metadata, $10::bigint AS created_at, $11::text AS token, \
                 $12::text AS owner, $13::float8 AS secs, $14::bigint AS started_at, \
                 $15::text AS event_type, $16::text AS json, EXISTS (SELECT 1 \
                 FROM {{s}}.cancel_intents i WHERE i.run_id = $1) AS cancelled), \
                 {start_created}"
            )),
            lease: in_schema(
                "INSERT INTO {s}.leases AS lease (run_id, owner, expires_at) \
                 SELECT t.run_id, t.owner, clock_timestamp() + make_interval(secs => t.secs) \
                 FROM unnest($1::text[], $2::text[], $3::float8[]) AS t(run_id, owner, secs) \
                 WHERE EXISTS (SELECT 1 FROM {s}.runs r WHERE r.run_id = t.run_id) \
                 ON CONFLICT (run_id) DO UPDATE SET owner = EXCLUDED.owner, \
                 expires_at = EXCLUDED.expires_at \
                 WHERE lease.owner = EXCLUDED.owner OR lease.expires_at <= clock_timestamp() \
                 RETURNING run_id",
            ),
            release: in_schema(
                "DELETE FROM {s}.leases AS l USING unnest($1::text[], $2::text[]) \
                 AS t(run_id, owner) WHERE l.run_id = t.run_id AND l.run_id = ANY($1::text[]) \
                 AND l.owner = t.owner",
            ),
            transition: in_schema(&format!(
                "WITH t AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], \
                 $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[], $9::text[], \
                 $10::bigint[], $11::bigint[], $16::boolean[]) AS t(run_id, from_status, \
                 to_status, content, error, stage, at, token, fence, first_index, last_index, \
                 release)), \
                 {fenced}, \
                 changed AS (UPDATE {{s}}.runs AS r SET status = t.to_status, \
                 content = COALESCE(t.content, r.content), error = COALESCE(t.error, r.error), \
                 cancellation_stage = COALESCE(t.stage, r.cancellation_stage), \
                 updated_at = t.at, write_token = t.token, \
                 last_event_index = COALESCE(t.last_index, r.last_event_index) \
                 FROM t WHERE r.run_id = t.run_id AND r.run_id = ANY($1::text[]) \
                 AND r.status = t.from_status \
                 AND (t.first_index IS NULL \
                      OR COALESCE(r.last_event_index, -1) + 1 = t.first_index) \
                 AND (t.fence IS NULL OR t.run_id IN (SELECT run_id FROM fenced)) \
                 RETURNING {r_columns}), \
                 stored AS ({insert_events}($12::text[], $13::bigint[], $14::text[], \
                 $15::text[]) AS e(run_id, event_index, event_type, json) \
                 WHERE e.run_id IN (SELECT run_id FROM changed)), \
                 released AS (DELETE FROM {{s}}.leases AS l USING changed, t \
                 WHERE l.run_id = changed.run_id AND l.run_id = ANY($1::text[]) \
                 AND t.run_id = changed.run_id AND t.release \
                 AND l.owner = t.fence), \
                 forgotten AS (DELETE FROM {{s}}.cancel_intents AS i \
                 WHERE i.run_id = ANY($1::text[]) AND i.run_id IN \
                 (SELECT run_id FROM changed WHERE status = 'CANCELLED')) \
                 SELECT * FROM changed"
            )),
            append: in_schema(&format!(
                "WITH t AS (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], \
                 $4::bigint[]) AS t(run_id, fence, first_index, last_index)), \
                 {fenced}, \
                 advanced AS (UPDATE {{s}}.runs AS r SET last_event_index = t.last_index, \
                 updated_at = $5 FROM t WHERE r.run_id = t.run_id AND r.run_id = ANY($1::text[]) \
                 AND r.status NOT IN ({terminal}) \
                 AND COALESCE(r.last_event_index, -1) + 1 = t.first_index \
                 AND (t.fence IS NULL OR t.run_id IN (SELECT run_id FROM fenced)) \
                 RETURNING r.run_id), \
                 stored AS ({insert_events}($6::text[], $7::bigint[], $8::text[], \
                 $9::text[]) AS e(run_id, event_index, event_type, json) \
                 WHERE e.run_id IN (SELECT run_id FROM advanced)) \
                 SELECT run_id FROM advanced"
            )),
        }
    }
}
