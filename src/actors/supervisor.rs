//! The supervisor: the epoch clock and the batch runs.
//!
//! In: `StartEpoch` (from its timer, or on demand), `Sealed` (from the
//! Recorder), `WaitServed`. Out: barriers to every source, a recompute when an
//! epoch is sealed, `SnapshotReady` to Serving. One batch run at a time:
//! seals that arrive during a run coalesce into one run for the newest. It
//! owns the pool of recompute workers; a run that fails because a worker
//! panicked (the worker is restarted) is tried again, up to
//! [`RUN_ATTEMPTS`] times, while the served snapshot stays. With
//! `master.parquet_dir`, it also exports each sealed epoch as Parquet, one
//! export at a time on the blocking pool (seals during one coalesce, and a
//! failed one is tried again at the next seal). With `batch.engine =
//! "spark"`, a run is the Spark job on the epoch's export instead
//! ([`crate::spark::run_batch`]), started once the export covers the epoch;
//! it fails by name (not tried again before the next seal) and the served
//! snapshot stays.

use super::recompute::{Batch, RunMode, recompute};
use super::recompute_worker::Pool;
use super::recorder::{IdIndexReady, Sealed};
use super::serving::{Serving, SnapshotReady};
use super::source::SourceHandle;
use crate::config::{BatchEngine, Config};
use crate::event::Epoch;
use crate::metrics::Shared;
use crate::store::{DataPaths, SealedEpoch};
use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, MessageResult, Recipient,
    WrapFuture,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::oneshot;

/// How many times a batch run is tried when a worker panics in it.
pub const RUN_ATTEMPTS: u32 = 3;
/// How long a failed run waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Starts a new epoch: every source finishes the current one with a barrier.
/// Answers the epoch being finished. With [`RunMode::Full`], the next batch
/// run computes every view from the whole master dataset.
#[derive(Message)]
#[rtype(result = "Epoch")]
pub struct StartEpoch(pub RunMode);

/// Answers once a snapshot covering `.0` is being served (or a run for it failed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WaitServed(
    pub Epoch,
    pub oneshot::Sender<Result<Epoch, RecomputeFailed>>,
);

/// The state of the batch runs (for status).
#[derive(Message)]
#[rtype(result = "RunStatus")]
pub struct RunQuery;

/// A batch run failed; it is tried again if a worker panicked, else the next
/// sealed epoch tries again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("batch run for epoch {epoch} failed: {reason}")]
pub struct RecomputeFailed {
    /// The epoch the run was for.
    pub epoch: Epoch,
    /// Why, in one line.
    pub reason: String,
    /// Whether trying again may succeed (a panic, not the disk or the data).
    pub retryable: bool,
}

/// The batch runs' state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStatus {
    /// The open epoch.
    pub epoch: Epoch,
    /// Whether a run is going on.
    pub running: bool,
    /// The newest sealed epoch.
    pub sealed: Option<Epoch>,
    /// The newest epoch served by a snapshot.
    pub served: Option<Epoch>,
    /// Runs that failed since start.
    pub failures: u64,
}

/// A finished run (sent to self).
#[derive(Message)]
#[rtype(result = "()")]
struct RunFinished(SealedEpoch, RunMode, Result<Batch, RecomputeFailed>);

/// A finished export to `master.parquet_dir` (sent to self).
#[derive(Message)]
#[rtype(result = "()")]
struct ExportFinished(Result<crate::export::Exported, String>);

/// The supervisor's state.
pub struct Supervisor {
    paths: DataPaths,
    config: Arc<Config>,
    /// The recompute workers that carry out the batch runs.
    pool: Pool,
    /// The epoch whose run failed last, and its failed tries so far; none
    /// once a run succeeds or a failure is given up on.
    failed_tries: Option<(Epoch, u32)>,
    /// The open epoch: sources stamp new events with it.
    epoch: Epoch,
    sources: Vec<SourceHandle>,
    serving: Addr<Serving>,
    /// The Recorder, told of each run's id index.
    id_index_to: Recipient<IdIndexReady>,
    running: bool,
    /// The next run computes every view from the whole master dataset.
    full_next: bool,
    /// The newest sealed epoch no run has covered yet.
    pending: Option<SealedEpoch>,
    sealed: Option<Epoch>,
    served: Option<Epoch>,
    waiters: Vec<(Epoch, oneshot::Sender<Result<Epoch, RecomputeFailed>>)>,
    /// Run durations, rates and failures, published for scrapes.
    shared: Arc<Shared>,
    /// When set, a new epoch starts this often.
    interval: Option<Duration>,
    /// Messages handled (made durable or rejected) when the timer last
    /// started an epoch: an idle tick seals nothing and runs no batch.
    handled_at_tick: u64,
    /// An export to `master.parquet_dir` is going on.
    exporting: bool,
    /// An epoch was sealed during it: export again when it ends.
    export_again: bool,
    /// Set when the supervisor goes: an export going on stops.
    export_stop: Arc<std::sync::atomic::AtomicBool>,
    /// The newest epoch an export of this process wrote or found whole: the
    /// next export reads no file up to it.
    exported_upto: Option<Epoch>,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.export_stop.store(true, Ordering::Relaxed);
    }
}

