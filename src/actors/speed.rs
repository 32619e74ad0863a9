//! A speed partition: live aggregates of the keys whose hash maps to it, per
//! epoch, so that the epochs a snapshot covers can be dropped exactly.
//!
//! In: `Apply` (events of one epoch, after they are durable) and `Expire`
//! (drop epochs <= B), both by `do_send`, so the mailbox order is the send
//! order. The state is shared: the actor is its only writer, and readers
//! (serving, on any thread) read it in place through its maps, so a query
//! never waits behind queued `Apply` batches. Per view and key, a dashmap
//! holds the key's buckets and its roll-up per epoch (and, once a range read
//! merged them, blocks of its buckets: `KeyBlocks`); per view, a mutex holds
//! each epoch's totals per bucket and over all buckets (and, once a range
//! read merged them, over blocks of buckets, until an event lands in them:
//! `aggregate::Blocks`), and per bucket the keys with a group there; per view and
//! monotone metric, a mutex holds the keys filed in bands of their value
//! (`Bands`), which a top-N walks from the top. Each is updated as an event
//! is applied, so a key, totals or top-N query reads a few states instead of
//! scanning groups.
//!
//! A reader that read epochs after B must find, once done, that the
//! partition has expired nothing after B (`expired`): the actor publishes a
//! new expiry before it drops anything, so a reader that raced an `Expire`
//! sees it and asks again against the newer snapshot.
use crate::aggregate::{
    Agg, BLOCK_SIZES, Blocks, Input, KeyBuckets, KeyGroups, MetricState, Partial, QueryKind,
    SKETCH_MERGE_WEIGHT, TimeRange, ViewSpec, band_of, merge_states, update_states,
};
use crate::event::{Epoch, ParsedEvent, hash_text};
use actix::{Actor, AsyncContext, Context, Handler, Message};
use dashmap::DashMap;
use rustc_hash::{FxBuildHasher, FxHashSet};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// How often a partition drops the buckets past its views' retention.
const RETAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How many events ahead of the one it applies a partition asks for the
/// event's fields to be brought into cache.
const PREFETCH_AHEAD: usize = 4;

/// The partition owning `key` of a view: every key has exactly one owner.
pub fn partition_of(key: &str, partitions: usize) -> usize {
    (hash_text(key) % partitions.max(1) as u64) as usize
}

/// For each view, in order, the partition owning `event`'s key in it.
pub fn owners<'a>(
    views: &'a [Arc<ViewSpec>],
    event: &'a ParsedEvent,
    partitions: usize,
    scratch: &'a mut String,
) -> impl Iterator<Item = (usize, usize)> + 'a {
    views.iter().enumerate().map(move |(view, spec)| {
        (
            view,
            partition_of(spec.key_text(event, scratch), partitions),
        )
    })
}

/// Durable events of one epoch for this partition.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Apply {
    /// Their epoch.
    pub epoch: Epoch,
    /// A durable batch, shared by every partition it routes to.
    pub events: Arc<Vec<ParsedEvent>>,
    /// Per view, in view order: the positions in `events`, ascending, of the
    /// events whose key in that view this partition owns. A partition
    /// applies one view's events, then the next view's: each view's state is
    /// touched in one stretch.
    pub picks: Vec<Vec<u32>>,
    /// Answered once they are applied (readers see them from then on).
    pub done: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Drops every epoch <= `upto`: a snapshot now covers them.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Expire {
    /// The snapshot's epoch.
    pub upto: Epoch,
}

/// Buffers reused across events by the one writer of a [`SpeedState`].
#[derive(Debug, Default)]
pub struct Scratch {
    key: String,
    inputs: Vec<Input>,
}

/// One key's groups in one epoch, with their roll-up over every bucket.
#[derive(Debug)]
struct KeyEpoch {
    epoch: Epoch,
    groups: KeyGroups,
    rollup: Box<[MetricState]>,
    /// The blocks of the groups a range read merged (see [`KeyBlocks`]),
    /// once one did.
    blocks: Mutex<Option<Box<Blocks>>>,
    /// Whether `blocks` holds some, read without waiting on a reader.
    with_blocks: AtomicBool,
}

/// Limits on the blocks of keys' groups the speed layer keeps merged once a
/// range read of the key needed them (an event drops the blocks holding its
/// bucket). Reads of a busy key over part of its buckets, as a dashboard's
/// top-N asks for its winners every second, then merge a few blocks instead
/// of inserting every value of every bucket into a sketch. The limits bound
/// what they cost: views with a distinct or quantile metric only (other
/// states merge at the cost of an addition), keys read over part of their
/// buckets only, at most `limit` (key, epoch) pairs with blocks in a
/// partition (a pair takes its room on its first such read, and keeps it
/// until its epoch expires or retention drops it), each block kept only when
/// merging its buckets would insert at least `weight` values (a lighter block
/// costs little to merge and could hold more than its buckets).
#[derive(Debug)]
struct KeyBlocks {
    limit: usize,
    weight: usize,
    /// (key, epoch) pairs with blocks, as of the last recount (a pair given
    /// room while a recount ran may be missed until the next one).
    held: AtomicUsize,
}

impl KeyBlocks {
    /// At most this many (key, epoch) pairs of a partition keep blocks.
    const LIMIT: usize = 4096;
    /// See [`KeyBlocks`]: the merge weight of a sketch's registers.
    const WEIGHT: usize = SKETCH_MERGE_WEIGHT;

    /// Takes room for one more (key, epoch) pair's blocks, if left.
    fn reserve(&self) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (held < self.limit).then_some(held + 1)
            })
            .is_ok()
    }
}

impl KeyEpoch {
    /// Merges the states over `range` into `into`, through blocks of the
    /// groups (see [`KeyBlocks`]); answers whether any bucket lies in range.
    fn merge_in(
        &self,
        spec: &ViewSpec,
        limits: &KeyBlocks,
        range: TimeRange,
        into: &mut [MetricState],
    ) -> bool {
        let groups = &self.groups;
        let span = groups.span(range);
        let weighed = spec
            .metrics
            .iter()
            .any(|metric| metric.agg.has_merge_weight());
        if !weighed || span.len() < BLOCK_SIZES[0] as usize || span == (0..groups.len()) {
            return groups.merge_in(range, &self.rollup, into);
        }
        let mut blocks = self.blocks.lock().unwrap_or_else(PoisonError::into_inner);
        if blocks.is_none() {
            if !limits.reserve() {
                drop(blocks);
                groups.merge_span(span, into);
                return true;
            }
            self.with_blocks.store(true, Ordering::Relaxed);
        }
        let buckets = groups.buckets();
        let from_to = (buckets[span.start], buckets[span.end - 1] + spec.bucket_ms);
        let source = KeyBuckets {
            groups,
            n: spec.metrics.len(),
        };
        blocks.get_or_insert_default().each_in(
            spec,
            &source,
            limits.weight,
            from_to,
            &mut |states| merge_states(into, states),
        );
        true
    }

    /// Whether a range read kept blocks of these groups.
    fn has_blocks(&self) -> bool {
        self.with_blocks.load(Ordering::Relaxed)
    }

