//! Serving: holds the batch layer's current truth (the snapshot, epochs <= B)
//! and answers queries by merging it with the speed layer's epochs > B.
//!
//! [`Reader`] answers without an actor: it reads the served batch (an
//! `Arc` swapped whole) and each speed partition's shared state in place, so
//! a query waits in no mailbox. The batch part comes from the snapshot's
//! indexes (`aggregate::ViewIndex`), the speed part from the partitions'
//! roll-ups and totals.
//!
//! The actor: in, `SnapshotReady` (a new batch), `Ask` (a query, for callers
//! of the actor API) and `BatchQuery` (for status); out, `Expire` to every
//! speed partition.
//!
//! Exactness: `SnapshotReady` swaps the batch first and only then sends
//! `Expire(B')`, and a partition publishes an expiry before it drops any
//! epoch. A reader takes the batch (B), reads the speed epochs after B, and
//! then checks that no partition has expired past B; if one has, the reader
//! raced a swap, and asks again against the newer batch. So an answer is
//! always batch (epochs <= B) + speed (epochs > B) for one B.

use super::recompute::{Batch, read_snapshot_data};
use super::speed::{Expire, SpeedPartition, SpeedState};
use crate::aggregate::{
    Body, LiveSeries, LiveTop, MetricState, Partial, QueryKind, Reach, TimeRange, ViewSpec,
    merged_top, series_body,
};
use crate::event::Epoch;
use crate::store::{self, DataPaths};
use actix::{Actor, Addr, Context, Handler, Message, ResponseFuture};
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// Which layers answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// Batch (epochs <= B) and speed (epochs > B) together.
    #[default]
    Merged,
    /// The snapshot alone.
    Batch,
    /// The speed layer alone (epochs > B).
    Speed,
    /// The snapshot of this epoch alone: the served one, or an older one
    /// still kept on disk (`batch.keep_snapshots`).
    Snapshot(Epoch),
}

/// What to ask of a view, with metrics by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// One key's metrics.
    Key(String),
    /// All keys together.
    Totals,
    /// The `n` keys with the highest value of `metric`.
    Top {
        /// The metric to rank by.
        metric: String,
        /// How many keys, 1..=1000.
        n: usize,
    },
    /// Per-bucket metrics of one key, or of all keys together.
    Series(Option<String>),
}

/// How often a query reads again when a snapshot swap races it. A swap
/// takes one message, so a second read normally succeeds; this bounds a
/// reader that would otherwise never see the batch an expiry belongs to.
const MAX_READS: usize = 64;

/// How many keys a query answered on its caller's thread may read (a top-N's
/// walk, the keys it meets in either layer) before it is handed to the
/// blocking pool: a walk that reads about as many keys as it answers stays
/// well within it, one down a long ranking does not.
pub const IN_PLACE_KEYS: usize = 2_048;

/// Why [`Reader::answer`] gave no answer.
enum Unanswered {
    /// The query failed.
    Failed(QueryError),
    /// It would read more keys than its reach allows.
    TooFar,
}

impl From<QueryError> for Unanswered {
    fn from(err: QueryError) -> Unanswered {
        Unanswered::Failed(err)
    }
}

/// Most keys a top-N query returns.
pub const MAX_TOP: usize = 1_000;

/// A query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The view's name.
    pub view: String,
    /// What is asked.
    pub question: Question,
    /// Which buckets count.
    pub range: TimeRange,
    /// Which layers answer.
    pub layer: Layer,
}

impl Query {
    /// A merged query over every bucket.
    pub fn new(view: impl Into<String>, question: Question) -> Query {
        Query {
            view: view.into(),
            question,
            range: TimeRange::ALL,
            layer: Layer::Merged,
        }
    }
}

