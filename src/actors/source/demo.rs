//! The demo source (`type = "demo"`): generates orders of the reference
//! workload ([`crate::workload`]) at a steady rate and sends them down the
//! same pipeline as every other source: parsed by the configured schema,
//! recorded, deduplicated by the batch layer, served. Event times follow the
//! wall clock (late events lie in the past), so a fresh daemon shows live
//! numbers at once.
//!
//! One batch is in flight at a time; a batch the store refuses is sent again,
//! so a full disk delays the demo but loses none of its events.

use super::{Control, MAX_BATCH, Next, NotDurable, Pipeline};
use crate::config::DemoSource;
use crate::event::{Epoch, ParsedEvent};
use crate::workload::{Generator, LineKind, Workload};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

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

type Durability = Pin<Box<dyn Future<Output = Result<usize, NotDurable>>>>;

/// What the demo is doing between ticks.
enum State {
    /// Nothing in flight: the next tick sends what is due.
    Idle,
    /// A batch is on its way to being durable.
    Sending(Batch, Durability),
    /// A batch was refused; it is sent again at the instant.
    Waiting(Batch, tokio::time::Instant),
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
        match pipeline.schema.parse(&line.bytes, ingest_ms) {
            Ok(event) => {
                batch.duplicates += u64::from(line.kind == LineKind::Duplicate);
                batch.lines.push((line.bytes, ingest_ms, event));
            }
            Err(reject) => pipeline.stats.count_reject(&reject),
        }
    }
    batch
}

fn demo_stats(pipeline: &Pipeline) -> Option<&DemoStats> {
    pipeline.stats.demo.as_ref()
}

/// Sends a batch's lines in `epoch`; resolves once they are durable.
fn send(pipeline: &Pipeline, epoch: Epoch, batch: &Batch) -> Durability {
    let pending = pipeline.send(epoch, batch.lines.clone());
    let pipeline = pipeline.clone();
    Box::pin(async move { pipeline.durable(pending).await })
}

/// Runs a demo source until it is stopped.
pub async fn run_demo(
    pipeline: Pipeline,
    mut control: mpsc::UnboundedReceiver<Control>,
    demo: DemoSource,
    mut epoch: Epoch,
) {
    let started = Instant::now();
    let mut generator = workload(&demo, pipeline.index, crate::now_ms()).generator();
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut state = State::Idle;
    pipeline.stats.connected.store(true, Ordering::Relaxed);
    tracing::info!(
        source = pipeline.index,
        rate = demo.rate,
        seed = demo.seed,
        "demo source started"
    );
    let exhausted = |generator: &Generator| {
        demo.events
            .is_some_and(|events| generator.has_emitted(events))
    };
    loop {
        let idle = matches!(state, State::Idle);
        let retry_at = match &state {
            State::Waiting(_, at) => Some(*at),
            _ => None,
        };
        tokio::select! {
            biased;
            ctrl = control.recv() => {
                if let Next::Stop(done) = pipeline.control(ctrl, &mut epoch) {
                    // What is in flight finishes; a refused batch waiting for
                    // its retry was never accepted and is dropped.
                    if let State::Sending(batch, durability) = state
                        && !finished(&pipeline, &batch, durability.await)
                    {
                        tracing::warn!(source = pipeline.index, events = batch.lines.len(), "demo stopped; its last batch was not durable and is dropped");
                    }
                    if let Some(done) = done {
                        done.send(()).ok();
                    }
                    return;
                }
            }
            outcome = async {
                match &mut state {
                    State::Sending(_, durability) => durability.as_mut().await,
                    _ => std::future::pending().await,
                }
            } => {
                let State::Sending(batch, _) = std::mem::replace(&mut state, State::Idle) else {
                    continue;
                };
                if !finished(&pipeline, &batch, outcome) {
                    state = State::Waiting(batch, tokio::time::Instant::now() + RETRY);
                } else if generator.events() + MAX_BATCH as u64 <= due(&demo, started) {
                    // Behind by a whole batch (a rate above what ticks
                    // carry, or a slow disk): the next one goes at once.
                    let batch = due_lines(&pipeline, &mut generator, &demo, started);
                    let durability = send(&pipeline, epoch, &batch);
                    state = State::Sending(batch, durability);
                }
            }
            () = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                if let State::Waiting(batch, _) = std::mem::replace(&mut state, State::Idle) {
                    let durability = send(&pipeline, epoch, &batch);
                    state = State::Sending(batch, durability);
                }
            }
            _ = ticks.tick(), if idle && !exhausted(&generator) => {
                let batch = due_lines(&pipeline, &mut generator, &demo, started);
                if !batch.lines.is_empty() {
                    let durability = send(&pipeline, epoch, &batch);
                    state = State::Sending(batch, durability);
                }
            }
        }
        if exhausted(&generator)
            && matches!(state, State::Idle)
            && let Some(stats) = demo_stats(&pipeline)
            && !stats.finished.swap(true, Ordering::Relaxed)
        {
            tracing::info!(
                source = pipeline.index,
                events = generator.events(),
                "demo source generated every event it was asked for"
            );
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
