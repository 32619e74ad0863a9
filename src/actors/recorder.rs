//! The Recorder: the single writer of the master dataset. It runs alone on its
//! own arbiter thread, so an fsync stalls nothing else.
//!
//! In: `Append` (a source's batch, with a reply channel), `Barrier` (a source
//! has sent everything of an epoch). Out: `Durable` replies, and `Sealed` to
//! the supervisor once every source has passed an epoch's barrier.
//!
//! Group commit: `Append` only stages records; the first one schedules a
//! `Flush` with `ctx.notify`, which actix runs after every message already in
//! the mailbox, so concurrent batches share one write and one fsync.
//!
//! It decides which record holds the first copy of its id, in log order, as it
//! stages them ([`FirstCopies`]): a `Durable` reply names the other copies,
//! which the speed layer skips, as the batch run does. `IdIndexReady` hands it
//! each new batch run's id index.
//!
//! It runs under `actix::Supervisor`: when a failed write cannot be cut back,
//! it stops, and the restart opens the log again (cutting the torn tail).

use crate::event::{Epoch, Seq};
use crate::metrics::Shared;
use crate::store::{
    self, DataPaths, EpochIndex, FirstCopies, IdIndex, LogPosition, MasterLog, NewRecord,
    SealedEpoch,
};
use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message, Recipient, Supervised};
use prometheus_client::metrics::histogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::oneshot;

/// The reply to an `Append`.
pub type DurableReply = oneshot::Sender<Result<Durable, Arc<store::Error>>>;

/// One event as the master dataset keeps it.
#[derive(Debug, Clone)]
pub struct RecordIn {
    /// The message as received.
    pub raw: Vec<u8>,
    /// Arrival, epoch milliseconds.
    pub ingest_ms: i64,
    /// Event time, epoch milliseconds.
    pub event_ms: i64,
    /// Hash of the event id, 0 for none.
    pub id_hash: u64,
}

/// Where a batch landed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Durable {
    /// Seqs given to the batch: `first..next`.
    pub first: Seq,
    /// One past the last seq of the batch.
    pub next: Seq,
    /// Positions in the batch of the records whose id an earlier record of
    /// the log already has: durable, but not counted again.
    pub repeats: Vec<u32>,
}

/// A source's batch of valid events of one epoch; the reply comes once it is fsynced.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Append {
    /// Index of the sending source.
    pub source: usize,
    /// The epoch of every event in the batch.
    pub epoch: Epoch,
    /// The events.
    pub records: Vec<RecordIn>,
    /// Where the outcome goes; dropped unanswered only if the recorder stops.
    pub reply: DurableReply,
}

/// Source `source` has sent every event of epochs <= `epoch`.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Barrier {
    /// Index of the sending source.
    pub source: usize,
    /// The epoch finished.
    pub epoch: Epoch,
}

/// Every record of epochs <= `sealed.epoch` is durable before `sealed.end`.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Sealed(pub SealedEpoch);

/// A batch run's id index: the ids of every record before its `upto`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct IdIndexReady(pub Arc<IdIndex>);

/// Writes and fsyncs everything staged (sent to self).
#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

/// The recorder's state.
pub struct Recorder {
    /// Where the log lives, to open it again after a restart.
    paths: DataPaths,
    segment_max_bytes: u64,
    log: MasterLog,
    epochs: EpochIndex,
    /// Per source, the newest epoch whose barrier it has sent.
    barriers: Vec<Option<Epoch>>,
    /// The newest epoch some source has passed, and for each epoch between the
    /// last sealed one and it, the seq at which the first source passed it.
    first_passed: Vec<(Epoch, Seq)>,
    /// Replies waiting for the next flush.
    waiting: Vec<(DurableReply, Durable)>,
    flush_scheduled: bool,
    /// Told of every seal.
    sealed_to: Recipient<Sealed>,
    /// Published for scrapes: records durable.
    shared: Arc<Shared>,
    /// Observed per group commit.
    durable_write: Histogram,
    /// When the first record of the next commit was staged.
    staged_since: Option<std::time::Instant>,
    /// Which records hold the first copy of their id.
    first_copies: FirstCopies,
}