/// What an answer is based on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AsOf {
    /// The snapshot's epoch; `None` when the answer has no batch part (no
    /// snapshot yet, or one without this view: the speed epochs are then all of it).
    pub batch_epoch: Option<Epoch>,
    /// When the snapshot was written, epoch milliseconds.
    pub batch_at: Option<i64>,
    /// The speed epochs merged in.
    pub speed_epochs: Vec<Epoch>,
}

/// An answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The view's name.
    pub view: String,
    /// The result.
    pub body: Body,
    /// What it is based on.
    pub as_of: AsOf,
}

/// Why a query got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// No view of that name.
    #[error("unknown view {0:?}")]
    UnknownView(String),
    /// The view has no metric of that name.
    #[error("view {view:?} has no metric {metric:?}")]
    UnknownMetric {
        /// The view.
        view: String,
        /// The metric asked for.
        metric: String,
    },
    /// n out of range.
    #[error("n must lie within 1..={MAX_TOP}, not {0}")]
    BadN(usize),
    /// `from` is not before `to`.
    #[error("from must be before to")]
    EmptyRange,
    /// The system is shutting down.
    #[error("tandem is stopping")]
    Stopped,
    /// Every read raced a snapshot swap.
    #[error("the served snapshot changed under {0} reads in a row; ask again")]
    Raced(usize),
    /// No snapshot of that epoch is kept.
    #[error("no snapshot of epoch {epoch} is kept; kept: {}", list(retained))]
    NotRetained {
        /// The epoch asked for.
        epoch: Epoch,
        /// The epochs whose snapshots are kept, ascending.
        retained: Vec<Epoch>,
    },
    /// The kept snapshot has no state for the view as configured now (the
    /// view was added or changed since).
    #[error(
        "the snapshot of epoch {epoch} has no state for view {view:?} as configured now (added or changed since)"
    )]
    NotInSnapshot {
        /// The epoch asked for.
        epoch: Epoch,
        /// The view.
        view: String,
    },
    /// A kept snapshot cannot be read (damaged, say).
    #[error("the snapshot of epoch {epoch} cannot be read: {reason}")]
    Unreadable {
        /// The epoch asked for.
        epoch: Epoch,
        /// Why, in one line.
        reason: String,
    },
}