    /// The blocks kept, for the one writer.
    fn blocks_mut(&mut self) -> Option<&mut Blocks> {
        self.blocks
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .as_deref_mut()
    }
}

/// One key's groups, per epoch, ascending, and its band per metric (see [`Bands`]).
#[derive(Debug)]
struct LiveKey {
    epochs: Vec<KeyEpoch>,
    /// Per metric, the band the key is filed under; [`LiveKey::UNBANDED`]
    /// for a metric that is not banded, or before the key is filed.
    bands: Box<[u16]>,
}

impl LiveKey {
    const UNBANDED: u16 = u16::MAX;

    fn new(spec: &ViewSpec) -> LiveKey {
        LiveKey {
            epochs: Vec::new(),
            bands: vec![Self::UNBANDED; spec.metrics.len()].into_boxed_slice(),
        }
    }

    /// The key's value of the monotone `metric` over every epoch and bucket held.
    fn whole(&self, metric: usize, agg: &Agg) -> f64 {
        let values = self
            .epochs
            .iter()
            .filter_map(|entry| entry.rollup[metric].value(agg).as_f64());
        match agg {
            Agg::Max => values.fold(f64::NEG_INFINITY, f64::max),
            _ => values.sum(),
        }
    }

    /// Answers whether the event opened a new group.
    fn apply(&mut self, spec: &ViewSpec, epoch: Epoch, bucket: i64, inputs: &[Input]) -> bool {
        let at = match self
            .epochs
            .binary_search_by_key(&epoch, |entry| entry.epoch)
        {
            Ok(at) => at,
            Err(at) => {
                let entry = KeyEpoch {
                    epoch,
                    groups: KeyGroups::default(),
                    rollup: spec.empty_states(),
                    blocks: Mutex::new(None),
                    with_blocks: AtomicBool::new(false),
                };
                self.epochs.insert(at, entry);
                at
            }
        };
        let entry = &mut self.epochs[at];
        update_states(&mut entry.rollup, inputs);
        if let Some(blocks) = entry.blocks_mut() {
            blocks.landed(spec.bucket_ms, bucket);
        }
        entry.groups.apply(spec, bucket, inputs)
    }

    /// Merges the key's states over `range` in epochs after `after` into
    /// `into`; answers whether any bucket of it lies in the range.
    fn merge(
        &self,
        (spec, limits): (&ViewSpec, &KeyBlocks),
        after: Option<Epoch>,
        range: TimeRange,
        into: &mut [MetricState],
    ) -> bool {
        self.later(after).fold(false, |any, entry| {
            entry.merge_in(spec, limits, range, into) | any
        })
    }

    /// Merges the key's state of `metric` over `range` in epochs after
    /// `after` into `into`; answers whether any bucket of it lies in range.
    fn merge_metric(
        &self,
        n: usize,
        after: Option<Epoch>,
        range: TimeRange,
        metric: usize,
        into: &mut MetricState,
    ) -> bool {
        self.later(after).fold(false, |any, entry| {
            let rollup = &entry.rollup[metric];
            entry.groups.merge_metric_in(range, n, metric, rollup, into) | any
        })
    }

    /// The key's epochs after `after`.
    fn later(&self, after: Option<Epoch>) -> impl Iterator<Item = &KeyEpoch> {
        self.epochs
            .iter()
            .filter(move |entry| Some(entry.epoch) > after)
    }
}

/// One epoch's totals of a view: per bucket, over all buckets, and over
/// the blocks of buckets a range read merged.
#[derive(Debug)]
struct EpochTotals {
    buckets: BTreeMap<i64, BucketTotals>,
    all: Box<[MetricState]>,
    /// The totals of the blocks of buckets a range read merged since an
    /// event last landed in them.
    blocks: Blocks,
}

/// One bucket's totals in an epoch, and the keys with a group there.
#[derive(Debug)]
struct BucketTotals {
    states: Box<[MetricState]>,
    /// Each key once, in the order its group was opened.
    keys: Vec<Arc<str>>,
}

/// A bucket's totals, as blocks of them are merged from.
impl AsRef<[MetricState]> for BucketTotals {
    fn as_ref(&self) -> &[MetricState] {
        &self.states
    }
}

impl EpochTotals {
    fn new(spec: &ViewSpec) -> EpochTotals {
        EpochTotals {
            buckets: BTreeMap::new(),
            all: spec.empty_states(),
            blocks: Blocks::default(),
        }
    }

    /// Adds an event with `inputs` in `bucket`; `new_group` names its key
    /// when the event opened the key's group in that bucket.
    fn update(
        &mut self,
        spec: &ViewSpec,
        bucket: i64,
        inputs: &[Input],
        new_group: Option<Arc<str>>,
    ) {
        update_states(&mut self.all, inputs);
        let bucket_totals = self.buckets.entry(bucket).or_insert_with(|| BucketTotals {
            states: spec.empty_states(),
            keys: Vec::new(),
        });
        update_states(&mut bucket_totals.states, inputs);
        bucket_totals.keys.extend(new_group);
        self.blocks.landed(spec.bucket_ms, bucket);
    }

    /// Calls `visit` with totals that together cover `range` once: those
    /// over all buckets when the range holds every bucket, else those of
    /// the blocks and buckets in range (see [`Blocks::each_in`]).
    fn each_in(
        &mut self,
        spec: &ViewSpec,
        range: TimeRange,
        mut visit: impl FnMut(&[MetricState]),
    ) {
        let (Some(&first), Some(&last)) =
            (self.buckets.keys().next(), self.buckets.keys().next_back())
        else {
            return;
        };
        if range.contains(first) && range.contains(last) {
            visit(&self.all);
            return;
        }
        let from = range.from.map_or(first, |from| from.max(first));
        let to = range
            .to
            .map_or(last + spec.bucket_ms, |to| to.min(last + spec.bucket_ms));
        self.blocks
            .each_in(spec, &self.buckets, 0, (from, to), &mut visit);
    }

    fn in_range(&self, range: TimeRange) -> impl Iterator<Item = (&i64, &BucketTotals)> {
        let from = range
            .from
            .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Included);
        let to = range
            .to
            .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let empty = matches!((range.from, range.to), (Some(from), Some(to)) if from >= to);
        (!empty)
            .then(|| self.buckets.range((from, to)))
            .into_iter()
            .flatten()
    }
}

/// The keys of a view filed by band (see `aggregate::band_of`) of their
/// value of one monotone metric over every epoch and bucket held: an upper
/// bound of their value in any range and any epochs after any B, so a top-N
/// reads the highest bands first and stops once no key further down can
/// enter. A key changes band only when its value crosses a quarter octave,
/// so filing costs ingest the key's value over its epochs and a comparison
/// an event and metric.
///
/// A reader walking down the bands could miss a key filed higher meanwhile,
/// into a band it had already read: the bands log such moves, and a walk
/// that a move into the bands it read raced is not used (see
/// `aggregate::merged_top`).
#[derive(Debug, Default)]
struct Bands {
    filing: Mutex<Filing>,
    /// A sum whose group went (or may have gone) negative: its value over
    /// some buckets may then exceed the whole, and the bands bound nothing.
    negative: AtomicBool,
}

