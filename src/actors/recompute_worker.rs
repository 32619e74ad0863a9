//! A recompute worker: one of the batch runs' pool of actors, each on a
//! thread of its own (a one-thread `SyncArbiter`, so that every worker can be
//! addressed), one per core. In a run, worker `i` of `n` owns the keys of
//! every view whose hash maps to `i`: the speed layer's rule
//! ([`partition_of`]).
//!
//! In: `Begin` (a run's plan), `Records` (raw survivors from the run's
//! reader, round robin), `Routed` (what events another worker parsed
//! contribute to views whose keys this worker owns: key, bucket, inputs),
//! `Flush` and `Finish`. A worker parses the records it is handed, applies
//! each event to the views whose key it owns and sends the owners of the
//! others what it contributes to them. At the end each worker holds a
//! disjoint share of every view's keys, so the run puts the shares together
//! by moving keys, without merging a group.
//!
//! Flow control: every `Records` batch carries a [`Credit`] that goes back
//! to the reader when the batch and every event routed from it have been
//! applied, so a run holds a bounded number of batches in flight however
//! unevenly the keys fall. A handler that panics is caught: the run is
//! failed by the worker's name, and the actor is replaced by a fresh one
//! (`SyncContext` restarts a stopped actor), which drops whatever is still
//! queued for the failed run.

use super::speed::partition_of;
use crate::aggregate::{Input, ViewSpec, ViewState};
use crate::config::Config;
use crate::event::ParsedEvent;
use actix::{Actor, ActorContext, Addr, Handler, Message, SyncArbiter, SyncContext};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Sender, SyncSender};
use std::sync::{Arc, Mutex};

use super::recompute::BatchStats;

/// A batch of surviving records for a worker: raw bytes back to back.
pub(crate) struct WorkBatch {
    pub bytes: Vec<u8>,
    /// (end offset in `bytes`, ingest time, [`flag`]s) per record.
    pub records: Vec<(usize, i64, u8)>,
}

impl WorkBatch {
    pub fn with_capacity(records: usize) -> WorkBatch {
        WorkBatch {
            bytes: Vec::with_capacity(records * 256),
            records: Vec::with_capacity(records),
        }
    }
}

/// Flags of a record in a [`WorkBatch`].
pub(crate) mod flag {
    /// At or after `later_from`: in the snapshot, not in the cache.
    pub const TAIL: u8 = 1;
    /// Before the cached records' end: only for views without a cached state.
    pub const UNCACHED_ONLY: u8 = 2;
}

/// What a worker built of one part of the records (before `later_from`, or
/// after): per view, the state of the keys it owns.
#[derive(Debug)]
pub(crate) struct Part {
    pub states: Vec<ViewState>,
    pub stats: BatchStats,
}

/// One batch run, as every worker of it sees it.
pub(crate) struct Plan {
    /// Tells this run's messages from a failed run's leftovers.
    id: u64,
    config: Arc<Config>,
    /// Per view, the first bucket its retention keeps.
    cutoffs: Vec<Option<i64>>,
    /// Per view, whether it is computed from the whole master dataset.
    uncached: Vec<bool>,
    workers: Vec<Addr<RecomputeWorker>>,
    /// The first failure of a worker in this run, in one line.
    failed: Mutex<Option<String>>,
}

impl Plan {
    pub fn new(
        config: Arc<Config>,
        cutoffs: Vec<Option<i64>>,
        uncached: Vec<bool>,
        pool: &Pool,
    ) -> Plan {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        Plan {
            id: RUNS.fetch_add(1, Ordering::Relaxed),
            config,
            cutoffs,
            uncached,
            workers: pool.workers.clone(),
            failed: Mutex::new(None),
        }
    }

    /// Tells this run's messages from a failed run's leftovers.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The first failure of a worker in this run.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|failed| failed.clone())
    }

    fn fail(&self, why: String) {
        if let Ok(mut failed) = self.failed.lock() {
            failed.get_or_insert(why);
        }
    }
}

/// One batch in flight: handed back to the reader when dropped, that is once
/// the batch and every event routed from it have been applied (or dropped
/// with a failed run).
pub(crate) struct Credit(pub SyncSender<()>);

impl Drop for Credit {
    fn drop(&mut self) {
        // The reader sized the channel for every credit, and may have gone.
        self.0.try_send(()).ok();
    }
}

/// The pool of recompute workers: cheap to clone (addresses). The workers
/// stop when the last clone is dropped.
#[derive(Clone)]
pub struct Pool {
    workers: Vec<Addr<RecomputeWorker>>,
}