/// `epochs` as a comma-separated list, or "none".
fn list(epochs: &[Epoch]) -> String {
    if epochs.is_empty() {
        return "none".into();
    }
    epochs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A query, answered merged per its layer.
#[derive(Message)]
#[rtype(result = "Result<Answer, QueryError>")]
pub struct Ask(pub Query);

/// A new batch: swap it in, then expire the speed epochs it covers.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SnapshotReady(pub Arc<Batch>);

/// The current batch (for status).
#[derive(Message)]
#[rtype(result = "Arc<Batch>")]
pub struct BatchQuery;

/// Answers queries from any thread: the served batch and the speed layer,
/// read in place, and the older snapshots kept on disk.
pub struct Reader {
    views: Arc<[Arc<ViewSpec>]>,
    /// Covers epochs <= its epoch; swapped whole, never changed in place.
    batch: RwLock<Arc<Batch>>,
    speed: Arc<[Arc<SpeedState>]>,
    /// Where the kept snapshots are, when there is a data_dir.
    snapshots: Option<DataPaths>,
    /// The older snapshots read last (at most [`OLDER_HELD`]), until the
    /// served one is swapped. Never locked while a file is read.
    older: Mutex<Vec<Arc<Batch>>>,
}

/// Older snapshots held in memory once read, each a whole copy of the views.
const OLDER_HELD: usize = 2;

impl Reader {
    /// A reader of `batch` and the speed partitions' states.
    pub fn new(
        views: Arc<[Arc<ViewSpec>]>,
        batch: Arc<Batch>,
        speed: Arc<[Arc<SpeedState>]>,
    ) -> Reader {
        Reader {
            views,
            batch: RwLock::new(batch),
            speed,
            snapshots: None,
            older: Mutex::new(Vec::new()),
        }
    }

    /// The reader, answering for older snapshots from those kept under `paths`.
    pub fn with_snapshots(mut self, paths: DataPaths) -> Reader {
        self.snapshots = Some(paths);
        self
    }

    /// The batch served now.
    pub fn batch(&self) -> Arc<Batch> {
        Arc::clone(&self.batch.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn swap(&self, batch: Arc<Batch>) {
        *self.batch.write().unwrap_or_else(PoisonError::into_inner) = batch;
        // An older snapshot read may be gone from disk with this swap.
        self.older
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The snapshot of `epoch`: the served one, or an older one kept on disk
    /// (read from there unless held: the two read last are held until the
    /// next swap).
    /// Blocking: it may read a snapshot file.
    fn snapshot(&self, epoch: Epoch) -> Result<Arc<Batch>, QueryError> {
        let served = self.batch();
        if served.epoch == Some(epoch) {
            return Ok(served);
        }
        let path = self.kept(epoch, &served)?;
        let held = |older: &Vec<Arc<Batch>>| {
            older
                .iter()
                .find(|batch| batch.epoch == Some(epoch))
                .cloned()
        };
        if let Some(batch) = held(&self.older.lock().unwrap_or_else(PoisonError::into_inner)) {
            return Ok(batch);
        }
        let (meta, data) = match read_snapshot_data(&path) {
            Ok(read) => read,
            Err(err) => {
                // Pruned by a batch run since it was listed: no longer kept.
                self.kept(epoch, &served)?;
                return Err(QueryError::Unreadable {
                    epoch,
                    reason: crate::error_chain(&err),
                });
            }
        };
        // Only the served snapshot's ids decide first copies: this one's are not opened.
        let batch = Arc::new(
            Batch::from_snapshot(&self.views, meta, data, Arc::default()).map_err(|reason| {
                QueryError::Unreadable {
                    epoch,
                    reason: format!("{}: {reason}", path.display()),
                }
            })?,
        );
        let mut older = self.older.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(batch) = held(&older) {
            // Another query read it meanwhile.
            return Ok(batch);
        }
        if older.len() == OLDER_HELD {
            older.remove(0);
        }
        older.push(Arc::clone(&batch));
        Ok(batch)
    }

    /// The file of the kept snapshot of `epoch`, or the epochs that are kept.
    fn kept(&self, epoch: Epoch, served: &Batch) -> Result<std::path::PathBuf, QueryError> {
        let listed = match &self.snapshots {
            Some(paths) => store::list_snapshots(paths).map_err(|err| QueryError::Unreadable {
                epoch,
                reason: crate::error_chain(&err),
            })?,
            None => Vec::new(),
        };
        if let Some((_, path)) = listed.iter().find(|(kept, _)| *kept == epoch) {
            return Ok(path.clone());
        }
        let mut retained: Vec<Epoch> = listed.iter().map(|(kept, _)| *kept).collect();
        retained.extend(served.epoch);
        retained.sort_unstable();
        retained.dedup();
        Err(QueryError::NotRetained { epoch, retained })
    }

    fn resolve(&self, query: &Query) -> Result<(usize, QueryKind), QueryError> {
        let view = self
            .views
            .iter()
            .position(|spec| spec.name == query.view)
            .ok_or_else(|| QueryError::UnknownView(query.view.clone()))?;
        if let (Some(from), Some(to)) = (query.range.from, query.range.to)
            && from >= to
        {
            return Err(QueryError::EmptyRange);
        }
        let kind = match &query.question {
            Question::Key(key) => QueryKind::Key(key.clone()),
            Question::Totals => QueryKind::Totals,
            Question::Series(key) => QueryKind::Series(key.clone()),
            Question::Top { metric, n } => {
                if !(1..=MAX_TOP).contains(n) {
                    return Err(QueryError::BadN(*n));
                }
                let spec = &self.views[view];
                let index = spec
                    .metrics
                    .iter()
                    .position(|m| *m.name == **metric)
                    .ok_or_else(|| QueryError::UnknownMetric {
                        view: spec.name.clone(),
                        metric: metric.clone(),
                    })?;
                QueryKind::Top {
                    metric: index,
                    n: *n,
                }
            }
        };
        Ok((view, kind))
    }

    /// Answers a query, merged per its layer. It is read on the caller's
    /// thread within a reach of [`IN_PLACE_KEYS`] keys: a key's questions
    /// (its metrics, its series) read that key's groups alone; totals and
    /// every key's series read the served snapshot's indexes and the speed
    /// layer's roll-ups; a top-N walks the rankings and reads the keys it
    /// meets. Those take from tens of microseconds to about a millisecond at
    /// millions of groups (BENCHMARKS.md), where the hop to a blocking-pool
    /// thread alone costs milliseconds at its tail on a busy machine. A
    /// query that would read further (a scan of a snapshot not indexed yet,
    /// a top-N that visits every live key or scans the snapshot's keys, a
    /// walk past the reach) is handed to the blocking pool, as is one of an
    /// older snapshot, which may be read from disk first.
    ///
    /// # Errors
    /// An unknown view or metric, a bad parameter, or a stopping system; for
    /// a snapshot's layer, an epoch not kept, a view it has no state for, or
    /// a snapshot that cannot be read.
    pub async fn ask(self: &Arc<Self>, query: Query) -> Result<Answer, QueryError> {
        let (view, kind) = self.resolve(&query)?;
        if !matches!(query.layer, Layer::Snapshot(_)) {
            let reach = Reach::keys(IN_PLACE_KEYS);
            let read = || self.answer(view, &kind, &query, &reach);
            // A panic is answered as the pool's would be, not unwound into
            // the caller (an HTTP worker, an actor).
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)) {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(Unanswered::Failed(err))) => return Err(err),
                Ok(Err(Unanswered::TooFar)) => {}
                Err(_) => return Err(QueryError::Stopped),
            }
        }
        let reader = Arc::clone(self);
        let answered = tokio::task::spawn_blocking(move || {
            reader.answer(view, &kind, &query, &Reach::unlimited())
        })
        .await
        .map_err(|_| QueryError::Stopped)?;
        answered.map_err(|unanswered| match unanswered {
            Unanswered::Failed(err) => err,
            // An unlimited reach does not run out.
            Unanswered::TooFar => QueryError::Stopped,
        })
    }

    /// The answer to a resolved query, unless it would read more keys than
    /// `reach` allows. Blocking: it reads as much as the query needs.
    fn answer(
        &self,
        view: usize,
        kind: &QueryKind,
        query: &Query,
        reach: &Reach,
    ) -> Result<Answer, Unanswered> {
        let spec = &self.views[view];
        let range = query.range.at_least(spec.retention_cutoff(crate::now_ms()));
        let with_speed = matches!(query.layer, Layer::Merged | Layer::Speed);
        let older = match query.layer {
            Layer::Snapshot(epoch) => {
                let batch = self.snapshot(epoch)?;
                if !batch.has_view(view) {
                    return Err(QueryError::NotInSnapshot {
                        epoch,
                        view: spec.name.clone(),
                    }
                    .into());
                }
                Some(batch)
            }
            _ => None,
        };
        for _ in 0..MAX_READS {
            let batch = older.clone().unwrap_or_else(|| self.batch());
            // A view the snapshot has no state for is answered by the speed
            // layer alone, which holds all its epochs until a batch run covers it.
            let batch_epoch = batch.epoch.filter(|_| batch.has_view(view));
            let with_batch = query.layer != Layer::Speed && batch.has_view(view);
            let live = Live {
                spec,
                speed: with_speed.then_some(&*self.speed),
                after: batch_epoch,
                view,
                range,
            };
            let indexed = batch
                .indexes
                .get()
                .and_then(|indexes| indexes.get(view))
                .zip(batch.views.get(view))
                .filter(|_| with_batch);
            // A snapshot not indexed yet (one just loaded) is scanned,
            // except for one key's groups.
            let scans = with_batch
                && indexed.is_none()
                && !matches!(kind, QueryKind::Key(_) | QueryKind::Series(Some(_)));
            if scans && reach.is_limited() {
                return Err(Unanswered::TooFar);
            }
            let body = match (kind, indexed) {
                // The batch's indexes, or no batch part at all.
                (QueryKind::Top { metric, n }, indexed) if indexed.is_some() || !with_batch => {
                    let live: &dyn LiveTop = &live;
                    merged_top(spec, (indexed, live), (*metric, *n), range, reach)
                        .map(|top| Partial::PerKey(top).finish(spec, kind))
                        .ok_or(Unanswered::TooFar)?
                }
                (QueryKind::Series(key), _) => {
                    batch_series(with_batch.then_some(&*batch), (view, key.as_deref()), &live)
                }
                _ => {
                    // Key and totals; or a batch not indexed yet (a snapshot
                    // just loaded), whose part is then a scan.
                    let mut partial = match with_batch {
                        true => batch_partial(&batch, spec, view, kind, range),
                        false => Partial::empty(spec, kind),
                    };
                    partial.merge(&live.partial(kind));
                    partial.finish(spec, kind)
                }
            };
            let mut speed_epochs = BTreeSet::new();
            for partition in live.partitions() {
                speed_epochs.extend(partition.epochs_after(batch_epoch, view));
            }
            // Checked after every read of the speed layer: an expiry is
            // published before anything is dropped, so what was read is
            // complete unless this sees one past B. Then a newer batch is
            // served: read again against it.
            if self.raced(with_speed, batch_epoch) {
                tracing::debug!(?batch_epoch, "a snapshot swap raced a query; reading again");
                continue;
            }
            let as_of = AsOf {
                batch_epoch,
                batch_at: batch_epoch.and(batch.meta.map(|meta| meta.created_ms)),
                speed_epochs: speed_epochs.into_iter().collect(),
            };
            return Ok(Answer {
                view: spec.name.clone(),
                body,
                as_of,
            });
        }
        Err(QueryError::Raced(MAX_READS).into())
    }

    /// Whether a speed partition has expired an epoch after `after`.
    fn raced(&self, with_speed: bool, after: Option<Epoch>) -> bool {
        with_speed
            && self
                .speed
                .iter()
                .any(|partition| partition.expired() > after)
    }
}

/// The speed layer's epochs after `after`, over `range`, for a top-N merge
/// (`None`: a query of the batch layer alone).
struct Live<'a> {
    spec: &'a ViewSpec,
    speed: Option<&'a [Arc<SpeedState>]>,
    after: Option<Epoch>,
    view: usize,
    range: TimeRange,
}

