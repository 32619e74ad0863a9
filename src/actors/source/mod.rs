//! Sources: where events come in. Each source is a task with a control
//! channel (barriers) and one shared pipeline: parse once, send valid events
//! as one batch to the Recorder, and once the batch is durable send them, by
//! key, to the speed partitions; only then acknowledge (ack the delivery, or
//! answer the in-process caller). Rejected messages are dead-lettered with
//! their reason (RabbitMQ) or answered with it (in process).
//!
//! Sources are tasks, not actors: a lapin consumer is a stream with its own
//! reconnect loop, and the control channel lets barriers through while the
//! broker is away, so a dead broker never stalls sealing. The kinds: the
//! in-process feed and the HTTP source ([`run_push`]), RabbitMQ
//! ([`run_rabbitmq`]) and the demo generator ([`demo::run_demo`]).

pub mod demo;

use super::recorder::{Append, Barrier, Durable, RecordIn, Recorder};
use super::speed::{Apply, owners};
use crate::aggregate::ViewSpec;
use crate::config::RabbitmqSource;
use crate::event::{Epoch, ParsedEvent, Reject, Schema};
use crate::store;
use actix::{Addr, Recipient};
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most events in one batch.
pub(crate) const MAX_BATCH: usize = 2_000;
/// Header carrying a dead letter's rejection reason.
pub const REASON_HEADER: &str = "x-tandem-reason";
/// Header carrying the field a dead letter's rejection names.
pub const FIELD_HEADER: &str = "x-tandem-field";
/// Reconnect delays: doubling from the first to the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// Control messages to a source.
#[derive(Debug)]
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
    /// Valid deliveries made durable (redeliveries included).
    pub accepted: AtomicU64,
    /// Rejected deliveries, per reason, in [`crate::event::Reason::ALL`] order.
    pub rejected: [AtomicU64; 7],
    /// Whether the source is connected to its broker (always true in process).
    pub connected: AtomicBool,
    /// Why the source last lost its broker, until it is connected again.
    pub last_error: crate::metrics::ErrorText,
    /// Times the source lost its broker (or could not reach it) and tried again.
    pub disconnects: AtomicU64,
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

/// What a source does after a control message.
pub(crate) enum Next {
    /// Go on.
    Go,
    /// Stop; answer the sender, if any, once stopped.
    Stop(Option<oneshot::Sender<()>>),
}

