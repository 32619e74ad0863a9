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
use super::{Agg, MetricState, TimeRange, ViewSpec, ViewState};
use rustc_hash::FxHashMap;

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
    /// Per metric, whether a key's value over some of its buckets never
    /// exceeds its value over all of them.
    monotone: Vec<bool>,
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
        let mut monotone: Vec<bool> = spec
            .metrics
            .iter()
            .map(|metric| matches!(metric.agg, Agg::Count | Agg::Sum | Agg::Max))
            .collect();
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
                for (monotone, state) in monotone.iter_mut().zip(states) {
                    if let MetricState::Sum(sum) = state {
                        *monotone &= sum.as_i128() >= 0;
                    }
                }
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
            monotone,
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
        if let Some((_, groups)) = state.key_at(key) {
            groups.merge_in(range, &self.rollups[key * self.n..(key + 1) * self.n], into);
        }
    }

    /// Whether a top-N by `metric` over `range` scans every key (see the module
    /// documentation), rather than walking the ranking.
    pub fn top_scans(&self, metric: usize, range: TimeRange) -> bool {
        !self.covers(range) && !self.monotone.get(metric).copied().unwrap_or(false)
    }

    /// The first `n` keys in answer order of `metric` over `range` that
    /// `skip` does not name, with their values there.
    pub fn head(
        &self,
        spec: &ViewSpec,
        state: &ViewState,
        metric: usize,
        n: usize,
        range: TimeRange,
        skip: &dyn Fn(&str) -> bool,
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
            self.scan_top(spec, state, metric, n, range, skip)
        } else {
            self.bounded_top(spec, state, metric, n, range, skip)
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
        metric: usize,
        n: usize,
        range: TimeRange,
        skip: &dyn Fn(&str) -> bool,
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
            let rollup = &self.rollups[at * self.n + metric];
            groups.merge_metric_in(range, self.n, metric, rollup, into)
        })
    }
}

/// What a top-N merge needs of the layer whose keys are live (the speed
/// layer's epochs after the batch's), over the query's range.
pub trait LiveTop {
    /// Calls `visit` with every key the layer holds in range and its state of
    /// metric `metric` there.
    fn each(&self, metric: usize, visit: &mut dyn FnMut(&str, &MetricState));
    /// Whether the layer holds `key` in range.
    fn holds(&self, key: &str) -> bool;
    /// Merges the key's states in range into `into`.
    fn key(&self, key: &str, into: &mut [MetricState]);
}

/// The `n` best keys so far, in answer order; a key is copied only when it enters.
struct Best {
    n: usize,
    items: Vec<(Option<f64>, String)>,
}

impl Best {
    fn offer(&mut self, value: Option<f64>, key: &str) {
        let place = self.items.partition_point(|(other, other_key)| {
            rank_order((*other, other_key), (value, key)).is_lt()
        });
        if place < self.n {
            self.items.insert(place, (value, key.to_owned()));
            self.items.truncate(self.n);
        }
    }
}