impl Live<'_> {
    /// The partitions read (none for the batch layer alone).
    fn partitions(&self) -> impl Iterator<Item = &SpeedState> {
        self.speed
            .into_iter()
            .flatten()
            .map(|partition| &**partition)
    }

    /// The speed layer's partial of a key, totals or every key's series:
    /// the partitions' partials merged into the first (of a key's query, its
    /// owner's alone: no other holds the key).
    fn partial(&self, kind: &QueryKind) -> Partial {
        if let QueryKind::Key(key) = kind {
            return self.owner(key).map_or_else(
                || Partial::empty(self.spec, kind),
                |partition| partition.partial(self.after, self.view, kind, self.range),
            );
        }
        let mut partials = self
            .partitions()
            .map(|partition| partition.partial(self.after, self.view, kind, self.range));
        let first = partials.next();
        partials.fold(
            first.unwrap_or_else(|| Partial::empty(self.spec, kind)),
            |mut all, partial| {
                all.merge(&partial);
                all
            },
        )
    }

    /// Calls `read` with the speed layer's buckets of `key` in range, read
    /// in place (see [`SpeedState::read_key_series`]).
    fn key_series<R>(
        &self,
        key: &str,
        read: impl FnOnce(&mut dyn Iterator<Item = (i64, &[MetricState])>) -> R,
    ) -> R {
        match self.owner(key) {
            Some(partition) => {
                partition.read_key_series(self.after, (self.view, key), self.range, read)
            }
            None => read(&mut std::iter::empty()),
        }
    }

    /// The partition holding `key`.
    fn owner(&self, key: &str) -> Option<&SpeedState> {
        let speed = self.speed?;
        speed
            .get(super::speed::partition_of(key, speed.len()))
            .map(|partition| &**partition)
    }
}

