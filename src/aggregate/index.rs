//! `ViewIndex`: what a batch view state precomputes so that the questions a
//! dashboard asks every second cost a few merges, not a scan of every group.
//!
//! Built once per snapshot, off the async threads, from the view's state:
//! - the view's bucket starts and a segment tree of their totals: totals over
//!   any range `[from, to)` merge at most 2·log₂ T + 8 nodes and leaves (T
//!   buckets), and the leaves are the all-keys series; the two lowest levels
//!   of inner nodes are not kept (a range reads each through its leaves, up
//!   to four): they are three quarters of the inner nodes;
//! - per key, its roll-up over every bucket: a key query over a range that
//!   holds all of the key's buckets reads one state;
//! - per key whose buckets hold many values, blocks of its consecutive
//!   buckets kept merged (8 and 64 buckets), where merging the buckets one
//!   by one would insert thousands of values into a sketch: a key over part
//!   of its buckets then merges its blocks of 64 in range, at most 2·7
//!   blocks of 8 and at most 2·7 buckets (where each of those blocks is kept);
//!   the keys of the largest merge weight (values a read would insert)
//!   get theirs first, while the whole index stays within [`INDEX_SHARE`]
//!   of the state's memory;
//! - per metric, every key ranked by its roll-up's value (the order of a
//!   top-N answer): a top-N over a range that holds every bucket of the view
//!   is the head of the ranking.
//!
//! A top-N over a range that cuts the view's buckets (a time window, or the
//! retention cutoff passing the oldest buckets) walks the same ranking when
//! the metric is monotone (count, max, and sum while no group's sum is
//! negative): a key's value over part of its buckets is then at most its
//! roll-up's, so the roll-up bounds every key further down, and the walk
//! stops once `n` keys' exact values in range beat the next key's bound
//! (Fagin's threshold algorithm with one sorted list). For min, mean,
//! distinct and quantile, where a part can exceed the whole, it scans each
//! key's buckets in range for the ranking metric alone. Either way only the
//! `n` keys kept are read in full.

use super::query::{merge_states, rank_order};
use super::{Agg, KeyGroups, MetricState, TimeRange, ViewSpec, ViewState};
use rustc_hash::{FxHashMap, FxHashSet};
use std::cell::Cell;
use std::sync::Arc;

/// The index of one view state; it holds positions into that state's keys,
/// so it is used only with the state it was built from.
#[derive(Debug, Clone, Default)]
pub struct ViewIndex {
    /// States per group.
    n: usize,
    /// Every bucket start of the view, ascending.
    buckets: Vec<i64>,
    /// Segment tree over `buckets`, `n` states a node: node `i` owns
    /// `tree[i * n..(i + 1) * n]`, leaf `T + j` is bucket `j`'s totals, node
    /// `i < T` merges nodes `2i` and `2i + 1`; node 0 is unused.
    tree: Vec<MetricState>,
    /// Per key position, its states over every bucket.
    rollups: Vec<MetricState>,
    /// Per key position whose buckets hold many values, its blocks.
    blocks: FxHashMap<u32, KeyBlocks>,
    /// Per metric, key positions in answer order of their roll-up's value.
    rankings: Vec<Box<[u32]>>,
    /// Per metric, whether a key's value over some of its buckets never
    /// exceeds its value over all of them.
    monotone: Vec<bool>,
}

/// The segment tree's lowest levels above the leaves, whose nodes are not
/// kept: they are three quarters of the inner nodes (each, on a busy view,
/// a dense distinct sketch of 16 KiB among its states), and a range reads
/// each through at most 2^`UNKEPT_LEVELS` leaves instead.
const UNKEPT_LEVELS: u32 = 2;

/// The leaves an index build merges the groups of at once: their states (a
/// busy bucket's a register array of 16 KiB and a DDSketch of a few KiB,
/// up to about 1.5 MiB in all) fit in a core's L2 cache.
const LEAVES_AT_ONCE: usize = 32;

/// Whether the tree of `t` leaves keeps node `node < t`: one with at least
/// [`UNKEPT_LEVELS`] levels of inner nodes below it.
fn kept(node: usize, t: usize) -> bool {
    node << UNKEPT_LEVELS < t
}

/// Calls `visit` with the kept nodes and the leaves that together hold
/// exactly what node `node` of the tree of `t` leaves holds.
fn expand(node: usize, t: usize, visit: &mut impl FnMut(usize)) {
    if node >= t || kept(node, t) {
        visit(node);
    } else {
        expand(2 * node, t, visit);
        expand(2 * node + 1, t, visit);
    }
}

/// Sizes of the blocks of a key's buckets kept merged, each a multiple of the one before.
const BLOCK_SIZES: [usize; 2] = [8, 64];

/// A block is kept merged when merging its buckets one by one would insert
/// at least this many values ([`MetricState::merge_weight`]): a query then
/// merges one state instead of inserting thousands of values, and the block
/// holds about as much memory as its buckets' values (2,048 values of 8 bytes
/// are the 16 KiB of a dense distinct sketch). Which keys keep their blocks
/// is bounded by [`INDEX_SHARE`]. On the reference workload (BENCHMARKS.md),
/// four times this weight dropped the hot keys' blocks of 8 and took an
/// unaligned top-10 from 0.55 ms to 2.0 ms.
const BLOCK_WEIGHT: usize = 2048;

/// The share of its state's memory within which a view's index keeps blocks
/// (both as [`MetricState::bytes`] counts them): blocks are kept, for the
/// keys of the largest merge weight first and until one key's do not fit,
/// only while the whole index stays within it. The rest of the index (the
/// tree, the roll-ups, the rankings) is not bounded by it. A view whose keys
/// are all busy (by category on the reference workload: 200 keys, each with
/// about 90 values a bucket) would otherwise keep blocks for every key,
/// about as much memory again as the rest of its index (BENCHMARKS.md).
const INDEX_SHARE: f64 = 0.28;

/// About the bytes a view state's groups take ([`MetricState::bytes`] for
/// their `n` states each, and their bucket starts).
fn state_bytes(state: &ViewState, n: usize) -> usize {
    state
        .keys()
        .map(|(_, groups)| {
            (0..groups.len())
                .map(|at| MetricState::bytes(groups.states(n, at)) + size_of::<i64>())
                .sum::<usize>()
        })
        .sum()
}

/// What [`rollups_of`] computes in its one pass over a state's groups.
struct Rolled {
    /// Per key, its states over every bucket, one after another.
    rollups: Vec<MetricState>,
    /// Per metric, whether a key's value over some of its buckets never
    /// exceeds its value over all of them.
    monotone: Vec<bool>,
    /// Per key, the merge weight of its groups' states (what a range read
    /// of its buckets costs: [`MetricState::merge_weight`]).
    weights: Vec<usize>,
}

/// Every bucket start of `state`, ascending (the distinct ones gathered in
/// a set, sorted: a view has far fewer buckets than groups).
fn bucket_starts(state: &ViewState) -> Vec<i64> {
    let mut seen: FxHashSet<i64> = FxHashSet::default();
    for (_, groups) in state.keys() {
        seen.extend(groups.buckets());
    }
    let mut buckets: Vec<i64> = seen.into_iter().collect();
    buckets.sort_unstable();
    buckets
}