/// A batch on its way to being durable.
pub struct Pending {
    /// When the batch arrived.
    received: std::time::Instant,
    reply: Option<oneshot::Receiver<Result<Durable, Arc<store::Error>>>>,
    epoch: Epoch,
    events: Vec<Arc<ParsedEvent>>,
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
    /// Sends a batch of valid events of `epoch` to the recorder.
    pub fn send(&self, epoch: Epoch, batch: Vec<(Vec<u8>, i64, ParsedEvent)>) -> Pending {
        if batch.is_empty() {
            return Pending {
                received: std::time::Instant::now(),
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
            events.push(Arc::new(event));
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
            received: std::time::Instant::now(),
            reply: Some(rx),
            epoch,
            events,
        }
    }

    /// Sends this source's barrier for `epoch`, after everything it sent before.
    pub fn barrier(&self, epoch: Epoch) {
        self.recorder.do_send(Barrier {
            source: self.index,
            epoch,
        });
    }

    /// Handles a control message: a barrier is passed on at once (every batch
    /// is sent as soon as it is read, so nothing of the finished epoch is held
    /// back) and new events get the next epoch; a stop, or a closed control
    /// channel, is handed back to the caller.
    pub(crate) fn control(&self, control: Option<Control>, epoch: &mut Epoch) -> Next {
        match control {
            Some(Control::Barrier(finished)) => {
                self.barrier(finished);
                *epoch = (*epoch).max(finished.next());
                Next::Go
            }
            Some(Control::Stop(done)) => Next::Stop(Some(done)),
            // Only push sources keep an epoch open on request.
            Some(Control::Hold | Control::Release) => Next::Go,
            None => Next::Stop(None),
        }
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
        self.stats.accepted.fetch_add(n as u64, Ordering::Relaxed);
        self.ack_lag
            .observe(pending.received.elapsed().as_secs_f64());
        let mut routed: Vec<Vec<(usize, Arc<ParsedEvent>)>> =
            vec![Vec::new(); self.partitions.len()];
        let mut scratch = String::new();
        // A repeat is durable (the master dataset keeps every delivery) but an
        // earlier record of the log holds its id: neither layer counts it.
        let mut repeats = durable.repeats.iter().copied().peekable();
        for (i, event) in (0u32..).zip(pending.events) {
            if repeats.next_if_eq(&i).is_some() {
                continue;
            }
            for (view, partition) in owners(&self.views, &event, routed.len(), &mut scratch) {
                routed[partition].push((view, Arc::clone(&event)));
            }
        }
        let mut applied = Vec::new();
        for (partition, events) in self.partitions.iter().zip(routed) {
            if !events.is_empty() {
                let (done, rx) = oneshot::channel();
                partition.do_send(Apply {
                    epoch: pending.epoch,
                    events,
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
        Ok(n)
    }
}

/// What the recorder answered for a batch.
type DurableOutcome = Result<Result<Durable, Arc<store::Error>>, oneshot::error::RecvError>;

/// Waits until the oldest batch in flight can be acknowledged: its dead
/// letters confirmed by the broker and its valid events answered by the
/// recorder; `None` when nothing is in flight. Cancel-safe: a confirm is
/// removed only once it has resolved.
async fn oldest_ready(
    in_flight: &mut VecDeque<InFlight>,
) -> Option<Result<DurableOutcome, SessionError>> {
    let oldest = in_flight.front_mut()?;
    while let Some(confirm) = oldest.confirms.last_mut() {
        match confirm.await {
            Ok(confirmation) if confirmation.is_ack() => {
                oldest.confirms.pop();
            }
            Ok(_) => return Some(Err(SessionError::DeadLetterNacked)),
            Err(err) => return Some(Err(err.into())),
        }
    }
    Some(Ok(match oldest.pending.reply.as_mut() {
        Some(reply) => reply.await,
        // A batch of dead letters only: nothing to wait for.
        None => Ok(Ok(Durable::default())),
    }))
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
    control: mpsc::UnboundedSender<Control>,
}

/// Keeps a push source's epoch open while it lives; see [`SourceHandle::hold_epoch`].
#[derive(Debug)]
pub struct EpochHold {
    control: mpsc::UnboundedSender<Control>,
}

impl Drop for EpochHold {
    fn drop(&mut self) {
        // A stopped source holds nothing.
        self.control.send(Control::Release).ok();
    }
}

/// The `kind` of the actor API's feeds, which every system has.
pub const IN_PROCESS: &str = "in_process";

impl SourceHandle {
    /// A handle and the receiving end of its control channel.
    pub fn new(
        name: String,
        kind: &'static str,
        queue: Option<String>,
        stats: Arc<SourceStats>,
    ) -> (SourceHandle, mpsc::UnboundedReceiver<Control>) {
        let (control, rx) = mpsc::unbounded_channel();
        (
            SourceHandle {
                name,
                kind,
                queue,
                stats,
                control,
            },
            rx,
        )
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

    /// Asks the source to finish `epoch`. False if the source has stopped.
    pub fn barrier(&self, epoch: Epoch) -> bool {
        self.control.send(Control::Barrier(epoch)).is_ok()
    }

    /// Keeps this source's current epoch open until the returned hold is
    /// dropped (push sources only; others ignore it): events it takes
    /// meanwhile all belong to that epoch, and the epoch is sealed only after.
    pub fn hold_epoch(&self) -> EpochHold {
        self.control.send(Control::Hold).ok();
        EpochHold {
            control: self.control.clone(),
        }
    }

    /// Stops the source: it stops consuming and returns once every batch it
    /// had in flight is durable and acknowledged.
    pub async fn stop(&self) {
        let (done, finished) = oneshot::channel();
        if self.control.send(Control::Stop(done)).is_ok() {
            // A source that ended meanwhile has nothing in flight.
            finished.await.ok();
        }
    }
}

/// One push of messages: an in-process ingest call, or one HTTP request.
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

/// Runs a push source (an in-process feed or the HTTP source) until it is
/// stopped or its ingest channel closes. Pushes that queue up together share
/// one batch, up to [`MAX_BATCH`] messages; each is answered once its batch is
/// durable. On a stop it drains: the channel is closed, so a push from then on
/// fails at once (HTTP answers 503), and every push queued before is made
/// durable and answered before the stop is acknowledged.
pub async fn run_push(
    pipeline: Pipeline,
    mut control: mpsc::UnboundedReceiver<Control>,
    mut ingest: mpsc::Receiver<IngestRequest>,
    mut epoch: Epoch,
) {
    pipeline.stats.connected.store(true, Ordering::Relaxed);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut holds = 0usize;
    let mut deferred: Vec<Epoch> = Vec::new();
    let stopped = loop {
        while in_flight.try_join_next().is_some() {}
        tokio::select! {
            biased;
            ctrl = control.recv() => match ctrl {
                Some(Control::Hold) => holds += 1,
                Some(Control::Release) => {
                    holds = holds.saturating_sub(1);
                    if holds == 0 {
                        for finished in deferred.drain(..) {
                            pipeline.control(Some(Control::Barrier(finished)), &mut epoch);
                        }
                    }
                }
                Some(Control::Barrier(finished)) if holds > 0 => deferred.push(finished),
                ctrl => {
                    if let Next::Stop(done) = pipeline.control(ctrl, &mut epoch) {
                        break done;
                    }
                }
            },
            request = ingest.recv() => {
                let Some(first) = request else { break None };
                in_flight.spawn(push_batch(&pipeline, epoch, first, &mut ingest));
            }
        }
    };
    ingest.close();
    while let Some(first) = ingest.recv().await {
        in_flight.spawn(push_batch(&pipeline, epoch, first, &mut ingest));
    }
    while in_flight.join_next().await.is_some() {}
    if let Some(done) = stopped {
        done.send(()).ok();
    }
}

/// Parses `first` and the pushes queued behind it (up to [`MAX_BATCH`]
/// messages), sends the valid events as one batch of `epoch`, and returns the
/// task that answers each push once the batch is durable.
fn push_batch(
    pipeline: &Pipeline,
    epoch: Epoch,
    first: IngestRequest,
    ingest: &mut mpsc::Receiver<IngestRequest>,
) -> impl Future<Output = ()> + Send + 'static {
    let mut messages = first.messages.len();
    let mut requests = vec![first];
    while messages < MAX_BATCH {
        match ingest.try_recv() {
            Ok(request) => {
                messages += request.messages.len();
                requests.push(request);
            }
            Err(_) => break,
        }
    }
    let ingest_ms = crate::now_ms();
    let mut batch = Vec::with_capacity(messages);
    let mut outcomes = Vec::with_capacity(requests.len());
    for request in requests {
        let mut outcome = PushOutcome::default();
        for (index, raw) in request.messages.into_iter().enumerate() {
            match pipeline.schema.parse(&raw, ingest_ms) {
                Ok(event) => {
                    batch.push((raw, ingest_ms, event));
                    outcome.accepted += 1;
                }
                Err(reject) => {
                    pipeline.stats.count_reject(&reject);
                    outcome.rejected.push((index, reject));
                }
            }
        }
        outcomes.push((outcome, request.reply));
    }
    let pending = pipeline.send(epoch, batch);
    let pipeline = pipeline.clone();
    async move {
        let durable = pipeline.durable(pending).await;
        for (outcome, reply) in outcomes {
            // The caller may have stopped waiting.
            reply.send(durable.clone().map(|_| outcome)).ok();
        }
    }
}

/// Runs a RabbitMQ source forever: consume, batch, make durable, ack; reconnect with backoff.
pub async fn run_rabbitmq(
    pipeline: Pipeline,
    mut control: mpsc::UnboundedReceiver<Control>,
    config: RabbitmqSource,
    mut epoch: Epoch,
) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let outcome = session(&pipeline, &mut control, &config, &mut epoch, &mut backoff).await;
        pipeline.stats.connected.store(false, Ordering::Relaxed);
        match outcome {
            Ok(()) => return,
            Err(err) => {
                pipeline.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                let error = crate::error_chain(&err);
                tracing::warn!(source = pipeline.index, queue = %config.queue, error = %error, retry_in_ms = backoff.as_millis() as u64, "rabbitmq source disconnected; unacknowledged messages stay in the queue");
                pipeline.stats.last_error.set(Some(error));
            }
        }
        // Keep passing barriers while the broker is away.
        let wait = tokio::time::sleep(backoff);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                                ctrl = control.recv() => {
                    if let Next::Stop(done) = pipeline.control(ctrl, &mut epoch) {
                        if let Some(done) = done {
                        done.send(()).ok();
                    }
                        return;
                    }
                }
            }
        }
        backoff = (backoff * 2).min(BACKOFF_CAP);
    }
}

/// A dead letter's properties: persistent, with the reason (and the field)
/// in headers.
fn dead_letter_properties(schema: &Schema, reject: &Reject) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        REASON_HEADER.into(),
        AMQPValue::LongString(LongString::from(reject.reason.as_str())),
    );
    if let Some(field) = reject.field {
        headers.insert(
            FIELD_HEADER.into(),
            AMQPValue::LongString(LongString::from(schema.field_name(field))),
        );
    }
    BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2)
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("amqp")]
    Amqp(#[from] lapin::Error),
    #[error("the consumer was cancelled")]
    Cancelled,
    #[error("dead-letter publish was not confirmed")]
    DeadLetterNacked,
    #[error(transparent)]
    NotDurable(#[from] NotDurable),
}

/// A batch waiting to be acked: ack `last_tag` (multiple) once `pending` is
/// durable and every dead letter of it is confirmed.
struct InFlight {
    pending: Pending,
    confirms: Vec<lapin::PublisherConfirm>,
    /// The delivery tags of the dead-lettered messages.
    dead_tags: Vec<u64>,
    last_tag: u64,
}

/// Hands the oldest batch in flight to the speed layer once durable, then
/// acks every delivery up to its last, dead letters included: each was either
/// made durable or dead-lettered with a confirm.
async fn ack_oldest(
    pipeline: &Pipeline,
    consume: &lapin::Channel,
    in_flight: &mut VecDeque<InFlight>,
    outcome: Result<DurableOutcome, SessionError>,
) -> Result<(), SessionError> {
    let outcome = outcome?;
    let Some(mut oldest) = in_flight.pop_front() else {
        return Ok(());
    };
    oldest.pending.reply = None;
    let InFlight {
        pending,
        confirms,
        dead_tags,
        last_tag,
    } = oldest;
    if let Err(err) = pipeline.finish(pending, outcome).await {
        // The valid events go back to the queue; the dead letters confirmed
        // in theirs are acked now, so they are not dead-lettered (and counted)
        // again on every retry while the store fails.
        let later = in_flight
            .drain(..)
            .map(|batch| (batch.confirms, batch.dead_tags));
        for (confirms, dead_tags) in std::iter::once((confirms, dead_tags)).chain(later) {
            let mut confirmed = true;
            for confirm in confirms {
                confirmed &= confirm
                    .await
                    .is_ok_and(|confirmation| confirmation.is_ack());
            }
            if confirmed {
                for tag in dead_tags {
                    consume
                        .basic_ack(tag, BasicAckOptions { multiple: false })
                        .await?;
                }
            }
        }
        return Err(err.into());
    }
    consume
        .basic_ack(last_tag, BasicAckOptions { multiple: true })
        .await?;
    Ok(())
}

async fn session(
    pipeline: &Pipeline,
    control: &mut mpsc::UnboundedReceiver<Control>,
    config: &RabbitmqSource,
    epoch: &mut Epoch,
    backoff: &mut Duration,
) -> Result<(), SessionError> {
    // Named (`connection_name` in `rabbitmqctl list_connections
    // client_properties`), so an operator can tell which connection consumes what.
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("tandem source of {}", config.queue).into());
    let connection = Connection::connect(&config.uri, properties).await?;
    let consume = connection.create_channel().await?;
    let dead_letters = connection.create_channel().await?;
    consume
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await?;
    for queue in [&config.queue, &config.dead_letter_queue] {
        consume
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
    }
    dead_letters
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let tag = format!("tandem-{}", pipeline.index);
    let mut consumer = consume
        .basic_consume(
            config.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    pipeline.stats.connected.store(true, Ordering::Relaxed);
    pipeline.stats.last_error.set(None);
    tracing::info!(source = pipeline.index, queue = %config.queue, "rabbitmq source connected");

    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    loop {
        tokio::select! {
            biased;
                        ctrl = control.recv() => match pipeline.control(ctrl, epoch) {
                Next::Go => {}
                Next::Stop(done) => {
                    // No new deliveries; finish (make durable and ack) what is in flight.
                    consume.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await?;
                                        while let Some(outcome) = oldest_ready(&mut in_flight).await {
                        ack_oldest(pipeline, &consume, &mut in_flight, outcome).await?;
                    }
                    connection.close(200, "tandem is stopping".into()).await.ok();
                    tracing::info!(source = pipeline.index, queue = %config.queue, "rabbitmq source stopped");
                    if let Some(done) = done {
                        done.send(()).ok();
                    }
                    return Ok(());
                }

            },
                        Some(outcome) = oldest_ready(&mut in_flight) => {
                ack_oldest(pipeline, &consume, &mut in_flight, outcome).await?;
                // Progress: a session that fails at once (a full disk) backs off, one that worked starts over.
                *backoff = BACKOFF_FIRST;
            },
            delivery = consumer.next() => {
                let first = match delivery {
                    Some(delivery) => delivery?,
                    None => return Err(SessionError::Cancelled),
                };
                let mut deliveries = vec![first];
                while deliveries.len() < MAX_BATCH {
                    match consumer.next().now_or_never() {
                        Some(Some(delivery)) => deliveries.push(delivery?),
                        Some(None) => return Err(SessionError::Cancelled),
                        None => break,
                    }
                }
                let last_tag = deliveries.last().map_or(0, |delivery| delivery.delivery_tag);
                let ingest_ms = crate::now_ms();
                let mut batch = Vec::with_capacity(deliveries.len());
                let mut dead = Vec::new();
                for delivery in deliveries {
                    match pipeline.schema.parse(&delivery.data, ingest_ms) {
                        Ok(event) => batch.push((delivery.data, ingest_ms, event)),
                        Err(reject) => {
                            pipeline.stats.count_reject(&reject);
                            dead.push((delivery.delivery_tag, delivery.data, reject));
                        }
                    }
                }
                // Every dead letter of the batch is handed to the connection at
                // once: one write for all, not a round trip each.
                let confirms = futures_util::future::try_join_all(dead.iter().map(|(_, data, reject)| {
                    dead_letters.basic_publish("".into(), config.dead_letter_queue.as_str().into(), BasicPublishOptions::default(), data, dead_letter_properties(&pipeline.schema, reject))
                }))
                .await?;
                let dead_tags = dead.into_iter().map(|(tag, _, _)| tag).collect();
                // The dead letters' confirms are awaited with the batch's ack,
                // so the broker's disk does not hold up the next deliveries.
                let pending = pipeline.send(*epoch, batch);
                in_flight.push_back(InFlight { pending, confirms, dead_tags, last_tag });
            },
        }
    }
}
