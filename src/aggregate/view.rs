//! `ViewState`: the metric states of one view, per (key, bucket) group.
//!
//! Keys are interned once; each key holds its buckets in ascending order with
//! their states stored flat (`n_metrics` states per bucket, no box per group),
//! so a group costs its states and a bucket start, and a key's series is
//! already sorted. Both layers build the same structure; merging two states of
//! one view is the monoid `merge`, group by group.

use super::{Input, MetricState, TimeRange, ViewSpec, update_states};
use crate::event::ParsedEvent;
use indexmap::IndexMap;
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};

/// The groups of one key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeyGroups {
    /// Bucket starts, ascending and unique.
    buckets: Vec<i64>,
    /// `buckets.len() * n_metrics` states: bucket `i` owns `states[i * n..(i + 1) * n]`.
    states: Vec<MetricState>,
}

impl KeyGroups {
    /// The states of the bucket starting at `bucket`, created empty if new.
    fn entry(&mut self, spec: &ViewSpec, bucket: i64) -> &mut [MetricState] {
        let n = spec.metrics.len();
        // Events mostly arrive in time order: try the newest bucket first.
        let at = match self.buckets.last() {
            Some(last) if *last == bucket => self.buckets.len() - 1,
            Some(last) if *last < bucket => self.buckets.len(),
            _ => self.buckets.partition_point(|start| *start < bucket),
        };
        if self.buckets.get(at) != Some(&bucket) {
            grow_gently(&mut self.buckets, 1);
            grow_gently(&mut self.states, n);
            self.buckets.insert(at, bucket);
            let empty = spec
                .metrics
                .iter()
                .map(|metric| MetricState::empty(&metric.agg));
            self.states.splice(at * n..at * n, empty);
        }
        &mut self.states[at * n..(at + 1) * n]
    }

    /// Adds one event's inputs (one per metric, see [`ViewSpec::inputs`]) to
    /// the bucket starting at `bucket`; answers whether the bucket is new.
    pub fn apply(&mut self, spec: &ViewSpec, bucket: i64, inputs: &[Input]) -> bool {
        let before = self.buckets.len();
        update_states(self.entry(spec, bucket), inputs);
        self.buckets.len() > before
    }

    /// Drops every bucket starting before `bucket_start`; answers how many.
    pub fn retain_from(&mut self, n_metrics: usize, bucket_start: i64) -> usize {
        let cut = self.buckets.partition_point(|start| *start < bucket_start);
        if cut > 0 {
            self.buckets.drain(..cut);
            self.states.drain(..cut * n_metrics);
        }
        cut
    }

    /// Bucket starts, ascending.
    pub fn buckets(&self) -> &[i64] {
        &self.buckets
    }

    /// Where the buckets in `range` lie: `buckets()[span]` are exactly those.
    pub fn span(&self, range: TimeRange) -> std::ops::Range<usize> {
        range.span(&self.buckets)
    }

    /// The states of the bucket at position `at` (an index into `buckets()`).
    pub fn states(&self, n_metrics: usize, at: usize) -> &[MetricState] {
        &self.states[at * n_metrics..(at + 1) * n_metrics]
    }

    /// Merges the states of the buckets at positions `span` into `into`.
    pub fn merge_span(&self, span: std::ops::Range<usize>, into: &mut [MetricState]) {
        let n = into.len();
        for states in self.states[span.start * n..span.end * n].chunks_exact(n.max(1)) {
            for (state, theirs) in into.iter_mut().zip(states) {
                state.merge(theirs);
            }
        }
    }

    /// Merges the states over `range` into `into`, reading `rollup` (these
    /// groups' states over every bucket) when the range holds every bucket;
    /// answers whether any bucket lies in range.
    pub fn merge_in(
        &self,
        range: TimeRange,
        rollup: &[MetricState],
        into: &mut [MetricState],
    ) -> bool {
        let span = self.span(range);
        let any = !span.is_empty();
        if span == (0..self.len()) {
            for (state, theirs) in into.iter_mut().zip(rollup) {
                state.merge(theirs);
            }
        } else {
            self.merge_span(span, into);
        }
        any
    }