impl Recorder {
    /// A recorder over an opened log and epoch index, for `n_sources` sources.
    #[expect(
        clippy::too_many_arguments,
        reason = "built once, by `start`, from what recovery opened"
    )]
    pub fn new(
        paths: DataPaths,
        segment_max_bytes: u64,
        log: MasterLog,
        epochs: EpochIndex,
        n_sources: usize,
        sealed_to: Recipient<Sealed>,
        shared: Arc<Shared>,
        durable_write: Histogram,
        first_copies: FirstCopies,
    ) -> Recorder {
        shared
            .durable_records
            .store(log.next_seq().0, Ordering::Relaxed);
        Recorder {
            paths,
            segment_max_bytes,
            log,
            epochs,
            barriers: vec![None; n_sources],
            first_passed: Vec::new(),
            waiting: Vec::new(),
            flush_scheduled: false,
            sealed_to,
            shared,
            durable_write,
            staged_since: None,
            first_copies,
        }
    }

    fn publish_ids(&self) {
        self.shared
            .ids_held
            .store(self.first_copies.held() as u64, Ordering::Relaxed);
        self.shared
            .ids_indexed
            .store(self.first_copies.index().len() as u64, Ordering::Relaxed);
    }

    fn flush(&mut self, ctx: &mut Context<Self>) -> Result<LogPosition, Arc<store::Error>> {
        self.flush_scheduled = false;
        let outcome = self.log.commit().map_err(Arc::new);
        match outcome {
            Ok(_) => self.first_copies.commit(),
            Err(_) => {
                self.first_copies.rollback();
                self.unstage_barriers();
            }
        }
        self.publish_ids();
        if let Some(since) = self.staged_since.take() {
            self.durable_write.observe(since.elapsed().as_secs_f64());
        }
        self.shared
            .durable_records
            .store(self.log.next_seq().0, Ordering::Relaxed);
        match &outcome {
            Err(err) => {
                tracing::error!(error = %err, batches = self.waiting.len(), "group commit failed; the batches are not acknowledged");
                self.shared
                    .store_write_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.shared
                    .store_error
                    .set(Some(crate::error_chain(&**err)));
            }
            // Only a commit that wrote something shows that writes work again.
            Ok(_) if !self.waiting.is_empty() && self.shared.store_error.get().is_some() => {
                tracing::warn!("the master dataset takes writes again");
                self.shared.store_error.set(None);
            }
            Ok(_) => {}
        }
        for (reply, durable) in self.waiting.drain(..) {
            // A source that gave up waiting has nothing left to ack.
            reply
                .send(outcome.as_ref().map(|_| durable).map_err(Arc::clone))
                .ok();
        }
        if self.log.is_poisoned() {
            tracing::error!(
                "the master dataset refuses appends; restarting the recorder to open it again"
            );
            ctx.stop();
        }
        outcome.map(|appended| appended.end)
    }

    /// A failed commit hands its seqs out again: a barrier passed at a seq
    /// that was only staged was passed at the end of what is durable, or a
    /// later epoch's records could get seqs below a seal's `later_from`.
    fn unstage_barriers(&mut self) {
        let durable = self.log.next_seq();
        for (_, seq) in &mut self.first_passed {
            *seq = (*seq).min(durable);
        }
    }

    /// After a restart of the log: whole records a failed commit left behind
    /// (written, but the fsync failed and they could not be cut back) are in
    /// the log, so their ids are taken as first copies, as a batch run will.
    /// No source was told of them and the speed layer never saw them: until a
    /// batch run covers them, the merged answer lacks them.
    fn adopt_kept_records(&mut self, from: Seq) {
        let segments = match store::list_segments(&self.paths) {
            Ok(segments) => segments,
            Err(err) => {
                tracing::error!(error = %err, "cannot list the segments to read the ids a failed commit left");
                return;
            }
        };
        for (i, segment) in segments.iter().enumerate() {
            if segments
                .get(i + 1)
                .is_some_and(|next| next.first_seq <= from)
            {
                continue;
            }
            let first_copies = &mut self.first_copies;
            let read = store::scan_segment(segment, None, |header, _| {
                if header.seq >= from {
                    tracing::warn!(seq = %header.seq, "a record of a failed commit survived; the batch layer counts it");
                    if let Err(err) = first_copies.first(header.seq, header.id_hash) {
                        tracing::error!(error = %err, "cannot read the id index: the record's id is remembered as seen");
                        first_copies.remember(header.seq, header.id_hash);
                    }
                }
            });
            if let Err(err) = read {
                tracing::error!(error = %err, "cannot read the ids a failed commit left");
            }
        }
        self.first_copies.commit();
    }

    /// The newest epoch every source has passed.
    fn aligned(&self) -> Option<Epoch> {
        self.barriers.iter().copied().min().flatten()
    }
}

impl Actor for Recorder {
    /// Every message comes by `do_send`, which ignores the mailbox capacity:
    /// batches are bounded by the sources' prefetch windows instead.
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        self.publish_ids();
    }
}