/// The keys by band, and the moves up so far.
#[derive(Debug, Default)]
struct Filing {
    keys: BTreeMap<u16, FxHashSet<Arc<str>>>,
    /// Moves up so far: a key filed into a higher band than before, or for
    /// the first time; refiling every key counts as a move into every band.
    raised: u64,
    /// The latest [`RAISES_KEPT`] moves up, oldest first: the count after
    /// the move, and the band moved into.
    raises: VecDeque<(u64, u16)>,
}

/// Moves up a walk can be checked against: a walk raced by more than this
/// many is read again.
const RAISES_KEPT: usize = 1024;

impl Filing {
    /// Counts a move up into `band`.
    fn raise(&mut self, band: u16) {
        self.raised += 1;
        if self.raises.len() == RAISES_KEPT {
            self.raises.pop_front();
        }
        self.raises.push_back((self.raised, band));
    }

    /// Whether a key moved into band `lowest` or higher since `since` moves
    /// up; also when more moves than are kept happened since.
    fn raised_into(&self, since: u64, lowest: u16) -> bool {
        if self.raised == since {
            return false;
        }
        let logged = self
            .raises
            .front()
            .is_some_and(|(first, _)| *first <= since + 1);
        !logged
            || self
                .raises
                .iter()
                .any(|(at, band)| *at > since && *band >= lowest)
    }
}

impl Bands {
    fn filing(&self) -> MutexGuard<'_, Filing> {
        // Nothing can panic while the lock is held.
        self.filing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Files `key` under `band` instead of `from`.
    fn refile(&self, key: &Arc<str>, from: u16, band: u16) {
        let mut filing = self.filing();
        if from == LiveKey::UNBANDED || band > from {
            filing.raise(band);
        }
        if let Some(filed) = filing.keys.get_mut(&from) {
            filed.remove(key);
            if filed.is_empty() {
                filing.keys.remove(&from);
            }
        }
        filing.keys.entry(band).or_default().insert(Arc::clone(key));
    }
}

/// One view's live state in a partition.
#[derive(Debug)]
struct LiveView {
    keys: DashMap<Arc<str>, LiveKey, FxBuildHasher>,
    totals: Mutex<BTreeMap<Epoch, EpochTotals>>,
    /// Per metric, its bands when it is monotone (count, sum, max).
    bands: Box<[Option<Bands>]>,
}

impl LiveView {
    fn new(spec: &ViewSpec) -> LiveView {
        LiveView {
            keys: DashMap::default(),
            totals: Mutex::new(BTreeMap::new()),
            bands: spec
                .metrics
                .iter()
                .map(|metric| metric.agg.is_monotone().then(Bands::default))
                .collect(),
        }
    }

    /// Files the key under its bands after an event with `inputs` was applied to it.
    fn file(&self, spec: &ViewSpec, key: &Arc<str>, entry: &mut LiveKey, inputs: &[Input]) {
        for (metric, bands) in self.banded_metrics() {
            let agg = &spec.metrics[metric].agg;
            if matches!((agg, inputs.get(metric)), (Agg::Sum, Some(Input::Number(x))) if *x < 0.0) {
                bands.negative.store(true, Ordering::Relaxed);
            }
            let band = band_of(entry.whole(metric, agg));
            if band != entry.bands[metric] {
                bands.refile(key, entry.bands[metric], band);
                entry.bands[metric] = band;
            }
        }
    }

    /// Files every key anew, after epochs or buckets were dropped; a sum is
    /// bounded again once no group's sum is negative.
    fn refile_all(&self, spec: &ViewSpec) {
        let n = spec.metrics.len();
        let mut filed: Vec<BTreeMap<u16, FxHashSet<Arc<str>>>> = vec![BTreeMap::new(); n];
        let mut negative = vec![false; n];
        for mut entry in self.keys.iter_mut() {
            let (key, entry) = entry.pair_mut();
            for (metric, _) in self.banded_metrics() {
                let band = band_of(entry.whole(metric, &spec.metrics[metric].agg));
                entry.bands[metric] = band;
                filed[metric]
                    .entry(band)
                    .or_default()
                    .insert(Arc::clone(key));
                negative[metric] |= entry.epochs.iter().any(|key_epoch| {
                    (0..key_epoch.groups.len()).any(|at| {
                        matches!(&key_epoch.groups.states(n, at)[metric], MetricState::Sum(sum) if sum.as_i128() < 0)
                    })
                });
            }
        }
        for (metric, bands) in self.banded_metrics() {
            let mut filing = bands.filing();
            filing.keys = std::mem::take(&mut filed[metric]);
            // Any key may have moved: as a move into every band.
            filing.raise(u16::MAX);
            bands.negative.store(negative[metric], Ordering::Relaxed);
        }
    }

    /// Each banded metric's position and bands.
    fn banded_metrics(&self) -> impl Iterator<Item = (usize, &Bands)> {
        self.bands
            .iter()
            .enumerate()
            .filter_map(|(metric, bands)| bands.as_ref().map(|bands| (metric, bands)))
    }

    fn totals(&self) -> MutexGuard<'_, BTreeMap<Epoch, EpochTotals>> {
        // Nothing can panic while the lock is held; a poisoned lock still
        // guards whole states.
        self.totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The epochs after `after`, as a range of a map keyed by epoch.
fn epochs_after(after: Option<Epoch>) -> (std::ops::Bound<Epoch>, std::ops::Bound<Epoch>) {
    let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
    (from, std::ops::Bound::Unbounded)
}

/// The totals of the epochs after `after`, to merge blocks into.
fn later_mut(
    totals: &mut BTreeMap<Epoch, EpochTotals>,
    after: Option<Epoch>,
) -> impl Iterator<Item = &mut EpochTotals> {
    totals
        .range_mut(epochs_after(after))
        .map(|(_, totals)| totals)
}

/// The totals of the epochs after `after`.
fn later(
    totals: &BTreeMap<Epoch, EpochTotals>,
    after: Option<Epoch>,
) -> impl Iterator<Item = &EpochTotals> {
    totals.range(epochs_after(after)).map(|(_, totals)| totals)
}

/// A partition's state, shared by its actor (the one writer) and readers:
/// per view, per key and per epoch, the groups, roll-ups and totals.
#[derive(Debug)]
pub struct SpeedState {
    views: Arc<[Arc<ViewSpec>]>,
    live: Box<[LiveView]>,
    /// One more than the newest epoch expired; 0 while none is.
    expired: AtomicU64,
    /// (key, bucket) groups held, over all epochs and views.
    groups: AtomicU64,
    /// What blocks of keys' groups it keeps.
    key_blocks: KeyBlocks,
}

impl SpeedState {
    /// An empty partition for these views.
    pub fn new(views: Arc<[Arc<ViewSpec>]>) -> SpeedState {
        let live = views.iter().map(|spec| LiveView::new(spec)).collect();
        SpeedState {
            views,
            live,
            expired: AtomicU64::new(0),
            groups: AtomicU64::new(0),
            key_blocks: KeyBlocks {
                limit: KeyBlocks::LIMIT,
                weight: KeyBlocks::WEIGHT,
                held: AtomicUsize::new(0),
            },
        }
    }

