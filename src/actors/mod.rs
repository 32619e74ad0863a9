//! The running system: [`start`] recovers the data_dir, replays the speed
//! layer, wires the actors and returns a [`Handle`].
//!
//! Actors: `recorder` (single writer, own thread), `speed` (key partitions),
//! `supervisor` (epochs and batch runs), `recompute_worker` (a batch run's
//! key-sharded workers, one thread each; `recompute` is the run's reader and
//! what it writes), `serving` (merged answers); `source` holds the source
//! actors.

pub mod recompute;
pub mod recompute_worker;
pub mod recorder;
pub mod serving;
pub mod source;
pub mod speed;
pub mod supervisor;

use crate::aggregate::ViewSpec;
use crate::config::{Config, HttpSource, SourceKind};
use crate::event::{Epoch, Seq};
use crate::metrics::{Metrics, Shared};
use crate::store::{
    self, DataDirLock, DataPaths, EpochIndex, FirstCopies, IdIndex, MasterLog, SealedEpoch,
    SnapshotMeta,
};
use actix::{Actor, Addr, Arbiter, AsyncContext};
pub use recompute::RunMode;
use recompute::{Batch, SnapshotData, SnapshotHead, StatesAfterHead};
use recorder::Recorder;
use serving::{Answer, BatchQuery, Query, QueryError, Reader, Serving};
use source::{
    EpochHold, IngestRequest, Ingested, NotDurable, Pipeline, PushOutcome, SourceHandle,
    SourceStats,
};
use speed::{SpeedPartition, SpeedState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use supervisor::{RecomputeFailed, RunQuery, RunStatus, StartEpoch, Supervisor, WaitServed};
use tokio::sync::oneshot;

/// The sending side of a push source.
#[derive(Debug, Clone)]
pub struct Pusher {
    source: Addr<source::Push>,
}

impl Pusher {
    /// Pushes messages; resolves once every valid one is durable and visible
    /// to queries, with the rejections by index.
    ///
    /// # Errors
    /// The valid messages could not be made durable (none of them counts), or
    /// the system is stopping.
    pub async fn push(&self, messages: Vec<Vec<u8>>) -> Result<PushOutcome, IngestError> {
        let (reply, rx) = oneshot::channel();
        // Waits while the source's mailbox is full; a stopped source drops the reply.
        self.source
            .send(IngestRequest { messages, reply })
            .await
            .map_err(|_| IngestError::Stopped)?;
        Ok(rx.await.map_err(|_| IngestError::Stopped)??)
    }
}

/// An in-process feed: a push source of its own, with its own epoch and barriers.
#[derive(Debug, Clone)]
pub struct Feed {
    pusher: Pusher,
    source: SourceHandle,
}

impl Feed {
    /// Pushes messages; see [`Pusher::push`].
    ///
    /// # Errors
    /// The valid messages could not be made durable, or the system is stopping.
    pub async fn push(&self, messages: Vec<Vec<u8>>) -> Result<PushOutcome, IngestError> {
        self.pusher.push(messages).await
    }

    /// Keeps this feed's current epoch open while the hold lives: what it
    /// pushes meanwhile stays in that epoch (say, a group of events that must
    /// reach the batch layer in the same run). No epoch seals meanwhile, for
    /// any source: batch runs (and `Handle::recompute_now`) wait for the hold.
    pub fn hold_epoch(&self) -> EpochHold {
        self.source.hold_epoch()
    }
}

/// The HTTP push source, when the config has one.
#[derive(Debug, Clone)]
pub struct HttpPush {
    /// Its name.
    pub name: String,
    /// Its limits.
    pub limits: HttpSource,
    /// Where pushed events go.
    pub pusher: Pusher,
}

/// Why the system did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data_dir could not be opened or recovered.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Recovery was interrupted.
    #[error("start-up was interrupted")]
    Interrupted,
}

/// Why an in-process ingest did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The event could not be made durable.
    #[error(transparent)]
    NotDurable(#[from] NotDurable),
    /// The system is stopping.
    #[error("tandem is stopping")]
    Stopped,
}

/// How to run the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Start a new epoch every `batch.interval` (off for tests that drive epochs themselves).
    pub epoch_timer: bool,
    /// In-process feeds ([`Handle::feed`]), each a source with its own epoch; at least one.
    pub feeds: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            epoch_timer: true,
            feeds: 1,
        }
    }
}

