//! Sources: where events come in. Every source shares one pipeline: parse
//! once, send valid events as one batch to the Recorder, and once the batch
//! is durable send them, by key, to the speed partitions; only then
//! acknowledge (ack the delivery, or answer the in-process caller). Rejected
//! messages are dead-lettered with their reason (RabbitMQ) or answered with
//! it (in process). Barriers reach a source as [`Control`] messages, handled
//! while its broker is away too, so a dead broker never stalls sealing.
//!
//! Every source is an actor: RabbitMQ ([`Rabbitmq`], supervised, restarted
//! with a backoff when its connection is lost), the in-process feed and the
//! HTTP source ([`Push`]), each on a thread of its own where it parses, and
//! the demo generator ([`demo::Demo`]). Waiting for durability and routing to
//! the speed layer run on the system thread ([`spawn_on_system`]).

pub mod demo;
mod push;
mod rabbitmq;

use super::recorder::{Append, Barrier, Durable, RecordIn, Recorder};
use super::speed::{Apply, owners};
use crate::aggregate::ViewSpec;
use crate::event::{Epoch, ParsedEvent, Reject, Schema};
use crate::store;
use actix::{Addr, Recipient};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::oneshot;

/// How long stopping a source waits for its batches in flight.
pub const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub use push::Push;
pub use rabbitmq::{FIELD_HEADER, REASON_HEADER, Rabbitmq};

/// The most deliveries in a RabbitMQ batch or lines in a demo tick; a push
/// source flushes once this many messages are staged.
pub(crate) const MAX_BATCH: usize = 2_000;

/// Control messages to a source.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub enum Control {
    /// Finish epoch `.0`: send its barrier after every event of it.
    Barrier(Epoch),
    /// Stop consuming, finish the batches in flight (durable, then acked), and
    /// answer once done.
    Stop(oneshot::Sender<()>),
    /// Keep the current epoch open (push sources only): barriers wait until
    /// every hold is released.
    Hold,
    /// Ends one [`Control::Hold`].
    Release,
}

/// Counters of one source, shared with the status API.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Valid deliveries made durable and applied by the speed layer (redeliveries included).
    pub accepted: AtomicU64,
    /// Rejected deliveries, per reason, in [`crate::event::Reason::ALL`] order.
    pub rejected: [AtomicU64; 7],
    /// Whether the source is connected to its broker (always true in process).
    pub connected: AtomicBool,
    /// Why the source last lost its broker, until it is connected again.
    pub last_error: crate::metrics::ErrorText,
    /// Times the source lost its broker (or could not reach it) and tried again.
    pub disconnects: AtomicU64,
    /// Times its supervisor restarted the source's actor (RabbitMQ sources).
    pub restarts: AtomicU64,
    /// What a demo source generated; `None` for every other kind.
    pub demo: Option<demo::DemoStats>,
}

impl SourceStats {
    pub(crate) fn count_reject(&self, reject: &Reject) {
        let index = crate::event::Reason::ALL
            .iter()
            .position(|reason| *reason == reject.reason)
            .unwrap_or(0);
        self.rejected[index].fetch_add(1, Ordering::Relaxed);
    }
}

/// What every source shares: where valid events go.
#[derive(Clone)]
pub struct Pipeline {
    /// This source's index among the recorder's sources.
    pub index: usize,
    /// The compiled event schema.
    pub schema: Arc<Schema>,
    /// The views, in config order.
    pub views: Arc<[Arc<ViewSpec>]>,
    /// The speed partitions.
    pub partitions: Arc<[Recipient<Apply>]>,
    /// The single writer.
    pub recorder: Addr<Recorder>,
    /// This source's counters.
    pub stats: Arc<SourceStats>,
    /// Observed when a batch is acknowledged.
    pub ack_lag: prometheus_client::metrics::histogram::Histogram,
}

/// A batch on its way to being durable.
pub struct Pending {
    /// When the batch arrived (a RabbitMQ batch: its first delivery).
    received: std::time::Instant,
    reply: Option<oneshot::Receiver<Result<Durable, Arc<store::Error>>>>,
    epoch: Epoch,
    events: Vec<ParsedEvent>,
}

/// Why a batch did not become durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotDurable {
    /// The recorder could not write it.
    #[error("the master dataset refused the batch")]
    Store(#[source] Arc<store::Error>),
    /// The recorder stopped before answering.
    #[error("the recorder stopped")]
    Stopped,
}

impl Pipeline {
    /// Parses one message (once) at `ingest_ms`; a rejection is counted.
    ///
    /// # Errors
    /// The message breaks the event rules: why.
    pub fn parse(&self, raw: &[u8], ingest_ms: i64) -> Result<ParsedEvent, Reject> {
        self.schema.parse(raw, ingest_ms).inspect_err(|reject| {
            self.stats.count_reject(reject);
        })
    }