impl Pool {
    /// Starts `workers` workers (at least one), each on a thread of its own.
    ///
    /// # Panics
    /// Outside a running actix system (see [`with_pool`]).
    pub fn start(workers: usize) -> Pool {
        let workers = (0..workers.max(1))
            .map(|index| {
                SyncArbiter::start_with_thread_builder(
                    1,
                    move || std::thread::Builder::new().name(format!("recompute-{index}")),
                    move || RecomputeWorker { index, run: None },
                )
            })
            .collect();
        Pool { workers }
    }

    /// One worker per core.
    pub fn per_core() -> Pool {
        Pool::start(cores())
    }

    /// The number of workers (at least one).
    pub(crate) fn len(&self) -> usize {
        self.workers.len()
    }

    pub(crate) fn worker(&self, index: usize) -> &Addr<RecomputeWorker> {
        &self.workers[index % self.workers.len()]
    }
}

/// The cores this process may use: a pool's size.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// Runs `job` with a pool of `workers` recompute workers on an actix system
/// of its own, for callers outside a running system (the offline command,
/// tests, benchmarks); the system stops when `job` returns.
///
/// # Panics
/// If `job` panics, or the system's thread cannot start.
pub fn with_pool<T>(workers: usize, job: impl FnOnce(&Pool) -> T) -> T {
    let (started, pool) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        let system = scope.spawn(move || {
            let runner = actix::System::new();
            runner.block_on(async {
                started
                    .send((Pool::start(workers), actix::System::current()))
                    .ok();
            });
            runner.run()
        });
        let Ok((pool, system_handle)) = pool.recv() else {
            // The system's thread is gone: its panic says why.
            std::panic::resume_unwind(
                system
                    .join()
                    .err()
                    .unwrap_or_else(|| Box::new("the recompute pool did not start")),
            );
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&pool)));
        drop(pool);
        system_handle.stop();
        system.join().ok();
        outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A worker's state in a run.
struct Running {
    plan: Arc<Plan>,
    parts: [Part; 2],
    /// Per worker, what the events parsed here contribute to the views
    /// whose keys it owns, not yet sent.
    outbound: Vec<Contributions>,
    scratch: String,
    inputs: Vec<Input>,
}

/// What events contribute to views whose keys another worker owns, back to
/// back: per entry its view, flags, bucket, key text and inputs. One batch
/// of them is one allocation per field, whatever the number of events.
#[derive(Default)]
struct Contributions {
    keys: String,
    inputs: Vec<Input>,
    /// (view, flags, bucket, end of its key in `keys`, end of its inputs in `inputs`).
    entries: Vec<(usize, u8, i64, usize, usize)>,
}

impl Contributions {
    fn push(
        &mut self,
        view: usize,
        flags: u8,
        bucket: i64,
        key: &str,
        inputs: (&ViewSpec, &ParsedEvent),
    ) {
        self.keys.push_str(key);
        let (spec, event) = inputs;
        spec.extend_inputs(event, &mut self.inputs);
        self.entries
            .push((view, flags, bucket, self.keys.len(), self.inputs.len()));
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Applies every entry to its view in the part its flags name.
    fn apply_to(&self, config: &Config, parts: &mut [Part; 2]) {
        let (mut key_start, mut inputs_start) = (0, 0);
        for &(view, flags, bucket, key_end, inputs_end) in &self.entries {
            let part = &mut parts[usize::from(flags & flag::TAIL != 0)];
            part.states[view].apply_inputs(
                &config.views[view],
                &self.keys[key_start..key_end],
                bucket,
                &self.inputs[inputs_start..inputs_end],
            );
            (key_start, inputs_start) = (key_end, inputs_end);
        }
    }
}

impl Running {
    fn new(plan: Arc<Plan>) -> Running {
        let views = plan.config.views.len();
        let workers = plan.workers.len();
        let part = || Part {
            states: (0..views).map(|_| ViewState::new()).collect(),
            stats: BatchStats::default(),
        };
        Running {
            parts: [part(), part()],
            outbound: (0..workers).map(|_| Contributions::default()).collect(),
            scratch: String::new(),
            inputs: Vec::new(),
            plan,
        }
    }