    /// The partition with other limits on the blocks of keys' groups it
    /// keeps (see `KeyBlocks`).
    #[cfg(test)]
    fn with_key_blocks(mut self, limit: usize, weight: usize) -> SpeedState {
        self.key_blocks.limit = limit;
        self.key_blocks.weight = weight;
        self
    }

    /// The newest epoch expired: events of it or older are in the snapshot.
    pub fn expired(&self) -> Option<Epoch> {
        self.expired
            .load(Ordering::SeqCst)
            .checked_sub(1)
            .map(Epoch)
    }

    /// Applies one event of `epoch` to view `view`. Events of an expired epoch
    /// are ignored: the snapshot that expired it already counts them. Callers
    /// pass only first copies of an id (see `store::FirstCopies`). Only the
    /// partition's one writer calls it.
    pub fn apply(&self, epoch: Epoch, view: usize, event: &ParsedEvent, scratch: &mut Scratch) {
        if self.expired().is_some_and(|expired| epoch <= expired) {
            return;
        }
        let spec = &self.views[view];
        let live = &self.live[view];
        let bucket = spec.bucket_of(event.event_ms);
        spec.inputs(event, &mut scratch.inputs);
        let inputs = scratch.inputs.as_slice();
        let key = spec.key_text(event, &mut scratch.key);
        let mut guard = match live.keys.get_mut(key) {
            Some(guard) => guard,
            None => live
                .keys
                .entry(key.into())
                .or_insert_with(|| LiveKey::new(spec)),
        };
        let (key, entry) = guard.pair_mut();
        let new_group = entry
            .apply(spec, epoch, bucket, inputs)
            .then(|| Arc::clone(key));
        live.file(spec, key, entry, inputs);
        drop(guard);
        if new_group.is_some() {
            self.groups.fetch_add(1, Ordering::Relaxed);
        }
        live.totals()
            .entry(epoch)
            .or_insert_with(|| EpochTotals::new(spec))
            .update(spec, bucket, inputs, new_group);
    }

    /// The partial of a key, totals or series query over epochs after
    /// `after` (a top-N is merged through [`SpeedState::keys_in`], the
    /// bands and [`SpeedState::each_key`] instead: see
    /// `aggregate::merged_top`). Any thread may call it;
    /// the caller must then check that [`SpeedState::expired`] is still no
    /// later than `after`.
    pub fn partial(
        &self,
        after: Option<Epoch>,
        view: usize,
        kind: &QueryKind,
        range: TimeRange,
    ) -> Partial {
        let spec = &self.views[view];
        let live = &self.live[view];
        let mut partial = Partial::empty(spec, kind);
        match (kind, &mut partial) {
            (QueryKind::Totals, Partial::States(states)) => {
                for epoch_totals in later_mut(&mut live.totals(), after) {
                    epoch_totals.each_in(spec, range, |totals| merge_states(states, totals));
                }
            }
            (QueryKind::Series(None), Partial::PerBucket(per_bucket)) => {
                for epoch_totals in later(&live.totals(), after) {
                    for (bucket, totals) in epoch_totals.in_range(range) {
                        merge_states(
                            per_bucket
                                .entry(*bucket)
                                .or_insert_with(|| spec.empty_states()),
                            &totals.states,
                        );
                    }
                }
            }
            (QueryKind::Key(key), Partial::States(states)) => {
                self.merge_key(after, view, key, range, states);
            }
            (QueryKind::Series(Some(key)), Partial::PerBucket(per_bucket)) => {
                self.read_key_series(after, (view, key), range, |buckets| {
                    for (start, states) in buckets {
                        match per_bucket.entry(start) {
                            Entry::Vacant(vacant) => {
                                vacant.insert(states.into());
                            }
                            Entry::Occupied(mut held) => merge_states(held.get_mut(), states),
                        }
                    }
                });
            }
            (QueryKind::Top { metric, .. }, Partial::PerKey(per_key)) => {
                // Every key with its full states: the scan's shape, for tests.
                let mut keys = Vec::new();
                self.each_key(after, view, range, *metric, &mut |key, _| {
                    keys.push(key.to_owned())
                });
                for key in keys {
                    let mut states = spec.empty_states();
                    self.merge_key(after, view, &key, range, &mut states);
                    per_key.insert(key, states);
                }
            }
            _ => {}
        }
        partial
    }

    /// Calls `read` with the buckets in `range` of key `key` of view
    /// `view` in the epochs after `after`, read in place: ascending within
    /// each epoch, a bucket once per epoch that holds it. The key's entry
    /// stays locked for reading (its writer waits) until `read` returns.
    pub fn read_key_series<R>(
        &self,
        after: Option<Epoch>,
        (view, key): (usize, &str),
        range: TimeRange,
        read: impl FnOnce(&mut dyn Iterator<Item = (i64, &[MetricState])>) -> R,
    ) -> R {
        let n = self.views[view].metrics.len();
        let Some(entry) = self.live[view].keys.get(key) else {
            return read(&mut std::iter::empty());
        };
        let mut buckets = entry.later(after).flat_map(|key_epoch| {
            let groups = &key_epoch.groups;
            groups
                .span(range)
                .map(move |at| (groups.buckets()[at], groups.states(n, at)))
        });
        read(&mut buckets)
    }

    /// The epochs after `after` holding events of view `view`.
    pub fn epochs_after(&self, after: Option<Epoch>, view: usize) -> Vec<Epoch> {
        let totals = self.live[view].totals();
        totals
            .keys()
            .copied()
            .filter(|epoch| Some(*epoch) > after)
            .collect()
    }

    /// Calls `visit` with every key of view `view` that has a bucket in
    /// `range` in an epoch after `after`, and its state of `metric` there.
    pub fn each_key(
        &self,
        after: Option<Epoch>,
        view: usize,
        range: TimeRange,
        metric: usize,
        visit: &mut dyn FnMut(&str, &MetricState),
    ) {
        let spec = &self.views[view];
        let (n, agg) = (spec.metrics.len(), &spec.metrics[metric].agg);
        for entry in self.live[view].keys.iter() {
            let mut state = MetricState::empty(agg);
            if entry
                .value()
                .merge_metric(n, after, range, metric, &mut state)
            {
                visit(entry.key(), &state);
            }
        }
    }

    /// Merges the state of `metric` of `key` of view `view` over `range` in
    /// epochs after `after` into `into`; answers whether any bucket of the
    /// key lies there.
    pub fn merge_key_metric(
        &self,
        after: Option<Epoch>,
        (view, key): (usize, &str),
        range: TimeRange,
        metric: usize,
        into: &mut MetricState,
    ) -> bool {
        let n = self.views[view].metrics.len();
        self.live[view]
            .keys
            .get(key)
            .is_some_and(|entry| entry.merge_metric(n, after, range, metric, into))
    }