/// The roll-ups of `state` (a state of `spec`), which metrics are
/// monotone, and each key's merge weight ([`Rolled`]).
fn rollups_of(spec: &ViewSpec, state: &ViewState, empty: &[MetricState]) -> Rolled {
    let n = empty.len();
    let mut monotone: Vec<bool> = spec
        .metrics
        .iter()
        .map(|metric| metric.agg.is_monotone())
        .collect();
    let mut rollups: Vec<MetricState> = Vec::with_capacity(state.key_count() * n);
    let mut weights: Vec<usize> = Vec::with_capacity(state.key_count());
    for (_, groups) in state.keys() {
        let start = rollups.len();
        rollups.extend(empty.iter().cloned());
        let mut weight = 0;
        for at in 0..groups.len() {
            let states = groups.states(n, at);
            for (monotone, state) in monotone.iter_mut().zip(states) {
                if let MetricState::Sum(sum) = state {
                    *monotone &= sum.as_i128() >= 0;
                }
                weight += state.merge_weight();
            }
            merge_states(&mut rollups[start..start + n], states);
        }
        weights.push(weight);
    }
    Rolled {
        rollups,
        monotone,
        weights,
    }
}

/// The segment tree over `buckets` (every bucket start of `state`,
/// ascending) of the bucket totals, `n` states a node.
fn tree_of(
    state: &ViewState,
    buckets: &[i64],
    n: usize,
    empty: &[MetricState],
) -> Vec<MetricState> {
    let t = buckets.len();
    let mut tree: Vec<MetricState> = (0..2 * t).flat_map(|_| empty.iter().cloned()).collect();
    // The leaves a few at a time, each taking every key's groups of its
    // bucket: the leaves being merged into stay in the CPU's cache (a
    // busy bucket's totals hold a register array of 16 KiB), where key
    // by key every group would land in another bucket's.
    let mut next: Vec<usize> = vec![0; state.key_count()];
    for (chunk, starts) in buckets.chunks(LEAVES_AT_ONCE).enumerate() {
        let Some(&chunk_end) = starts.last() else {
            continue;
        };
        for ((_, groups), at) in state.keys().zip(&mut next) {
            let mut leaf = chunk * LEAVES_AT_ONCE;
            while let Some(bucket) = groups.buckets().get(*at).filter(|b| **b <= chunk_end) {
                // A key's buckets ascend, so each one's leaf lies after the last.
                leaf += buckets[leaf..].partition_point(|start| start < bucket);
                merge_states(
                    &mut tree[(t + leaf) * n..(t + leaf + 1) * n],
                    groups.states(n, *at),
                );
                *at += 1;
            }
        }
    }
    for node in (1..t).rev().filter(|node| kept(*node, t)) {
        let mut merged = empty.to_vec();
        for child in [2 * node, 2 * node + 1] {
            expand(child, t, &mut |part| {
                merge_states(&mut merged, &tree[part * n..(part + 1) * n]);
            });
        }
        for (state, merged) in tree[node * n..(node + 1) * n].iter_mut().zip(merged) {
            *state = merged;
        }
    }
    tree
}

/// The blocks of one key's buckets kept merged: per size of [`BLOCK_SIZES`],
/// block `k` (the buckets at positions `k * size..(k + 1) * size`, whole
/// blocks only), its states if kept.
#[derive(Debug, Clone, Default)]
struct KeyBlocks {
    levels: [Vec<Option<Box<[MetricState]>>>; BLOCK_SIZES.len()],
}

/// A part of a key's buckets, as a range merge reads it.
enum Part<'a> {
    /// Buckets at these positions, read one by one.
    Buckets(std::ops::Range<usize>),
    /// A block's states.
    Block(&'a [MetricState]),
}

impl KeyBlocks {
    /// The blocks of `groups` (states of `n` metrics) of at least `weight`
    /// (see [`BLOCK_WEIGHT`]); `None` if there is none.
    fn build(spec: &ViewSpec, n: usize, groups: &KeyGroups, weight: usize) -> Option<KeyBlocks> {
        let weights: Vec<usize> = (0..groups.len())
            .map(|at| {
                groups
                    .states(n, at)
                    .iter()
                    .map(MetricState::merge_weight)
                    .sum()
            })
            .collect();
        if weights.iter().sum::<usize>() < weight {
            return None;
        }
        let mut blocks = KeyBlocks::default();
        for (level, size) in BLOCK_SIZES.iter().enumerate() {
            let kept = (0..groups.len() / size)
                .map(|k| {
                    let span = k * size..(k + 1) * size;
                    (weights[span.clone()].iter().sum::<usize>() >= weight).then(|| {
                        let mut states = spec.empty_states();
                        blocks.merge(groups, level, span, &mut states);
                        states
                    })
                })
                .collect();
            blocks.levels[level] = kept;
        }
        blocks
            .levels
            .iter()
            .flatten()
            .any(Option::is_some)
            .then_some(blocks)
    }

    /// About the bytes the blocks take.
    fn bytes(&self) -> usize {
        self.levels
            .iter()
            .flatten()
            .map(|block| {
                size_of::<Option<Box<[MetricState]>>>()
                    + block.as_deref().map_or(0, MetricState::bytes)
            })
            .sum()
    }

    /// Calls `visit` with parts that together are exactly the buckets at
    /// positions `span`, reading the blocks of the first `levels` sizes,
    /// larger parts first.
    fn parts<'a>(
        &'a self,
        levels: usize,
        span: std::ops::Range<usize>,
        visit: &mut dyn FnMut(Part<'a>),
    ) {
        if span.is_empty() {
            return;
        }
        let Some(level) = levels.checked_sub(1) else {
            visit(Part::Buckets(span));
            return;
        };
        let size = BLOCK_SIZES[level];
        // The blocks first, then the parts between them: a sketch merged
        // into takes the form of the largest part first (a register array
        // takes values and small sketches at the cost of a register each).
        let whole = span.start.div_ceil(size)..span.end / size;
        let kept = |k: usize| self.levels[level].get(k).and_then(Option::as_deref);
        for states in whole.clone().filter_map(kept) {
            visit(Part::Block(states));
        }
        let mut from = span.start;
        for k in whole.filter(|k| kept(*k).is_some()) {
            self.parts(level, from..k * size, visit);
            from = (k + 1) * size;
        }
        self.parts(level, from..span.end, visit);
    }

    /// Merges the states of the buckets at positions `span` into `into`,
    /// reading the blocks of the first `levels` sizes.
    fn merge(
        &self,
        groups: &KeyGroups,
        levels: usize,
        span: std::ops::Range<usize>,
        into: &mut [MetricState],
    ) {
        self.parts(levels, span, &mut |part| match part {
            Part::Buckets(span) => groups.merge_span(span, into),
            Part::Block(states) => merge_states(into, states),
        });
    }
}

impl ViewIndex {
    /// Builds the index of `state`, a state of the view `spec`.
    pub fn build(spec: &ViewSpec, state: &ViewState) -> ViewIndex {
        Self::build_with(spec, state, BLOCK_WEIGHT, INDEX_SHARE)
    }