impl Supervisor {
    /// A supervisor whose open epoch is `epoch`, with the newest seal, the
    /// snapshot and its id index found at start. A seal newer than the
    /// snapshot is recomputed at once.
    #[expect(
        clippy::too_many_arguments,
        reason = "one constructor wires the whole system once"
    )]
    pub fn new(
        paths: DataPaths,
        config: Arc<Config>,
        pool: Pool,
        epoch: Epoch,
        sources: Vec<SourceHandle>,
        serving: Addr<Serving>,
        id_index_to: Recipient<IdIndexReady>,
        (last_sealed, served): (Option<SealedEpoch>, Option<Epoch>),
        interval: Option<Duration>,
        shared: Arc<Shared>,
    ) -> Supervisor {
        let pending =
            last_sealed.filter(|sealed| served.is_none_or(|served| sealed.epoch > served));
        Supervisor {
            paths,
            config,
            pool,
            failed_tries: None,
            epoch,
            sources,
            serving,
            id_index_to,
            running: false,
            full_next: false,
            pending,
            sealed: last_sealed.map(|sealed| sealed.epoch),
            served,
            waiters: Vec::new(),
            shared,
            interval,
            handled_at_tick: 0,
            exporting: false,
            export_again: false,
            export_stop: Arc::default(),
            exported_upto: None,
        }
    }

    /// Messages handled so far: records made durable and rejections.
    fn handled(&self) -> u64 {
        self.shared.durable_records.load(Ordering::Relaxed)
            + self
                .shared
                .rejected_total(&self.sources)
                .iter()
                .sum::<u64>()
    }

    fn start_epoch(&mut self) -> Epoch {
        let finished = self.epoch;
        self.epoch = finished.next();
        for source in &self.sources {
            if !source.barrier(finished) {
                tracing::error!(source = %source.name, "source stopped; epochs can no longer be sealed");
            }
        }
        finished
    }

    fn maybe_run(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            return;
        }
        let Some(sealed) = self.pending.take() else {
            return;
        };
        if let BatchEngine::Spark {
            submit, timeout, ..
        } = &self.config.batch.engine
        {
            // Spark reads the epoch from `master.parquet_dir`: the run waits
            // for the export that covers it (its end calls this again).
            if self
                .exported_upto
                .is_none_or(|exported| exported < sealed.epoch)
            {
                self.pending = Some(sealed);
                return;
            }
            self.running = true;
            let (config, submit, timeout) = (Arc::clone(&self.config), submit.clone(), *timeout);
            let dir = (self.config.batch.engine)
                .spark_dir(&self.config.data_dir)
                .unwrap_or_default();
            tracing::info!(epoch = %sealed.epoch, records = sealed.next_seq.0, "batch run started on Spark");
            let run = async move {
                let outcome = crate::spark::run_batch(config, sealed, (&submit, &dir), timeout)
                    .await
                    .map_err(|err| RecomputeFailed {
                        epoch: sealed.epoch,
                        reason: crate::error_chain(&err),
                        retryable: false,
                    });
                RunFinished(sealed, RunMode::Full, outcome)
            };
            ctx.spawn(
                run.into_actor(self)
                    .map(|finished, _, ctx| ctx.notify(finished)),
            );
            return;
        }
        self.running = true;
        // Asked for until a full run succeeds: a failed one does not use it up.
        let mode = if self.full_next {
            RunMode::Full
        } else {
            RunMode::Incremental
        };
        let (paths, config) = (self.paths.clone(), Arc::clone(&self.config));
        let shared = Arc::clone(&self.shared);
        let pool = self.pool.clone();
        shared.recompute_progress.start(sealed.next_seq.0);
        tracing::info!(epoch = %sealed.epoch, records = sealed.next_seq.0, ?mode, "batch run started");
        let run = async move {
            let outcome = tokio::task::spawn_blocking(move || {
                recompute(
                    &paths,
                    &config,
                    sealed,
                    mode,
                    &shared.recompute_progress,
                    &pool,
                )
            })
            .await;
            let outcome = match outcome {
                Ok(Ok(batch)) => Ok(batch),
                Ok(Err(err)) => Err(RecomputeFailed {
                    epoch: sealed.epoch,
                    reason: crate::error_chain(&err),
                    retryable: err.is_retryable(),
                }),
                Err(join) => Err(RecomputeFailed {
                    epoch: sealed.epoch,
                    reason: format!("the run panicked: {join}"),
                    retryable: true,
                }),
            };
            RunFinished(sealed, mode, outcome)
        };
        ctx.spawn(
            run.into_actor(self)
                .map(|finished, _, ctx| ctx.notify(finished)),
        );
    }

    /// Exports the sealed epochs not exported yet to `master.parquet_dir`,
    /// unless an export is going on (then once it ends).
    fn maybe_export(&mut self, ctx: &mut Context<Self>) {
        let Some(dir) = self.config.master.parquet_dir.clone() else {
            return;
        };
        if self.exporting {
            self.export_again = true;
            return;
        }
        self.exporting = true;
        let (config, stop) = (Arc::clone(&self.config), Arc::clone(&self.export_stop));
        let after = self.exported_upto;
        let export = async move {
            let outcome = tokio::task::spawn_blocking(move || {
                crate::export::export_until(&config, &dir, None, after, &stop)
            })
            .await;
            ExportFinished(match outcome {
                Ok(Ok(exported)) => Ok(exported),
                Ok(Err(err)) => Err(crate::error_chain(&err)),
                Err(join) => Err(format!("the export panicked: {join}")),
            })
        };
        ctx.spawn(
            export
                .into_actor(self)
                .map(|finished, _, ctx| ctx.notify(finished)),
        );
    }

    fn answer_waiters(&mut self, upto: Epoch, outcome: &Result<Epoch, RecomputeFailed>) {
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .waiters
            .drain(..)
            .partition(|(epoch, _)| *epoch <= upto);
        self.waiters = waiting;
        for (_, reply) in ready {
            // The waiter may have given up.
            reply.send(outcome.clone()).ok();
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(interval) = self.interval {
            self.handled_at_tick = self.handled();
            ctx.run_interval(interval, |act, _| {
                // Nothing came in since the last tick: the epoch that would be
                // finished is empty, and a batch run would recompute the same view.
                let handled = act.handled();
                if handled != act.handled_at_tick {
                    act.handled_at_tick = handled;
                    act.start_epoch();
                }
            });
        }
        self.maybe_run(ctx);
        self.maybe_export(ctx);
    }
}

