//! A batch run: rebuilds every view from scratch over the master dataset up to
//! a sealed epoch, and writes the snapshot. Plain blocking code, run by the
//! supervisor with `spawn_blocking`, never on an async thread.
//!
//! One reader streams the segments in log order (CRC-checking every record),
//! keeps records of epochs <= the sealed one, and drops duplicates by id: the
//! first in the log counts. Worker threads parse the survivors with the
//! current config and apply them to their own view states, which are merged at
//! the end. Memory is the views, the id set and a few batches in flight.

use crate::aggregate::{ViewSpec, ViewState};
use crate::config::Config;
use crate::event::Epoch;
use crate::store::{self, DataPaths, SealedEpoch, SnapshotMeta};
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Records handed to a worker at a time.
const BATCH_RECORDS: usize = 4_096;
/// Batches queued per worker.
const QUEUE_DEPTH: usize = 4;

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
}

/// One view in a snapshot, with the spec it was built for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotView {
    /// The spec, as JSON: a snapshot view is used only for an identical spec.
    pub spec: String,
    /// Its state.
    pub state: ViewState,
}

/// The snapshot file's payload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnapshotData {
    /// The views, by name.
    pub views: Vec<(String, SnapshotView)>,
    /// The run's counts.
    pub stats: BatchStats,
    /// The sealed epoch it covers.
    pub sealed: Option<SealedEpochData>,
    /// How long the run took, milliseconds.
    pub took_ms: u64,
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
    /// The snapshot file's header.
    pub meta: Option<SnapshotMeta>,
    /// The run's counts.
    pub stats: BatchStats,
    /// How long the run took, milliseconds.
    pub took_ms: u64,
    /// Records with a seq below this have an epoch <= `epoch`.
    pub later_from: u64,
}

impl Batch {
    /// Views of a loaded snapshot, matched to the configured views by name and spec.
    /// A view that is new or whose spec changed starts empty, and `complete` is false.
    pub fn from_snapshot(
        views: &[Arc<ViewSpec>],
        meta: SnapshotMeta,
        data: SnapshotData,
    ) -> (Batch, bool) {
        let mut complete = true;
        let mut stored = data.views;
        let states = views
            .iter()
            .map(|spec| {
                let fingerprint = spec_fingerprint(spec);
                match stored
                    .iter()
                    .position(|(name, view)| *name == spec.name && view.spec == fingerprint)
                {
                    Some(at) => stored.swap_remove(at).1.state,
                    None => {
                        complete = false;
                        ViewState::new()
                    }
                }
            })
            .collect();
        let later_from = data.sealed.map_or(0, |sealed| sealed.later_from);
        let batch = Batch {
            epoch: Some(meta.epoch),
            views: states,
            meta: Some(meta),
            stats: data.stats,
            took_ms: data.took_ms,
            later_from,
        };
        (batch, complete)
    }
}

fn spec_fingerprint(spec: &ViewSpec) -> String {
    serde_json::to_string(spec).unwrap_or_default()
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

/// Rebuilds every view over epochs <= `sealed.epoch` and writes the snapshot.
///
/// # Errors
/// The master dataset cannot be read (corruption is named with segment and
/// offset), or the snapshot cannot be written.
pub fn recompute(
    paths: &DataPaths,
    config: &Config,
    sealed: SealedEpoch,
) -> Result<Batch, RecomputeError> {
    let started = std::time::Instant::now();
    let workers = std::thread::available_parallelism()
        .map_or(2, usize::from)
        .max(1);
    let (states, stats) = build_views(paths, config, sealed, workers)?;
    let now = crate::now_ms();
    let mut states = states;
    for (state, spec) in states.iter_mut().zip(&config.views) {
        if let Some(cutoff) = spec.retention_cutoff(now) {
            state.retain_from(spec, cutoff);
        }
    }
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
    };
    crate::faults::crash_point("recompute.mid_run");
    let meta = store::write_snapshot(paths, sealed.epoch, sealed.next_seq.0, now, &data)?;
    let views = data.views.into_iter().map(|(_, view)| view.state).collect();
    Ok(Batch {
        epoch: Some(sealed.epoch),
        views,
        meta: Some(meta),
        stats,
        took_ms,
        later_from: sealed.later_from.0,
    })
}

/// The views over epochs <= `sealed.epoch`, built by `workers` threads.
///
/// # Errors
/// The master dataset cannot be read.
pub fn build_views(
    paths: &DataPaths,
    config: &Config,
    sealed: SealedEpoch,
    workers: usize,
) -> Result<(Vec<ViewState>, BatchStats), RecomputeError> {
    let mut stats = BatchStats::default();
    let results = std::thread::scope(|scope| {
        let mut senders: Vec<SyncSender<WorkBatch>> = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = sync_channel(QUEUE_DEPTH);
            senders.push(tx);
            handles.push(scope.spawn(move || work(config, rx)));
        }
        let read = read_survivors(paths, sealed, &senders, &mut stats);
        drop(senders);
        let joined: Vec<_> = handles.into_iter().map(|handle| handle.join()).collect();
        (read, joined)
    });
    let (read, joined) = results;
    read?;
    let mut merged: Option<Vec<ViewState>> = None;
    for outcome in joined {
        let (states, counted, invalid) = outcome.map_err(|_| RecomputeError::WorkerPanicked)?;
        stats.counted += counted;
        stats.invalid += invalid;
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
    Ok((views, stats))
}

/// The reader: streams records in log order, filters and dedups, feeds the workers.
fn read_survivors(
    paths: &DataPaths,
    sealed: SealedEpoch,
    workers: &[SyncSender<WorkBatch>],
    stats: &mut BatchStats,
) -> Result<(), store::Error> {
    // Sized for every record up front: growing a set of millions rehashes it several times.
    let mut seen: FxHashSet<u64> =
        FxHashSet::with_capacity_and_hasher(sealed.next_seq.0 as usize, Default::default());
    let mut batch = WorkBatch::new();
    let mut next_worker = 0;
    let mut send = |batch: WorkBatch| {
        // A worker only stops early by panicking; the join reports that.
        workers[next_worker % workers.len()].send(batch).ok();
        next_worker += 1;
    };
    store::scan_log(paths, sealed.end, |header, raw| {
        if header.epoch > sealed.epoch {
            return;
        }
        stats.records += 1;
        if header.id_hash != 0 && !seen.insert(header.id_hash) {
            stats.duplicates += 1;
            return;
        }
        batch.bytes.extend_from_slice(raw);
        batch.records.push((batch.bytes.len(), header.ingest_ms));
        if batch.records.len() >= BATCH_RECORDS {
            send(std::mem::replace(&mut batch, WorkBatch::new()));
        }
    })?;
    if !batch.records.is_empty() {
        send(batch);
    }
    Ok(())
}

/// A worker: parses and applies every record it is given.
fn work(config: &Config, batches: Receiver<WorkBatch>) -> (Vec<ViewState>, u64, u64) {
    let mut states: Vec<ViewState> = config.views.iter().map(|_| ViewState::new()).collect();
    let (mut counted, mut invalid) = (0u64, 0u64);
    for batch in batches {
        let mut start = 0;
        for (end, ingest_ms) in batch.records {
            match config.schema.parse(&batch.bytes[start..end], ingest_ms) {
                Ok(event) => {
                    for (state, spec) in states.iter_mut().zip(&config.views) {
                        state.apply(spec, &event);
                    }
                    counted += 1;
                }
                Err(_) => invalid += 1,
            }
            start = end;
        }
    }
    (states, counted, invalid)
}
