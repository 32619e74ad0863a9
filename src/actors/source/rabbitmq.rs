//! The RabbitMQ source: an actor under [`actix::Supervisor`], on an arbiter
//! (thread) of its own, so that parsing its deliveries never runs on the
//! actix system thread.
//!
//! One session is one connection: the actor consumes the lapin consumer as
//! an actor stream. Deliveries make one batch, at most [`MAX_BATCH`], with
//! those ready together and those that arrived while [`IN_FLIGHT_BATCHES`]
//! batches were on their way to being acked: an idle source sends a
//! delivery at once, a busy one what arrived during its last batch's way to
//! the ack, so that the threads a batch passes through wake once per tens
//! of deliveries rather than once per few. It parses each batch, publishes
//! its dead letters (confirmed) and sends its valid events to the Recorder,
//! and hands the batch to the session's acknowledger, a task that acks
//! batches in order once each is durable (and routed to and applied by the
//! speed layer) and its dead letters are confirmed. The acknowledger runs
//! on the system thread, which only routes: on the source's own thread it
//! waited behind the parsing of the next batches, and the broker, its
//! prefetch window full, behind it.
//!
//! A lost connection (or a batch the store refused, a dead letter the
//! broker refused, an acknowledger that panicked while a batch was made
//! durable, or one found gone) ends the session: the
//! actor stops and the supervisor restarts it, which connects again after a
//! backoff. What a restart keeps is in the actor: its epoch (barriers are
//! messages, handled while the broker is away) and the acknowledgers of
//! earlier sessions, which still hand their durable batches to the speed
//! layer; once their session failed (or its channel is gone) they ack
//! nothing more, the broker delivers those messages again, and with an
//! `event.id` the Recorder finds their ids in the log and neither layer
//! counts them twice.