impl Options {
    /// No epoch timer: epochs end only when asked (`Handle::start_epoch`,
    /// `Handle::recompute_now`), as tests and embedders that drive them want.
    pub fn manual_epochs() -> Options {
        Options {
            epoch_timer: false,
            ..Options::default()
        }
    }
}

/// What start-up found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Startup {
    /// Records in the master dataset.
    pub records: Seq,
    /// The snapshot loaded, if any.
    pub snapshot: Option<Epoch>,
    /// Records the replay read into the speed layer (repeats of an id included).
    pub replayed: u64,
    /// The open epoch.
    pub epoch: Epoch,
    /// How long recovery took, milliseconds.
    pub took_ms: u64,
    /// When the snapshot was loaded (read, checked, decoded), milliseconds
    /// after the start; its states decode while the log after it replays.
    pub snapshot_ms: u64,
    /// How long the replay of the log after the snapshot took, milliseconds.
    pub replay_ms: u64,
}

/// The running system.
pub struct Handle {
    config: Arc<Config>,
    serving: Addr<Serving>,
    /// Answers queries in place (see [`Reader::ask`]).
    reader: Arc<Reader>,
    supervisor: Addr<Supervisor>,
    partitions: Vec<Addr<SpeedPartition>>,
    sources: Vec<SourceHandle>,
    /// The in-process feeds; the first is [`Handle::ingest`]'s.
    feeds: Vec<Feed>,
    http_push: Option<HttpPush>,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    startup: Startup,
    /// The recorder's thread; taken on shutdown.
    recorder_thread: std::sync::Mutex<Option<Arbiter>>,
    /// The speed partitions' threads; taken on shutdown.
    speed_threads: std::sync::Mutex<Vec<Arbiter>>,
    /// One thread per RabbitMQ or push source, ended once the sources have stopped.
    source_threads: std::sync::Mutex<Vec<Arbiter>>,
    /// Held while the system runs (one process per data_dir); released on shutdown.
    lock: std::sync::Mutex<Option<DataDirLock>>,
}

impl Handle {
    /// Ingests one message through the in-process source; resolves once it is
    /// durable and visible to queries, or with its rejection.
    ///
    /// # Errors
    /// The event could not be made durable, or the system is stopping.
    pub async fn ingest(&self, raw: Vec<u8>) -> Result<Ingested, IngestError> {
        let outcome = self.feeds[0].push(vec![raw]).await?;
        Ok(match outcome.rejected.into_iter().next() {
            Some((_, reject)) => Ingested::Rejected(reject),
            None => Ingested::Durable,
        })
    }

    /// Ingests messages through the in-process source in one push; resolves
    /// once every valid one is durable, with the rejections by index.
    ///
    /// # Errors
    /// The valid messages could not be made durable, or the system is stopping.
    pub async fn ingest_many(&self, messages: Vec<Vec<u8>>) -> Result<PushOutcome, IngestError> {
        self.feeds[0].push(messages).await
    }

    /// In-process feed `index` (`0..Options::feeds`); feed 0 is the one
    /// [`Handle::ingest`] uses.
    pub fn feed(&self, index: usize) -> Option<&Feed> {
        self.feeds.get(index)
    }

    /// The HTTP push source, if the config has one.
    pub fn http_push(&self) -> Option<&HttpPush> {
        self.http_push.as_ref()
    }

    /// Answers a query.
    ///
    /// # Errors
    /// An unknown view or metric, a bad parameter, or a stopping system; for
    /// a snapshot's layer, an epoch not kept, a view it has no state for, or
    /// a snapshot that cannot be read.
    pub async fn query(&self, query: Query) -> Result<Answer, QueryError> {
        self.reader.ask(query).await
    }

    /// Starts a new epoch; answers the epoch being finished. With
    /// [`RunMode::Full`], the batch run that covers it computes every view
    /// from the whole master dataset.
    ///
    /// # Errors
    /// The system is stopping.
    pub async fn start_epoch(&self, mode: RunMode) -> Result<Epoch, QueryError> {
        self.supervisor
            .send(StartEpoch(mode))
            .await
            .map_err(|_| QueryError::Stopped)
    }