impl LiveTop for Live<'_> {
    fn each(&self, metric: usize, visit: &mut dyn FnMut(&str, &MetricState)) {
        for partition in self.partitions() {
            partition.each_key(self.after, self.view, self.range, metric, visit);
        }
    }

    fn key(&self, key: &str, into: &mut [MetricState]) {
        if let Some(partition) = self.owner(key) {
            partition.merge_key(self.after, self.view, key, self.range, into);
        }
    }

    fn metric(&self, key: &str, metric: usize, into: &mut MetricState) -> bool {
        self.owner(key).is_some_and(|partition| {
            partition.merge_key_metric(self.after, (self.view, key), self.range, metric, into)
        })
    }

    fn total(&self, metric: usize, into: &mut MetricState) {
        for partition in self.partitions() {
            partition.merge_total(self.after, self.view, self.range, metric, into);
        }
    }

    fn listed(&self, limit: usize, keys: &mut Vec<Arc<str>>) -> bool {
        self.partitions()
            .all(|partition| partition.keys_in(self.after, self.view, self.range, limit, keys))
    }

    fn banded(&self, metric: usize) -> bool {
        self.partitions()
            .all(|partition| partition.banded(self.view, metric))
    }

    fn raised(&self, metric: usize) -> Vec<u64> {
        self.partitions()
            .map(|partition| partition.raised(self.view, metric))
            .collect()
    }

    fn raised_into(&self, metric: usize, since: &[u64], lowest: u16) -> bool {
        self.partitions()
            .zip(since)
            .any(|(partition, since)| partition.raised_into(self.view, metric, *since, lowest))
    }

    fn next_band(&self, metric: usize, below: u16, keys: &mut Vec<Arc<str>>) -> Option<u16> {
        let band = self
            .partitions()
            .filter_map(|partition| partition.highest_band(self.view, metric, below))
            .max()?;
        for partition in self.partitions() {
            partition.band_keys(self.view, metric, band, keys);
        }
        Some(band)
    }
}

