//! Queries over a view, written once for every layer: each layer turns its
//! states into a [`Partial`] for the query, partials merge (the monoid again),
//! and the merged partial is finished into the answer.

use super::{MetricState, MetricValue, ViewSpec, ViewState};
use rustc_hash::FxHashMap;
use serde::Serialize;
use serde::ser::SerializeMap;
use std::collections::BTreeMap;
use std::iter::Peekable;
use std::sync::Arc;

/// Buckets counted: those whose start lies in `[from, to)`; either end may be open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    /// Inclusive lower bound on a bucket's start, epoch milliseconds.
    pub from: Option<i64>,
    /// Exclusive upper bound on a bucket's start, epoch milliseconds.
    pub to: Option<i64>,
}

impl TimeRange {
    /// Every bucket.
    pub const ALL: TimeRange = TimeRange {
        from: None,
        to: None,
    };

    /// Whether the bucket starting at `bucket` counts.
    pub fn contains(&self, bucket: i64) -> bool {
        self.from.is_none_or(|from| bucket >= from) && self.to.is_none_or(|to| bucket < to)
    }

    /// Where the bucket starts in `range` lie in `sorted` (ascending): the
    /// positions `span` such that `sorted[span]` are exactly those in range.
    pub fn span(&self, sorted: &[i64]) -> std::ops::Range<usize> {
        let lo = self
            .from
            .map_or(0, |from| sorted.partition_point(|start| *start < from));
        let hi = self.to.map_or(sorted.len(), |to| {
            sorted.partition_point(|start| *start < to)
        });
        lo..hi.max(lo)
    }

    /// The narrower of this range and "from `from` on".
    pub fn at_least(self, from: Option<i64>) -> TimeRange {
        match (self.from, from) {
            (Some(mine), Some(other)) => TimeRange {
                from: Some(mine.max(other)),
                ..self
            },
            (None, Some(other)) => TimeRange {
                from: Some(other),
                ..self
            },
            (_, None) => self,
        }
    }
}

/// What a query asks of one view.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryKind {
    /// One key's metrics over the range.
    Key(String),
    /// All keys' metrics together over the range.
    Totals,
    /// The `n` keys with the highest value of metric `metric` (an index into the view's metrics).
    Top {
        /// Index of the ranking metric.
        metric: usize,
        /// How many keys.
        n: usize,
    },
    /// Per-bucket metrics of one key, or of all keys together.
    Series(Option<String>),
}

/// One layer's contribution to a query; partials of the same query merge.
#[derive(Debug, Clone)]
pub enum Partial {
    /// For `Key` and `Totals`: one state per metric.
    States(Box<[MetricState]>),
    /// For `Top`: states per key.
    PerKey(FxHashMap<String, Box<[MetricState]>>),
    /// For `Series`: states per bucket start.
    PerBucket(BTreeMap<i64, Box<[MetricState]>>),
}

/// Merges `other` into `target`, state by state.
pub fn merge_states(target: &mut [MetricState], other: &[MetricState]) {
    for (state, theirs) in target.iter_mut().zip(other) {
        state.merge(theirs);
    }
}

impl Partial {
    /// The empty partial of a query (what a layer with no data answers).
    pub fn empty(spec: &ViewSpec, kind: &QueryKind) -> Partial {
        match kind {
            QueryKind::Key(_) | QueryKind::Totals => Partial::States(spec.empty_states()),
            QueryKind::Top { .. } => Partial::PerKey(FxHashMap::default()),
            QueryKind::Series(_) => Partial::PerBucket(BTreeMap::new()),
        }
    }

    /// Adds another layer's partial of the same query.
    pub fn merge(&mut self, other: &Partial) {
        match (self, other) {
            (Partial::States(mine), Partial::States(theirs)) => merge_states(mine, theirs),
            (Partial::PerKey(mine), Partial::PerKey(theirs)) => {
                for (key, states) in theirs {
                    match mine.get_mut(key) {
                        Some(existing) => merge_states(existing, states),
                        None => {
                            mine.insert(key.clone(), states.clone());
                        }
                    }
                }
            }
            (Partial::PerBucket(mine), Partial::PerBucket(theirs)) => {
                for (bucket, states) in theirs {
                    match mine.get_mut(bucket) {
                        Some(existing) => merge_states(existing, states),
                        None => {
                            mine.insert(*bucket, states.clone());
                        }
                    }
                }
            }
            (mine, theirs) => debug_assert!(
                false,
                "partials of different queries: {mine:?} and {theirs:?}"
            ),
        }
    }