    /// Starts a new epoch and waits until a snapshot covering it is served;
    /// answers the epoch covered.
    ///
    /// # Errors
    /// The batch run failed, or the system is stopping.
    pub async fn recompute_now(&self) -> Result<Epoch, RecomputeFailed> {
        self.recompute_now_with(RunMode::Incremental).await
    }

    /// As [`Handle::recompute_now`], the run of that epoch in `mode`.
    ///
    /// # Errors
    /// The batch run failed, or the system is stopping.
    pub async fn recompute_now_with(&self, mode: RunMode) -> Result<Epoch, RecomputeFailed> {
        let epoch = self
            .supervisor
            .send(StartEpoch(mode))
            .await
            .map_err(|_| stopping(Epoch(0)))?;
        self.wait_served(epoch).await
    }

    /// Waits until a snapshot covering `epoch` is served; answers the epoch it covers.
    ///
    /// # Errors
    /// The batch run for it failed, or the system is stopping.
    pub async fn wait_served(&self, epoch: Epoch) -> Result<Epoch, RecomputeFailed> {
        let (reply, rx) = oneshot::channel();
        self.supervisor
            .send(WaitServed(epoch, reply))
            .await
            .map_err(|_| stopping(epoch))?;
        rx.await.map_err(|_| stopping(epoch))?
    }

    /// Rejections since the data_dir was created, in `Reason::ALL` order.
    pub fn rejected_total(&self) -> Vec<u64> {
        self.shared.rejected_total(&self.sources)
    }

    /// The batch runs' state.
    ///
    /// # Errors
    /// The system is stopping.
    pub async fn runs(&self) -> Result<RunStatus, QueryError> {
        self.supervisor
            .send(RunQuery)
            .await
            .map_err(|_| QueryError::Stopped)
    }

    /// The batch currently served.
    ///
    /// # Errors
    /// The system is stopping.
    pub async fn batch(&self) -> Result<Arc<Batch>, QueryError> {
        self.serving
            .send(BatchQuery)
            .await
            .map_err(|_| QueryError::Stopped)
    }

    /// The sources, with their counters.
    pub fn sources(&self) -> &[SourceHandle] {
        &self.sources
    }

    /// The speed partitions.
    pub fn partitions(&self) -> &[Addr<SpeedPartition>] {
        &self.partitions
    }

    /// The config the system runs.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// What start-up found.
    pub fn startup(&self) -> Startup {
        self.startup
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Values the actors publish (durable records, speed groups, runs).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops gracefully: every source stops consuming and finishes its batches
    /// in flight (durable, then acknowledged); then the recorder stops and its
    /// thread ends; then the data_dir is released. Safe to call more than once.
    pub async fn shutdown(&self) {
        futures_util::future::join_all(self.sources.iter().map(SourceHandle::stop)).await;
        let (paths, counters) = (
            DataPaths::new(&self.config.data_dir),
            self.shared.counters(&self.sources),
        );
        match tokio::task::spawn_blocking(move || store::save_counters(&paths, &counters)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(error = %err, "cannot save the counters"),
            Err(_) => tracing::error!("saving the counters was interrupted"),
        }
        let sources = self
            .source_threads
            .lock()
            .map(|mut threads| std::mem::take(&mut *threads))
            .unwrap_or_default();
        let recorder = self
            .recorder_thread
            .lock()
            .map(|mut thread| thread.take())
            .unwrap_or(None);
        let speed = self
            .speed_threads
            .lock()
            .map(|mut threads| std::mem::take(&mut *threads))
            .unwrap_or_default();
        // The sources' threads first (they have stopped), then the recorder:
        // its last answers may still route events to the speed layer.
        for (what, thread) in sources
            .into_iter()
            .map(|thread| ("source", thread))
            .chain(recorder.into_iter().map(|thread| ("recorder", thread)))
            .chain(speed.into_iter().map(|thread| ("speed", thread)))
        {
            thread.stop();
            // Joining blocks, so it waits off the async threads.
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!(thread = what, "a thread ended abnormally");
            }
        }
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
    }

    /// [`Handle::shutdown`], consuming the handle.
    pub async fn stop(self) {
        self.shutdown().await;
    }
}

fn stopping(epoch: Epoch) -> RecomputeFailed {
    RecomputeFailed {
        epoch,
        reason: "tandem is stopping".into(),
        retryable: false,
    }
}