/// A series of `key` (or of every key) of view `view`: the batch layer's
/// buckets read in place (the index's leaves, or the key's groups) and the
/// speed layer's merged into them (a key's read in place too, under its
/// entry's lock, except those the batch layer also holds).
fn batch_series(batch: Option<&Batch>, (view, key): (usize, Option<&str>), live: &Live) -> Body {
    let (spec, range) = (live.spec, live.range);
    let n = spec.metrics.len();
    let state = batch.and_then(|batch| batch.views.get(view));
    if let Some(key) = key {
        let groups = state.and_then(|state| state.key(key));
        let span = groups.map_or(0..0, |groups| groups.span(range));
        let starts = groups.map_or(&[][..], |groups| &groups.buckets()[span.clone()]);
        let speed = live.key_series(key, |buckets| {
            LiveSeries::gather(spec, |start| starts.binary_search(&start).is_ok(), buckets)
        });
        let stored = groups.into_iter().flat_map(|groups| {
            span.clone()
                .map(move |at| (groups.buckets()[at], groups.states(n, at)))
        });
        return series_body(spec, stored, speed);
    }
    let kind = QueryKind::Series(None);
    let Partial::PerBucket(speed) = live.partial(&kind) else {
        unreachable!("a series' partial is per bucket")
    };
    let index = batch
        .and_then(|batch| batch.indexes.get())
        .and_then(|indexes| indexes.get(view));
    match (state, index) {
        (Some(_), Some(index)) => series_body(spec, index.series(range), speed.into()),
        (Some(state), None) => {
            // Not indexed yet (a snapshot just loaded): the scan.
            let mut partial = state.partial(spec, &kind, range);
            partial.merge(&Partial::PerBucket(speed));
            partial.finish(spec, &kind)
        }
        (None, _) => series_body(spec, std::iter::empty(), speed.into()),
    }
}