    /// The answer to the query.
    pub fn finish(self, spec: &ViewSpec, kind: &QueryKind) -> Body {
        match (self, kind) {
            (Partial::States(states), _) => Body::Metrics(Metrics::read(spec, &states)),
            (Partial::PerKey(per_key), QueryKind::Top { metric, n }) => {
                let agg = &spec.metrics[*metric].agg;
                let mut ranked: Vec<(String, Option<f64>, Box<[MetricState]>)> = per_key
                    .into_iter()
                    .map(|(key, states)| {
                        let rank = states[*metric].value(agg).as_f64();
                        (key, rank, states)
                    })
                    .collect();
                // Highest first, undefined values last, ties by key.
                ranked.sort_by(|a, b| rank_order((a.1, &a.0), (b.1, &b.0)));
                ranked.truncate(*n);
                Body::Top(
                    ranked
                        .into_iter()
                        .map(|(key, _, states)| Item {
                            key,
                            metrics: Metrics::read(spec, &states),
                        })
                        .collect(),
                )
            }
            (Partial::PerBucket(per_bucket), _) => {
                series_body(spec, std::iter::empty(), per_bucket.into())
            }
            (Partial::PerKey(_), _) => Body::Top(Vec::new()),
        }
    }
}

/// A live layer's buckets of a series, gathered while its states can be
/// read in place (under the lock that guards them): a bucket no other layer
/// holds is read where it lies, and only a bucket the stored layer also holds,
/// or that several live epochs hold, is copied, to be merged.
#[derive(Debug, Default)]
pub struct LiveSeries {
    /// Buckets already read, ascending.
    read: Vec<Bucket>,
    /// Buckets to merge with the stored layer's, by start.
    held: BTreeMap<i64, Box<[MetricState]>>,
}

impl LiveSeries {
    /// Gathers `live` (ascending within each epoch; a bucket may come once
    /// per epoch that holds it): `stored` tells whether the stored layer
    /// holds a bucket start.
    pub fn gather<'a>(
        spec: &ViewSpec,
        stored: impl Fn(i64) -> bool,
        live: impl Iterator<Item = (i64, &'a [MetricState])>,
    ) -> LiveSeries {
        let mut buckets: Vec<(i64, &[MetricState])> = live.collect();
        // Stable, and linear on runs already in order (one per epoch).
        buckets.sort_by_key(|(start, _)| *start);
        let mut series = LiveSeries::default();
        for same in buckets.chunk_by(|a, b| a.0 == b.0) {
            let (start, states) = same[0];
            if same.len() == 1 && !stored(start) {
                series.read.push(Bucket::read(spec, start, states));
            } else {
                let mut merged: Box<[MetricState]> = states.into();
                for (_, more) in &same[1..] {
                    merge_states(&mut merged, more);
                }
                series.held.insert(start, merged);
            }
        }
        series
    }
}

impl From<BTreeMap<i64, Box<[MetricState]>>> for LiveSeries {
    /// A live layer's states per bucket, all to be merged (or read) later.
    fn from(held: BTreeMap<i64, Box<[MetricState]>>) -> LiveSeries {
        LiveSeries {
            read: Vec::new(),
            held,
        }
    }
}

/// A live layer's buckets to merge, in order.
type Held = Peekable<std::collections::btree_map::IntoIter<i64, Box<[MetricState]>>>;

/// The series answer of one layer's buckets read in place (`stored`,
/// ascending, borrowed: an index's leaves, a key's groups) and the live
/// layer's (`live`): a bucket that one layer alone holds is read where it
/// lies, and only the buckets both hold are merged, so a series of the batch
/// layer copies no state.
pub fn series_body<'a>(
    spec: &ViewSpec,
    stored: impl Iterator<Item = (i64, &'a [MetricState])>,
    live: LiveSeries,
) -> Body {
    let mut held = live.held.into_iter().peekable();
    let mut done = live.read.into_iter().peekable();
    let mut buckets = Vec::with_capacity(stored.size_hint().0 + held.len() + done.len());
    // The live buckets starting before `until` (every one for `None`), in order.
    let mut live_before = |until: Option<i64>, held: &mut Held, buckets: &mut Vec<Bucket>| {
        let before = |at: i64| until.is_none_or(|until| at < until);
        loop {
            let held_at = held.peek().map(|(at, _)| *at).filter(|at| before(*at));
            let done_at = done
                .peek()
                .map(|bucket| bucket.start)
                .filter(|at| before(*at));
            // A start is held or read, never both.
            match (held_at, done_at) {
                (None, None) => break,
                (Some(first), done_at) if done_at.is_none_or(|other| first < other) => {
                    if let Some((at, states)) = held.next() {
                        buckets.push(Bucket::read(spec, at, &states));
                    }
                }
                _ => buckets.extend(done.next()),
            }
        }
    };
    for (start, states) in stored {
        live_before(Some(start), &mut held, &mut buckets);
        match held.next_if(|(at, _)| *at == start) {
            // Merged into the live copy, which is owned: the monoid commutes.
            Some((_, mut theirs)) => {
                merge_states(&mut theirs, states);
                buckets.push(Bucket::read(spec, start, &theirs));
            }
            None => buckets.push(Bucket::read(spec, start, states)),
        }
    }
    live_before(None, &mut held, &mut buckets);
    Body::Series(buckets)
}

