//! The demo source (`type = "demo"`): generates orders of the reference
//! workload ([`crate::workload`]) at a steady rate and sends them down the
//! same pipeline as every other source: parsed by the configured schema,
//! recorded, deduplicated by the batch layer, served. Event times follow the
//! wall clock (late events lie in the past), so a fresh daemon shows live
//! numbers at once.
//!
//! An actor ([`Demo`]): a tick (every 100 ms) sends what is due as one batch;
//! one batch is in flight at a time; a batch the store refuses is sent again,
//! so a full disk delays the demo but loses none of its events.

use super::{Control, MAX_BATCH, NotDurable, Pipeline};
use crate::config::DemoSource;
use crate::event::{Epoch, ParsedEvent};
use crate::workload::{Generator, LineKind, Workload};
use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, WrapFuture};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How often the demo looks at the clock and sends what is due.
const TICK: Duration = Duration::from_millis(100);
/// Wait before a refused batch is sent again.
const RETRY: Duration = Duration::from_secs(1);

/// What a demo source has generated, for the status API.
#[derive(Debug, Default)]
pub struct DemoStats {
    /// Lines generated: valid, duplicate and malformed ones.
    pub generated: AtomicU64,
    /// Second copies of valid events made durable: the batch layer counts
    /// `accepted - duplicates` events of this source.
    pub duplicates: AtomicU64,
    /// Set once the configured number of events is generated and durable.
    pub finished: AtomicBool,
}

/// Valid lines of one batch, parsed once, kept until durable so a refused
/// batch can be sent again.
struct Batch {
    lines: Vec<(Vec<u8>, i64, ParsedEvent)>,
    /// How many of `lines` are second copies.
    duplicates: u64,
}

/// The generator behind a demo source started at `start_ms`: order ids
/// carry the start time and the source's index, so a restarted demo repeats
/// no id of an earlier run, and two demo sources share none.
pub fn workload(demo: &DemoSource, source: usize, start_ms: i64) -> Workload {
    Workload {
        seed: demo.seed,
        start_ms,
        step_ms: 1000.0 / f64::from(demo.rate.max(1)),
        late_frac: demo.late_frac,
        late_max_ms: demo.late_max.as_millis() as f64,
        dup_frac: demo.dup_frac,
        bad_frac: demo.bad_frac,
        id_prefix: format!("o-{start_ms}-{source}-"),
        ..Workload::default()
    }
}

/// Events due by now.
fn due(demo: &DemoSource, started: Instant) -> u64 {
    let due = (started.elapsed().as_secs_f64() * f64::from(demo.rate)) as u64;
    demo.events.map_or(due, |events| due.min(events))
}