/// The batch layer's part of a key or totals query, from the snapshot's
/// index (a scan of its state while it has none yet).
fn batch_partial(
    batch: &Batch,
    spec: &ViewSpec,
    view: usize,
    kind: &QueryKind,
    range: TimeRange,
) -> Partial {
    let Some(state) = batch.views.get(view) else {
        return Partial::empty(spec, kind);
    };
    let Some(index) = batch.indexes.get().and_then(|indexes| indexes.get(view)) else {
        // Not indexed yet (a snapshot just loaded): the scan.
        return state.partial(spec, kind, range);
    };
    let mut partial = Partial::empty(spec, kind);
    match (kind, &mut partial) {
        (QueryKind::Key(key), Partial::States(states)) => {
            if let Some(at) = state.key_index(key) {
                index.key(state, at, range, states);
            }
        }
        (QueryKind::Totals, Partial::States(states)) => index.totals(range, states),
        // Series read the batch in place (`batch_series`), top-N merge
        // through `merged_top`.
        _ => {}
    }
    partial
}

/// The serving actor: swaps in new batches and expires the speed epochs they cover.
pub struct Serving {
    /// Where the served snapshot's age is published.
    shared: Arc<crate::metrics::Shared>,
    reader: Arc<Reader>,
    partitions: Arc<[Addr<SpeedPartition>]>,
}

impl Serving {
    /// Serving for `reader`, expiring epochs in `partitions`.
    pub fn new(
        reader: Arc<Reader>,
        partitions: Arc<[Addr<SpeedPartition>]>,
        shared: Arc<crate::metrics::Shared>,
    ) -> Serving {
        let serving = Serving {
            shared,
            reader,
            partitions,
        };
        serving.publish_age();
        serving
    }