    /// Merges the totals of `metric` of view `view` over `range` in epochs
    /// after `after` into `into`.
    pub fn merge_total(
        &self,
        after: Option<Epoch>,
        view: usize,
        range: TimeRange,
        metric: usize,
        into: &mut MetricState,
    ) {
        let spec = &self.views[view];
        for epoch_totals in later_mut(&mut self.live[view].totals(), after) {
            epoch_totals.each_in(spec, range, |totals| into.merge(&totals[metric]));
        }
    }

    /// Pushes onto `keys` every key of view `view` with a group in `range`
    /// in an epoch after `after`, once per group, unless that would make
    /// `keys` longer than `limit`; answers whether it pushed them all.
    pub fn keys_in(
        &self,
        after: Option<Epoch>,
        view: usize,
        range: TimeRange,
        limit: usize,
        keys: &mut Vec<Arc<str>>,
    ) -> bool {
        let totals = self.live[view].totals();
        let buckets =
            || later(&totals, after).flat_map(|epoch_totals| epoch_totals.in_range(range));
        // Counted first: a refusal copies no key.
        let mut count = keys.len();
        for (_, bucket) in buckets() {
            count += bucket.keys.len();
            if count > limit {
                return false;
            }
        }
        keys.extend(buckets().flat_map(|(_, bucket)| bucket.keys.iter().cloned()));
        true
    }

    /// Whether the keys of view `view` are banded by `metric` (see [`Bands`]).
    pub fn banded(&self, view: usize, metric: usize) -> bool {
        self.bands(view, metric)
            .is_some_and(|bands| !bands.negative.load(Ordering::Relaxed))
    }

    fn bands(&self, view: usize, metric: usize) -> Option<&Bands> {
        self.live.get(view)?.bands.get(metric)?.as_ref()
    }

    /// How many times a key of view `view` was filed into a higher band by
    /// `metric` so far (see [`Bands`]).
    pub fn raised(&self, view: usize, metric: usize) -> u64 {
        self.bands(view, metric)
            .map_or(0, |bands| bands.filing().raised)
    }

    /// Whether, since `since` (from [`SpeedState::raised`]), a key of view
    /// `view` was filed by `metric` into band `lowest` or higher.
    pub fn raised_into(&self, view: usize, metric: usize, since: u64, lowest: u16) -> bool {
        self.bands(view, metric)
            .is_some_and(|bands| bands.filing().raised_into(since, lowest))
    }

    /// The highest band below `below` holding a key of view `view` by `metric`.
    pub fn highest_band(&self, view: usize, metric: usize, below: u16) -> Option<u16> {
        let bands = self.bands(view, metric)?;
        bands
            .filing()
            .keys
            .range(..below)
            .next_back()
            .map(|(band, _)| *band)
    }

    /// Pushes the keys of view `view` in band `band` by `metric` onto `keys`.
    pub fn band_keys(&self, view: usize, metric: usize, band: u16, keys: &mut Vec<Arc<str>>) {
        if let Some(bands) = self.bands(view, metric)
            && let Some(filed) = bands.filing().keys.get(&band)
        {
            keys.extend(filed.iter().cloned());
        }
    }

    /// Merges the states of `key` of view `view` over `range` in epochs after
    /// `after` into `into`.
    pub fn merge_key(
        &self,
        after: Option<Epoch>,
        view: usize,
        key: &str,
        range: TimeRange,
        into: &mut [MetricState],
    ) {
        if let Some(entry) = self.live[view].keys.get(key) {
            entry.merge((&self.views[view], &self.key_blocks), after, range, into);
        }
    }

    /// Drops the buckets past each view's retention as of `now_ms`, and the
    /// keys and epochs left empty: the speed layer stays bounded by retention
    /// even while no batch run expires its epochs.
    pub fn retain(&self, now_ms: i64) {
        for (live, spec) in self.live.iter().zip(self.views.iter()) {
            let Some(cutoff) = spec.retention_cutoff(now_ms) else {
                continue;
            };
            let n = spec.metrics.len();
            live.keys.retain(|_, entry| {
                for key_epoch in &mut entry.epochs {
                    if key_epoch.groups.retain_from(n, cutoff) > 0 {
                        if let Some(blocks) = key_epoch.blocks_mut() {
                            blocks.retain_from(cutoff);
                        }
                        let mut rollup = spec.empty_states();
                        key_epoch
                            .groups
                            .merge_span(0..key_epoch.groups.len(), &mut rollup);
                        key_epoch.rollup = rollup;
                    }
                }
                entry
                    .epochs
                    .retain(|key_epoch| !key_epoch.groups.is_empty());
                !entry.epochs.is_empty()
            });
            let mut totals = live.totals();
            for epoch_totals in totals.values_mut() {
                let kept = epoch_totals.buckets.split_off(&cutoff);
                if kept.len() < epoch_totals.buckets.len() + kept.len() {
                    let mut all = spec.empty_states();
                    kept.values()
                        .for_each(|bucket| merge_states(&mut all, &bucket.states));
                    epoch_totals.all = all;
                    epoch_totals.blocks.retain_from(cutoff);
                }
                epoch_totals.buckets = kept;
            }
            totals.retain(|_, epoch_totals| !epoch_totals.buckets.is_empty());
            drop(totals);
            live.refile_all(spec);
        }
        self.recount();
    }

    /// Drops every epoch <= `upto`. The expiry is published first, so that a
    /// reader that finds anything dropped also finds the expiry.
    pub fn expire(&self, upto: Epoch) {
        self.expired.fetch_max(upto.0 + 1, Ordering::SeqCst);
        for (live, spec) in self.live.iter().zip(self.views.iter()) {
            live.keys.retain(|_, entry| {
                entry.epochs.retain(|key_epoch| key_epoch.epoch > upto);
                !entry.epochs.is_empty()
            });
            live.totals().retain(|epoch, _| *epoch > upto);
            live.refile_all(spec);
        }
        self.recount();
    }

    fn recount(&self) {
        let (mut groups, mut with_blocks) = (0, 0);
        for live in &self.live {
            for entry in live.keys.iter() {
                for key_epoch in &entry.value().epochs {
                    groups += key_epoch.groups.len();
                    with_blocks += usize::from(key_epoch.has_blocks());
                }
            }
        }
        self.groups.store(groups as u64, Ordering::Relaxed);
        self.key_blocks.held.store(with_blocks, Ordering::Relaxed);
    }

    /// (key, bucket) groups held, over all epochs and views.
    pub fn groups(&self) -> usize {
        self.groups.load(Ordering::Relaxed) as usize
    }

    /// Epochs held, over all views.
    pub fn epochs(&self) -> BTreeSet<Epoch> {
        self.live
            .iter()
            .flat_map(|live| live.totals().keys().copied().collect::<Vec<_>>())
            .collect()
    }
}

/// The actor around one [`SpeedState`], its one writer.
pub struct SpeedPartition {
    /// Keys hashing to this partition only.
    state: Arc<SpeedState>,
    index: usize,
    /// Where this partition publishes its group count for scrapes.
    shared: Arc<crate::metrics::Shared>,
    scratch: Scratch,
}

impl SpeedPartition {
    /// The actor for partition `index`, writing `state`.
    pub fn new(
        index: usize,
        state: Arc<SpeedState>,
        shared: Arc<crate::metrics::Shared>,
    ) -> SpeedPartition {
        SpeedPartition {
            state,
            index,
            shared,
            scratch: Scratch::default(),
        }
    }