/// What recovery hands the actors.
struct Recovered {
    log: MasterLog,
    epochs: EpochIndex,
    batch: Batch,
    partitions: Vec<SpeedState>,
    startup: Startup,
    counters: store::Counters,
    /// The first-copy check, up to date with the log.
    first_copies: FirstCopies,
}

/// One event to replay: its epoch, the view and partition it goes to.
type Replayed = (Epoch, usize, usize, Arc<crate::event::ParsedEvent>);

/// Events sent to a replay thread at a time.
const REPLAY_BATCH: usize = 1024;

/// A snapshot read back whole (its length and checksum hold) with its head
/// decoded.
struct OpenedSnapshot {
    path: PathBuf,
    meta: SnapshotMeta,
    head: SnapshotHead<'static>,
    payload: memmap2::Mmap,
    states: StatesAfterHead,
}

impl OpenedSnapshot {
    fn open(path: PathBuf) -> Result<Self, store::Error> {
        let (meta, payload) = store::map_snapshot_payload(&path)?;
        let (head, states) = SnapshotData::decode_head(meta.version, &payload)
            .map_err(|err| store::undecodable(&path, &err))?;
        Ok(Self {
            path,
            meta,
            head,
            payload,
            states,
        })
    }
}

/// What a start recovered: the batch it stands on and the speed layer
/// replayed over it.
struct Replay {
    batch: Batch,
    partitions: Vec<SpeedState>,
    /// The first-copy check, up to date with the log.
    first_copies: FirstCopies,
    replayed: u64,
    newest_epoch: Epoch,
    /// When the snapshot was in (its states decoded and checked),
    /// milliseconds after the start.
    snapshot_ms: u64,
    /// How long the replay took, milliseconds.
    replay_ms: u64,
}

/// The id index a snapshot names. One whose level files cannot be opened
/// (removed since a newer snapshot was written, or damaged) is read again
/// from the master dataset.
fn snapshot_ids(
    config: &Config,
    path: &Path,
    head: &SnapshotHead<'_>,
    last_sealed: Option<SealedEpoch>,
) -> Result<IdIndex, store::Error> {
    let paths = DataPaths::new(&config.data_dir);
    let upto = Seq(head.sealed.map_or(0, |sealed| sealed.later_from));
    let err = match recompute::open_ids(&paths, upto, &head.ids) {
        Ok(ids) => return Ok(ids),
        Err(err) => err,
    };
    let Some(through) = last_sealed else {
        return Err(err);
    };
    tracing::warn!(
        snapshot = %path.display(),
        error = %err,
        "the snapshot's id levels cannot be read: the ids are read again from the master dataset"
    );
    recompute::rebuild_ids(&paths, upto, through)
}