/// The merged top-N by `metric` over `range` of a batch state (with its
/// index) and a live layer, as the keys and their merged states.
///
/// A key the live layer does not hold in range has its batch value as its
/// merged value, so the answer lies among the batch's first `n` such keys
/// and the keys the live layer holds: O(n + live keys) merges of the ranking
/// metric, then the full states of the `n` keys kept.
pub fn merged_top(
    spec: &ViewSpec,
    batch: Option<(&ViewIndex, &ViewState)>,
    metric: usize,
    n: usize,
    range: TimeRange,
    live: &dyn LiveTop,
) -> FxHashMap<String, Box<[MetricState]>> {
    let agg = &spec.metrics[metric].agg;
    let mut best = Best {
        n,
        items: Vec::with_capacity(n + 1),
    };
    live.each(metric, &mut |key, live_state| {
        let mut state = MetricState::empty(agg);
        if let Some((index, batch)) = batch
            && let Some(at) = batch.key_index(key)
        {
            index.metric_in(batch, at, metric, range, &mut state);
        }
        state.merge(live_state);
        best.offer(state.value(agg).as_f64(), key);
    });
    if let Some((index, state)) = batch {
        for (value, at) in index.head(spec, state, metric, n, range, &|key| live.holds(key)) {
            if let Some((key, _)) = state.key_at(at) {
                best.offer(value, key);
            }
        }
    }
    best.items
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
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Partial, QueryKind};
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

    /// Another state as the live layer of a top-N merge.
    struct Other<'a> {
        state: &'a ViewState,
        n: usize,
        range: TimeRange,
    }

    impl LiveTop for Other<'_> {
        fn each(&self, metric: usize, visit: &mut dyn FnMut(&str, &MetricState)) {
            for (key, groups) in self.state.keys() {
                let span = groups.span(self.range);
                if let Some(first) = span.clone().next() {
                    let mut state = groups.states(self.n, first)[metric].clone();
                    for at in span.skip(1) {
                        state.merge(&groups.states(self.n, at)[metric]);
                    }
                    visit(key, &state);
                }
            }
        }

        fn holds(&self, key: &str) -> bool {
            self.state
                .key(key)
                .is_some_and(|groups| !groups.span(self.range).is_empty())
        }

        fn key(&self, key: &str, into: &mut [MetricState]) {
            if let Some(groups) = self.state.key(key) {
                groups.merge_span(groups.span(self.range), into);
            }
        }
    }

    /// (key, minute, value, user); `speed` says which state it goes to.
    type Event = (u8, i64, i32, u8, bool);

    fn events() -> impl Strategy<Value = Vec<Event>> {
        proptest::collection::vec(
            (0..12u8, 0..40i64, -20..400i32, 0..9u8, any::<bool>()),
            0..80,
        )
    }

    fn bound() -> impl Strategy<Value = Option<i64>> {
        // Bucket edges and points inside buckets, before, within and after the data.
        prop_oneof![
            Just(None),
            (-2..43i64, 0..3i64).prop_map(|(m, part)| Some(m * 60_000 + part * 20_000))
        ]
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every indexed answer equals the scan's, over ranges aligned to
        /// buckets or not, and a top-N's batch part merged with another
        /// layer's equals the scan of both.
        #[test]
        fn indexed_answers_equal_the_scan(
            events in events(),
            from in bound(),
            to in bound(),
            negative in any::<bool>(),
            n in 1..6usize,
        ) {
            let config = Config::parse(CONFIG, "test.toml").expect("config");
            let spec = &config.views[0];
            let batch = build(&config, &events, false, negative);
            let speed = build(&config, &events, true, negative);
            let index = ViewIndex::build(spec, &batch);
            let range = TimeRange { from, to };

            let scan = |kind: &QueryKind| batch.partial(spec, kind, range).finish(spec, kind);
            let mut totals = spec.empty_states();
            index.totals(range, &mut totals);
            prop_assert_eq!(Partial::States(totals).finish(spec, &QueryKind::Totals), scan(&QueryKind::Totals));

            let series = Partial::PerBucket(index.series(range).map(|(start, states)| (start, states.into())).collect());
            prop_assert_eq!(series.finish(spec, &QueryKind::Series(None)), scan(&QueryKind::Series(None)));

            for key in ["k0", "k3", "k11", "nope"] {
                let kind = QueryKind::Key(key.to_owned());
                let mut states = spec.empty_states();
                if let Some(at) = batch.key_index(key) {
                    index.key(&batch, at, range, &mut states);
                }
                prop_assert_eq!(Partial::States(states).finish(spec, &kind), scan(&kind), "key {}", key);
            }

            for metric in 0..spec.metrics.len() {
                let kind = QueryKind::Top { metric, n };
                let live = Other { state: &speed, n: spec.metrics.len(), range };
                let merged = Partial::PerKey(merged_top(spec, Some((&index, &batch)), metric, n, range, &live));
                let mut expected = batch.partial(spec, &kind, range);
                expected.merge(&speed.partial(spec, &kind, range));
                prop_assert_eq!(
                    merged.finish(spec, &kind),
                    expected.finish(spec, &kind),
                    "top {} by {}", n, spec.metrics[metric].name
                );
            }
        }
    }
}