    fn publish_size(&self) {
        if let Some(groups) = self.shared.speed_groups.get(self.index) {
            groups.store(self.state.groups() as u64, Ordering::Relaxed);
        }
    }
}

impl Actor for SpeedPartition {
    type Context = Context<Self>;

    /// Every message comes by `do_send`, which ignores the mailbox capacity
    /// and enqueues at call time, so mailbox order is send order; ingest is
    /// bounded by the sources' prefetch windows instead.
    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::debug!(partition = self.index, "speed partition started");
        // What the replay left here counts from the start.
        self.publish_size();
        if self
            .state
            .views
            .iter()
            .any(|spec| spec.retention_ms.is_some())
        {
            ctx.run_interval(RETAIN_EVERY, |partition, _| {
                partition.state.retain(crate::now_ms());
                partition.publish_size();
            });
        }
    }
}

impl Handler<Apply> for SpeedPartition {
    type Result = ();

    fn handle(&mut self, msg: Apply, _: &mut Self::Context) {
        for (view, picks) in msg.picks.iter().enumerate() {
            for (i, &at) in picks.iter().enumerate() {
                if let Some(&ahead) = picks.get(i + PREFETCH_AHEAD) {
                    msg.events[ahead as usize].prefetch();
                }
                self.state
                    .apply(msg.epoch, view, &msg.events[at as usize], &mut self.scratch);
            }
        }
        self.publish_size();
        if let Some(done) = msg.done {
            // The sender may have stopped waiting (its source is stopping).
            done.send(()).ok();
        }
    }
}

impl Handler<Expire> for SpeedPartition {
    type Result = ();

    #[tracing::instrument(skip_all, fields(partition = self.index, upto = %msg.upto))]
    fn handle(&mut self, msg: Expire, _: &mut Self::Context) {
        self.state.expire(msg.upto);
        self.publish_size();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Body, MetricValue, ViewState, band_of};
    use crate::config::Config;
    use proptest::prop_oneof;
    use proptest::strategy::Just;

    const CONFIG: &str = crate::config::ONE_COUNT_VIEW;

    fn totals(state: &SpeedState, after: Option<Epoch>) -> (u64, Vec<Epoch>) {
        let partial = state.partial(after, 0, &QueryKind::Totals, TimeRange::ALL);
        let epochs = state.epochs_after(after, 0);
        let Body::Metrics(metrics) = partial.finish(&state.views[0], &QueryKind::Totals) else {
            panic!("totals are metrics")
        };
        let Some(MetricValue::Int(n)) = metrics.get("n") else {
            panic!("a count")
        };
        (n, epochs)
    }