impl Handler<StartEpoch> for Supervisor {
    type Result = MessageResult<StartEpoch>;

    #[tracing::instrument(skip_all)]
    fn handle(&mut self, StartEpoch(mode): StartEpoch, _: &mut Self::Context) -> Self::Result {
        self.full_next |= mode == RunMode::Full;
        MessageResult(self.start_epoch())
    }
}

impl Handler<Sealed> for Supervisor {
    type Result = ();

    #[tracing::instrument(skip_all, fields(epoch = %msg.0.epoch))]
    fn handle(&mut self, msg: Sealed, ctx: &mut Self::Context) {
        let sealed = msg.0;
        let (paths, counters) = (self.paths.clone(), self.shared.counters(&self.sources));
        actix::spawn(async move {
            match tokio::task::spawn_blocking(move || {
                crate::store::save_counters(&paths, &counters)
            })
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::error!(error = %err, "cannot save the counters"),
                Err(_) => tracing::error!("saving the counters was interrupted"),
            }
        });
        self.sealed = Some(sealed.epoch);
        if self
            .pending
            .is_none_or(|pending| sealed.epoch > pending.epoch)
        {
            self.pending = Some(sealed);
        }
        self.maybe_run(ctx);
        self.maybe_export(ctx);
    }
}

impl Handler<ExportFinished> for Supervisor {
    type Result = ();

    fn handle(&mut self, ExportFinished(outcome): ExportFinished, ctx: &mut Self::Context) {
        self.exporting = false;
        match outcome {
            Ok(exported) => {
                let newest = exported
                    .written
                    .iter()
                    .chain(&exported.skipped)
                    .map(|(epoch, _)| *epoch)
                    .max();
                self.exported_upto = self.exported_upto.max(newest);
                for (epoch, rows) in &exported.written {
                    tracing::info!(epoch = %epoch, rows, "exported the epoch as Parquet");
                }
                self.shared
                    .exported_epochs
                    .fetch_add(exported.written.len() as u64, Ordering::Relaxed);
                self.shared.export_error.set(None);
            }
            Err(reason) => {
                tracing::error!(error = %reason, "the Parquet export failed; it is tried again at the next seal");
                self.shared.export_failures.fetch_add(1, Ordering::Relaxed);
                self.shared.export_error.set(Some(reason));
            }
        }
        if std::mem::take(&mut self.export_again) {
            self.maybe_export(ctx);
        }
        // A Spark run waits for its epoch's export.
        self.maybe_run(ctx);
    }
}