    /// Parses every record of `batch` and, per view, applies the event here
    /// if this worker (`me`) owns its key, else sends what it contributes to
    /// the owner; a view skips an event of a bucket its retention dropped,
    /// and a record of the cached range unless it is computed from the
    /// whole master dataset.
    fn records(&mut self, me: usize, batch: &WorkBatch, credit: &Arc<Credit>) {
        crate::faults::panic_point("recompute.worker");
        let Running {
            plan,
            parts,
            outbound,
            scratch,
            inputs,
        } = self;
        let config = &plan.config;
        let workers = plan.workers.len();
        let mut start = 0;
        for &(end, ingest_ms, flags) in &batch.records {
            let raw = &batch.bytes[start..end];
            start = end;
            let part = &mut parts[usize::from(flags & flag::TAIL != 0)];
            let Ok(event) = config.schema.parse(raw, ingest_ms) else {
                part.stats.invalid += 1;
                continue;
            };
            part.stats.counted += 1;
            let only_uncached = flags & flag::UNCACHED_ONLY != 0;
            for (view, spec) in config.views.iter().enumerate() {
                if only_uncached && !plan.uncached[view] {
                    continue;
                }
                let bucket = spec.bucket_of(event.event_ms);
                if plan.cutoffs[view].is_some_and(|cutoff| bucket < cutoff) {
                    part.stats.expired += 1;
                    continue;
                }
                let key = spec.key_text(&event, scratch);
                match partition_of(key, workers) {
                    owner if owner == me => {
                        spec.inputs(&event, inputs);
                        part.states[view].apply_inputs(spec, key, bucket, inputs);
                    }
                    owner => outbound[owner].push(view, flags, bucket, key, (spec, &event)),
                }
            }
        }
        for (owner, contributions) in outbound.iter_mut().enumerate() {
            if !contributions.is_empty() {
                plan.workers[owner].do_send(Routed {
                    run: plan.id,
                    contributions: std::mem::take(contributions),
                    _credit: Arc::clone(credit),
                });
            }
        }
    }
}

/// The actor.
pub struct RecomputeWorker {
    index: usize,
    run: Option<Running>,
}

impl RecomputeWorker {
    /// Runs `work` on the state of run `run`, if this worker is in it; a
    /// panic fails the run by this worker's name and restarts the actor.
    fn guarded(
        &mut self,
        ctx: &mut SyncContext<Self>,
        run: u64,
        work: impl FnOnce(usize, &mut Running),
    ) {
        let index = self.index;
        let Some(running) = self.run.as_mut().filter(|running| running.plan.id == run) else {
            return;
        };
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(index, running)));
        if let Err(panic) = outcome {
            let what = crate::panic_text(&*panic);
            let why = format!("recompute worker {index} panicked: {what}");
            tracing::error!(worker = index, panic = %what, "recompute worker panicked; it is restarted and the run fails");
            running.plan.fail(why);
            self.run = None;
            ctx.stop();
        }
    }
}

impl Actor for RecomputeWorker {
    type Context = SyncContext<Self>;
}

/// Starts a run: the worker's shares are empty.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Begin(pub Arc<Plan>);

/// Raw records to parse, from the run's reader.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Records {
    pub run: u64,
    pub batch: WorkBatch,
    pub credit: Arc<Credit>,
}

/// Events whose key in a view is the receiver's, from another worker.
#[derive(Message)]
#[rtype(result = "()")]
struct Routed {
    run: u64,
    contributions: Contributions,
    /// The credit of the batch they came in: returned once every part of it is applied.
    _credit: Arc<Credit>,
}

/// Answers once every message sent before it is handled: sent to every
/// worker after the last batch, the answers say that every routed event is
/// queued before anything sent after them.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Flush(pub Sender<()>);

/// Ends the run: answers the worker's two parts (none if it failed).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Finish {
    pub run: u64,
    pub reply: Sender<[Part; 2]>,
}

impl Handler<Begin> for RecomputeWorker {
    type Result = ();

    fn handle(&mut self, Begin(plan): Begin, _: &mut Self::Context) {
        self.run = Some(Running::new(plan));
    }
}

impl Handler<Records> for RecomputeWorker {
    type Result = ();

    fn handle(&mut self, msg: Records, ctx: &mut Self::Context) {
        self.guarded(ctx, msg.run, |me, running| {
            running.records(me, &msg.batch, &msg.credit);
        });
    }
}

impl Handler<Routed> for RecomputeWorker {
    type Result = ();

    fn handle(&mut self, msg: Routed, ctx: &mut Self::Context) {
        self.guarded(ctx, msg.run, |_, running| {
            msg.contributions
                .apply_to(&running.plan.config, &mut running.parts);
        });
    }
}

impl Handler<Flush> for RecomputeWorker {
    type Result = ();

    fn handle(&mut self, Flush(reply): Flush, _: &mut Self::Context) {
        reply.send(()).ok();
    }
}

impl Handler<Finish> for RecomputeWorker {
    type Result = ();

    fn handle(&mut self, msg: Finish, _: &mut Self::Context) {
        if let Some(running) = self.run.take_if(|running| running.plan.id == msg.run) {
            msg.reply.send(running.parts).ok();
        }
    }
}