    /// [`ViewIndex::build`], keeping the blocks of at least `block_weight`
    /// only while the whole index stays within `index_share` of the state's
    /// memory.
    fn build_with(
        spec: &ViewSpec,
        state: &ViewState,
        block_weight: usize,
        index_share: f64,
    ) -> ViewIndex {
        let n = spec.metrics.len();
        let empty = spec.empty_states();
        // The roll-ups (and the keys' merge weights) on a thread of their
        // own while the bucket starts and the tree are found here (or here
        // too, when no thread can be started).
        let roll = || rollups_of(spec, state, &empty);
        let (buckets, tree, rolled) = std::thread::scope(|scope| {
            let rolling = std::thread::Builder::new()
                .name("tandem-index".into())
                .spawn_scoped(scope, roll);
            let buckets = bucket_starts(state);
            let tree = tree_of(state, &buckets, n, &empty);
            let rolled = match rolling {
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(_) => roll(),
            };
            (buckets, tree, rolled)
        });
        let Rolled {
            rollups,
            monotone,
            weights,
        } = rolled;
        // Blocks for the keys of the largest merge weight first, while the
        // index stays within its share of the state's memory.
        let unblocked = ViewIndex::bytes_without_blocks(&buckets, &tree, &rollups, n);
        let mut spare =
            ((state_bytes(state, n) as f64 * index_share) as usize).saturating_sub(unblocked);
        let mut heaviest: Vec<(usize, u32)> = weights
            .iter()
            .enumerate()
            .map(|(at, weight)| (*weight, at as u32))
            .filter(|(weight, _)| *weight >= block_weight)
            .collect();
        heaviest.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut blocks = FxHashMap::default();
        for (_, at) in heaviest {
            let Some((_, groups)) = state.key_at(at as usize) else {
                continue;
            };
            let Some(kept) = KeyBlocks::build(spec, n, groups, block_weight) else {
                continue;
            };
            let Some(left) = spare.checked_sub(kept.bytes()) else {
                break;
            };
            spare = left;
            blocks.insert(at, kept);
        }
        let rankings = (0..n)
            .map(|metric| {
                let agg = &spec.metrics[metric].agg;
                let values: Vec<Option<f64>> = rollups
                    .chunks_exact(n.max(1))
                    .map(|states| states[metric].value(agg).as_f64())
                    .collect();
                let mut order: Vec<u32> = (0..values.len() as u32).collect();
                order.sort_unstable_by(|a, b| {
                    let key = |at: u32| state.key_at(at as usize).map_or("", |(key, _)| key);
                    rank_order(
                        (values[*a as usize], key(*a)),
                        (values[*b as usize], key(*b)),
                    )
                });
                order.into_boxed_slice()
            })
            .collect();
        ViewIndex {
            n,
            buckets,
            tree,
            rollups,
            blocks,
            rankings,
            monotone,
        }
    }

    /// About the bytes the index takes ([`MetricState::bytes`] for its states).
    pub fn bytes(&self) -> usize {
        Self::bytes_without_blocks(&self.buckets, &self.tree, &self.rollups, self.n)
            + self.blocks.values().map(KeyBlocks::bytes).sum::<usize>()
    }

    /// The bytes of an index's buckets, tree, roll-ups and rankings.
    fn bytes_without_blocks(
        buckets: &[i64],
        tree: &[MetricState],
        rollups: &[MetricState],
        n: usize,
    ) -> usize {
        let keys = rollups.len() / n.max(1);
        size_of_val(buckets)
            + MetricState::bytes(tree)
            + MetricState::bytes(rollups)
            + size_of::<u32>() * n * keys
    }

    fn node(&self, node: usize) -> &[MetricState] {
        &self.tree[node * self.n..(node + 1) * self.n]
    }

    /// Whether `range` holds every bucket of the view.
    pub fn covers(&self, range: TimeRange) -> bool {
        range.span(&self.buckets) == (0..self.buckets.len())
    }

    /// The tree nodes kept (see [`kept`]) and leaves that together hold
    /// exactly the buckets in `range`: the at most 2·log₂ T nodes of a tree
    /// that kept every node, each node of the levels not kept read as up to
    /// 2^[`UNKEPT_LEVELS`] leaves (at most 2·log₂ T + 8 in all).
    fn cover(&self, range: TimeRange) -> Vec<usize> {
        let t = self.buckets.len();
        // The root holds every leaf, whatever T; the loop below would
        // gather them from up to log₂ T nodes when T is no power of two.
        let whole = t > 1 && range.span(&self.buckets) == (0..t);
        let mut nodes = Vec::new();
        for node in if whole {
            vec![1]
        } else {
            self.cover_all(range)
        } {
            expand(node, t, &mut |part| nodes.push(part));
        }
        nodes
    }

    /// The tree nodes that together hold exactly the buckets in `range`, as
    /// if every node were kept.
    fn cover_all(&self, range: TimeRange) -> Vec<usize> {
        let t = self.buckets.len();
        let span = range.span(&self.buckets);
        let (mut lo, mut hi) = (span.start + t, span.end + t);
        let mut nodes = Vec::new();
        while lo < hi {
            if lo & 1 == 1 {
                nodes.push(lo);
                lo += 1;
            }
            if hi & 1 == 1 {
                hi -= 1;
                nodes.push(hi);
            }
            lo >>= 1;
            hi >>= 1;
        }
        nodes
    }

    /// Merges the totals of every key over `range` into `into`.
    pub fn totals(&self, range: TimeRange, into: &mut [MetricState]) {
        for node in self.cover(range) {
            merge_states(into, self.node(node));
        }
    }

    /// Merges the totals of `metric` alone over `range` into `into`.
    pub fn total_of(&self, metric: usize, range: TimeRange, into: &mut MetricState) {
        for node in self.cover(range) {
            into.merge(&self.node(node)[metric]);
        }
    }

    /// The totals of every key per bucket in `range`, ascending.
    pub fn series(&self, range: TimeRange) -> impl Iterator<Item = (i64, &[MetricState])> {
        let t = self.buckets.len();
        let span = range.span(&self.buckets);
        self.buckets[span.clone()]
            .iter()
            .copied()
            .zip(span.map(move |at| self.node(t + at)))
    }

    /// Merges the states of the key at position `key` over `range` into
    /// `into`: its roll-up when the range holds all its buckets.
    pub fn key(&self, state: &ViewState, key: usize, range: TimeRange, into: &mut [MetricState]) {
        if let Some((_, groups)) = state.key_at(key) {
            let span = groups.span(range);
            match self.blocks.get(&(key as u32)) {
                Some(blocks) if span != (0..groups.len()) => {
                    blocks.merge(groups, BLOCK_SIZES.len(), span, into);
                }
                _ => {
                    groups.merge_in(range, &self.rollups[key * self.n..(key + 1) * self.n], into);
                }
            }
        }
    }

    /// Whether a top-N by `metric` over `range` scans every key (see the module
    /// documentation), rather than walking the ranking.
    pub fn top_scans(&self, metric: usize, range: TimeRange) -> bool {
        !self.covers(range) && !self.bounds(metric)
    }

    /// Whether each key's roll-up bounds its value of `metric` over any
    /// range (the metric is monotone and no sum of it is negative), so that
    /// a top-N by it walks the ranking from the top over any range.
    pub fn bounds(&self, metric: usize) -> bool {
        self.monotone.get(metric).copied().unwrap_or(false)
    }