/// Replays the log after `snapshot` (all of it without one) into fresh speed
/// states, while the snapshot's states decode on a thread of their own.
///
/// The outer error: the log cannot be read. The inner: the snapshot's states
/// do not decode, or do not fit their views, or its id index cannot be read
/// (neither as named nor again from the log); it must not be used.
fn replay(
    config: &Config,
    views: &Arc<[Arc<ViewSpec>]>,
    segments: &[store::SegmentInfo],
    last_sealed: Option<SealedEpoch>,
    snapshot: Option<OpenedSnapshot>,
    started: std::time::Instant,
) -> Result<Result<Replay, store::Error>, store::Error> {
    let (mut batch, path, stored) = match snapshot {
        Some(OpenedSnapshot {
            path,
            meta,
            head,
            payload,
            states,
        }) => {
            let ids = match snapshot_ids(config, &path, &head, last_sealed) {
                Ok(ids) => ids,
                Err(err) => return Ok(Err(err)),
            };
            let (batch, placement) = Batch::from_head(views, meta, head, Arc::new(ids));
            (batch, path, Some((payload, states, placement)))
        }
        None => (Batch::default(), PathBuf::new(), None),
    };
    let head_ms = started.elapsed().as_millis() as u64;
    let missing: Vec<usize> = batch.missing_views().collect();
    let n = usize::from(config.speed.partitions);
    let partitions: Vec<SpeedState> = (0..n).map(|_| SpeedState::new(Arc::clone(views))).collect();
    let mut newest_epoch = last_sealed
        .map_or(Epoch(0), |sealed| sealed.epoch)
        .max(batch.epoch.unwrap_or(Epoch(0)));
    let mut replayed = 0u64;
    let from = Seq(batch.later_from);
    let mut scratch = String::new();
    let mut first_copies = FirstCopies::new(Arc::clone(&batch.ids));
    // Before `from` (read only for missing views) first copies are decided by
    // a check of their own: the index covers those records.
    let mut prefix = FirstCopies::default();
    // Events are applied on threads of their own, one per core, each the one
    // writer of its share of the partitions, while this thread reads, parses
    // and decides first copies.
    let appliers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, n.max(1));
    // Set when the snapshot's id index cannot be read during the replay.
    let mut index_failed = None;
    let (read, replay_ms, decoded) = std::thread::scope(|scope| {
        // The snapshot's states decode (and are checked against their views)
        // beside the replay, which needs only its head.
        let decoding = stored.map(|(payload, states, placement)| {
            scope.spawn(move || {
                let placed = states
                    .decode(&payload)
                    .map_err(|err| format!("its views' states do not decode: {err}"))
                    .and_then(|states| {
                        placement.place(views, states).map_err(|problem| {
                            format!("holds states its views cannot have: {problem}")
                        })
                    });
                (placed, started.elapsed().as_millis() as u64)
            })
        });
        let mut senders = Vec::with_capacity(appliers);
        for _ in 0..appliers {
            let (sender, batches) = std::sync::mpsc::sync_channel::<Vec<Replayed>>(8);
            senders.push(sender);
            let partitions = &partitions;
            scope.spawn(move || {
                let mut scratch = speed::Scratch::default();
                for batch in batches {
                    for (epoch, view, partition, event) in batch {
                        partitions[partition].apply(epoch, view, &event, &mut scratch);
                    }
                }
            });
        }
        let mut pending: Vec<Vec<Replayed>> = vec![Vec::new(); appliers];
        let mut apply = |event: crate::event::ParsedEvent, epoch: Epoch, only: Option<&[usize]>| {
            let event = Arc::new(event);
            for (view, partition) in speed::owners(&config.views, &event, n, &mut scratch) {
                if only.is_none_or(|only| only.contains(&view)) {
                    let worker = partition % appliers;
                    pending[worker].push((epoch, view, partition, Arc::clone(&event)));
                    if pending[worker].len() >= REPLAY_BATCH {
                        // An applier that is gone panicked: the scope reports it.
                        senders[worker]
                            .send(std::mem::take(&mut pending[worker]))
                            .ok();
                    }
                }
            }
        };
        let mut outcome = Ok(());
        for (i, segment) in segments.iter().enumerate() {
            let under_snapshot = segments
                .get(i + 1)
                .is_some_and(|next| next.first_seq <= from);
            if under_snapshot && missing.is_empty() {
                continue;
            }
            let mut unreadable = None;
            let read = store::scan_segment(segment, None, |header, raw| {
                // The replay is given up once the index cannot be read.
                if unreadable.is_some() {
                    return;
                }
                let first = if header.seq < from {
                    prefix.first(header.seq, header.id_hash)
                } else {
                    first_copies.first(header.seq, header.id_hash)
                };
                let first = match first {
                    Ok(first) => first,
                    Err(err) => {
                        unreadable.get_or_insert(err);
                        return;
                    }
                };
                let covered = batch.epoch.is_some_and(|covered| header.epoch <= covered);
                if covered && missing.is_empty() {
                    return;
                }
                newest_epoch = newest_epoch.max(header.epoch);
                let Ok(event) = config.schema.parse(raw, header.ingest_ms) else {
                    return;
                };
                replayed += 1;
                if first {
                    apply(event, header.epoch, covered.then_some(missing.as_slice()));
                }
            });
            // The snapshot's id index cannot be read: it is refused like a
            // snapshot whose states do not decode.
            if let Some(err) = unreadable {
                index_failed = Some(err);
                break;
            }
            match read {
                Ok(_) => {}
                // A damaged segment wholly under the snapshot does not stop the
                // start (the next batch run names it); the views replayed from the
                // start lack its records meanwhile.
                Err(err) if under_snapshot => {
                    tracing::warn!(error = %err, "cannot read a segment under the snapshot; views replayed from the start of the log lack its records until a batch run covers them")
                }
                Err(err) => {
                    outcome = Err(err);
                    break;
                }
            }
        }
        for (sender, batch) in senders.iter().zip(pending) {
            sender.send(batch).ok();
        }
        drop(senders);
        let replay_ms = started.elapsed().as_millis() as u64 - head_ms;
        (outcome, replay_ms, decoding.map(|decoding| decoding.join()))
    });
    read?;
    if let Some(err) = index_failed {
        return Ok(Err(err));
    }
    let snapshot_ms = match decoded {
        None => head_ms,
        Some(Ok((Ok(states), decoded_ms))) => {
            batch.views = states;
            decoded_ms
        }
        Some(Ok((Err(problem), _))) => {
            return Ok(Err(store::Error::BadSnapshot { path, problem }));
        }
        Some(Err(panic)) => {
            let reason = crate::panic_text(&*panic);
            return Ok(Err(store::Error::BadSnapshot {
                path,
                problem: format!("decoding its states panicked: {reason}"),
            }));
        }
    };
    first_copies.commit();
    Ok(Ok(Replay {
        batch,
        partitions,
        first_copies,
        replayed,
        newest_epoch,
        snapshot_ms,
        replay_ms,
    }))
}

