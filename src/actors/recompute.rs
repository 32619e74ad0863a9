//! A batch run: rebuilds every view from scratch over the master dataset up to
//! a sealed epoch, and writes the snapshot. Plain blocking code, run by the
//! supervisor with `spawn_blocking`, never on an async thread.
//!
//! One reader streams the segments in log order (CRC-checking every record),
//! drops every copy of an id but the first in the log (over all of `[0, end)`,
//! whatever their epochs, as the Recorder decides for the speed layer), then
//! keeps the records of epochs <= the sealed one. Worker threads parse the
//! survivors with the current config and apply them to their own view states
//! (skipping buckets a view's retention has dropped), which are merged at the
//! end. Memory is the views, the id set and a few batches in flight. The ids
//! of the records before `later_from` become the run's [`IdIndex`], stored in
//! the snapshot: the Recorder's first-copy check for the records after it.

use crate::aggregate::{ViewIndex, ViewSpec, ViewState};
use crate::config::Config;
use crate::event::Epoch;
use crate::event::Seq;
use crate::store::{self, DataPaths, IdIndex, SealedEpoch, SnapshotMeta};
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Records handed to a worker at a time.
const BATCH_RECORDS: usize = 4_096;
/// Batches queued per worker.
const QUEUE_DEPTH: usize = 4;
/// How often a run's reader publishes how far it has read, in records.
const PROGRESS_EVERY: u64 = 65_536;
/// How often a run logs how far it has read.
const PROGRESS_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// How far a batch run has read: the records of the master dataset it has
/// read, of those it reads (the log up to its sealed epoch's end). Written
/// by the run's reader, read by status and scrapes; the last run's figures
/// stay until the next run starts.
#[derive(Debug, Default)]
pub struct Progress {
    read: AtomicU64,
    total: AtomicU64,
}

impl Progress {
    /// (records read, records to read).
    pub fn get(&self) -> (u64, u64) {
        (
            self.read.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    /// A run that reads `total` records starts.
    pub(crate) fn start(&self, total: u64) {
        self.read.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }
}

/// What a batch run counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchStats {
    /// Records read (epochs <= the snapshot's).
    pub records: u64,
    /// Events counted in the views.
    pub counted: u64,
    /// Records dropped as duplicates of an earlier id.
    pub duplicates: u64,
    /// Records the current config rejects.
    pub invalid: u64,
    /// (view, event) pairs not applied: their bucket is past the view's retention.
    pub expired: u64,
}

/// One view in a snapshot, with the spec it was built for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotView {
    /// The spec, as JSON: a snapshot view is used only for an identical spec.
    pub spec: String,
    /// Its state.
    pub state: ViewState,
}

/// The snapshot file's payload: owned when read, borrowing its ids when written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnapshotData<'a> {
    /// The views, by name.
    pub views: Vec<(String, SnapshotView)>,
    /// The run's counts.
    pub stats: BatchStats,
    /// The sealed epoch it covers.
    pub sealed: Option<SealedEpochData>,
    /// How long the run took, milliseconds.
    pub took_ms: u64,
    /// The distinct ids of the records before `sealed.later_from`, sorted.
    pub ids: std::borrow::Cow<'a, [u64]>,
}

/// [`SealedEpoch`] as stored in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedEpochData {
    /// The epoch.
    pub epoch: u64,
    /// Records before its seal.
    pub next_seq: u64,
    /// Records with a lower seq have an epoch <= `epoch`.
    pub later_from: u64,
}

/// The batch layer's current truth, as serving holds it.
#[derive(Debug, Default)]
pub struct Batch {
    /// The epoch it covers (`None`: nothing yet).
    pub epoch: Option<Epoch>,
    /// One state per configured view, in config order.
    pub views: Vec<ViewState>,
    /// The index of each state in `views`: built by a batch run before it is
    /// served; for a snapshot loaded at start-up, built in the background
    /// while queries already answer (by a scan of the states until then).
    pub indexes: std::sync::OnceLock<Vec<ViewIndex>>,
    /// The snapshot file's header.
    pub meta: Option<SnapshotMeta>,
    /// The run's counts.
    pub stats: BatchStats,
    /// How long the run took, milliseconds.
    pub took_ms: u64,
    /// Records with a seq below this have an epoch <= `epoch`.
    pub later_from: u64,
    /// The ids of the records before `later_from`.
    pub ids: Arc<IdIndex>,
    /// Per view, true when the snapshot has no state for it (a view added or
    /// changed since): its answers come from the speed layer alone, which
    /// then holds every epoch of it.
    pub missing: Vec<bool>,
}