    /// The first `n` keys in answer order of `metric` over `range` that
    /// `skip` does not name, with their values there.
    ///
    /// A scan of every key, or a walk down the ranking, stops once `reach`
    /// runs out (see [`Reach::ran_out`]).
    pub fn head(
        &self,
        spec: &ViewSpec,
        state: &ViewState,
        (metric, n): (usize, usize),
        range: TimeRange,
        skip: &dyn Fn(&str) -> bool,
        reach: &Reach,
    ) -> Vec<(Option<f64>, usize)> {
        if self.covers(range) {
            let agg = &spec.metrics[metric].agg;
            self.rankings
                .get(metric)
                .into_iter()
                .flat_map(|ranking| ranking.iter())
                .map(|at| *at as usize)
                .filter(|at| state.key_at(*at).is_some_and(|(key, _)| !skip(key)))
                .take(n)
                .map(|at| {
                    let value = self.rollups[at * self.n + metric].value(agg).as_f64();
                    (value, at)
                })
                .collect()
        } else if self.top_scans(metric, range) {
            if reach.is_limited() {
                reach.run_out();
                return Vec::new();
            }
            self.scan_top(spec, state, metric, n, range, skip)
        } else {
            self.bounded_top(spec, state, (metric, n), range, skip, reach)
        }
    }

    /// The value of `metric` over the buckets of the key at `at` in `range`;
    /// `None` when none is in range.
    fn value_in(
        &self,
        spec: &ViewSpec,
        state: &ViewState,
        at: usize,
        metric: usize,
        range: TimeRange,
    ) -> Option<Option<f64>> {
        let agg = &spec.metrics[metric].agg;
        let mut value = MetricState::empty(agg);
        self.metric_in(state, at, metric, range, &mut value)
            .then(|| value.value(agg).as_f64())
    }

    /// The first `n` untouched keys in answer order of a monotone `metric`
    /// over `range`, walking the ranking: a key's roll-up bounds its value in
    /// any range, and the ranking orders the bounds, so once the `n`th best
    /// value found sorts before the next key's bound, no key further down
    /// can enter.
    fn bounded_top(
        &self,
        spec: &ViewSpec,
        state: &ViewState,
        (metric, n): (usize, usize),
        range: TimeRange,
        skip: &dyn Fn(&str) -> bool,
        reach: &Reach,
    ) -> Vec<(Option<f64>, usize)> {
        let agg = &spec.metrics[metric].agg;
        if range.span(&self.buckets).is_empty() {
            // No key has a bucket in range: nothing to walk for.
            return Vec::new();
        }
        let key = |at: usize| state.key_at(at).map_or("", |(key, _)| key);
        let mut best: Vec<(Option<f64>, usize)> = Vec::with_capacity(n + 1);
        for at in self.rankings[metric].iter().map(|at| *at as usize) {
            if best.len() == n {
                let bound = self.rollups[at * self.n + metric].value(agg).as_f64();
                let (value, last) = best[n - 1];
                if rank_order((value, key(last)), (bound, key(at))).is_lt() {
                    break;
                }
            }
            if skip(key(at)) {
                continue;
            }
            if !reach.step() {
                break;
            }
            let Some(value) = self.value_in(spec, state, at, metric, range) else {
                continue;
            };
            let place = best.partition_point(|(other, other_at)| {
                rank_order((*other, key(*other_at)), (value, key(at))).is_lt()
            });
            if place < n {
                best.insert(place, (value, at));
                best.truncate(n);
            }
        }
        best
    }

    /// The first `n` untouched keys in answer order of `metric` over `range`,
    /// by a scan of each key's buckets in range for that metric alone.
    fn scan_top(
        &self,
        spec: &ViewSpec,
        state: &ViewState,
        metric: usize,
        n: usize,
        range: TimeRange,
        skip: &dyn Fn(&str) -> bool,
    ) -> Vec<(Option<f64>, usize)> {
        let mut ranked: Vec<(Option<f64>, usize)> = Vec::new();
        for (at, (key, _)) in state.keys().enumerate() {
            if skip(key) {
                continue;
            }
            if let Some(value) = self.value_in(spec, state, at, metric, range) {
                ranked.push((value, at));
            }
        }
        let key = |at: usize| state.key_at(at).map_or("", |(key, _)| key);
        let order = |a: &(Option<f64>, usize), b: &(Option<f64>, usize)| {
            rank_order((a.0, key(a.1)), (b.0, key(b.1)))
        };
        if ranked.len() > n && n > 0 {
            ranked.select_nth_unstable_by(n - 1, order);
            ranked.truncate(n);
        }
        ranked.sort_unstable_by(order);
        ranked.truncate(n);
        ranked
    }

    /// Merges the state of `metric` of the key at `at` over `range` into
    /// `into`; answers whether any bucket of the key lies in range.
    fn metric_in(
        &self,
        state: &ViewState,
        at: usize,
        metric: usize,
        range: TimeRange,
        into: &mut MetricState,
    ) -> bool {
        state.key_at(at).is_some_and(|(_, groups)| {
            let span = groups.span(range);
            match self.blocks.get(&(at as u32)) {
                Some(blocks) if span != (0..groups.len()) => {
                    let any = !span.is_empty();
                    blocks.parts(BLOCK_SIZES.len(), span, &mut |part| match part {
                        Part::Buckets(span) => {
                            for at in span {
                                into.merge(&groups.states(self.n, at)[metric]);
                            }
                        }
                        Part::Block(states) => into.merge(&states[metric]),
                    });
                    any
                }
                _ => {
                    let rollup = &self.rollups[at * self.n + metric];
                    groups.merge_metric_in(range, self.n, metric, rollup, into)
                }
            }
        })
    }
}

/// The band of `value`, a value of a monotone metric: bands ascend with the
/// values in them, a quarter of an octave a band (a positive float's exponent
/// and top two mantissa bits); zero and below are band 0.
pub fn band_of(value: f64) -> u16 {
    if value > 0.0 {
        (value.to_bits() >> 50) as u16
    } else {
        0
    }
}

/// Every value in band `band` lies below this.
fn band_bound(band: u16) -> f64 {
    // The highest band of finite values ends at infinity.
    const TOP: u16 = (f64::MAX.to_bits() >> 50) as u16;
    if band >= TOP {
        f64::INFINITY
    } else {
        f64::from_bits((u64::from(band) + 1) << 50)
    }
}

/// What a top-N merge needs of the layer whose keys are live (the speed
/// layer's epochs after the batch's), over the query's range.
pub trait LiveTop {
    /// Calls `visit` with every key the layer holds in range and its state of
    /// metric `metric` there.
    fn each(&self, metric: usize, visit: &mut dyn FnMut(&str, &MetricState));
    /// Merges the key's states in range into `into`.
    fn key(&self, key: &str, into: &mut [MetricState]);
    /// Merges the key's state of `metric` in range into `into`; answers
    /// whether the layer holds the key in range.
    fn metric(&self, key: &str, metric: usize, into: &mut MetricState) -> bool;
    /// Merges the state of `metric` of every key in range into `into`.
    fn total(&self, metric: usize, into: &mut MetricState);
    /// Pushes every key the layer holds in range onto `keys`, once per group
    /// it has there (a bucket in one epoch), unless that makes `keys` longer
    /// than `limit`; answers whether it pushed them all.
    fn listed(&self, limit: usize, keys: &mut Vec<Arc<str>>) -> bool;
    /// Whether the layer keeps its keys banded by their value of the
    /// monotone `metric` over everything it holds (see [`band_of`]); that
    /// value bounds the key's value in any range.
    fn banded(&self, metric: usize) -> bool;
    /// Per part of the layer, how many times a key was filed into a higher
    /// band by `metric` so far: where a walk down the bands starts from.
    fn raised(&self, metric: usize) -> Vec<u64>;
    /// Whether, since `since` (from [`LiveTop::raised`]), a key was filed
    /// by `metric` into band `lowest` or higher: a walk that read those
    /// bands meanwhile may have missed it.
    fn raised_into(&self, metric: usize, since: &[u64], lowest: u16) -> bool;
    /// The highest band below `below` holding a key by `metric`, with its
    /// keys pushed onto `keys`; `None` once no band is left.
    fn next_band(&self, metric: usize, below: u16, keys: &mut Vec<Arc<str>>) -> Option<u16>;
}