use super::{Control, InFlightTasks, MAX_BATCH, NotDurable, Pending, Pipeline, spawn_on_system};
use crate::config::RabbitmqSource;
use crate::event::{Epoch, Reject, Schema};
use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message,
    SpawnHandle, StreamHandler, Supervised, WrapFuture,
};
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Header carrying a dead letter's rejection reason.
pub const REASON_HEADER: &str = "x-tandem-reason";
/// Header carrying the field a dead letter's rejection names.
pub const FIELD_HEADER: &str = "x-tandem-field";
/// Reconnect delays: doubling from the first to the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// How long a stop waits for the broker to confirm the consumer's cancel.
const CANCEL_WAIT: Duration = Duration::from_secs(5);
/// Batches of a session on their way to being acked before the deliveries
/// that arrive are held, to be sent as one batch when one of them is acked
/// (or once [`MAX_BATCH`] are held, which a prefetch window larger than
/// that allows).
const IN_FLIGHT_BATCHES: usize = 1;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The broker connection or a channel failed.
    #[error("amqp")]
    Amqp(#[from] lapin::Error),
    /// The broker cancelled the consumer (the queue was deleted, say).
    #[error("the consumer was cancelled")]
    Cancelled,
    /// The broker refused a dead letter.
    #[error("dead-letter publish was not confirmed")]
    DeadLetterNacked,
    /// The session's acknowledger ended before its session did.
    #[error("the session's acknowledger ended")]
    AcknowledgerEnded,
    /// The session's acknowledger panicked (a bug) while a batch was made
    /// durable and handed to the speed layer.
    #[error("the session's acknowledger panicked: {0}")]
    AcknowledgerPanicked(String),
    /// The store refused a batch: its messages go back to the queue.
    #[error(transparent)]
    NotDurable(#[from] NotDurable),
    /// The task publishing a batch's dead letters ended abnormally.
    #[error("the dead-letter publish task ended abnormally")]
    Publisher,
}

/// A RabbitMQ source, restarted by its supervisor whenever a session ends.
pub struct Rabbitmq {
    pipeline: Pipeline,
    config: RabbitmqSource,
    /// The epoch new batches belong to.
    epoch: Epoch,
    /// The wait before the next connect (none at the first start).
    delay: Duration,
    /// The wait after the next failure that follows no progress.
    backoff: Duration,
    /// Sessions are numbered, so that news of an ended one is told apart.
    generation: u64,
    session: Option<Session>,
    /// The backoff's timer or the connect under way, cancelled by a stop.
    connecting: Option<SpawnHandle>,
    /// Acknowledgers of this and earlier sessions, awaited by a stop.
    acknowledgers: InFlightTasks,
    stopped: bool,
}

/// A connected session.
struct Session {
    consume: Channel,
    dead_letters: Channel,
    tag: String,
    /// Batches to the session's acknowledger, in delivery order.
    batches: mpsc::UnboundedSender<InFlight>,
    /// Set once the session acked a batch: the next failure backs off from the start.
    progressed: Arc<AtomicBool>,
    /// Batches sent and not yet through the acknowledger (each told by an
    /// [`Acked`]).
    in_flight: usize,
    /// Deliveries held while [`IN_FLIGHT_BATCHES`] batches are in flight,
    /// and when the first of them arrived.
    held: Vec<lapin::message::Delivery>,
    held_since: Option<Instant>,
}

/// A batch waiting to be acked: ack `last_tag` (multiple) once `pending` is
/// durable and every dead letter of it is confirmed.
struct InFlight {
    pending: Pending,
    /// The batch's dead letters, published and confirmed (or not).
    dead: Option<JoinHandle<Result<(), SessionError>>>,
    /// The delivery tags of the dead-lettered messages.
    dead_tags: Vec<u64>,
    last_tag: u64,
}

/// A session's acknowledger is through with a batch: held deliveries may go.
#[derive(Message)]
#[rtype(result = "()")]
struct Acked {
    generation: u64,
}

/// A session's acknowledger found it broken.
#[derive(Message)]
#[rtype(result = "()")]
struct Lost {
    generation: u64,
    error: SessionError,
}

/// A connect that worked: the connection, its channels, and the consumer.
struct Connected {
    connection: Connection,
    consume: Channel,
    dead_letters: Channel,
    consumer: Consumer,
    tag: String,
}

impl Rabbitmq {
    /// A source that consumes `config`'s queue into `pipeline`, starting in `epoch`.
    pub fn new(pipeline: Pipeline, config: RabbitmqSource, epoch: Epoch) -> Rabbitmq {
        Rabbitmq {
            pipeline,
            config,
            epoch,
            delay: Duration::ZERO,
            backoff: BACKOFF_FIRST,
            generation: 0,
            session: None,
            connecting: None,
            acknowledgers: InFlightTasks::default(),
            stopped: false,
        }
    }

    /// Ends the current session (or connect): the actor stops, and its
    /// supervisor restarts it, to connect again after the backoff.
    fn lost(&mut self, error: &SessionError, ctx: &mut Context<Self>) {
        if self.stopped {
            return;
        }
        // Dropping the session closes its acknowledger's queue: it finishes
        // the batches it has (no ack once the channel is gone), then closes
        // the connection, so the broker delivers again what was not acked.
        let progressed = self
            .session
            .take()
            .is_some_and(|session| session.progressed.load(Ordering::Relaxed));
        if progressed {
            self.backoff = BACKOFF_FIRST;
        }
        self.delay = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_CAP);
        let stats = &self.pipeline.stats;
        stats.connected.store(false, Ordering::Relaxed);
        stats.disconnects.fetch_add(1, Ordering::Relaxed);
        let text = crate::error_chain(error);
        tracing::warn!(source = self.pipeline.index, queue = %self.config.queue, error = %text, retry_in_ms = self.delay.as_millis() as u64, "rabbitmq source disconnected; unacknowledged messages stay in the queue");
        stats.last_error.set(Some(text));
        ctx.stop();
    }

    /// Opens a session; the connect under way is cancelled by a stop.
    fn open(&mut self, ctx: &mut Context<Self>) -> SpawnHandle {
        let (config, index) = (self.config.clone(), self.pipeline.index);
        let connect = async move { connect(&config, index).await };
        ctx.spawn(connect.into_actor(self).map(|outcome, source, ctx| {
            source.connecting = None;
            match outcome {
                Ok(connected) => source.begin(connected, ctx),
                Err(err) => source.lost(&err, ctx),
            }
        }))
    }

    /// Starts the session a connect opened.
    fn begin(&mut self, connected: Connected, ctx: &mut Context<Self>) {
        let Connected {
            connection,
            consume,
            dead_letters,
            consumer,
            tag,
        } = connected;
        let (batches, queue) = mpsc::unbounded_channel();
        let progressed = Arc::new(AtomicBool::new(false));
        self.acknowledgers.push(spawn_on_system(acknowledge(
            self.pipeline.clone(),
            connection,
            consume.clone(),
            queue,
            Arc::clone(&progressed),
            (ctx.address(), self.generation),
        )));
        self.session = Some(Session {
            consume,
            dead_letters,
            tag,
            batches,
            progressed,
            in_flight: 0,
            held: Vec::new(),
            held_since: None,
        });
        ctx.add_stream(consumer.ready_chunks(MAX_BATCH));
        self.pipeline.stats.connected.store(true, Ordering::Relaxed);
        self.pipeline.stats.last_error.set(None);
        tracing::info!(source = self.pipeline.index, queue = %self.config.queue, "rabbitmq source connected");
    }

    /// Holds `deliveries` behind those held already, then sends what is held
    /// in batches of at most [`MAX_BATCH`], unless [`IN_FLIGHT_BATCHES`]
    /// batches are in flight and fewer than [`MAX_BATCH`] deliveries are
    /// held; `at_once` sends them anyway. A session whose acknowledger is
    /// gone (the system is stopping, or it panicked other than while a
    /// batch was made durable) is lost instead: nothing of it would be acked.
    fn offer(
        &mut self,
        deliveries: Vec<lapin::message::Delivery>,
        at_once: bool,
        ctx: &mut Context<Self>,
    ) {
        // Without a session (stopping), deliveries go back to the queue.
        let Some(session) = self.session.as_mut() else {
            return;
        };
        if session.batches.is_closed() {
            return self.lost(&SessionError::AcknowledgerEnded, ctx);
        }
        let now = Instant::now();
        if session.held.is_empty() && !deliveries.is_empty() {
            session.held_since = Some(now);
        }
        session.held.extend(deliveries);
        while !session.held.is_empty() {
            let busy = session.in_flight >= IN_FLIGHT_BATCHES;
            if busy && session.held.len() < MAX_BATCH && !at_once {
                return;
            }
            let n = session.held.len().min(MAX_BATCH);
            let batch: Vec<_> = session.held.drain(..n).collect();
            let received = session.held_since.unwrap_or(now);
            // What is left arrived with this call's deliveries.
            session.held_since = (!session.held.is_empty()).then_some(now);
            session.in_flight += 1;
            let sent = Self::take(
                &self.pipeline,
                &self.config,
                self.epoch,
                (batch, received),
                session,
            );
            if !sent {
                session.in_flight -= 1;
                return self.lost(&SessionError::AcknowledgerEnded, ctx);
            }
        }
    }

    /// Parses a batch of deliveries (the first received at `received`),
    /// publishes its dead letters and sends its valid events to the Recorder
    /// in `epoch`, then hands it to the acknowledger; answers whether the
    /// acknowledger took it.
    fn take(
        pipeline: &Pipeline,
        config: &RabbitmqSource,
        epoch: Epoch,
        (deliveries, received): (Vec<lapin::message::Delivery>, Instant),
        session: &Session,
    ) -> bool {
        let Some(last_tag) = deliveries.last().map(|delivery| delivery.delivery_tag) else {
            return true;
        };
        let ingest_ms = crate::now_ms();
        let mut batch = Vec::with_capacity(deliveries.len());
        let mut dead = Vec::new();
        for delivery in deliveries {
            match pipeline.parse(&delivery.data, ingest_ms) {
                Ok(event) => batch.push((delivery.data, ingest_ms, event)),
                Err(reject) => dead.push((delivery.delivery_tag, delivery.data, reject)),
            }
        }
        let dead_tags = dead.iter().map(|(tag, _, _)| *tag).collect();
        let dead = (!dead.is_empty()).then(|| {
            actix::spawn(dead_letter(
                session.dead_letters.clone(),
                config.dead_letter_queue.clone(),
                Arc::clone(&pipeline.schema),
                dead,
            ))
        });
        let pending = pipeline.send(epoch, batch, received);
        // The acknowledger ends only when this sender is dropped, or if the
        // system is stopping (or it panicked other than while a batch was
        // made durable) since `offer` looked.
        let refused = session.batches.send(InFlight {
            pending,
            dead,
            dead_tags,
            last_tag,
        });
        if let Err(mpsc::error::SendError(batch)) = refused {
            // Sent to the Recorder already: it still goes to the speed
            // layer once durable, as an ended session's batches do, and its
            // deliveries, not acked, come back as repeats.
            let pipeline = pipeline.clone();
            spawn_on_system(async move {
                pipeline.durable(batch.pending).await.ok();
            });
            return false;
        }
        true
    }

    /// Stops for good: no new deliveries; every batch in flight is finished
    /// (made durable, applied and acked) before `done` is answered.
    fn stop(&mut self, done: tokio::sync::oneshot::Sender<()>, ctx: &mut Context<Self>) {
        // Stopped first: a session found broken now is not restarted.
        self.stopped = true;
        self.offer(Vec::new(), true, ctx);
        if let Some(connecting) = self.connecting.take() {
            ctx.cancel_future(connecting);
        }
        let session = self.session.take();
        let (index, queue) = (self.pipeline.index, self.config.queue.clone());
        self.pipeline
            .stats
            .connected
            .store(false, Ordering::Relaxed);
        let first = async move {
            if let Some(Session {
                consume,
                tag,
                batches,
                ..
            }) = session
            {
                // A broker that blocks the connection never answers: the
                // stop goes on without its answer.
                let cancel =
                    consume.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
                tokio::time::timeout(CANCEL_WAIT, cancel).await.ok();
                // Its acknowledger acks what it has, then closes the connection.
                drop(batches);
            }
        };
        let last =
            move || tracing::info!(source = index, queue = %queue, "rabbitmq source stopped");
        self.acknowledgers.stop(first, last, done);
    }
}