    /// [`KeyGroups::merge_in`] for metric `metric` alone (`rollup` is its
    /// state over every bucket).
    pub fn merge_metric_in(
        &self,
        range: TimeRange,
        n_metrics: usize,
        metric: usize,
        rollup: &MetricState,
        into: &mut MetricState,
    ) -> bool {
        let span = self.span(range);
        let any = !span.is_empty();
        if span == (0..self.len()) {
            into.merge(rollup);
        } else {
            for at in span {
                into.merge(&self.states(n_metrics, at)[metric]);
            }
        }
        any
    }

    /// Every (bucket start, states) in ascending bucket order.
    pub fn iter(&self, n_metrics: usize) -> impl Iterator<Item = (i64, &[MetricState])> {
        self.buckets
            .iter()
            .copied()
            .zip(self.states.chunks_exact(n_metrics.max(1)))
    }

    /// Number of buckets.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether the key has no bucket.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Reserves room for `unit` more elements, growing by a quarter (at least two
/// units) instead of doubling: most keys have a few dozen buckets, and doubling
/// would leave a third of their memory unused on average.
fn grow_gently<T>(vec: &mut Vec<T>, unit: usize) {
    if vec.len() + unit > vec.capacity() {
        vec.reserve_exact((2 * unit).max(vec.len() / 4));
    }
}

fn sorted_by_key<S: serde::Serializer>(
    keys: &IndexMap<Box<str>, KeyGroups, FxBuildHasher>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut sorted: Vec<(&Box<str>, &KeyGroups)> = keys.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    serializer.collect_map(sorted)
}

/// All groups of one view.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ViewState {
    /// Per key text, its groups, in the order keys were first seen (a key
    /// whose buckets all expire is removed). Stored sorted by key, so that a
    /// state's bytes depend on its groups alone, not on the order they came.
    #[serde(serialize_with = "sorted_by_key")]
    keys: IndexMap<Box<str>, KeyGroups, FxBuildHasher>,
    /// Number of (key, bucket) groups.
    groups: usize,
    /// Scratch buffer for composite keys, reused across events.
    #[serde(skip)]
    scratch: String,
    /// Scratch buffer for an event's inputs, reused across events.
    #[serde(skip)]
    inputs: Vec<Input>,
}

impl ViewState {
    /// An empty state.
    pub fn new() -> ViewState {
        ViewState::default()
    }