/// The `n` best keys so far, in answer order; a key is copied only when it enters.
struct Best {
    n: usize,
    items: Vec<(Option<f64>, String)>,
}

impl Best {
    fn new(n: usize) -> Best {
        Best {
            n,
            items: Vec::with_capacity(n + 1),
        }
    }

    fn offer(&mut self, value: Option<f64>, key: &str) {
        let place = self.items.partition_point(|(other, other_key)| {
            rank_order((*other, other_key), (value, key)).is_lt()
        });
        if place < self.n {
            self.items.insert(place, (value, key.to_owned()));
            self.items.truncate(self.n);
        }
    }

    /// Whether no key whose value is at most `bound` (or that has no value)
    /// can enter any more.
    fn beats(&self, bound: f64) -> bool {
        // Bounds are sums of floats where the values are exact decimals: a
        // relative margin far above their rounding keeps the test safe.
        let margin = bound.abs() * 1e-9 + 1e-9;
        self.items.len() == self.n
            && self
                .items
                .last()
                .and_then(|(value, _)| *value)
                .is_some_and(|value| value > bound + margin)
    }
}

/// How many keys a top-N merge may read (each key's value in range, in
/// either layer) before it gives up: a query answered on its caller's
/// thread is handed to the blocking pool rather than read further there.
#[derive(Debug)]
pub struct Reach {
    left: Cell<usize>,
    /// Whether a step was refused.
    refused: Cell<bool>,
}

impl Reach {
    /// At most `keys` keys.
    pub fn keys(keys: usize) -> Reach {
        Reach {
            left: Cell::new(keys),
            refused: Cell::new(false),
        }
    }

    /// As many keys as the merge needs.
    pub fn unlimited() -> Reach {
        Reach::keys(usize::MAX)
    }

    /// Whether this reach can run out.
    pub fn is_limited(&self) -> bool {
        self.left.get() < usize::MAX
    }

    /// Takes a step (a key read); false, from then on, once none is left.
    fn step(&self) -> bool {
        match self.left.get() {
            0 => {
                self.refused.set(true);
                false
            }
            usize::MAX => true,
            left => {
                self.left.set(left - 1);
                true
            }
        }
    }

    /// Whether a step was refused: what was merged is not the answer.
    pub fn ran_out(&self) -> bool {
        self.refused.get()
    }

    /// Refuses this and every further step (for a read that would visit
    /// every key).
    fn run_out(&self) {
        self.left.set(0);
        self.refused.set(true);
    }
}

/// The merged top-N by `metric` over `range` of a batch state (with its
/// index) and a live layer, as the keys and their merged states.
///
/// For a monotone metric that both layers bound (see [`Agg::is_monotone`]),
/// a threshold walk (Fagin's threshold algorithm over two sorted lists):
/// the batch's ranking and the live layer's bands, each key met read in both
/// layers, until the `n`th best merged value beats every key not met yet, so
/// it touches about as many keys as it answers. Otherwise every key the live
/// layer holds in range, whose merged value is its batch value plus its live
/// one, and the batch's first `n` keys the live layer does not hold, whose
/// merged value is their batch value: O(n + live keys) merges of the
/// ranking metric. Either way the `n` keys kept are then read in full.
///
/// `None` when `reach` ran out first: a read of every live key, a scan of
/// the batch's keys, or a walk longer than it allows.
pub fn merged_top(
    spec: &ViewSpec,
    (batch, live): (Option<(&ViewIndex, &ViewState)>, &dyn LiveTop),
    (metric, n): (usize, usize),
    range: TimeRange,
    reach: &Reach,
) -> Option<FxHashMap<String, Box<[MetricState]>>> {
    let merge = TopMerge {
        agg: &spec.metrics[metric].agg,
        batch,
        metric,
        n,
        range,
        live,
        reach,
    };
    let batch_bounds = batch.is_none_or(|(index, _)| index.bounds(metric));
    // A walk that a key's move into the bands it read raced (or a negative
    // sum, after which the bands bound nothing) is read again; one that
    // keeps racing gives way to the rule that reads every live key. A key
    // whose first group in range opens while a walk reads the keys listed
    // there may be left out, as an event applied after the read began may.
    let walked = (merge.agg.is_monotone() && batch_bounds && live.banded(metric))
        .then(|| {
            (0..WALKS).find_map(|_| {
                let since = live.raised(metric);
                let (best, read_to) = merge.walk();
                read_to
                    .is_none_or(|lowest| {
                        !live.raised_into(metric, &since, lowest) && live.banded(metric)
                    })
                    .then_some(best)
            })
        })
        .flatten();
    let best = walked.unwrap_or_else(|| merge.by_live_keys(spec));
    if reach.ran_out() {
        return None;
    }
    let top = best
        .items
        .into_iter()
        .map(|(_, key)| {
            let mut states = spec.empty_states();
            if let Some((index, state)) = batch
                && let Some(at) = state.key_index(&key)
            {
                index.key(state, at, range, &mut states);
            }
            live.key(&key, &mut states);
            (key, states)
        })
        .collect();
    Some(top)
}

/// How often a threshold walk is tried before the rule that reads every
/// live key answers instead.
const WALKS: usize = 3;

/// Up to this many groups of the live layer in range (a key's bucket in one
/// epoch), a top-N reads each of their keys rather than walking the bands or
/// every live key: a narrow range (a window the live layer barely reaches)
/// then costs what it holds, where the bands, which bound a
/// key by its value over everything, would be walked nearly to the end.
const LISTED: usize = 4096;

/// What [`merged_top`] is asked: by `metric` (aggregated by `agg`), the `n`
/// best keys over `range` of the batch and the live layer together.
struct TopMerge<'a> {
    agg: &'a Agg,
    batch: Option<(&'a ViewIndex, &'a ViewState)>,
    metric: usize,
    n: usize,
    range: TimeRange,
    live: &'a dyn LiveTop,
    reach: &'a Reach,
}