    fn publish_age(&self) {
        let created = self.reader.batch().meta.map_or(0, |meta| meta.created_ms);
        self.shared
            .snapshot_created_ms
            .store(created, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Actor for Serving {
    type Context = Context<Self>;
}

impl Handler<Ask> for Serving {
    type Result = ResponseFuture<Result<Answer, QueryError>>;

    fn handle(&mut self, Ask(query): Ask, _: &mut Self::Context) -> Self::Result {
        let reader = Arc::clone(&self.reader);
        Box::pin(async move { reader.ask(query).await })
    }
}

impl Handler<SnapshotReady> for Serving {
    type Result = ();

    #[tracing::instrument(skip_all, fields(epoch = ?msg.0.epoch))]
    fn handle(&mut self, msg: SnapshotReady, _: &mut Self::Context) {
        let epoch = msg.0.epoch;
        self.reader.swap(msg.0);
        self.publish_age();
        // Swap first, expire second: a reader that took the old batch either
        // finds the epochs between the old and the new snapshot still in the
        // speed layer, or finds the expiry and asks again.
        if let Some(epoch) = epoch {
            for partition in self.partitions.iter() {
                partition.do_send(Expire { upto: epoch });
            }
        }
    }
}

impl Handler<BatchQuery> for Serving {
    type Result = actix::MessageResult<BatchQuery>;

    fn handle(&mut self, _: BatchQuery, _: &mut Self::Context) -> Self::Result {
        actix::MessageResult(self.reader.batch())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::MetricValue;
    use crate::config::Config;

    #[test]
    fn a_read_against_a_batch_older_than_an_expiry_is_refused() {
        let config = Config::parse(crate::config::ONE_COUNT_VIEW, "test.toml").expect("config");
        let views: Arc<[Arc<ViewSpec>]> = config.views.iter().cloned().collect();
        let speed = Arc::new(SpeedState::new(Arc::clone(&views)));
        let mut scratch = super::super::speed::Scratch::default();
        for (id, epoch) in [(1, 1), (2, 2), (3, 2)] {
            let event = config
                .schema
                .parse(format!(r#"{{"id":{id},"k":"a"}}"#).as_bytes(), 0)
                .expect("event");
            speed.apply(Epoch(epoch), 0, &event, &mut scratch);
        }
        let reader = Arc::new(Reader::new(
            views,
            Arc::new(Batch::default()),
            Arc::new([Arc::clone(&speed)]),
        ));
        let ask = || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            runtime.block_on(reader.ask(Query::new("v", Question::Totals)))
        };
        let answer = ask().expect("an answer");
        assert_eq!(answer.as_of.speed_epochs, [Epoch(1), Epoch(2)]);
        let Body::Metrics(metrics) = answer.body else {
            panic!("totals are metrics")
        };
        assert_eq!(metrics.get("n"), Some(MetricValue::Int(3)));
        // Epoch 1 is expired, but the batch that covers it was never swapped
        // in: no read may add the speed layer's rest to the older batch.
        speed.expire(Epoch(1));
        assert_eq!(ask(), Err(QueryError::Raced(MAX_READS)));
        assert!(!reader.raced(true, Some(Epoch(1))));
        assert!(
            !reader.raced(false, None),
            "the batch layer alone never races"
        );
    }

    #[test]
    fn a_batch_answers_the_same_before_and_after_it_is_indexed() {
        let config =
            Config::parse(crate::aggregate::COUNT_AND_USERS_CONFIG, "test.toml").expect("config");
        let views: Arc<[Arc<ViewSpec>]> = config.views.iter().cloned().collect();
        let mut state = crate::aggregate::ViewState::new();
        for id in 0..200 {
            let raw = format!(
                r#"{{"id":{id},"k":"k{}","ts":{},"u":"u{}"}}"#,
                id % 7,
                id * 13_000,
                id % 11
            );
            state.apply(
                &views[0],
                &config.schema.parse(raw.as_bytes(), 0).expect("event"),
            );
        }
        let batch = Arc::new(Batch {
            epoch: Some(Epoch(1)),
            views: vec![state],
            missing: vec![false],
            ..Batch::default()
        });
        let speed = Arc::new(SpeedState::new(Arc::clone(&views)));
        let reader = Arc::new(Reader::new(
            Arc::clone(&views),
            Arc::clone(&batch),
            Arc::new([speed]),
        ));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let range = TimeRange {
            from: Some(300_000),
            to: Some(1_500_000),
        };
        let questions = [
            Question::Totals,
            Question::Key("k3".into()),
            Question::Series(None),
            Question::Series(Some("k1".into())),
            Question::Top {
                metric: "users".into(),
                n: 3,
            },
            Question::Top {
                metric: "n".into(),
                n: 2,
            },
        ];
        let answers = || -> Vec<Body> {
            questions
                .iter()
                .flat_map(|question| [TimeRange::ALL, range].map(|range| (question, range)))
                .map(|(question, range)| {
                    let query = Query {
                        range,
                        ..Query::new("v", question.clone())
                    };
                    runtime.block_on(reader.ask(query)).expect("an answer").body
                })
                .collect()
        };
        let scanned = answers();
        let states: Vec<&crate::aggregate::ViewState> = batch.views.iter().collect();
        let indexes = super::super::recompute::build_indexes(&views, &states).expect("indexes");
        assert!(batch.indexes.set(indexes).is_ok());
        assert_eq!(answers(), scanned);
    }
}
