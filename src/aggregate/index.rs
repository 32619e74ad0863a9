//! `ViewIndex`: what a batch view state precomputes so that the questions a
//! dashboard asks every second cost a few merges, not a scan of every group.
//!
//! Built once per snapshot, off the async threads, from the view's state:
//! - the view's bucket starts and a segment tree of their totals: totals over
//!   any range `[from, to)` merge at most 2·log₂ T nodes (T buckets), and the
//!   leaves are the all-keys series;
//! - per key, its roll-up over every bucket: a key query over a range that
//!   holds all of the key's buckets reads one state;
//! - per metric, every key ranked by its roll-up's value (the order of a
//!   top-N answer): a top-N over a range that holds every bucket of the view
//!   is the head of the ranking.
//!
//! A top-N over a range that cuts the view's buckets scans each key's buckets
//! in range for the ranking metric alone, then reads the full states of the
//! `n` keys it keeps.

use super::query::{merge_states, rank_order};
use super::{MetricState, TimeRange, ViewSpec, ViewState};
use rustc_hash::FxHashMap;
use std::ops::Range;

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
    /// Per metric, key positions in answer order of their roll-up's value.
    rankings: Vec<Box<[u32]>>,
}

impl ViewIndex {
    /// Builds the index of `state`, a state of the view `spec`.
    pub fn build(spec: &ViewSpec, state: &ViewState) -> ViewIndex {
        let n = spec.metrics.len();
        let mut buckets: Vec<i64> = state
            .keys()
            .flat_map(|(_, groups)| groups.buckets().iter().copied())
            .collect();
        buckets.sort_unstable();
        buckets.dedup();
        let t = buckets.len();
        let empty = spec.empty_states();
        let mut tree: Vec<MetricState> = (0..2 * t).flat_map(|_| empty.iter().cloned()).collect();
        let mut rollups: Vec<MetricState> = Vec::with_capacity(state.key_count() * n);
        for (_, groups) in state.keys() {
            let start = rollups.len();
            rollups.extend(empty.iter().cloned());
            let mut leaf = 0;
            for (at, bucket) in groups.buckets().iter().enumerate() {
                // A key's buckets ascend, so each one's leaf lies after the last.
                leaf += buckets[leaf..].partition_point(|start| start < bucket);
                let states = groups.states(n, at);
                merge_states(&mut tree[(t + leaf) * n..(t + leaf + 1) * n], states);
                merge_states(&mut rollups[start..start + n], states);
            }
        }
        for node in (1..t).rev() {
            let (parents, children) = tree.split_at_mut(2 * node * n);
            let parent = &mut parents[node * n..(node + 1) * n];
            parent.clone_from_slice(&children[..n]);
            merge_states(parent, &children[n..2 * n]);
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
            rankings,
        }
    }

    fn node(&self, node: usize) -> &[MetricState] {
        &self.tree[node * self.n..(node + 1) * self.n]
    }

    /// Whether `range` holds every bucket of the view.
    pub fn covers(&self, range: TimeRange) -> bool {
        range.span(&self.buckets) == (0..self.buckets.len())
    }

    /// Merges the totals of every key over `range` into `into`: at most
    /// 2·log₂ T node merges.
    pub fn totals(&self, range: TimeRange, into: &mut [MetricState]) {
        let t = self.buckets.len();
        let span = range.span(&self.buckets);
        let (mut lo, mut hi) = (span.start + t, span.end + t);
        while lo < hi {
            if lo & 1 == 1 {
                merge_states(into, self.node(lo));
                lo += 1;
            }
            if hi & 1 == 1 {
                hi -= 1;
                merge_states(into, self.node(hi));
            }
            lo >>= 1;
            hi >>= 1;
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
        let Some((_, groups)) = state.key_at(key) else {
            return;
        };
        let span = groups.span(range);
        if span == (0..groups.len()) {
            merge_states(into, &self.rollups[key * self.n..(key + 1) * self.n]);
        } else {
            groups.merge_span(span, into);
        }
    }

    /// The batch layer's part of a top-N by `metric` over `range`, given the
    /// keys the speed layer also has (`touched`): the first `n` keys in
    /// answer order that are not touched, and every touched key this state
    /// has, each with its states over `range`. A key the speed layer did not
    /// touch has its batch value as its merged value, so the merged answer's
    /// top `n` lie among these keys.
    pub fn top<V>(
        &self,
        spec: &ViewSpec,
        state: &ViewState,
        metric: usize,
        n: usize,
        range: TimeRange,
        touched: &FxHashMap<String, V>,
    ) -> FxHashMap<String, Box<[MetricState]>> {
        let head: Vec<usize> = if self.covers(range) {
            self.rankings
                .get(metric)
                .into_iter()
                .flat_map(|ranking| ranking.iter())
                .map(|at| *at as usize)
                .filter(|at| {
                    state
                        .key_at(*at)
                        .is_some_and(|(key, _)| !touched.contains_key(key))
                })
                .take(n)
                .collect()
        } else {
            self.scan_top(spec, state, metric, n, range, touched)
        };
        let touched_here = touched.keys().filter_map(|key| state.key_index(key));
        let mut out = FxHashMap::default();
        for at in head.into_iter().chain(touched_here) {
            let Some((key, groups)) = state.key_at(at) else {
                continue;
            };
            if groups.span(range).is_empty() {
                continue;
            }
            let mut states = spec.empty_states();
            self.key(state, at, range, &mut states);
            out.insert(key.to_owned(), states);
        }
        out
    }

    /// The first `n` untouched keys in answer order of `metric` over `range`,
    /// by a scan of each key's buckets in range for that metric alone.
    fn scan_top<V>(
        &self,
        spec: &ViewSpec,
        state: &ViewState,
        metric: usize,
        n: usize,
        range: TimeRange,
        touched: &FxHashMap<String, V>,
    ) -> Vec<usize> {
        let agg = &spec.metrics[metric].agg;
        let mut ranked: Vec<(Option<f64>, usize)> = Vec::new();
        for (at, (key, groups)) in state.keys().enumerate() {
            let span: Range<usize> = groups.span(range);
            if span.is_empty() || touched.contains_key(key) {
                continue;
            }
            let mut value = MetricState::empty(agg);
            for bucket in span {
                value.merge(&groups.states(self.n, bucket)[metric]);
            }
            ranked.push((value.value(agg).as_f64(), at));
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
        ranked.into_iter().map(|(_, at)| at).collect()
    }
}