impl TopMerge<'_> {
    /// Merges the batch's state of the metric for `key` in range into
    /// `into`; answers whether the batch holds the key in range.
    fn batch_metric(&self, key: &str, into: &mut MetricState) -> bool {
        self.batch.is_some_and(|(index, state)| {
            state
                .key_index(key)
                .is_some_and(|at| index.metric_in(state, at, self.metric, self.range, into))
        })
    }

    /// Offers `key` with its merged value of the metric in range, unless
    /// `met` holds it; then `met` does.
    fn offer(&self, key: &str, met: &mut FxHashSet<Box<str>>, best: &mut Best) {
        if met.contains(key) || !self.reach.step() {
            return;
        }
        met.insert(key.into());
        let mut state = MetricState::empty(self.agg);
        let in_batch = self.batch_metric(key, &mut state);
        if self.live.metric(key, self.metric, &mut state) | in_batch {
            best.offer(state.value(self.agg).as_f64(), key);
        }
    }

    /// Every key the live layer holds in range, whose merged value is its
    /// batch value plus its live one, and the batch's first `n` keys the
    /// live layer does not hold, whose merged value is their batch value.
    fn by_live_keys(&self, spec: &ViewSpec) -> Best {
        let mut best = Best::new(self.n);
        let mut met = FxHashSet::default();
        let mut keys = Vec::new();
        if self.live.listed(LISTED, &mut keys) {
            for key in &keys {
                self.offer(key, &mut met, &mut best);
            }
        } else if self.reach.is_limited() {
            // Every live key: more than a limited reach allows.
            self.reach.run_out();
            return best;
        } else {
            self.live.each(self.metric, &mut |key, live_state| {
                let mut state = MetricState::empty(self.agg);
                self.batch_metric(key, &mut state);
                state.merge(live_state);
                best.offer(state.value(self.agg).as_f64(), key);
                met.insert(key.into());
            });
        }
        // The keys offered above are skipped, and only they: a key the live
        // layer took in after it was read has its batch value, as it had
        // before.
        if let Some((index, state)) = self.batch {
            let skip = |key: &str| met.contains(key);
            let head = index.head(
                spec,
                state,
                (self.metric, self.n),
                self.range,
                &skip,
                self.reach,
            );
            for (value, at) in head {
                if let Some((key, _)) = state.key_at(at) {
                    best.offer(value, key);
                }
            }
        }
        best
    }

    /// The threshold walk, for a monotone metric.
    ///
    /// A key's merged value in range is at most its batch roll-up's value
    /// combined (added, or the larger for max) with its live value over
    /// everything, and at most each layer's total in range combined
    /// likewise. Walking the batch ranking and the live bands from the top,
    /// the next batch key's roll-up and the next band's bound therefore bound
    /// every key not met yet; the walk stops once the `n`th best beats that.
    /// Answers the best keys and, when it walked the bands, the lowest band
    /// it read (every band from there up, as they were when read).
    fn walk(&self) -> (Best, Option<u16>) {
        let (agg, metric, live) = (self.agg, self.metric, self.live);
        // Bounds as floats, "no value" lowest; for count and sum (never
        // negative here) a layer with nothing left adds nothing.
        let combine = |a: f64, b: f64| match agg {
            Agg::Max => a.max(b),
            _ => a.max(0.0) + b.max(0.0),
        };
        let value = |state: &MetricState| state.value(agg).as_f64().unwrap_or(f64::NEG_INFINITY);
        let mut live_total = MetricState::empty(agg);
        live.total(metric, &mut live_total);
        let live_cap = value(&live_total);
        let mut best = Best::new(self.n);
        let mut met = FxHashSet::default();
        // The batch side: its ranking, with each key's roll-up as its bound,
        // capped by the batch's total in range; nothing to walk when no
        // bucket of the batch lies in range.
        let (mut ranked, batch_cap) = match self.batch {
            Some((index, state)) if !self.range.span(&index.buckets).is_empty() => {
                let mut totals = MetricState::empty(agg);
                index.total_of(metric, self.range, &mut totals);
                let ranking = index.rankings[metric].iter().map(move |at| {
                    let at = *at as usize;
                    let bound = value(&index.rollups[at * index.n + metric]);
                    (bound, state.key_at(at).map_or("", |(key, _)| key))
                });
                (Some(ranking.peekable()), value(&totals))
            }
            _ => (None, f64::NEG_INFINITY),
        };
        // The live side: its few keys in range, each met at once, so that
        // no key left has a live value there; else its bands, walked down.
        let mut keys: Vec<Arc<str>> = Vec::new();
        let mut read_to = None;
        let mut band = if live.listed(LISTED, &mut keys) {
            for key in keys.drain(..) {
                self.offer(&key, &mut met, &mut best);
            }
            None
        } else {
            keys.clear();
            let band = live.next_band(metric, u16::MAX, &mut keys);
            read_to = Some(band.unwrap_or(0));
            band
        };
        loop {
            let next = ranked.as_mut().and_then(|ranked| ranked.peek().copied());
            if (next.is_none() && band.is_none()) || self.reach.ran_out() {
                break;
            }
            let batch_bound = next.map_or(f64::NEG_INFINITY, |(bound, _)| bound.min(batch_cap));
            let live_bound = band.map_or(f64::NEG_INFINITY, |band| band_bound(band).min(live_cap));
            if best.beats(combine(batch_bound, live_bound)) {
                break;
            }
            // Read further down the side whose next bound is higher.
            match (next, band) {
                (Some((_, key)), band) if band.is_none() || batch_bound >= live_bound => {
                    ranked.as_mut().and_then(Iterator::next);
                    self.offer(key, &mut met, &mut best);
                }
                (_, Some(below)) => {
                    for key in keys.drain(..) {
                        self.offer(&key, &mut met, &mut best);
                    }
                    band = live.next_band(metric, below, &mut keys);
                    read_to = Some(band.unwrap_or(0));
                }
                (_, None) => break,
            }
        }
        (best, read_to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{KeyGroups, Partial, QueryKind};
    use crate::config::Config;
    use proptest::prelude::*;

    const CONFIG: &str = r#"
        data_dir = "d"
        [event]
        id = "id"
        time = "ts"
        [[view]]
        name = "v"
        key = ["k"]
        bucket = "1m"
        metrics = [
          { name = "n", agg = "count" },
          { name = "sum", agg = "sum", field = "x" },
          { name = "low", agg = "min", field = "x" },
          { name = "high", agg = "max", field = "x" },
          { name = "mean", agg = "mean", field = "x" },
          { name = "users", agg = "distinct", field = "u" },
          { name = "p50", agg = "quantile", field = "x", q = 0.5 },
        ]
    "#;

    /// Another state as the live layer of a top-N merge; it lists its keys
    /// in range only up to `list_limit` groups (so that both the lists and
    /// the bands are walked).
    struct Other<'a> {
        spec: &'a ViewSpec,
        state: &'a ViewState,
        range: TimeRange,
        list_limit: usize,
    }

    impl Other<'_> {
        fn n(&self) -> usize {
            self.spec.metrics.len()
        }

        /// Merges the key's state of `metric` over `range`.
        fn merge(
            &self,
            groups: &KeyGroups,
            metric: usize,
            range: TimeRange,
            into: &mut MetricState,
        ) -> bool {
            let span = groups.span(range);
            let any = !span.is_empty();
            for at in span {
                into.merge(&groups.states(self.n(), at)[metric]);
            }
            any
        }

        /// Each key's band by `metric` over all its buckets.
        fn bands(&self, metric: usize) -> Vec<(u16, &str)> {
            let agg = &self.spec.metrics[metric].agg;
            self.state
                .keys()
                .map(|(key, groups)| {
                    let mut state = MetricState::empty(agg);
                    self.merge(groups, metric, TimeRange::ALL, &mut state);
                    (
                        band_of(state.value(agg).as_f64().unwrap_or(f64::NEG_INFINITY)),
                        key,
                    )
                })
                .collect()
        }
    }

    impl LiveTop for Other<'_> {
        fn each(&self, metric: usize, visit: &mut dyn FnMut(&str, &MetricState)) {
            for (key, groups) in self.state.keys() {
                let mut state = MetricState::empty(&self.spec.metrics[metric].agg);
                if self.merge(groups, metric, self.range, &mut state) {
                    visit(key, &state);
                }
            }
        }

        fn key(&self, key: &str, into: &mut [MetricState]) {
            if let Some(groups) = self.state.key(key) {
                groups.merge_span(groups.span(self.range), into);
            }
        }

        fn metric(&self, key: &str, metric: usize, into: &mut MetricState) -> bool {
            self.state
                .key(key)
                .is_some_and(|groups| self.merge(groups, metric, self.range, into))
        }

        fn total(&self, metric: usize, into: &mut MetricState) {
            for (_, groups) in self.state.keys() {
                self.merge(groups, metric, self.range, into);
            }
        }

        fn listed(&self, limit: usize, keys: &mut Vec<Arc<str>>) -> bool {
            for (key, groups) in self.state.keys() {
                for _ in groups.span(self.range) {
                    if keys.len() == limit.min(self.list_limit) {
                        return false;
                    }
                    keys.push(Arc::from(key));
                }
            }
            true
        }

        fn banded(&self, metric: usize) -> bool {
            self.spec.metrics[metric].agg.is_monotone()
                && self.state.keys().all(|(_, groups)| {
                    (0..groups.len()).all(|at| match &groups.states(self.n(), at)[metric] {
                        MetricState::Sum(sum) => sum.as_i128() >= 0,
                        _ => true,
                    })
                })
        }

        fn raised(&self, _: usize) -> Vec<u64> {
            // Nothing is applied while a test walks.
            Vec::new()
        }

        fn raised_into(&self, _: usize, _: &[u64], _: u16) -> bool {
            false
        }

        fn next_band(&self, metric: usize, below: u16, keys: &mut Vec<Arc<str>>) -> Option<u16> {
            self.next_band_but(metric, below, keys, None)
        }
    }

    impl Other<'_> {
        /// [`LiveTop::next_band`], as if key `but` were in no band.
        fn next_band_but(
            &self,
            metric: usize,
            below: u16,
            keys: &mut Vec<Arc<str>>,
            but: Option<&str>,
        ) -> Option<u16> {
            let bands: Vec<(u16, &str)> = self
                .bands(metric)
                .into_iter()
                .filter(|(_, key)| Some(*key) != but)
                .collect();
            let top = bands
                .iter()
                .map(|(band, _)| *band)
                .filter(|band| *band < below)
                .max()?;
            keys.extend(
                bands
                    .iter()
                    .filter(|(band, _)| *band == top)
                    .map(|(_, key)| Arc::from(*key)),
            );
            Some(top)
        }
    }

    /// Which keys of a [`Moved`] layer moved as a walk began.
    enum Moves<'a> {
        /// Every key, each into a band the walk had read, and its bands lost
        /// them all: a top-N must not take any walk's answer.
        Every,
        /// One key, out of a band no walk had read into its own band, so
        /// that the walk finds it in no band: a walk that read the key's
        /// band must be read again, one that stopped above it stands.
        One(&'a str),
    }

    /// A live layer whose keys moved between bands as a walk began.
    struct Moved<'a> {
        other: Other<'a>,
        moves: Moves<'a>,
    }

    impl LiveTop for Moved<'_> {
        fn each(&self, metric: usize, visit: &mut dyn FnMut(&str, &MetricState)) {
            self.other.each(metric, visit)
        }

        fn key(&self, key: &str, into: &mut [MetricState]) {
            self.other.key(key, into)
        }

        fn metric(&self, key: &str, metric: usize, into: &mut MetricState) -> bool {
            self.other.metric(key, metric, into)
        }

        fn total(&self, metric: usize, into: &mut MetricState) {
            self.other.total(metric, into)
        }

        fn listed(&self, limit: usize, keys: &mut Vec<Arc<str>>) -> bool {
            self.other.listed(limit, keys)
        }

        fn banded(&self, metric: usize) -> bool {
            self.other.banded(metric)
        }

        fn raised(&self, _: usize) -> Vec<u64> {
            Vec::new()
        }

        fn raised_into(&self, metric: usize, _: &[u64], lowest: u16) -> bool {
            match self.moves {
                Moves::Every => true,
                Moves::One(moved) => self
                    .other
                    .bands(metric)
                    .iter()
                    .any(|(band, key)| *key == moved && *band >= lowest),
            }
        }

        fn next_band(&self, metric: usize, below: u16, keys: &mut Vec<Arc<str>>) -> Option<u16> {
            match self.moves {
                Moves::Every => None,
                Moves::One(moved) => self.other.next_band_but(metric, below, keys, Some(moved)),
            }
        }
    }

    /// (key, minute, value, user); `speed` says which state it goes to.
    type Event = (u8, i64, i32, u8, bool);

    /// Up to `most` events of `keys` keys over `minutes` minutes.
    fn events(keys: u8, minutes: i64, most: usize) -> impl Strategy<Value = Vec<Event>> {
        proptest::collection::vec(
            (0..keys, 0..minutes, -20..400i32, 0..9u8, any::<bool>()),
            0..most,
        )
    }

    /// Bucket edges and points inside buckets, before, within and after
    /// data over `minutes` minutes.
    fn bound(minutes: i64) -> impl Strategy<Value = Option<i64>> {
        prop_oneof![
            Just(None),
            (-2..minutes + 3, 0..3i64).prop_map(|(m, part)| Some(m * 60_000 + part * 20_000))
        ]
    }

    /// Events and a range's bounds: sparse keys, or few keys with a bucket
    /// most minutes (so that their blocks are kept), or one key with more
    /// than two blocks of 64 buckets.
    fn data() -> impl Strategy<Value = (Vec<Event>, Option<i64>, Option<i64>)> {
        prop_oneof![
            Just((12u8, 40i64, 80usize)),
            Just((3, 150, 600)),
            Just((1, 200, 800))
        ]
        .prop_flat_map(|(keys, minutes, most)| {
            (events(keys, minutes, most), bound(minutes), bound(minutes))
        })
    }

    fn build(config: &Config, events: &[Event], speed: bool, allow_negative: bool) -> ViewState {
        let spec = &config.views[0];
        let mut state = ViewState::new();
        for (i, (key, minute, value, user, is_speed)) in events.iter().enumerate() {
            if *is_speed != speed {
                continue;
            }
            let value = if allow_negative { *value } else { value.abs() };
            let raw = format!(
                r#"{{"id":{i},"k":"k{key}","ts":{},"x":{}.5,"u":"u{user}"}}"#,
                minute * 60_000 + 1_000,
                value
            );
            state.apply(
                spec,
                &config.schema.parse(raw.as_bytes(), 0).expect("valid event"),
            );
        }
        state
    }

    /// The blocks go to the keys of the largest merge weight first, and only
    /// while the index stays within its share of the state's memory.
    #[test]
    fn blocks_go_to_the_heaviest_keys_within_the_index_share() {
        let config = Config::parse(CONFIG, "test.toml").expect("config");
        let spec = &config.views[0];
        // Over 128 minutes, key 1 has 6 events a minute, key 2 three, key 0 one.
        let mut events: Vec<Event> = Vec::new();
        for (key, per_minute) in [(0u8, 1usize), (1, 6), (2, 3)] {
            for minute in 0..128i64 {
                for _ in 0..per_minute {
                    let at = events.len();
                    events.push((key, minute, (at % 397) as i32, (at % 251) as u8, false));
                }
            }
        }
        let state = build(&config, &events, false, false);
        let state_bytes = state_bytes(&state, spec.metrics.len());
        let position = |key: &str| state.key_index(key).expect("key") as u32;
        let heaviest = [position("k1"), position("k2"), position("k0")];
        let (mut kept_before, mut seen) = (0, FxHashSet::default());
        // Blocks of exact values copy them twice (blocks of 8 and of 64), and
        // the tree and the roll-ups twice more: a share of 8 holds them all.
        for share in (0..=80).map(|step| f64::from(step) * 0.1) {
            let index = ViewIndex::build_with(spec, &state, 1, share);
            let kept = heaviest
                .iter()
                .take_while(|at| index.blocks.contains_key(at))
                .count();
            assert_eq!(
                kept,
                index.blocks.len(),
                "share {share}: the heaviest keys first"
            );
            assert!(
                kept >= kept_before,
                "share {share}: a larger share keeps as much"
            );
            if kept > 0 {
                assert!(
                    index.bytes() as f64 <= share * state_bytes as f64,
                    "share {share}: {} bytes of index for {state_bytes} of state",
                    index.bytes()
                );
            }
            kept_before = kept;
            seen.insert(kept);
        }
        assert_eq!(
            seen.len(),
            4,
            "some shares keep one key's blocks, some two: {seen:?}"
        );
        assert_eq!(kept_before, 3, "a share of 8 keeps every key's blocks");
        let unlimited = ViewIndex::build_with(spec, &state, 1, f64::INFINITY);
        assert_eq!(unlimited.blocks.len(), 3);
        assert!(
            ViewIndex::build_with(spec, &state, 1, 0.0)
                .blocks
                .is_empty()
        );
    }

    proptest! {
        /// Bands ascend with the values in them, and each band's bound lies
        /// above every value in it and at or below every value of higher bands.
        #[test]
        fn bands_order_values_and_bound_them(a in proptest::num::f64::NORMAL | proptest::num::f64::ZERO, b in proptest::num::f64::NORMAL | proptest::num::f64::ZERO) {
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(band_of(low) <= band_of(high));
            prop_assert!(low < band_bound(band_of(low)));
            if band_of(low) < band_of(high) {
                prop_assert!(band_bound(band_of(low)) <= high);
            }
        }
    }

    proptest! {
        /// The parts of a key's buckets are the buckets of the span, each
        /// once, whichever blocks are kept; the first is a block of the
        /// largest size among them.
        #[test]
        fn block_parts_are_exactly_the_span(
            len in 0..300usize,
            kept in proptest::collection::vec(any::<bool>(), 64),
            start in 0..300usize,
            width in 0..300usize,
        ) {
            // A kept block's one state names its level and number.
            let mut blocks = KeyBlocks::default();
            for (level, size) in BLOCK_SIZES.iter().enumerate() {
                blocks.levels[level] = (0..len / size)
                    .map(|k| {
                        kept[(k + level * 7) % kept.len()]
                            .then(|| vec![MetricState::Count((level * 1000 + k) as u64)].into_boxed_slice())
                    })
                    .collect();
            }
            let span = start.min(len)..(start + width).min(len);
            let (mut visited, mut sizes) = (Vec::new(), Vec::new());
            blocks.parts(BLOCK_SIZES.len(), span.clone(), &mut |part| match part {
                Part::Buckets(positions) => {
                    sizes.push(1);
                    visited.extend(positions);
                }
                Part::Block([MetricState::Count(code)]) => {
                    let (level, k) = (*code as usize / 1000, *code as usize % 1000);
                    let size = BLOCK_SIZES[level];
                    sizes.push(size);
                    visited.extend(k * size..(k + 1) * size);
                }
                Part::Block(other) => panic!("a block of states {other:?}"),
            });
            visited.sort_unstable();
            prop_assert_eq!(visited, span.collect::<Vec<usize>>());
            prop_assert_eq!(sizes.first(), sizes.iter().max());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every indexed answer equals the scan's, over ranges aligned to
        /// buckets or not, and a top-N's batch part merged with another
        /// layer's equals the scan of both.
        #[test]
        fn indexed_answers_equal_the_scan(
            (events, from, to) in data(),
            block_weight in prop_oneof![Just(1usize), 2..40usize, Just(BLOCK_WEIGHT)],
            // Every key's blocks, some keys' (the budget runs out), none.
            index_share in prop_oneof![Just(f64::INFINITY), 0.0..4.0f64, Just(INDEX_SHARE)],
            negative in any::<bool>(),
            n in 1..6usize,
            list_limit in prop_oneof![Just(0usize), 0..40usize, Just(usize::MAX)],
            moved in any::<prop::sample::Index>(),
            reach in 0..24usize,
        ) {
            let config = Config::parse(CONFIG, "test.toml").expect("config");
            let spec = &config.views[0];
            let batch = build(&config, &events, false, negative);
            let speed = build(&config, &events, true, negative);
            let index = ViewIndex::build_with(spec, &batch, block_weight, index_share);
            let range = TimeRange { from, to };

            let scan = |kind: &QueryKind| batch.partial(spec, kind, range).finish(spec, kind);
            let mut totals = spec.empty_states();
            index.totals(range, &mut totals);
            prop_assert_eq!(Partial::States(totals).finish(spec, &QueryKind::Totals), scan(&QueryKind::Totals));

            let series = Partial::PerBucket(index.series(range).map(|(start, states)| (start, states.into())).collect());
            prop_assert_eq!(series.finish(spec, &QueryKind::Series(None)), scan(&QueryKind::Series(None)));

            for key in ["k0", "k1", "k3", "k11", "nope"] {
                let kind = QueryKind::Key(key.to_owned());
                let mut states = spec.empty_states();
                if let Some(at) = batch.key_index(key) {
                    index.key(&batch, at, range, &mut states);
                }
                prop_assert_eq!(Partial::States(states).finish(spec, &kind), scan(&kind), "key {}", key);
            }

            for metric in 0..spec.metrics.len() {
                let kind = QueryKind::Top { metric, n };
                // Unlimited, the merge always answers; within a reach of a
                // few keys it answers the same or gives up.
                let top = |live: &dyn LiveTop, reach: &Reach| {
                    merged_top(spec, (Some((&index, &batch)), live), (metric, n), range, reach)
                        .map(Partial::PerKey)
                };
                let live = Other { spec, state: &speed, range, list_limit };
                let merged = top(&live, &Reach::unlimited()).expect("an unlimited reach");
                let within = top(&live, &Reach::keys(reach));
                let racing = Moved { other: Other { spec, state: &speed, range, list_limit: 0 }, moves: Moves::Every };
                let raced = top(&racing, &Reach::unlimited()).expect("an unlimited reach");
                let mut expected = batch.partial(spec, &kind, range);
                expected.merge(&speed.partial(spec, &kind, range));
                let expected = expected.finish(spec, &kind);
                prop_assert_eq!(
                    merged.finish(spec, &kind),
                    expected.clone(),
                    "top {} by {}", n, spec.metrics[metric].name
                );
                prop_assert_eq!(raced.finish(spec, &kind), expected.clone(), "raced top {} by {}", n, spec.metrics[metric].name);
                if let Some(within) = within {
                    prop_assert_eq!(within.finish(spec, &kind), expected.clone(), "top {} by {} within {} keys", n, spec.metrics[metric].name, reach);
                }
                if speed.key_count() > 0 && let Some((moved, _)) = speed.key_at(moved.index(speed.key_count())) {
                    let moving = Moved { other: Other { spec, state: &speed, range, list_limit: 0 }, moves: Moves::One(moved) };
                    let raced = top(&moving, &Reach::unlimited()).expect("an unlimited reach");
                    prop_assert_eq!(raced.finish(spec, &kind), expected, "top {} by {} with {} moved", n, spec.metrics[metric].name, moved);
                }
            }
        }
    }
}