impl Supervised for Recorder {
    /// Opens the log again; barriers and seals seen so far are kept. If the log
    /// cannot be opened, the old one stays and refuses appends, and the next
    /// failed batch tries again.
    fn restarting(&mut self, _: &mut Self::Context) {
        self.flush_scheduled = false;
        self.first_copies.rollback();
        let durable = self.log.next_seq();
        match MasterLog::open(&self.paths, self.segment_max_bytes) {
            Ok((log, recovery)) => {
                tracing::warn!(
                    records = recovery.next_seq.0,
                    torn_bytes = recovery.torn_bytes,
                    "recorder restarted"
                );
                self.log = log;
                if recovery.next_seq > durable {
                    self.adopt_kept_records(durable);
                }
                self.unstage_barriers();
            }
            Err(err) => {
                tracing::error!(error = %err, "recorder restart cannot open the master dataset")
            }
        }
    }
}

impl Handler<Append> for Recorder {
    type Result = ();

    fn handle(&mut self, msg: Append, ctx: &mut Self::Context) {
        let epoch = msg.epoch;
        // First copies are decided before anything is staged: a lookup that
        // cannot read the id index refuses the batch (the source sends it
        // again), and its decisions are taken back.
        let first = self.log.staged_seq();
        let mark = self.first_copies.mark();
        let mut repeats = Vec::new();
        for (i, record) in (0u32..).zip(&msg.records) {
            match self
                .first_copies
                .first(Seq(first.0 + u64::from(i)), record.id_hash)
            {
                Ok(true) => {}
                Ok(false) => repeats.push(i),
                Err(err) => {
                    self.first_copies.rollback_to(mark);
                    tracing::error!(error = %err, "cannot read the id index: the batch is refused");
                    msg.reply.send(Err(Arc::new(err))).ok();
                    return;
                }
            }
        }
        let (staged, next) = self.log.stage(msg.records.iter().map(|record| NewRecord {
            epoch,
            ingest_ms: record.ingest_ms,
            event_ms: record.event_ms,
            id_hash: record.id_hash,
            raw: &record.raw,
        }));
        debug_assert_eq!(staged, first);
        self.waiting.push((
            msg.reply,
            Durable {
                first,
                next,
                repeats,
            },
        ));
        self.staged_since
            .get_or_insert_with(std::time::Instant::now);
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(Flush);
        }
    }
}

impl Handler<Flush> for Recorder {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) {
        if self.flush_scheduled {
            // Errors were sent to every waiting source.
            self.flush(ctx).ok();
        }
    }
}

impl Handler<IdIndexReady> for Recorder {
    type Result = ();

    fn handle(&mut self, IdIndexReady(index): IdIndexReady, _: &mut Self::Context) {
        self.first_copies.advance(index);
        self.publish_ids();
    }
}

impl Handler<Barrier> for Recorder {
    type Result = ();

    #[tracing::instrument(skip_all, fields(source = msg.source, epoch = %msg.epoch))]
    fn handle(&mut self, msg: Barrier, ctx: &mut Self::Context) {
        let Some(slot) = self.barriers.get_mut(msg.source) else {
            tracing::error!("barrier from an unknown source");
            return;
        };
        if slot.is_some_and(|passed| passed >= msg.epoch) {
            return;
        }
        *slot = Some(msg.epoch);
        // Everything staged so far came before this barrier; what this source
        // sends next belongs to a later epoch.
        let passed_at = self.log.staged_seq();
        let newest = self.first_passed.last().map(|(epoch, _)| *epoch);
        if newest.is_none_or(|newest| msg.epoch > newest) {
            self.first_passed.push((msg.epoch, passed_at));
        }
        let Some(aligned) = self.aligned() else {
            return;
        };
        let last_sealed = self.epochs.last().map(|sealed| sealed.epoch);
        if last_sealed.is_some_and(|last| aligned <= last) {
            return;
        }
        let end = match self.flush(ctx) {
            Ok(end) => end,
            // Not sealed: the next barrier tries again.
            Err(_) => return,
        };
        let later_from = self
            .first_passed
            .iter()
            .find(|(epoch, _)| *epoch >= aligned)
            .map_or(passed_at, |(_, seq)| *seq);
        self.first_passed.retain(|(epoch, _)| *epoch > aligned);
        let sealed = SealedEpoch {
            epoch: aligned,
            end,
            next_seq: self.log.next_seq(),
            later_from,
            sealed_at_ms: crate::now_ms(),
        };
        match self.epochs.seal(sealed) {
            Ok(()) => {
                crate::faults::crash_point("seal.after");
                tracing::debug!(end = %end, "sealed");
                self.sealed_to.do_send(Sealed(sealed));
            }
            Err(err) => tracing::error!(error = %err, "cannot record a sealed epoch"),
        }
    }
}
