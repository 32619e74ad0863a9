//! A push source (an in-process feed, or the HTTP source): an actor on a
//! thread of its own that takes [`IngestRequest`]s as messages. Requests
//! queued together share one durable batch, flushed once [`MAX_BATCH`]
//! messages are staged:
//! the first one staged schedules a flush with `ctx.notify`, which actix runs
//! after every message already in the mailbox. Each request is answered once
//! its batch is durable and applied; that wait runs on the system thread, so
//! the source's thread only parses.
//!
//! Its epoch can be held open ([`Control::Hold`]): barriers wait until every
//! hold is released. On a stop, every request queued before it is made
//! durable and answered before the stop is; a request after it is refused at
//! once (its reply dropped: `IngestError::Stopped`, HTTP 503).

use super::{
    Control, InFlightTasks, IngestRequest, MAX_BATCH, Pipeline, PushOutcome, spawn_on_system,
};
use crate::event::Epoch;
use actix::{Actor, AsyncContext, Context, Handler, Message};
use std::sync::atomic::Ordering;
use tokio::sync::oneshot;

/// Requests waiting in a push source's mailbox before a sender waits.
const MAILBOX: usize = 4_096;

/// A push source.
pub struct Push {
    pipeline: Pipeline,
    /// The epoch new batches belong to.
    epoch: Epoch,
    /// Holds on the current epoch, and the barriers they keep back.
    holds: usize,
    deferred: Vec<Epoch>,
    /// Requests taken since the last flush, and their messages.
    staged: Vec<IngestRequest>,
    staged_messages: usize,
    flush_scheduled: bool,
    /// Batches waiting to be durable and answered, awaited by a stop.
    in_flight: InFlightTasks,
    stopped: bool,
}

/// Sends what is staged as one batch.
#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

impl Push {
    /// A push source sending into `pipeline`, starting in `epoch`.
    pub fn new(pipeline: Pipeline, epoch: Epoch) -> Push {
        Push {
            pipeline,
            epoch,
            holds: 0,
            deferred: Vec::new(),
            staged: Vec::new(),
            staged_messages: 0,
            flush_scheduled: false,
            in_flight: InFlightTasks::default(),
            stopped: false,
        }
    }

    /// Parses the staged requests, sends their valid events as one batch of
    /// the current epoch, and answers each request once the batch is durable.
    fn flush(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let pipeline = &self.pipeline;
        let ingest_ms = crate::now_ms();
        let mut batch = Vec::with_capacity(self.staged_messages);
        let mut outcomes = Vec::with_capacity(self.staged.len());
        for request in self.staged.drain(..) {
            let mut outcome = PushOutcome::default();
            for (index, raw) in request.messages.into_iter().enumerate() {
                match pipeline.parse(&raw, ingest_ms) {
                    Ok(event) => {
                        batch.push((raw, ingest_ms, event));
                        outcome.accepted += 1;
                    }
                    Err(reject) => outcome.rejected.push((index, reject)),
                }
            }
            outcomes.push((outcome, request.reply));
        }
        self.staged_messages = 0;
        let pending = pipeline.send(self.epoch, batch, std::time::Instant::now());
        let pipeline = pipeline.clone();
        self.in_flight.push(spawn_on_system(async move {
            let durable = pipeline.durable(pending).await;
            for (outcome, reply) in outcomes {
                // The caller may have stopped waiting.
                reply.send(durable.clone().map(|_| outcome)).ok();
            }
        }));
    }

    /// Passes a barrier on, after every event of the epoch it finishes.
    fn barrier(&mut self, finished: Epoch) {
        self.flush();
        self.pipeline.barrier(finished, &mut self.epoch);
    }

    /// Stops taking requests; answers `done` once every batch is answered.
    fn stop(&mut self, done: oneshot::Sender<()>) {
        self.stopped = true;
        self.flush();
        self.in_flight.stop(async {}, || {}, done);
    }
}

impl Actor for Push {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
        self.pipeline.stats.connected.store(true, Ordering::Relaxed);
    }
}

impl Handler<IngestRequest> for Push {
    type Result = ();

    fn handle(&mut self, request: IngestRequest, ctx: &mut Context<Self>) {
        if self.stopped {
            // Dropping the reply refuses the push.
            return;
        }
        self.staged_messages += request.messages.len();
        self.staged.push(request);
        if self.staged_messages >= MAX_BATCH {
            self.flush();
        } else if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(Flush);
        }
    }
}

impl Handler<Flush> for Push {
    type Result = ();

    fn handle(&mut self, _: Flush, _: &mut Context<Self>) {
        self.flush_scheduled = false;
        self.flush();
    }
}

impl Handler<Control> for Push {
    type Result = ();

    fn handle(&mut self, control: Control, _: &mut Context<Self>) {
        match control {
            Control::Hold => self.holds += 1,
            Control::Release => {
                self.holds = self.holds.saturating_sub(1);
                if self.holds == 0 {
                    for finished in std::mem::take(&mut self.deferred) {
                        self.barrier(finished);
                    }
                }
            }
            Control::Barrier(finished) if self.holds > 0 => self.deferred.push(finished),
            Control::Barrier(finished) => self.barrier(finished),
            Control::Stop(done) => self.stop(done),
        }
    }
}