impl Actor for Rabbitmq {
    type Context = Context<Self>;

    /// Connects (after the backoff, on a restart); barriers are handled meanwhile.
    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.stopped {
            return;
        }
        self.generation += 1;
        self.connecting = Some(if self.delay.is_zero() {
            self.open(ctx)
        } else {
            ctx.run_later(self.delay, |source, ctx| {
                source.connecting = Some(source.open(ctx));
            })
        });
    }
}

impl Supervised for Rabbitmq {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.pipeline.stats.restarts.fetch_add(1, Ordering::Relaxed);
    }
}

impl StreamHandler<Vec<lapin::Result<lapin::message::Delivery>>> for Rabbitmq {
    fn handle(
        &mut self,
        ready: Vec<lapin::Result<lapin::message::Delivery>>,
        ctx: &mut Context<Self>,
    ) {
        match ready.into_iter().collect::<lapin::Result<Vec<_>>>() {
            Ok(deliveries) => self.offer(deliveries, false, ctx),
            // What came before the error in this batch is sent nowhere: the
            // broker delivers it again.
            Err(err) => self.lost(&err.into(), ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        if self.session.is_some() {
            self.lost(&SessionError::Cancelled, ctx);
        }
    }
}

impl Handler<Control> for Rabbitmq {
    type Result = ();

    fn handle(&mut self, control: Control, ctx: &mut Context<Self>) {
        match control {
            // The deliveries held go to the Recorder first, so nothing read
            // before the barrier is held back from the finished epoch: the
            // barrier goes at once, and while the broker is away too.
            Control::Barrier(finished) => {
                self.offer(Vec::new(), true, ctx);
                self.pipeline.barrier(finished, &mut self.epoch);
            }
            Control::Stop(done) => self.stop(done, ctx),
            // Only push sources keep an epoch open on request.
            Control::Hold | Control::Release => {}
        }
    }
}

impl Handler<Acked> for Rabbitmq {
    type Result = ();

    fn handle(&mut self, acked: Acked, ctx: &mut Context<Self>) {
        if acked.generation == self.generation {
            if let Some(session) = self.session.as_mut() {
                session.in_flight = session.in_flight.saturating_sub(1);
            }
            self.offer(Vec::new(), false, ctx);
        }
    }
}

impl Handler<Lost> for Rabbitmq {
    type Result = ();

    fn handle(&mut self, lost: Lost, ctx: &mut Context<Self>) {
        // Sessions are cleared on a restart, which starts the next generation.
        if self.session.is_some() && lost.generation == self.generation {
            self.lost(&lost.error, ctx);
        }
    }
}

/// Opens a connection and its two channels (consume; dead letters, with
/// publisher confirms), declares the queues and starts consuming.
async fn connect(config: &RabbitmqSource, index: usize) -> Result<Connected, SessionError> {
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
    let tag = format!("tandem-{index}");
    let consumer = consume
        .basic_consume(
            config.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(Connected {
        connection,
        consume,
        dead_letters,
        consumer,
        tag,
    })
}

/// Publishes one batch's dead letters, all handed to the connection at once
/// (one write, not a round trip each), then waits for the broker's confirms.
async fn dead_letter(
    channel: Channel,
    queue: String,
    schema: Arc<Schema>,
    dead: Vec<(u64, Vec<u8>, Reject)>,
) -> Result<(), SessionError> {
    let confirms = futures_util::future::try_join_all(dead.iter().map(|(_, data, reject)| {
        channel.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            data,
            dead_letter_properties(&schema, reject),
        )
    }))
    .await?;
    for confirm in confirms {
        if !confirm.await?.is_ack() {
            return Err(SessionError::DeadLetterNacked);
        }
    }
    Ok(())
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

/// A session's acknowledger: takes its batches in delivery order; once a
/// batch is durable it is handed to the speed layer (by `Pipeline::durable`),
/// and once its dead letters are confirmed too, every delivery up to its last
/// is acked. After a failure (told to the actor as [`Lost`]) nothing more is
/// acked but the dead letters confirmed in their queue (so they are not
/// dead-lettered again on every retry while the store fails); durable batches
/// still reach the speed layer. A panic (a bug) while a batch is made
/// durable and handed to the speed layer is such a failure: the actor hears
/// of it at once, not only once it next has a batch to send, and the
/// batch's dead letters, once confirmed, are still acked. (A panic before the
/// speed layer has the batch leaves it to the next batch run: its
/// redelivery is a repeat of ids in the log, which neither layer counts.)
/// Once the actor drops the session, the connection is closed: the broker
/// delivers again what was not acked.
async fn acknowledge(
    pipeline: Pipeline,
    connection: Connection,
    consume: Channel,
    mut batches: mpsc::UnboundedReceiver<InFlight>,
    progressed: Arc<AtomicBool>,
    (source, generation): (Addr<Rabbitmq>, u64),
) {
    let mut failed = false;
    while let Some(batch) = batches.recv().await {
        let confirmed = match batch.dead {
            Some(task) => task.await.unwrap_or(Err(SessionError::Publisher)),
            None => Ok(()),
        };
        let durable = std::panic::AssertUnwindSafe(make_durable(&pipeline, batch.pending))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let text = crate::panic_text(&*panic);
                tracing::error!(panic = %text, "a RabbitMQ session's acknowledger panicked while a batch was made durable");
                Err(SessionError::AcknowledgerPanicked(text))
            });
        let outcome = match (confirmed, durable) {
            (Ok(()), Ok(())) if !failed => consume
                .basic_ack(batch.last_tag, BasicAckOptions { multiple: true })
                .await
                .map_err(SessionError::from),
            (Ok(()), durable) => {
                // Not acked with their batch: the dead letters, confirmed in
                // their queue, are acked alone (so they are not
                // dead-lettered again).
                for tag in batch.dead_tags {
                    consume
                        .basic_ack(tag, BasicAckOptions { multiple: false })
                        .await
                        .ok();
                }
                durable
            }
            (Err(err), _) => Err(err),
        };
        match outcome {
            Ok(()) if !failed => progressed.store(true, Ordering::Relaxed),
            Ok(()) => {}
            Err(error) => {
                if !failed {
                    source.do_send(Lost { generation, error });
                }
                failed = true;
            }
        }
        source.do_send(Acked { generation });
    }
    connection
        .close(200, "tandem is stopping".into())
        .await
        .ok();
}

/// Waits until a batch is durable and hands it to the speed layer.
async fn make_durable(pipeline: &Pipeline, pending: Pending) -> Result<(), SessionError> {
    let durable = pipeline.durable(pending).await;
    crate::faults::panic_point("rabbitmq.acknowledger");
    durable.map(drop).map_err(SessionError::from)
}