/// Opens the data_dir: cuts a torn tail, loads the newest usable snapshot and
/// replays the records after it into fresh speed states. Blocking.
///
/// The replay reads from the snapshot's `later_from`, deciding first copies
/// as the Recorder did (its id index covers the records before), and applies
/// the epochs after the snapshot's. A view the snapshot has no state for (new,
/// or changed) is replayed from the start of the log, all epochs, so its
/// answers are complete from the speed layer alone until a batch run covers it.
fn recover(paths: &DataPaths, config: &Config) -> Result<Recovered, store::Error> {
    let started = std::time::Instant::now();
    let (log, recovery) = MasterLog::open(paths, config.master.segment_max_bytes)?;
    let epochs = EpochIndex::open(paths)?;
    let last_sealed = epochs.last().copied();
    if let Some(sealed) = last_sealed
        && sealed.end > log.end()
    {
        return Err(store::Error::SealedBeyondLog {
            path: paths.epochs(),
            epoch: sealed.epoch,
            sealed: sealed.end,
            log_end: log.end(),
        });
    }
    let views: Arc<[_]> = config.views.iter().cloned().collect();
    let segments = store::list_segments(paths)?;
    // The newest snapshot that reads back whole and whose states fit their
    // views; else none (the speed layer replays every epoch, and the next
    // batch run recomputes).
    let mut snapshots = store::list_snapshots(paths)?.into_iter();
    let mut refused = 0usize;
    let replay = loop {
        let snapshot = match snapshots.next() {
            None => {
                store::report_none_usable(refused);
                None
            }
            Some((_, path)) => match OpenedSnapshot::open(path) {
                Ok(opened)
                    if last_sealed.is_some_and(|sealed| opened.meta.epoch <= sealed.epoch) =>
                {
                    Some(Ok(opened))
                }
                Ok(opened) => {
                    tracing::error!(
                        snapshot = %opened.path.display(),
                        epoch = %opened.meta.epoch,
                        "snapshot is newer than every sealed epoch; ignoring it and recomputing"
                    );
                    snapshots = Vec::new().into_iter();
                    None
                }
                Err(err) => Some(Err(err)),
            },
        };
        // A snapshot that does not open, or whose states turn out not to fit
        // (after a replay over it), is refused.
        let outcome = match snapshot.transpose() {
            Ok(snapshot) => replay(config, &views, &segments, last_sealed, snapshot, started)?,
            Err(err) => Err(err),
        };
        match outcome {
            Ok(replay) => break replay,
            Err(err) => {
                store::report_refused(&err);
                refused += 1;
            }
        }
    };
    let missing: Vec<&str> = replay
        .batch
        .missing_views()
        .map(|view| views[view].name.as_str())
        .collect();
    if !missing.is_empty() {
        tracing::warn!(views = ?missing, "the snapshot has no state for these views (new or changed): replaying them from the start of the log until a batch run covers them");
    }
    let startup = Startup {
        records: recovery.next_seq,
        snapshot: replay.batch.epoch,
        replayed: replay.replayed,
        epoch: replay.newest_epoch.next(),
        took_ms: started.elapsed().as_millis() as u64,
        snapshot_ms: replay.snapshot_ms,
        replay_ms: replay.replay_ms,
    };
    let counters = store::load_counters(paths)?;
    Ok(Recovered {
        first_copies: replay.first_copies,
        counters,
        log,
        epochs,
        batch: replay.batch,
        partitions: replay.partitions,
        startup,
    })
}