    /// Applies one event to its group.
    pub fn apply(&mut self, spec: &ViewSpec, event: &ParsedEvent) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut inputs = std::mem::take(&mut self.inputs);
        spec.inputs(event, &mut inputs);
        let key = spec.key_text(event, &mut scratch);
        self.apply_inputs(spec, key, spec.bucket_of(event.event_ms), &inputs);
        self.scratch = scratch;
        self.inputs = inputs;
    }

    /// Applies what one event contributes: its key text, its bucket and its
    /// inputs ([`ViewSpec::inputs`]).
    pub fn apply_inputs(&mut self, spec: &ViewSpec, key: &str, bucket: i64, inputs: &[Input]) {
        let index = self.intern(key);
        if self.keys[index].apply(spec, bucket, inputs) {
            self.groups += 1;
        }
    }

    /// Merges `states` (one per metric) into the group of `key` and
    /// `bucket`; answers whether the group is new.
    pub fn merge_group(
        &mut self,
        spec: &ViewSpec,
        key: &str,
        bucket: i64,
        states: &[MetricState],
    ) -> bool {
        let index = self.intern(key);
        let groups = &mut self.keys[index];
        let before = groups.buckets.len();
        for (mine, theirs) in groups.entry(spec, bucket).iter_mut().zip(states) {
            mine.merge(theirs);
        }
        let new = groups.buckets.len() > before;
        self.groups += usize::from(new);
        new
    }

    /// Merges every group of `other` (a state of the same view) into this one.
    pub fn merge(&mut self, spec: &ViewSpec, other: &ViewState) {
        for (key, theirs) in &other.keys {
            let index = self.intern(key);
            self.merge_key(spec, index, theirs);
        }
    }

    /// Merges `other` (a state of the same view) into this one, moving the
    /// keys this one lacks instead of merging their groups: states over
    /// disjoint keys (a batch run's shares) are put together by moves alone.
    pub fn merge_owned(&mut self, spec: &ViewSpec, other: ViewState) {
        if self.keys.is_empty() {
            self.keys = other.keys;
            self.groups = other.groups;
            return;
        }
        self.keys.reserve(other.keys.len());
        for (key, theirs) in other.keys {
            match self.keys.get_index_of(&*key) {
                Some(index) => self.merge_key(spec, index, &theirs),
                None => {
                    self.groups += theirs.len();
                    self.keys.insert(key, theirs);
                }
            }
        }
    }

    /// Merges `theirs`, the groups of the key at `index`, into that key's groups.
    fn merge_key(&mut self, spec: &ViewSpec, index: usize, theirs: &KeyGroups) {
        let n = spec.metrics.len();
        let mine = &mut self.keys[index];
        let before = mine.len();
        for (bucket, states) in theirs.iter(n) {
            for (state, other) in mine.entry(spec, bucket).iter_mut().zip(states) {
                state.merge(other);
            }
        }
        self.groups += mine.len() - before;
    }

    /// Drops every group whose bucket starts before `bucket_start`.
    pub fn retain_from(&mut self, spec: &ViewSpec, bucket_start: i64) {
        let n = spec.metrics.len();
        let mut emptied = false;
        for groups in self.keys.values_mut() {
            let cut = groups.retain_from(n, bucket_start);
            self.groups -= cut;
            emptied |= cut > 0 && groups.is_empty();
        }
        // A key whose buckets all expired is gone too: keys come and go (a
        // session id, a product taken off sale), and must not pile up.
        if emptied {
            self.keys.retain(|_, groups| !groups.is_empty());
        }
    }

    /// Number of (key, bucket) groups.
    pub fn len(&self) -> usize {
        self.groups
    }

    /// Whether no event has been applied.
    pub fn is_empty(&self) -> bool {
        self.groups == 0
    }

    /// Number of distinct keys seen.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The position of `key` among `keys()`, if it has been seen.
    pub fn key_index(&self, key: &str) -> Option<usize> {
        self.keys.get_index_of(key)
    }

    /// The key at position `index` among `keys()`.
    pub fn key_at(&self, index: usize) -> Option<(&str, &KeyGroups)> {
        self.keys
            .get_index(index)
            .map(|(key, groups)| (&**key, groups))
    }

    /// The groups of one key, if it has been seen.
    pub fn key(&self, key: &str) -> Option<&KeyGroups> {
        self.keys.get(key)
    }

    /// Every key and its groups, in the order keys were first seen.
    pub fn keys(&self) -> impl Iterator<Item = (&str, &KeyGroups)> {
        self.keys.iter().map(|(key, groups)| (&**key, groups))
    }

    /// The states of one group.
    pub fn group(&self, spec: &ViewSpec, key: &str, bucket: i64) -> Option<&[MetricState]> {
        let groups = self.keys.get(key)?;
        let at = groups.buckets.binary_search(&bucket).ok()?;
        let n = spec.metrics.len();
        Some(&groups.states[at * n..(at + 1) * n])
    }

    /// Whether this state is one of `spec`'s, as every writer leaves it: per
    /// key, buckets ascending and unique, one state per metric per bucket,
    /// each of its metric's kind, and the group count right. A state read
    /// from a file whose checksum holds fails this only if a bug wrote it.
    ///
    /// # Errors
    /// What is wrong, naming the key.
    pub fn check(&self, spec: &ViewSpec) -> Result<(), String> {
        let n = spec.metrics.len();
        let kinds: Vec<_> = spec
            .metrics
            .iter()
            .map(|metric| std::mem::discriminant(&MetricState::empty(&metric.agg)))
            .collect();
        let mut groups = 0;
        for (key, key_groups) in &self.keys {
            if !key_groups.buckets.windows(2).all(|pair| pair[0] < pair[1]) {
                return Err(format!("key {key:?}: buckets out of order"));
            }
            if key_groups.states.len() != key_groups.buckets.len() * n {
                return Err(format!(
                    "key {key:?}: {} states for {} buckets of {n} metrics",
                    key_groups.states.len(),
                    key_groups.buckets.len()
                ));
            }
            for (at, state) in key_groups.states.iter().enumerate() {
                if std::mem::discriminant(state) != kinds[at % n] {
                    return Err(format!(
                        "key {key:?}: metric {} holds a state of another aggregation",
                        spec.metrics[at % n].name
                    ));
                }
            }
            groups += key_groups.buckets.len();
        }
        if groups != self.groups {
            return Err(format!("{groups} groups, {} counted", self.groups));
        }
        Ok(())
    }

    fn intern(&mut self, key: &str) -> usize {
        match self.keys.get_index_of(key) {
            Some(index) => index,
            None => self.keys.insert_full(key.into(), KeyGroups::default()).0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CONFIG: &str = r#"
        data_dir = "d"
        [event]
        id = "id"
        time = "ts"
        [[view]]
        name = "by_pair"
        key = ["product", "country"]
        bucket = "1m"
        metrics = [{ name = "n", agg = "count" }, { name = "revenue", agg = "sum", field = "amount" }]
    "#;

    fn event(
        config: &Config,
        id: u32,
        product: &str,
        country: &str,
        ts_ms: i64,
        amount: f64,
    ) -> ParsedEvent {
        let raw = format!(
            r#"{{"id":{id},"product":"{product}","country":"{country}","ts":{ts_ms},"amount":{amount}}}"#
        );
        config.schema.parse(raw.as_bytes(), 0).expect("valid event")
    }

    fn read(state: &ViewState, spec: &ViewSpec, key: &str, bucket: i64) -> Option<(u64, f64)> {
        let states = state.group(spec, key, bucket)?;
        let count = match states[0].value(&spec.metrics[0].agg) {
            super::super::MetricValue::Int(n) => n,
            other => panic!("count is an integer: {other:?}"),
        };
        let sum = states[1].value(&spec.metrics[1].agg).as_f64()?;
        Some((count, sum))
    }

    #[test]
    fn composite_keys_late_events_and_merge() {
        let config = Config::parse(CONFIG, "test.toml").expect("config");
        let spec = &config.views[0];
        let events = [
            event(&config, 1, "p1", "DE", 120_000, 1.5),
            event(&config, 2, "p1", "DE", 130_000, 2.25),
            event(&config, 3, "p1", "FR", 130_000, 4.0),
            event(&config, 4, "p2", "DE", 300_000, 8.0),
            // Late: arrives last, belongs to the first minute.
            event(&config, 5, "p1", "DE", 5_000, 16.0),
        ];
        let mut whole = ViewState::new();
        for event in &events {
            whole.apply(spec, event);
        }
        assert_eq!(whole.len(), 4);
        assert_eq!(whole.key_count(), 3);
        assert_eq!(read(&whole, spec, "p1|DE", 120_000), Some((2, 3.75)));
        assert_eq!(read(&whole, spec, "p1|DE", 0), Some((1, 16.0)));
        assert_eq!(read(&whole, spec, "p1|FR", 120_000), Some((1, 4.0)));
        assert_eq!(read(&whole, spec, "p2|DE", 300_000), Some((1, 8.0)));
        let buckets: Vec<i64> = whole
            .key("p1|DE")
            .expect("key")
            .iter(2)
            .map(|(bucket, _)| bucket)
            .collect();
        assert_eq!(buckets, [0, 120_000], "a key's buckets are in order");

        let (mut left, mut right) = (ViewState::new(), ViewState::new());
        for (i, event) in events.iter().enumerate() {
            if i % 2 == 0 {
                left.apply(spec, event)
            } else {
                right.apply(spec, event)
            }
        }
        left.merge(spec, &right);
        assert_eq!(left.len(), whole.len());
        for (key, groups) in whole.keys() {
            for (bucket, _) in groups.iter(2) {
                assert_eq!(
                    read(&left, spec, key, bucket),
                    read(&whole, spec, key, bucket),
                    "{key} {bucket}"
                );
            }
        }

        let keys = whole.key_count();
        whole.retain_from(spec, 120_000);
        assert_eq!(whole.len(), 3);
        assert_eq!(read(&whole, spec, "p1|DE", 0), None);
        assert_eq!(whole.key_count(), keys, "every key still has a bucket");
        // p1's buckets all end before 300_000: its keys go, p2's stays.
        whole.retain_from(spec, 300_000);
        assert_eq!((whole.len(), whole.key_count()), (1, 1));
        assert_eq!(read(&whole, spec, "p2|DE", 300_000), Some((1, 8.0)));
        // Past every bucket: no group and no key is left.
        whole.retain_from(spec, i64::MAX);
        assert_eq!((whole.len(), whole.key_count()), (0, 0));
        assert!(whole.keys().next().is_none());
    }
}