    #[test]
    fn epochs_are_kept_apart_expired_and_never_reopened() {
        let config = Config::parse(CONFIG, "test.toml").expect("config");
        let state = SpeedState::new(config.views.iter().cloned().collect());
        let event = |id: u32| {
            config
                .schema
                .parse(format!(r#"{{"id":{id},"k":"a"}}"#).as_bytes(), 0)
                .expect("event")
        };
        state.apply(Epoch(1), 0, &event(1), &mut Scratch::default());
        state.apply(Epoch(2), 0, &event(2), &mut Scratch::default());
        state.apply(Epoch(3), 0, &event(3), &mut Scratch::default());
        assert_eq!(
            totals(&state, None),
            (3, vec![Epoch(1), Epoch(2), Epoch(3)])
        );
        assert_eq!(
            totals(&state, Some(Epoch(1))),
            (2, vec![Epoch(2), Epoch(3)])
        );

        state.expire(Epoch(2));
        assert_eq!(totals(&state, None), (1, vec![Epoch(3)]));
        assert_eq!(state.epochs().len(), 1);
        // A late event of an expired epoch is already in the snapshot.
        state.apply(Epoch(2), 0, &event(4), &mut Scratch::default());
        assert_eq!(totals(&state, None), (1, vec![Epoch(3)]));
    }

    /// A walk down the bands is raced exactly by a key's move into a band
    /// it read (or by more moves than are kept, or by a refiling of every
    /// key), not by moves into the bands below.
    #[test]
    fn a_walk_is_raced_by_moves_into_the_bands_it_read() {
        let config = Config::parse(CONFIG, "test.toml").expect("config");
        let state = SpeedState::new(config.views.iter().cloned().collect());
        let mut id = 0;
        let mut apply = |key: &str| {
            id += 1;
            let raw = format!(r#"{{"id":{id},"k":"{key}"}}"#);
            let event = config.schema.parse(raw.as_bytes(), 0).expect("event");
            state.apply(Epoch(1), 0, &event, &mut Scratch::default());
        };
        let (one, two) = (band_of(1.0), band_of(2.0));
        assert!(one < two);
        apply("a");
        let since = state.raised(0, 0);
        assert!(!state.raised_into(0, 0, since, 0), "nothing moved");
        apply("b");
        assert!(
            state.raised_into(0, 0, since, one),
            "b was filed into band one"
        );
        assert!(!state.raised_into(0, 0, since, one + 1), "and no higher");
        let since = state.raised(0, 0);
        apply("b");
        assert!(state.raised_into(0, 0, since, two), "b rose into band two");
        assert!(!state.raised_into(0, 0, since, two + 1));
        for _ in 3..=8 {
            apply("b");
        }
        let since = state.raised(0, 0);
        apply("b");
        assert_eq!(band_of(8.0), band_of(9.0));
        assert!(
            !state.raised_into(0, 0, since, 0),
            "nine is in eight's band"
        );
        for key in 0..=RAISES_KEPT {
            apply(&format!("new{key}"));
        }
        assert!(
            state.raised_into(0, 0, since, u16::MAX - 1),
            "more moves than are kept race any walk"
        );
        let since = state.raised(0, 0);
        state.expire(Epoch(0));
        assert!(
            state.raised_into(0, 0, since, u16::MAX - 1),
            "a refiling races any walk"
        );
    }

    /// Blocks of keys' groups are kept for at most the limit's (key, epoch)
    /// pairs, and only when heavy enough; the room of an expired epoch's
    /// pairs is given back.
    #[test]
    fn key_blocks_are_kept_within_their_limits() {
        let config = Config::parse(LIVE_CONFIG, "test.toml").expect("config");
        let state = SpeedState::new(config.views.iter().cloned().collect()).with_key_blocks(2, 5);
        let mut scratch = Scratch::default();
        // Keys k0..k3 in epoch 1, k0 again in epoch 2: one value a bucket in
        // k0..k2, four distinct values a bucket in k3: its blocks weigh 8 and more, those
        // of k0..k2 at most 4, below the weight of 5 kept.
        let mut id = 0;
        for (epoch, key, values) in [(1, 0, 1), (1, 1, 1), (1, 2, 1), (1, 3, 4), (2, 0, 1)] {
            for minute in 0..8 {
                for value in 0..values {
                    id += 1;
                    let raw = format!(
                        r#"{{"id":{id},"k":"k{key}","ts":{},"x":{value}}}"#,
                        minute * 60_000
                    );
                    let event = config.schema.parse(raw.as_bytes(), 0).expect("event");
                    state.apply(Epoch(epoch), 0, &event, &mut scratch);
                }
            }
        }
        let range = TimeRange {
            from: Some(0),
            to: Some(6 * 60_000),
        };
        let with_blocks = |key: &str| {
            let entry = state.live[0].keys.get(key).expect("key");
            entry
                .epochs
                .iter()
                .filter(|key_epoch| key_epoch.has_blocks())
                .count()
        };
        let kept_blocks = |key: &str| {
            let entry = state.live[0].keys.get(key).expect("key");
            let kept = entry.epochs.iter().map(|key_epoch| {
                let blocks = key_epoch.blocks.lock().expect("blocks");
                blocks.as_ref().map_or(0, |blocks| blocks.kept_count())
            });
            kept.sum::<usize>()
        };
        for key in ["k3", "k0", "k1", "k2"] {
            state.partial(None, 0, &QueryKind::Key(key.into()), range);
        }
        // k3's pair and one of k0's two; none left for k1 and k2.
        assert_eq!(["k3", "k0", "k1", "k2"].map(with_blocks), [1, 1, 0, 0]);
        assert!(kept_blocks("k3") > 0, "k3's blocks weigh 8 and more");
        assert_eq!(
            kept_blocks("k0"),
            0,
            "k0's blocks of 2 to 4 values are too light"
        );
        state.expire(Epoch(1));
        state.partial(None, 0, &QueryKind::Key("k0".into()), range);
        assert_eq!(
            with_blocks("k0"),
            1,
            "the room of epoch 1's pairs is given back"
        );
    }

    #[test]
    fn retention_drops_old_buckets_keys_and_epochs() {
        let config = Config::parse(
            &CONFIG.replace(
                "bucket = \"1m\"",
                "bucket = \"1m\"\n        retention = \"1h\"",
            ),
            "test.toml",
        )
        .expect("config");
        let state = SpeedState::new(config.views.iter().cloned().collect());
        let now = 100 * 3_600_000;
        let event = |id: u32, key: &str, ts: i64| {
            config
                .schema
                .parse(
                    format!(r#"{{"id":{id},"k":"{key}","ts":{ts}}}"#).as_bytes(),
                    ts,
                )
                .expect("event")
        };
        state.apply(
            Epoch(1),
            0,
            &event(1, "old", now - 2 * 3_600_000),
            &mut Scratch::default(),
        );
        state.apply(
            Epoch(2),
            0,
            &event(2, "old", now - 2 * 3_600_000),
            &mut Scratch::default(),
        );
        state.apply(
            Epoch(2),
            0,
            &event(3, "new", now - 60_000),
            &mut Scratch::default(),
        );
        assert_eq!(state.groups(), 3);
        state.retain(now);
        assert_eq!(state.groups(), 1, "only the bucket within the hour");
        assert_eq!(state.epochs().len(), 1, "epoch 1 is left empty and dropped");
        assert_eq!(state.live[0].keys.len(), 1, "key old is gone");
    }

    /// (key, minute, value, epoch)
    type Event = (u8, i64, u16, u64);

    /// A view of one-minute buckets kept an hour, with a metric of each
    /// kind a live layer keeps differently: counted, summed, sketched, banded.
    const LIVE_CONFIG: &str = r#"
        data_dir = "d"
        [event]
        id = "id"
        time = "ts"
        [[view]]
        name = "v"
        key = ["k"]
        bucket = "1m"
        retention = "1h"
        metrics = [
          { name = "n", agg = "count" },
          { name = "sum", agg = "sum", field = "x" },
          { name = "users", agg = "distinct", field = "x" },
          { name = "high", agg = "max", field = "x" },
        ]
    "#;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Totals and keys over ranges read between applies (so that blocks
        /// of buckets are kept, then landed in by later events) equal a scan
        /// of the events applied so far, on both sides of time 0.
        #[test]
        fn range_totals_read_between_applies_equal_a_scan(
            phases in proptest::collection::vec(
                (
                    proptest::collection::vec((prop_oneof![-80..80i64, -300..300i64], 0..50u16), 0..20),
                    -310..310i64,
                    // Up to blocks of 256 buckets, and ranges ending before they start.
                    prop_oneof![1..150i64, -5..600i64],
                ),
                1..6,
            ),
        ) {
            let config = Config::parse(LIVE_CONFIG, "test.toml").expect("config");
            let spec = &config.views[0];
            // Every key's blocks kept, however light.
            let state = SpeedState::new(config.views.iter().cloned().collect())
                .with_key_blocks(usize::MAX, 0);
            let parse = |i: usize, (minute, value): (i64, u16)| {
                let raw = format!(r#"{{"id":{i},"k":"k{}","ts":{},"x":{value}}}"#, value % 3, minute * 60_000 + 7_000);
                config.schema.parse(raw.as_bytes(), 0).expect("event")
            };
            let mut scratch = Scratch::default();
            let mut applied = Vec::new();
            for (events, from, width) in &phases {
                for event in events {
                    state.apply(Epoch(1), 0, &parse(applied.len(), *event), &mut scratch);
                    applied.push(*event);
                }
                let range = TimeRange {
                    from: Some(from * 60_000 - 10_000),
                    to: Some((from + width) * 60_000 + 5_000),
                };
                let mut expected = ViewState::new();
                for (i, event) in applied.iter().enumerate() {
                    expected.apply(spec, &parse(i, *event));
                }
                let kinds = [QueryKind::Totals, QueryKind::Key("k0".into()), QueryKind::Key("k1".into())];
                for kind in &kinds {
                    proptest::prop_assert_eq!(
                        state.partial(None, 0, kind, range).finish(spec, kind),
                        expected.partial(spec, kind, range).finish(spec, kind),
                        "{:?} over {:?} after {} events", kind, range, applied.len()
                    );
                }
            }
        }
    }

    /// Event minutes: most within half an hour, some over nearly four
    /// hours from before time 0, some over ten (so that ranges hold blocks
    /// of every size up to 256 buckets, on both sides of 0).
    fn minutes() -> impl proptest::strategy::Strategy<Value = i64> {
        prop_oneof![0..30i64, -70..150i64, -300..320i64]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// What readers get from the roll-ups and totals kept while applying
        /// equals a scan of the events of the epochs asked for, after expiry
        /// and retention, over ranges aligned to buckets or not.
        #[test]
        fn live_partials_equal_a_scan_of_the_epochs_asked_for(
            events in proptest::collection::vec((0..6u8, minutes(), 0..500u16, 1..5u64), 0..80),
            expire_at in proptest::option::of(1..4u64),
            after in proptest::option::of(0..5u64),
            from in proptest::option::of(-301..321i64),
            width in prop_oneof![1..40i64, 40..160i64, 160..640i64],
            retain_minute in proptest::option::of(0..30i64),
            // How many (key, epoch) pairs may keep blocks, and the weight of
            // a block kept (a distinct metric's values weigh one each).
            key_blocks in (prop_oneof![Just(0usize), Just(1), Just(usize::MAX)], 0..4usize),
        ) {
            let config = Config::parse(LIVE_CONFIG, "test.toml").expect("config");
            let spec = &config.views[0];
            let state = SpeedState::new(config.views.iter().cloned().collect())
                .with_key_blocks(key_blocks.0, key_blocks.1);
            let parse = |i: usize, (key, minute, value, _): &Event| {
                let raw = format!(r#"{{"id":{i},"k":"k{key}","ts":{},"x":{value}}}"#, minute * 60_000 + 7_000);
                config.schema.parse(raw.as_bytes(), 0).expect("event")
            };
            let mut scratch = Scratch::default();
            let half = events.len() / 2;
            for (i, event) in events.iter().enumerate().take(half) {
                state.apply(Epoch(event.3), 0, &parse(i, event), &mut scratch);
            }
            // Read once midway, so that blocks of totals and keys are kept
            // merged while later events land in some of them.
            let range = TimeRange {
                from: from.map(|m| m * 60_000 + 30_000 * (m % 2)),
                to: from.map(|m| (m + width) * 60_000 + 20_000 * (width % 2)),
            };
            for after in [None, Some(Epoch(1))] {
                state.partial(after, 0, &QueryKind::Totals, range);
                for key in 0..6 {
                    state.partial(after, 0, &QueryKind::Key(format!("k{key}")), range);
                }
            }
            if let Some(upto) = expire_at {
                state.expire(Epoch(upto));
            }
            for (i, event) in events.iter().enumerate().skip(half) {
                state.apply(Epoch(event.3), 0, &parse(i, event), &mut scratch);
            }
            // Retention as of a wall clock an hour after `retain_minute`.
            let cutoff = retain_minute.map(|minute| minute * 60_000);
            if let Some(cutoff) = cutoff {
                state.retain(cutoff + 3_600_000);
            }
            let after = after.map(Epoch);
            let mut expected = ViewState::new();
            for (i, event) in events.iter().enumerate() {
                let epoch = Epoch(event.3);
                let expired = expire_at.is_some_and(|upto| epoch.0 <= upto);
                let retained = cutoff.is_none_or(|cutoff| event.1 * 60_000 >= cutoff);
                if Some(epoch) > after && !expired && retained {
                    expected.apply(spec, &parse(i, event));
                }
            }
            let mut kinds = vec![
                QueryKind::Totals,
                QueryKind::Series(None),
                QueryKind::Series(Some("k1".into())),
                QueryKind::Top { metric: 1, n: 3 },
            ];
            kinds.extend((0..6).map(|key| QueryKind::Key(format!("k{key}"))));
            for kind in kinds {
                for range in [range, TimeRange::ALL] {
                    let partial = state.partial(after, 0, &kind, range);
                    proptest::prop_assert_eq!(
                        partial.finish(spec, &kind),
                        expected.partial(spec, &kind, range).finish(spec, &kind),
                        "{:?} over {:?}", kind, range
                    );
                }
            }
            // The keys listed in range are those with a group there, once per
            // group (a key's bucket in one epoch), after what the list held;
            // a limit below that is refused, the list left as it was.
            for range in [range, TimeRange::ALL] {
                let mut groups: Vec<(String, u64, i64)> = Vec::new();
                for (key, minute, _, epoch) in &events {
                    let expired = expire_at.is_some_and(|upto| *epoch <= upto);
                    let retained = cutoff.is_none_or(|cutoff| minute * 60_000 >= cutoff);
                    let bucket = minute * 60_000;
                    let in_range = range.from.is_none_or(|from| bucket >= from)
                        && range.to.is_none_or(|to| bucket < to);
                    if Some(Epoch(*epoch)) > after && !expired && retained && in_range {
                        groups.push((format!("k{key}"), *epoch, bucket));
                    }
                }
                groups.sort();
                groups.dedup();
                let mut expected_keys: Vec<String> = groups.into_iter().map(|(key, _, _)| key).collect();
                expected_keys.sort();
                let mut listed = vec![Arc::from("before")];
                proptest::prop_assert!(state.keys_in(after, 0, range, usize::MAX, &mut listed));
                let before = listed.remove(0);
                proptest::prop_assert_eq!(before.as_ref(), "before");
                let mut listed: Vec<String> = listed.iter().map(|key| key.to_string()).collect();
                listed.sort();
                proptest::prop_assert_eq!(&listed, &expected_keys, "keys over {:?}", range);
                let mut refused = vec![Arc::from("before")];
                proptest::prop_assert!(!state.keys_in(after, 0, range, listed.len(), &mut refused) || listed.is_empty());
                proptest::prop_assert_eq!(refused.len(), 1, "a refusal adds nothing");
            }
            // Every key is filed under the band of its value over all it
            // holds, for each monotone metric, and under no other.
            let mut held = ViewState::new();
            for (i, event) in events.iter().enumerate() {
                let expired = expire_at.is_some_and(|upto| event.3 <= upto);
                let retained = cutoff.is_none_or(|cutoff| event.1 * 60_000 >= cutoff);
                if !expired && retained {
                    held.apply(spec, &parse(i, event));
                }
            }
            for metric in [0, 1, 3] {
                let agg = &spec.metrics[metric].agg;
                proptest::prop_assert!(state.banded(0, metric));
                let mut filed = Vec::new();
                let mut below = u16::MAX;
                while let Some(band) = state.highest_band(0, metric, below) {
                    let mut keys = Vec::new();
                    state.band_keys(0, metric, band, &mut keys);
                    filed.extend(keys.into_iter().map(|key| (key.to_string(), band)));
                    below = band;
                }
                filed.sort();
                let mut expected: Vec<(String, u16)> = held
                    .keys()
                    .map(|(key, groups)| {
                        let mut whole = spec.empty_states();
                        groups.merge_span(0..groups.len(), &mut whole);
                        let value = whole[metric].value(agg).as_f64();
                        (key.to_owned(), band_of(value.unwrap_or(f64::NEG_INFINITY)))
                    })
                    .collect();
                expected.sort();
                proptest::prop_assert_eq!(filed, expected, "bands by {}", spec.metrics[metric].name);
            }
            proptest::prop_assert_eq!(state.groups(), {
                let mut held = ViewState::new();
                for (i, event) in events.iter().enumerate() {
                    let expired = expire_at.is_some_and(|upto| event.3 <= upto);
                    let retained = cutoff.is_none_or(|cutoff| event.1 * 60_000 >= cutoff);
                    if !expired && retained {
                        // One group per (epoch, key, bucket): key them apart by epoch.
                        let raw = format!(r#"{{"id":{i},"k":"k{}e{}","ts":{},"x":1}}"#, event.0, event.3, event.1 * 60_000);
                        held.apply(spec, &config.schema.parse(raw.as_bytes(), 0).expect("event"));
                    }
                }
                held.len()
            });
        }
    }
}