/// Starts the whole system inside the current actix system: recovers the
/// data_dir, replays the speed layer, and returns once queries see everything
/// that was durable before.
///
/// # Errors
/// The data_dir is locked by another process, or cannot be recovered.
pub async fn start(config: Config, options: Options) -> Result<Handle, StartError> {
    let config = Arc::new(config);
    let paths = DataPaths::new(&config.data_dir);
    let lock = DataDirLock::acquire(&paths)?;
    let recovered = {
        let (paths, config) = (paths.clone(), Arc::clone(&config));
        tokio::task::spawn_blocking(move || recover(&paths, &config))
            .await
            .map_err(|_| StartError::Interrupted)??
    };
    let Recovered {
        first_copies,
        counters,
        log,
        epochs,
        batch,
        partitions,
        startup,
    } = recovered;
    tracing::info!(
        records = startup.records.0,
        snapshot = ?startup.snapshot,
        replayed = startup.replayed,
        epoch = %startup.epoch,
        took_ms = startup.took_ms,
        snapshot_ms = startup.snapshot_ms,
        replay_ms = startup.replay_ms,
        "recovered"
    );
    let last_sealed = epochs.last().copied();
    // A snapshot missing a view is served, but does not count as covering its
    // epoch: the supervisor runs the batch for the newest seal at once.
    let served = if batch.is_complete() {
        batch.epoch
    } else {
        None
    };
    let views: Arc<[_]> = config.views.iter().cloned().collect();
    let shared = Arc::new(Shared::new(partitions.len(), &counters));

    // The speed partitions run on threads of their own, one per core (at most
    // one per partition), so applying events runs beside parsing and serving.
    let n_threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(partitions.len())
        .max(1);
    let speed_threads: Vec<Arbiter> = (0..n_threads).map(|_| Arbiter::new()).collect();
    let speed_states: Arc<[Arc<SpeedState>]> = partitions.into_iter().map(Arc::new).collect();
    let partitions: Vec<Addr<SpeedPartition>> = speed_states
        .iter()
        .enumerate()
        .map(|(index, state)| {
            let (shared, state) = (Arc::clone(&shared), Arc::clone(state));
            SpeedPartition::start_in_arbiter(
                &speed_threads[index % n_threads].handle(),
                move |_| SpeedPartition::new(index, state, shared),
            )
        })
        .collect();
    let partition_addrs: Arc<[Addr<SpeedPartition>]> = partitions.iter().cloned().collect();
    let reader = Arc::new(
        Reader::new(Arc::clone(&views), Arc::new(batch), speed_states)
            .with_snapshots(paths.clone()),
    );
    // The loaded snapshot is indexed in the background, so the start does not
    // wait for it; until then its queries scan its states.
    let loaded = reader.batch();
    if loaded.epoch.is_some() {
        let views = Arc::clone(&views);
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let states: Vec<&crate::aggregate::ViewState> = loaded.views.iter().collect();
            if let Some(indexes) = recompute::build_indexes(&views, &states) {
                loaded.indexes.set(indexes).ok();
            }
            tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "indexed the loaded snapshot"
            );
        });
    }
    let serving = Serving::new(
        Arc::clone(&reader),
        Arc::clone(&partition_addrs),
        Arc::clone(&shared),
    )
    .start();

    // Sources: the in-process feeds come first (feed 0 is `Handle::ingest`'s),
    // then the configured ones.
    let n_feeds = options.feeds.max(1);
    let mut handles = Vec::with_capacity(config.sources.len() + n_feeds);
    for feed in 0..n_feeds {
        let name = match feed {
            0 => source::IN_PROCESS.to_owned(),
            _ => format!("{}-{feed}", source::IN_PROCESS),
        };
        let handle = SourceHandle::new(
            name,
            source::IN_PROCESS,
            None,
            Arc::new(SourceStats::default()),
        );
        handles.push(handle);
    }
    for source in &config.sources {
        let (queue, demo) = match &source.kind {
            SourceKind::Rabbitmq(rabbit) => (Some(rabbit.queue.clone()), None),
            SourceKind::Http(_) => (None, None),
            SourceKind::Demo(_) => (None, Some(source::demo::DemoStats::default())),
        };
        let stats = Arc::new(SourceStats {
            demo,
            ..SourceStats::default()
        });
        let handle = SourceHandle::new(source.name.clone(), source.kind.name(), queue, stats);
        handles.push(handle);
    }
    let metrics = Arc::new(Metrics::new(handles.clone(), Arc::clone(&shared)));

    let supervisor_ctx = actix::Context::<Supervisor>::new();
    let supervisor_addr = supervisor_ctx.address();
    let recorder_thread = Arbiter::new();
    let sealed_to = supervisor_addr.clone().recipient();
    let n_sources = handles.len();
    let (recorder_paths, segment_max_bytes) = (paths.clone(), config.master.segment_max_bytes);
    let (recorder_shared, durable_write) = (Arc::clone(&shared), metrics.durable_write.clone());
    let recorder = actix::Supervisor::start_in_arbiter(&recorder_thread.handle(), move |_| {
        Recorder::new(
            recorder_paths,
            segment_max_bytes,
            log,
            epochs,
            n_sources,
            sealed_to,
            recorder_shared,
            durable_write,
            first_copies,
        )
    });
    let interval = options.epoch_timer.then_some(config.batch.interval);
    let supervisor = Supervisor::new(
        paths,
        Arc::clone(&config),
        recompute_worker::Pool::per_core(),
        startup.epoch,
        handles.clone(),
        serving.clone(),
        recorder.clone().recipient(),
        (last_sealed, served),
        interval,
        Arc::clone(&shared),
    );
    let supervisor = supervisor_ctx.run(supervisor);

    let speed_recipients: Arc<[_]> = partitions
        .iter()
        .map(|addr| addr.clone().recipient())
        .collect();
    let pipeline = |index: usize| Pipeline {
        index,
        schema: Arc::clone(&config.schema),
        views: Arc::clone(&views),
        partitions: Arc::clone(&speed_recipients),
        recorder: recorder.clone(),
        stats: Arc::clone(&handles[index].stats),
        ack_lag: metrics.ack_lag.clone(),
    };
    // RabbitMQ and push sources parse on a thread of their own, off the
    // system thread (the demo, a steady trickle, stays on it);
    // the threads end once the sources have stopped.
    let mut source_threads = Vec::new();
    let push_source = |index: usize, threads: &mut Vec<Arbiter>| {
        let thread = Arbiter::new();
        let pipeline = pipeline(index);
        let source = source::Push::start_in_arbiter(&thread.handle(), move |_| {
            source::Push::new(pipeline, startup.epoch)
        });
        handles[index].attach(source.clone().recipient());
        threads.push(thread);
        Pusher { source }
    };
    let feeds: Vec<Feed> = (0..n_feeds)
        .map(|index| Feed {
            pusher: push_source(index, &mut source_threads),
            source: handles[index].clone(),
        })
        .collect();
    let mut http_push = None;
    for (index, source) in config.sources.iter().enumerate() {
        let index = index + n_feeds;
        match &source.kind {
            SourceKind::Rabbitmq(rabbit) => {
                let thread = Arbiter::new();
                let (pipeline, rabbit) = (pipeline(index), rabbit.clone());
                let addr = actix::Supervisor::start_in_arbiter(&thread.handle(), move |_| {
                    source::Rabbitmq::new(pipeline, rabbit, startup.epoch)
                });
                handles[index].attach(addr.recipient());
                source_threads.push(thread);
            }
            SourceKind::Http(limits) => {
                http_push = Some(HttpPush {
                    name: source.name.clone(),
                    limits: limits.clone(),
                    pusher: push_source(index, &mut source_threads),
                });
            }
            SourceKind::Demo(demo) => {
                let addr =
                    source::demo::Demo::new(pipeline(index), demo.clone(), startup.epoch).start();
                handles[index].attach(addr.recipient());
            }
        }
    }

    Ok(Handle {
        config,
        serving,
        reader,
        supervisor,
        partitions,
        sources: handles,
        feeds,
        http_push,
        metrics,
        shared,
        startup,
        recorder_thread: std::sync::Mutex::new(Some(recorder_thread)),
        speed_threads: std::sync::Mutex::new(speed_threads),
        source_threads: std::sync::Mutex::new(source_threads),
        lock: std::sync::Mutex::new(Some(lock)),
    })
}