/// The order of a top-N answer: highest value first, undefined values last,
/// ties by key.
pub fn rank_order(a: (Option<f64>, &str), b: (Option<f64>, &str)) -> std::cmp::Ordering {
    let by_value = match (a.0, b.0) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    };
    by_value.then_with(|| a.1.cmp(b.1))
}

impl ViewState {
    /// This state's partial of a query, counting buckets in `range`.
    pub fn partial(&self, spec: &ViewSpec, kind: &QueryKind, range: TimeRange) -> Partial {
        let n = spec.metrics.len();
        let mut partial = Partial::empty(spec, kind);
        match (kind, &mut partial) {
            (QueryKind::Key(key), Partial::States(states)) => {
                if let Some(groups) = self.key(key) {
                    for (_, bucket_states) in
                        groups.iter(n).filter(|(bucket, _)| range.contains(*bucket))
                    {
                        merge_states(states, bucket_states);
                    }
                }
            }
            (QueryKind::Totals, Partial::States(states)) => {
                for (_, groups) in self.keys() {
                    for (_, bucket_states) in
                        groups.iter(n).filter(|(bucket, _)| range.contains(*bucket))
                    {
                        merge_states(states, bucket_states);
                    }
                }
            }
            (QueryKind::Top { .. }, Partial::PerKey(per_key)) => {
                for (key, groups) in self.keys() {
                    let mut states: Option<Box<[MetricState]>> = None;
                    for (_, bucket_states) in
                        groups.iter(n).filter(|(bucket, _)| range.contains(*bucket))
                    {
                        merge_states(
                            states.get_or_insert_with(|| spec.empty_states()),
                            bucket_states,
                        );
                    }
                    if let Some(states) = states {
                        per_key.insert(key.to_owned(), states);
                    }
                }
            }
            (QueryKind::Series(key), Partial::PerBucket(per_bucket)) => {
                let mut add = |groups: &super::KeyGroups| {
                    for (bucket, bucket_states) in
                        groups.iter(n).filter(|(bucket, _)| range.contains(*bucket))
                    {
                        merge_states(
                            per_bucket
                                .entry(bucket)
                                .or_insert_with(|| spec.empty_states()),
                            bucket_states,
                        );
                    }
                };
                match key {
                    Some(key) => self.key(key).into_iter().for_each(&mut add),
                    None => self.keys().for_each(|(_, groups)| add(groups)),
                }
            }
            _ => unreachable!("Partial::empty gives the partial of the query's kind"),
        }
        partial
    }
}

/// Metric values by name, in the view's metric order.
///
/// The names are the view's, shared (see [`ViewSpec::metric_names`]): a
/// series holds a bucket's values only, not a copy of every name per bucket.
#[derive(Clone, PartialEq)]
pub struct Metrics {
    names: Arc<[Arc<str>]>,
    values: Box<[MetricValue]>,
}

impl Metrics {
    fn read(spec: &ViewSpec, states: &[MetricState]) -> Metrics {
        Metrics {
            names: Arc::clone(&spec.metric_names),
            values: spec
                .metrics
                .iter()
                .zip(states)
                .map(|(metric, state)| state.value(&metric.agg))
                .collect(),
        }
    }

    /// The value of the metric named `name`.
    pub fn get(&self, name: &str) -> Option<MetricValue> {
        self.iter()
            .find(|(metric, _)| *metric == name)
            .map(|(_, value)| value)
    }

    /// Each metric's name and value, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, MetricValue)> + '_ {
        self.names
            .iter()
            .zip(self.values.iter())
            .map(|(name, value)| (&**name, *value))
    }

    /// The number of metrics.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Each name with its value, as a map.
impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Metrics from (name, value) pairs, in the order given.
impl<N: Into<Arc<str>>> FromIterator<(N, MetricValue)> for Metrics {
    fn from_iter<I: IntoIterator<Item = (N, MetricValue)>>(pairs: I) -> Metrics {
        let (names, values): (Vec<Arc<str>>, Vec<MetricValue>) = pairs
            .into_iter()
            .map(|(name, value)| (name.into(), value))
            .unzip();
        Metrics {
            names: names.into(),
            values: values.into(),
        }
    }
}

impl Serialize for Metrics {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (name, value) in self.iter() {
            map.serialize_entry(name, &value)?;
        }
        map.end()
    }
}

/// One key of a top-N answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    /// The key.
    pub key: String,
    /// Its metrics.
    pub metrics: Metrics,
}

/// One bucket of a series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    /// Bucket start, epoch milliseconds.
    pub start: i64,
    /// Its metrics.
    pub metrics: Metrics,
}

impl Bucket {
    /// The bucket starting at `start` with `states`.
    fn read(spec: &ViewSpec, start: i64, states: &[MetricState]) -> Bucket {
        Bucket {
            start,
            metrics: Metrics::read(spec, states),
        }
    }
}

/// A finished answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Key and totals queries.
    Metrics(Metrics),
    /// Top-N: highest first, ties by key.
    Top(Vec<Item>),
    /// Series: ascending bucket start, empty buckets left out.
    Series(Vec<Bucket>),
}