    /// Sends a batch of valid events of `epoch`, the first received at
    /// `received`, to the recorder.
    pub fn send(
        &self,
        epoch: Epoch,
        batch: Vec<(Vec<u8>, i64, ParsedEvent)>,
        received: std::time::Instant,
    ) -> Pending {
        if batch.is_empty() {
            return Pending {
                received,
                reply: None,
                epoch,
                events: Vec::new(),
            };
        }
        let mut records = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        for (raw, ingest_ms, event) in batch {
            records.push(RecordIn {
                raw,
                ingest_ms,
                event_ms: event.event_ms,
                id_hash: event.id_hash.map_or(0, std::num::NonZeroU64::get),
            });
            events.push(event);
        }
        let (reply, rx) = oneshot::channel();
        // `do_send` enqueues now: this batch precedes this source's next barrier.
        self.recorder.do_send(Append {
            source: self.index,
            epoch,
            records,
            reply,
        });
        Pending {
            received,
            reply: Some(rx),
            epoch,
            events,
        }
    }

    /// Sends this source's barrier for `finished`, after everything it sent
    /// before, and moves `epoch` (the one new events get) past it.
    pub fn barrier(&self, finished: Epoch, epoch: &mut Epoch) {
        self.recorder.do_send(Barrier {
            source: self.index,
            epoch: finished,
        });
        *epoch = (*epoch).max(finished.next());
    }

    /// Waits until a batch is durable, then hands its events to the speed layer.
    ///
    /// # Errors
    /// The batch is not durable: it must not be acknowledged.
    pub async fn durable(&self, mut pending: Pending) -> Result<usize, NotDurable> {
        let outcome = match pending.reply.take() {
            Some(reply) => reply.await,
            None => return Ok(0),
        };
        self.finish(pending, outcome).await
    }

    /// Hands a batch's events to the speed layer once the recorder says it is
    /// durable, and waits until they are applied: whoever hears the batch is
    /// in sees it in every later query.
    async fn finish(
        &self,
        pending: Pending,
        outcome: Result<Result<Durable, Arc<store::Error>>, oneshot::error::RecvError>,
    ) -> Result<usize, NotDurable> {
        let durable = match outcome {
            Ok(Ok(durable)) => durable,
            Ok(Err(err)) => return Err(NotDurable::Store(err)),
            Err(_) => return Err(NotDurable::Stopped),
        };
        let n = pending.events.len();
        // Per partition, per view: the positions of the events it applies.
        let mut routed: Vec<Vec<Vec<u32>>> =
            vec![vec![Vec::new(); self.views.len()]; self.partitions.len()];
        let mut scratch = String::new();
        // A repeat is durable (the master dataset keeps every delivery) but an
        // earlier record of the log holds its id: neither layer counts it.
        let mut repeats = durable.repeats.iter().copied().peekable();
        for (i, event) in (0u32..).zip(&pending.events) {
            if repeats.next_if_eq(&i).is_some() {
                continue;
            }
            for (view, partition) in owners(&self.views, event, routed.len(), &mut scratch) {
                routed[partition][view].push(i);
            }
        }
        let events = Arc::new(pending.events);
        let mut applied = Vec::new();
        for (partition, picks) in self.partitions.iter().zip(routed) {
            if picks.iter().any(|picked| !picked.is_empty()) {
                let (done, rx) = oneshot::channel();
                partition.do_send(Apply {
                    epoch: pending.epoch,
                    events: Arc::clone(&events),
                    picks,
                    done: Some(done),
                });
                applied.push(rx);
            }
        }
        for rx in applied {
            // A partition gone means the system is stopping; the batch is
            // durable all the same, and a restart replays it.
            rx.await.ok();
        }
        // Counted once visible: a query after `accepted` moved sees the batch.
        self.stats.accepted.fetch_add(n as u64, Ordering::Relaxed);
        self.ack_lag
            .observe(pending.received.elapsed().as_secs_f64());
        Ok(n)
    }
}

/// Runs `task` on the system thread, which only routes; the receiver hears
/// when it has ended (or was dropped, the system stopping).
pub(crate) fn spawn_on_system(
    task: impl Future<Output = ()> + Send + 'static,
) -> oneshot::Receiver<()> {
    let (done, ended) = oneshot::channel();
    actix::System::current().arbiter().spawn(async move {
        task.await;
        done.send(()).ok();
    });
    ended
}

/// A source's tasks that a stop waits for (its batches in flight), and the
/// drain the first stop starts, which every later stop waits for too.
#[derive(Default)]
pub(crate) struct InFlightTasks {
    tasks: Vec<oneshot::Receiver<()>>,
    drained: Option<Shared<BoxFuture<'static, ()>>>,
}