impl Batch {
    /// Views of a loaded snapshot, matched to the configured views by name and
    /// fingerprint. A view that is new or whose spec changed is `missing`.
    /// Its `indexes` are left to the caller ([`build_indexes`]).
    pub fn from_snapshot(
        views: &[Arc<ViewSpec>],
        meta: SnapshotMeta,
        data: SnapshotData<'_>,
    ) -> Batch {
        let mut stored = data.views;
        let mut missing = Vec::with_capacity(views.len());
        let states = views
            .iter()
            .map(|spec| {
                let fingerprint = spec_fingerprint(spec);
                let at = stored
                    .iter()
                    .position(|(name, view)| *name == spec.name && view.spec == fingerprint);
                missing.push(at.is_none());
                match at {
                    Some(at) => stored.swap_remove(at).1.state,
                    None => ViewState::new(),
                }
            })
            .collect();
        let later_from = data.sealed.map_or(0, |sealed| sealed.later_from);
        Batch {
            epoch: Some(meta.epoch),
            // Built by the caller, which can overlap it with other work.
            indexes: std::sync::OnceLock::new(),
            views: states,
            meta: Some(meta),
            stats: data.stats,
            took_ms: data.took_ms,
            later_from,
            ids: Arc::new(IdIndex::from_sorted(Seq(later_from), data.ids.into_owned())),
            missing,
        }
    }

    /// Whether the batch holds state for view `view` (a batch with no epoch holds none).
    pub fn has_view(&self, view: usize) -> bool {
        self.epoch.is_some() && !self.missing.get(view).copied().unwrap_or(false)
    }

    /// Whether every view has its state here.
    pub fn is_complete(&self) -> bool {
        self.epoch.is_some() && !self.missing.contains(&true)
    }
}

/// The index of each view's state, built on threads of their own (the caller
/// blocks; never an async thread); `None` if building one panicked (a bug,
/// logged): the batch is then answered by scans of its states, never wrongly.
pub fn build_indexes(specs: &[Arc<ViewSpec>], states: &[&ViewState]) -> Option<Vec<ViewIndex>> {
    std::thread::scope(|scope| {
        let builds: Vec<_> = specs
            .iter()
            .zip(states)
            .map(|(spec, state)| scope.spawn(move || ViewIndex::build(spec, state)))
            .collect();
        let built: Result<Vec<ViewIndex>, _> =
            builds.into_iter().map(|build| build.join()).collect();
        built
            .inspect_err(|_| {
                tracing::error!("building a view's index panicked; the batch is answered by scans")
            })
            .ok()
    })
}

/// What a stored view state must match to be used: the view's spec and how
/// this build represents its states (the sketches' parameters).
fn spec_fingerprint(spec: &ViewSpec) -> String {
    format!(
        "{}; {}",
        serde_json::to_string(spec).unwrap_or_default(),
        crate::aggregate::sketch_parameters()
    )
}

/// Why a batch run failed.
#[derive(Debug, thiserror::Error)]
pub enum RecomputeError {
    /// The master dataset could not be read, or the snapshot written.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A worker thread panicked.
    #[error("a recompute worker panicked")]
    WorkerPanicked,
}

/// A batch of surviving records for a worker: raw bytes back to back.
struct WorkBatch {
    bytes: Vec<u8>,
    /// (end offset in `bytes`, ingest time) per record.
    records: Vec<(usize, i64)>,
}

impl WorkBatch {
    fn new() -> WorkBatch {
        WorkBatch {
            bytes: Vec::with_capacity(BATCH_RECORDS * 256),
            records: Vec::with_capacity(BATCH_RECORDS),
        }
    }
}