/// The lines due by now, at most [`MAX_BATCH`] events: parsed, rejections
/// counted, valid ones kept.
fn due_lines(
    pipeline: &Pipeline,
    generator: &mut Generator,
    demo: &DemoSource,
    started: Instant,
) -> Batch {
    let until = due(demo, started).min(generator.events() + MAX_BATCH as u64);
    let mut batch = Batch {
        lines: Vec::new(),
        duplicates: 0,
    };
    let stats = demo_stats(pipeline);
    let ingest_ms = crate::now_ms();
    while !generator.has_emitted(until) {
        let line = generator.next_line();
        if let Some(stats) = stats {
            stats.generated.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(event) = pipeline.parse(&line.bytes, ingest_ms) {
            batch.duplicates += u64::from(line.kind == LineKind::Duplicate);
            batch.lines.push((line.bytes, ingest_ms, event));
        }
    }
    batch
}

fn demo_stats(pipeline: &Pipeline) -> Option<&DemoStats> {
    pipeline.stats.demo.as_ref()
}

/// A demo source: on every tick it generates what is due and sends it as one
/// batch; the next waits until that one is durable.
pub struct Demo {
    pipeline: Pipeline,
    demo: DemoSource,
    /// The epoch new batches belong to.
    epoch: Epoch,
    started: Instant,
    generator: Generator,
    /// The batch in flight, or the refused one waiting for its retry.
    batch: Option<Batch>,
    /// Whether `batch` is in flight (else it waits for its retry).
    sending: bool,
    /// Stops waiting for the batch in flight.
    stopping: Vec<oneshot::Sender<()>>,
    stopped: bool,
}

impl Demo {
    /// A demo source of `demo` sending into `pipeline`, starting in `epoch`.
    pub fn new(pipeline: Pipeline, demo: DemoSource, epoch: Epoch) -> Demo {
        let generator = workload(&demo, pipeline.index, crate::now_ms()).generator();
        Demo {
            pipeline,
            demo,
            epoch,
            started: Instant::now(),
            generator,
            batch: None,
            sending: false,
            stopping: Vec::new(),
            stopped: false,
        }
    }

    fn exhausted(&self) -> bool {
        self.demo
            .events
            .is_some_and(|events| self.generator.has_emitted(events))
    }

    /// Sends what is due, if nothing is in flight or waiting.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.stopped || self.batch.is_some() {
            return;
        }
        if self.exhausted() {
            if let Some(stats) = demo_stats(&self.pipeline)
                && !stats.finished.swap(true, Ordering::Relaxed)
            {
                tracing::info!(
                    source = self.pipeline.index,
                    events = self.generator.events(),
                    "demo source generated every event it was asked for"
                );
            }
            return;
        }
        let batch = due_lines(
            &self.pipeline,
            &mut self.generator,
            &self.demo,
            self.started,
        );
        if !batch.lines.is_empty() {
            self.send(batch, ctx);
        }
    }

    /// Sends a batch's lines in the current epoch; [`Demo::sent`] hears the outcome.
    fn send(&mut self, batch: Batch, ctx: &mut Context<Self>) {
        let pending =
            self.pipeline
                .send(self.epoch, batch.lines.clone(), std::time::Instant::now());
        self.batch = Some(batch);
        self.sending = true;
        let pipeline = self.pipeline.clone();
        ctx.spawn(
            async move { pipeline.durable(pending).await }
                .into_actor(self)
                .map(|outcome, demo, ctx| demo.sent(outcome, ctx)),
        );
    }

    fn sent(&mut self, outcome: Result<usize, NotDurable>, ctx: &mut Context<Self>) {
        self.sending = false;
        let Some(batch) = self.batch.take() else {
            return;
        };
        let durable = finished(&self.pipeline, &batch, outcome);
        if !self.stopping.is_empty() {
            // What was in flight is finished; a refused batch was never
            // accepted and is dropped.
            if !durable {
                tracing::warn!(
                    source = self.pipeline.index,
                    events = batch.lines.len(),
                    "demo stopped; its last batch was not durable and is dropped"
                );
            }
            for done in std::mem::take(&mut self.stopping) {
                self.stop(done);
            }
        } else if !durable {
            self.batch = Some(batch);
            ctx.run_later(RETRY, |demo, ctx| {
                if let Some(batch) = demo.batch.take().filter(|_| !demo.stopped) {
                    demo.send(batch, ctx);
                }
            });
        } else if self.generator.events() + MAX_BATCH as u64 <= due(&self.demo, self.started) {
            // Behind by a whole batch (a rate above what ticks carry, or a
            // slow disk): the next one goes at once.
            let batch = due_lines(
                &self.pipeline,
                &mut self.generator,
                &self.demo,
                self.started,
            );
            self.send(batch, ctx);
        }
    }

    fn stop(&mut self, done: oneshot::Sender<()>) {
        self.stopped = true;
        self.batch = None;
        self.pipeline
            .stats
            .connected
            .store(false, Ordering::Relaxed);
        done.send(()).ok();
    }
}

impl Actor for Demo {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.pipeline.stats.connected.store(true, Ordering::Relaxed);
        tracing::info!(
            source = self.pipeline.index,
            rate = self.demo.rate,
            seed = self.demo.seed,
            "demo source started"
        );
        ctx.run_interval(TICK, Demo::tick);
    }
}

impl Handler<Control> for Demo {
    type Result = ();

    fn handle(&mut self, control: Control, _: &mut Context<Self>) {
        match control {
            Control::Barrier(finished) => self.pipeline.barrier(finished, &mut self.epoch),
            // A batch in flight finishes first.
            Control::Stop(done) if self.sending => self.stopping.push(done),
            Control::Stop(done) => self.stop(done),
            Control::Hold | Control::Release => {}
        }
    }
}

/// Counts a batch once durable; false when it must be sent again.
fn finished(pipeline: &Pipeline, batch: &Batch, outcome: Result<usize, NotDurable>) -> bool {
    match outcome {
        Ok(_) => {
            if let Some(stats) = demo_stats(pipeline) {
                stats
                    .duplicates
                    .fetch_add(batch.duplicates, Ordering::Relaxed);
            }
            pipeline.stats.last_error.set(None);
            true
        }
        Err(err) => {
            let error = crate::error_chain(&err);
            tracing::warn!(source = pipeline.index, error = %error, events = batch.lines.len(), "demo batch not durable");
            pipeline.stats.last_error.set(Some(error));
            false
        }
    }
}