impl InFlightTasks {
    /// Tracks a task by the receiver [`spawn_on_system`] gave, forgetting
    /// those that ended.
    pub(crate) fn push(&mut self, task: oneshot::Receiver<()>) {
        self.tasks
            .retain_mut(|task| matches!(task.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        self.tasks.push(task);
    }

    /// Answers `done` once the drain has ended: the first stop's drain runs
    /// `first`, then waits for every task tracked until then, then `last`.
    pub(crate) fn stop(
        &mut self,
        first: impl Future<Output = ()> + Send + 'static,
        last: impl FnOnce() + Send + 'static,
        done: oneshot::Sender<()>,
    ) {
        let drained = self
            .drained
            .get_or_insert_with(|| {
                let tasks = std::mem::take(&mut self.tasks);
                async move {
                    first.await;
                    for task in tasks {
                        task.await.ok();
                    }
                    last();
                }
                .boxed()
                .shared()
            })
            .clone();
        actix::spawn(async move {
            drained.await;
            done.send(()).ok();
        });
    }
}

/// The control side of a running source.
#[derive(Debug, Clone)]
pub struct SourceHandle {
    /// The source's name.
    pub name: String,
    /// Its type as the config writes it (`rabbitmq`, `http`, `demo`), or
    /// `in_process` for the actor API's feed.
    pub kind: &'static str,
    /// The queue it consumes, if any.
    pub queue: Option<String>,
    /// Its counters.
    pub stats: Arc<SourceStats>,
    control: SourceControl,
}

/// Where a source's control messages go: its actor's mailbox, the one its
/// events come through too, so a hold or a barrier sent before a push is
/// handled before it. Set once the actor runs.
type SourceControl = Arc<std::sync::OnceLock<Recipient<Control>>>;

/// Sends `message` to the source's actor; false if it is gone (or not started).
fn send_control(control: &SourceControl, message: Control) -> bool {
    match control.get() {
        Some(actor) if actor.connected() => {
            actor.do_send(message);
            true
        }
        _ => false,
    }
}

/// Keeps a push source's epoch open while it lives; see [`SourceHandle::hold_epoch`].
#[derive(Debug)]
pub struct EpochHold {
    control: SourceControl,
}

impl Drop for EpochHold {
    fn drop(&mut self) {
        // A stopped source holds nothing.
        send_control(&self.control, Control::Release);
    }
}

/// The `kind` of the actor API's feeds, which every system has.
pub const IN_PROCESS: &str = "in_process";

impl SourceHandle {
    /// A handle to a source whose actor is not started yet ([`SourceHandle::attach`]).
    pub fn new(
        name: String,
        kind: &'static str,
        queue: Option<String>,
        stats: Arc<SourceStats>,
    ) -> SourceHandle {
        SourceHandle {
            name,
            kind,
            queue,
            stats,
            control: SourceControl::default(),
        }
    }

    /// Sends this handle's control messages to `actor` from now on (once).
    pub fn attach(&self, actor: Recipient<Control>) {
        self.control.set(actor).ok();
    }

    /// Whether status pages and metrics list this source: every configured
    /// one, and the in-process feed once the actor API has used it.
    pub fn listed(&self) -> bool {
        self.kind != IN_PROCESS
            || self.stats.accepted.load(Ordering::Relaxed) > 0
            || self
                .stats
                .rejected
                .iter()
                .any(|count| count.load(Ordering::Relaxed) > 0)
    }

    /// Asks the source to finish `epoch` (a stopped source still passes its
    /// barriers on). False if the source's actor is gone.
    pub fn barrier(&self, epoch: Epoch) -> bool {
        send_control(&self.control, Control::Barrier(epoch))
    }

    /// Keeps this source's current epoch open until the returned hold is
    /// dropped (push sources only; others ignore it): events it takes
    /// meanwhile all belong to that epoch, and the epoch is sealed only after.
    pub fn hold_epoch(&self) -> EpochHold {
        send_control(&self.control, Control::Hold);
        EpochHold {
            control: Arc::clone(&self.control),
        }
    }

    /// Stops the source: it stops consuming and returns once every batch it
    /// had in flight is durable and acknowledged, or after [`STOP_WAIT`]
    /// (a store that cannot write, or a broker that does not answer): what
    /// was not acknowledged by then RabbitMQ redelivers after a restart
    /// (counted once, by its id), and a push gets no success.
    pub async fn stop(&self) {
        let (done, finished) = oneshot::channel();
        if send_control(&self.control, Control::Stop(done)) {
            // A source that ended meanwhile has nothing in flight.
            if tokio::time::timeout(STOP_WAIT, finished).await.is_err() {
                tracing::warn!(
                    source = %self.name,
                    wait_s = STOP_WAIT.as_secs(),
                    "the source did not finish its batches in flight: stopping without them, unacknowledged (RabbitMQ redelivers them; a push gets no success)"
                );
            }
        }
    }
}

/// One push of messages: an in-process ingest call, or one HTTP request.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct IngestRequest {
    /// The messages, in order.
    pub messages: Vec<Vec<u8>>,
    /// The outcome, once every valid message is durable.
    pub reply: oneshot::Sender<Result<PushOutcome, NotDurable>>,
}

/// The outcome of one push once its valid messages are durable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushOutcome {
    /// Messages made durable.
    pub accepted: usize,
    /// Rejected messages: their index in the push and why.
    pub rejected: Vec<(usize, Reject)>,
}

/// The outcome of an in-process ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Valid and durable.
    Durable,
    /// Rejected, with the reason.
    Rejected(Reject),
}