/// Rebuilds every view over epochs <= `sealed.epoch` and writes the
/// snapshot, publishing how far it has read in `progress`.
///
/// # Errors
/// The master dataset cannot be read (corruption is named with segment and
/// offset), or the snapshot cannot be written.
pub fn recompute(
    paths: &DataPaths,
    config: &Config,
    sealed: SealedEpoch,
    progress: &Progress,
) -> Result<Batch, RecomputeError> {
    let started = std::time::Instant::now();
    let workers = std::thread::available_parallelism()
        .map_or(2, usize::from)
        .max(1);
    let now = crate::now_ms();
    let (states, stats, ids) = build_views(paths, config, sealed, workers, now, progress)?;
    let took_ms = started.elapsed().as_millis() as u64;
    let data = SnapshotData {
        views: config
            .views
            .iter()
            .zip(states)
            .map(|(spec, state)| {
                (
                    spec.name.clone(),
                    SnapshotView {
                        spec: spec_fingerprint(spec),
                        state,
                    },
                )
            })
            .collect(),
        stats,
        sealed: Some(SealedEpochData {
            epoch: sealed.epoch.0,
            next_seq: sealed.next_seq.0,
            later_from: sealed.later_from.0,
        }),
        took_ms,
        ids: std::borrow::Cow::Borrowed(ids.ids()),
    };
    crate::faults::crash_point("recompute.mid_run");
    // The indexes are built while the snapshot is written and fsynced.
    let states: Vec<&ViewState> = data.views.iter().map(|(_, view)| &view.state).collect();
    let (meta, indexes) = std::thread::scope(|scope| {
        let write = scope.spawn(|| {
            let keep = config.batch.keep_snapshots;
            store::write_snapshot(paths, sealed.epoch, sealed.next_seq.0, now, &data, keep)
        });
        let indexes = build_indexes(&config.views, &states);
        let meta = write.join().map_err(|_| RecomputeError::WorkerPanicked)?;
        Ok::<_, RecomputeError>((meta?, indexes))
    })?;
    let views: Vec<ViewState> = data.views.into_iter().map(|(_, view)| view.state).collect();
    Ok(Batch {
        epoch: Some(sealed.epoch),
        missing: vec![false; views.len()],
        indexes: indexes.map(Into::into).unwrap_or_default(),
        views,
        meta: Some(meta),
        stats,
        took_ms,
        later_from: sealed.later_from.0,
        ids: Arc::new(ids),
    })
}

/// The views over epochs <= `sealed.epoch` as of `now_ms` (for retention),
/// built by `workers` threads, and the ids of the records before
/// `sealed.later_from`; how far it has read goes to `progress`.
///
/// # Errors
/// The master dataset cannot be read.
pub fn build_views(
    paths: &DataPaths,
    config: &Config,
    sealed: SealedEpoch,
    workers: usize,
    now_ms: i64,
    progress: &Progress,
) -> Result<(Vec<ViewState>, BatchStats, IdIndex), RecomputeError> {
    let mut stats = BatchStats::default();
    // Retention is applied as events are applied, so a run never holds the
    // groups it would drop at the end.
    let cutoffs: Vec<Option<i64>> = config
        .views
        .iter()
        .map(|spec| spec.retention_cutoff(now_ms))
        .collect();
    let cutoffs = cutoffs.as_slice();
    let results = std::thread::scope(|scope| {
        let mut senders: Vec<SyncSender<WorkBatch>> = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = sync_channel(QUEUE_DEPTH);
            senders.push(tx);
            handles.push(scope.spawn(move || work(config, cutoffs, rx)));
        }
        let presize = config.schema.id_field().is_some();
        let read = read_survivors(paths, sealed, presize, &senders, &mut stats, progress);
        drop(senders);
        let joined: Vec<_> = handles.into_iter().map(|handle| handle.join()).collect();
        (read, joined)
    });
    let (read, joined) = results;
    let ids = read?;
    let mut merged: Option<Vec<ViewState>> = None;
    for outcome in joined {
        let done = outcome.map_err(|_| RecomputeError::WorkerPanicked)?;
        let states = done.states;
        stats.counted += done.counted;
        stats.invalid += done.invalid;
        stats.expired += done.expired;
        match merged.as_mut() {
            None => merged = Some(states),
            Some(merged) => {
                for ((mine, theirs), spec) in merged.iter_mut().zip(&states).zip(&config.views) {
                    if mine.len() < theirs.len() {
                        let mut bigger = theirs.clone();
                        bigger.merge(spec, mine);
                        *mine = bigger;
                    } else {
                        mine.merge(spec, theirs);
                    }
                }
            }
        }
    }
    let views = merged.unwrap_or_else(|| config.views.iter().map(|_| ViewState::new()).collect());
    Ok((views, stats, ids))
}