impl Handler<RunFinished> for Supervisor {
    type Result = ();

    #[tracing::instrument(skip_all, fields(epoch = %msg.0.epoch))]
    fn handle(&mut self, msg: RunFinished, ctx: &mut Self::Context) {
        let RunFinished(sealed, mode, outcome) = msg;
        self.running = false;
        match outcome {
            Ok(batch) => {
                self.failed_tries = None;
                if mode == RunMode::Full {
                    self.full_next = false;
                }
                tracing::info!(
                    took_ms = batch.took_ms,
                    counted = batch.stats.counted,
                    duplicates = batch.stats.duplicates,
                    "batch run finished"
                );
                self.shared
                    .recompute_ms
                    .store(batch.took_ms.max(1), Ordering::Relaxed);
                self.shared
                    .recompute_records
                    .store(batch.stats.records, Ordering::Relaxed);
                self.shared.recompute_error.set(None);
                self.shared.recompute_failing.store(0, Ordering::Relaxed);
                self.shared
                    .recompute_failing_since_ms
                    .store(0, Ordering::Relaxed);
                self.id_index_to
                    .do_send(IdIndexReady(Arc::clone(&batch.ids)));
                // Waiters hear of the snapshot once Serving has swapped it
                // in: queries read the served snapshot in place, not through
                // Serving's mailbox, so whatever a waiter asks next must find
                // it there. The supervisor handles no other message meanwhile
                // (the swap is a pointer swap), so no `WaitServed` finds
                // `served` ahead of the snapshot queries read.
                let epoch = sealed.epoch;
                ctx.wait(
                    self.serving
                        .send(SnapshotReady(Arc::new(batch)))
                        .into_actor(self)
                        .map(move |_, act, _| {
                            act.served = Some(epoch);
                            act.answer_waiters(epoch, &Ok(epoch));
                        }),
                );
            }
            Err(failed) => {
                tracing::error!(error = %failed, "batch run failed");
                self.shared.recompute_error.set(Some(failed.to_string()));
                self.shared
                    .recompute_failures
                    .fetch_add(1, Ordering::Relaxed);
                if self
                    .shared
                    .recompute_failing
                    .fetch_add(1, Ordering::Relaxed)
                    == 0
                {
                    self.shared
                        .recompute_failing_since_ms
                        .store(crate::now_ms(), Ordering::Relaxed);
                }
                // A newer seal that took the place of a retried run gets its own tries.
                let tries = match self.failed_tries {
                    Some((epoch, tries)) if epoch == sealed.epoch => tries + 1,
                    _ => 1,
                };
                if failed.retryable && tries < RUN_ATTEMPTS {
                    self.failed_tries = Some((sealed.epoch, tries));
                    // Tried again unless a newer seal took its place.
                    if self.pending.is_none() {
                        self.pending = Some(sealed);
                    }
                    tracing::warn!(
                        attempt = tries + 1,
                        of = RUN_ATTEMPTS,
                        "batch run tried again"
                    );
                    self.running = true;
                    ctx.run_later(RETRY_AFTER, |act, ctx| {
                        act.running = false;
                        act.maybe_run(ctx);
                    });
                    return;
                }
                self.failed_tries = None;
                self.answer_waiters(sealed.epoch, &Err(failed));
            }
        }
        self.maybe_run(ctx);
    }
}

impl Handler<WaitServed> for Supervisor {
    type Result = ();

    fn handle(&mut self, WaitServed(epoch, reply): WaitServed, _: &mut Self::Context) {
        if self.served.is_some_and(|served| served >= epoch) {
            reply.send(Ok(self.served.unwrap_or(epoch))).ok();
        } else {
            // Waiters that gave up (a request that timed out) go first.
            self.waiters.retain(|(_, waiting)| !waiting.is_closed());
            self.waiters.push((epoch, reply));
        }
    }
}

impl Handler<RunQuery> for Supervisor {
    type Result = MessageResult<RunQuery>;

    fn handle(&mut self, _: RunQuery, _: &mut Self::Context) -> Self::Result {
        MessageResult(RunStatus {
            epoch: self.epoch,
            running: self.running,
            sealed: self.sealed,
            served: self.served,
            failures: self.shared.recompute_failures.load(Ordering::Relaxed),
        })
    }
}