/// The reader: streams records in log order, dedups over all of `[0, end)`,
/// keeps epochs <= the sealed one, feeds the workers; returns the id index of
/// the records before `later_from`.
fn read_survivors(
    paths: &DataPaths,
    sealed: SealedEpoch,
    presize: bool,
    workers: &[SyncSender<WorkBatch>],
    stats: &mut BatchStats,
    progress: &Progress,
) -> Result<IdIndex, store::Error> {
    let total = sealed.next_seq.0;
    progress.start(total);
    let mut read = 0u64;
    let mut logged = std::time::Instant::now();
    // With an id field, sized for every record up front: growing a set of
    // millions rehashes it several times. Without one, old records may still
    // carry ids, and the set grows only with them.
    let capacity = if presize {
        sealed.next_seq.0 as usize
    } else {
        0
    };
    let mut seen: FxHashSet<u64> =
        FxHashSet::with_capacity_and_hasher(capacity, Default::default());
    let mut indexed: Vec<u64> = Vec::new();
    let mut batch = WorkBatch::new();
    let mut next_worker = 0;
    let mut send = |batch: WorkBatch| {
        // A worker only stops early by panicking; the join reports that.
        workers[next_worker % workers.len()].send(batch).ok();
        next_worker += 1;
    };
    store::scan_log(paths, sealed.end, |header, raw| {
        read += 1;
        if read.is_multiple_of(PROGRESS_EVERY) {
            progress.read.store(read, Ordering::Relaxed);
            if logged.elapsed() >= PROGRESS_LOG_EVERY {
                logged = std::time::Instant::now();
                tracing::info!(
                    epoch = %sealed.epoch,
                    read,
                    total,
                    percent = read * 100 / total.max(1),
                    "batch run reading"
                );
            }
        }
        let covered = header.epoch <= sealed.epoch;
        if covered {
            stats.records += 1;
        }
        // The first copy in log order wins, whatever its epoch: a later copy
        // of an older epoch is dropped here as the Recorder dropped it for the
        // speed layer.
        if header.id_hash != 0 {
            if !seen.insert(header.id_hash) {
                stats.duplicates += u64::from(covered);
                return;
            }
            if header.seq < sealed.later_from {
                indexed.push(header.id_hash);
            }
        }
        if !covered {
            return;
        }
        batch.bytes.extend_from_slice(raw);
        batch.records.push((batch.bytes.len(), header.ingest_ms));
        if batch.records.len() >= BATCH_RECORDS {
            send(std::mem::replace(&mut batch, WorkBatch::new()));
        }
    })?;
    progress.read.store(read, Ordering::Relaxed);
    if !batch.records.is_empty() {
        send(batch);
    }
    drop(seen);
    Ok(IdIndex::new(sealed.later_from, indexed))
}

/// What a worker built.
struct Done {
    states: Vec<ViewState>,
    counted: u64,
    invalid: u64,
    expired: u64,
}

/// A worker: parses and applies every record it is given, except to a view
/// whose retention `cutoffs` (bucket starts) the event's bucket is before.
fn work(config: &Config, cutoffs: &[Option<i64>], batches: Receiver<WorkBatch>) -> Done {
    let mut done = Done {
        states: config.views.iter().map(|_| ViewState::new()).collect(),
        counted: 0,
        invalid: 0,
        expired: 0,
    };
    for batch in batches {
        let mut start = 0;
        for (end, ingest_ms) in batch.records {
            match config.schema.parse(&batch.bytes[start..end], ingest_ms) {
                Ok(event) => {
                    for ((state, spec), cutoff) in
                        done.states.iter_mut().zip(&config.views).zip(cutoffs)
                    {
                        if cutoff.is_some_and(|cutoff| spec.bucket_of(event.event_ms) < cutoff) {
                            done.expired += 1;
                        } else {
                            state.apply(spec, &event);
                        }
                    }
                    done.counted += 1;
                }
                Err(_) => done.invalid += 1,
            }
            start = end;
        }
    }
    done
}
