//! The aggregation logic, written once and used unchanged by the batch, speed
//! and serving layers. It knows nothing of actors, disk or HTTP.
//!
//! Every metric is a commutative monoid: [`MetricState::empty`], `update` with
//! one event, `merge` of two states, and `value` to read it. Sums are kept
//! exact in integer micro-units, so merging in any order gives the same bits.

mod blocks;
mod index;
mod query;
mod sketch;
mod view;

pub use blocks::{BLOCK_SIZES, Blocks, BucketSource, KeyBuckets};
pub use index::{LiveTop, Reach, ViewIndex, band_of, merged_top};
pub use query::{
    Body, Bucket, Item, LiveSeries, Metrics, Partial, QueryKind, TimeRange, merge_states,
    rank_order, series_body,
};
pub use sketch::{
    DDSKETCH_MIN_VALUE, DISTINCT_EXACT_LIMIT, Distinct, HLL_LG_K, QUANTILE_EXACT_LIMIT, Quantiles,
    SKETCH_MERGE_WEIGHT, parameters as sketch_parameters, quantile_bin,
};
pub use view::{KeyGroups, ViewState};

use crate::event::{ParsedEvent, hash_text};
use std::sync::Arc;

/// For tests: one view, `v`, keyed by `k` in one-minute buckets, counting
/// events (`n`) and distinct values of `u` (`users`).
#[cfg(test)]
pub(crate) const COUNT_AND_USERS_CONFIG: &str = r#"
    data_dir = "d"
    [event]
    id = "id"
    time = "ts"
    [[view]]
    name = "v"
    key = ["k"]
    bucket = "1m"
    metrics = [{ name = "n", agg = "count" }, { name = "users", agg = "distinct", field = "u" }]
"#;
use serde::{Deserialize, Serialize};

/// An aggregation, as named in the config's `agg`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "agg", rename_all = "snake_case")]
pub enum Agg {
    /// Number of events.
    Count,
    /// Sum of a number field (exact to 6 decimal places).
    Sum,
    /// Smallest value of a number field.
    Min,
    /// Largest value of a number field.
    Max,
    /// Mean of a number field.
    Mean,
    /// Number of distinct values of a field (exact up to 512, then HyperLogLog).
    Distinct,
    /// The `q` quantile of a number field (1% relative error).
    Quantile {
        /// Which quantile, in [0, 1].
        q: f64,
    },
}

impl Agg {
    /// The config names of every aggregation.
    pub const NAMES: [&'static str; 7] =
        ["count", "sum", "min", "max", "mean", "distinct", "quantile"];

    /// The config name.
    pub fn name(&self) -> &'static str {
        match self {
            Agg::Count => "count",
            Agg::Sum => "sum",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Mean => "mean",
            Agg::Distinct => "distinct",
            Agg::Quantile { .. } => "quantile",
        }
    }

    /// Whether a value over some buckets never exceeds the value over a
    /// superset of them: count and max always, sum while no group's sum is
    /// negative (which its holder checks). Such a value over everything
    /// bounds the value over any range, and two layers' values combine
    /// monotonically, which a threshold walk of rankings needs.
    pub fn is_monotone(&self) -> bool {
        matches!(self, Agg::Count | Agg::Sum | Agg::Max)
    }

    /// Whether merging its states inserts values one by one while they are
    /// exact (distinct and quantile: see [`MetricState::merge_weight`]);
    /// other states merge at the cost of an addition.
    pub fn has_merge_weight(&self) -> bool {
        matches!(self, Agg::Distinct | Agg::Quantile { .. })
    }

    /// Whether the aggregation reads a field that must be a number.
    pub fn needs_number(&self) -> bool {
        matches!(
            self,
            Agg::Sum | Agg::Min | Agg::Max | Agg::Mean | Agg::Quantile { .. }
        )
    }
}

/// One metric of a view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricSpec {
    /// Name, unique in its view (shared by every answer that names it).
    pub name: Arc<str>,
    /// What it computes.
    #[serde(flatten)]
    pub agg: Agg,
    /// The event field it reads; `None` for count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Schema slot of `field`.
    #[serde(skip)]
    pub slot: Option<usize>,
}

impl MetricSpec {
    /// The input one event gives this metric.
    #[inline]
    pub fn input(&self, event: &ParsedEvent) -> Input {
        match (self.agg, self.slot) {
            (Agg::Count, _) | (_, None) => Input::Event,
            (Agg::Distinct, Some(slot)) => Input::Hash(hash_text(event.text(slot))),
            (_, Some(slot)) => Input::Number(event.number(slot)),
        }
    }
}

/// A view: key fields, bucket width, retention and metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewSpec {
    /// Name, unique in the config.
    pub name: String,
    /// Key fields; a composite key joins their texts with `|`.
    pub key: Vec<String>,
    /// Schema slots of `key`.
    #[serde(skip)]
    pub key_slots: Vec<usize>,
    /// Bucket width in milliseconds; buckets start at multiples of it since the Unix epoch.
    pub bucket_ms: i64,
    /// Buckets that ended longer ago than this (by the wall clock) are dropped.
    pub retention_ms: Option<i64>,
    /// The metrics, in config order.
    pub metrics: Vec<MetricSpec>,
    /// Their names, in the same order, shared by every answer's
    /// [`Metrics`](crate::aggregate::Metrics).
    #[serde(skip)]
    pub metric_names: Arc<[Arc<str>]>,
}

impl ViewSpec {
    /// The start of the bucket holding `event_ms`.
    #[inline]
    pub fn bucket_of(&self, event_ms: i64) -> i64 {
        event_ms.div_euclid(self.bucket_ms) * self.bucket_ms
    }

    /// The key text of `event` in this view: the key field's text, or for a
    /// composite key the texts joined with `|` (built in `scratch`).
    pub fn key_text<'a>(&self, event: &'a ParsedEvent, scratch: &'a mut String) -> &'a str {
        match self.key_slots.as_slice() {
            [slot] => event.text(*slot),
            slots => {
                scratch.clear();
                for (i, slot) in slots.iter().enumerate() {
                    if i > 0 {
                        scratch.push('|');
                    }
                    scratch.push_str(event.text(*slot));
                }
                scratch
            }
        }
    }

    /// The first bucket start kept under the view's retention at wall-clock
    /// time `now_ms`, if it has one: buckets starting earlier have ended longer
    /// ago than the retention.
    pub fn retention_cutoff(&self, now_ms: i64) -> Option<i64> {
        self.retention_ms
            .map(|retention| self.bucket_of(now_ms - retention))
    }

    /// The inputs `event` gives the view's metrics, in metric order, into `out`.
    pub fn inputs(&self, event: &ParsedEvent, out: &mut Vec<Input>) {
        out.clear();
        self.extend_inputs(event, out);
    }

    /// Appends the inputs `event` gives the view's metrics, in metric order, to `out`.
    pub fn extend_inputs(&self, event: &ParsedEvent, out: &mut Vec<Input>) {
        out.extend(self.metrics.iter().map(|metric| metric.input(event)));
    }

    /// Fresh states for one group, one per metric.
    pub fn empty_states(&self) -> Box<[MetricState]> {
        self.metrics
            .iter()
            .map(|metric| MetricState::empty(&metric.agg))
            .collect()
    }
}

/// What one event contributes to one metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input {
    /// The event itself (count).
    Event,
    /// A number field's value.
    Number(f64),
    /// The hash of a field's text (distinct).
    Hash(u64),
}

/// An exact decimal with 6 fractional digits, as an i128 count of millionths.
///
/// Stored as two halves so that [`MetricState`] keeps 8-byte alignment (an
/// i128 field would make every state 16 bytes larger).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Micros {
    lo: u64,
    hi: i64,
}

impl Micros {
    const SCALE: f64 = 1e6;

    /// The nearest number of millionths to `value` (saturating beyond ±1.7e32).
    pub fn from_f64(value: f64) -> Micros {
        Micros::from_i128((value * Self::SCALE).round() as i128)
    }

    /// From a count of millionths.
    pub fn from_i128(value: i128) -> Micros {
        Micros {
            lo: value as u64,
            hi: (value >> 64) as i64,
        }
    }

    /// The count of millionths.
    pub fn as_i128(self) -> i128 {
        (i128::from(self.hi) << 64) | i128::from(self.lo)
    }

    /// Adds, saturating at the i128 range.
    pub fn add(&mut self, other: Micros) {
        *self = Micros::from_i128(self.as_i128().saturating_add(other.as_i128()));
    }

    /// As a float, for reading.
    pub fn to_f64(self) -> f64 {
        self.as_i128() as f64 / Self::SCALE
    }
}

/// The mergeable state of one metric in one group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MetricState {
    /// Events counted.
    Count(u64),
    /// Exact sum.
    Sum(Micros),
    /// Smallest value; +infinity when empty.
    Min(f64),
    /// Largest value; -infinity when empty.
    Max(f64),
    /// Exact sum and count.
    Mean {
        /// Sum of the values.
        sum: Micros,
        /// Number of values.
        count: u64,
    },
    /// Distinct values.
    Distinct(Distinct),
    /// Value distribution.
    Quantile(Quantiles),
}

impl MetricState {
    /// The identity of `merge` for `agg`.
    pub fn empty(agg: &Agg) -> MetricState {
        match agg {
            Agg::Count => MetricState::Count(0),
            Agg::Sum => MetricState::Sum(Micros::default()),
            Agg::Min => MetricState::Min(f64::INFINITY),
            Agg::Max => MetricState::Max(f64::NEG_INFINITY),
            Agg::Mean => MetricState::Mean {
                sum: Micros::default(),
                count: 0,
            },
            Agg::Distinct => MetricState::Distinct(Distinct::default()),
            Agg::Quantile { .. } => MetricState::Quantile(Quantiles::default()),
        }
    }

    /// Adds one event's input.
    #[inline]
    pub fn update(&mut self, input: Input) {
        match (self, input) {
            (MetricState::Count(count), _) => *count += 1,
            (MetricState::Sum(sum), Input::Number(value)) => sum.add(Micros::from_f64(value)),
            (MetricState::Min(min), Input::Number(value)) => *min = min.min(value),
            (MetricState::Max(max), Input::Number(value)) => *max = max.max(value),
            (MetricState::Mean { sum, count }, Input::Number(value)) => {
                sum.add(Micros::from_f64(value));
                *count += 1;
            }
            (MetricState::Distinct(distinct), Input::Hash(hash)) => distinct.insert(hash),
            (MetricState::Quantile(quantiles), Input::Number(value)) => quantiles.insert(value),
            // A spec and its states are built together, so inputs always match.
            (state, input) => debug_assert!(false, "input {input:?} does not fit state {state:?}"),
        }
    }

    /// Adds everything `other` has seen. Both must be states of the same metric.
    pub fn merge(&mut self, other: &MetricState) {
        match (self, other) {
            (MetricState::Count(a), MetricState::Count(b)) => *a += b,
            (MetricState::Sum(a), MetricState::Sum(b)) => a.add(*b),
            (MetricState::Min(a), MetricState::Min(b)) => *a = a.min(*b),
            (MetricState::Max(a), MetricState::Max(b)) => *a = a.max(*b),
            (
                MetricState::Mean { sum, count },
                MetricState::Mean {
                    sum: other_sum,
                    count: other_count,
                },
            ) => {
                sum.add(*other_sum);
                *count += other_count;
            }
            (MetricState::Distinct(a), MetricState::Distinct(b)) => a.merge(b),
            (MetricState::Quantile(a), MetricState::Quantile(b)) => a.merge(b),
            (state, other) => debug_assert!(false, "cannot merge {other:?} into {state:?}"),
        }
    }

    /// What merging this state costs beyond a few instructions, in values
    /// inserted one by one into a sketch: the values of an exact distinct or
    /// quantile state; zero for the others.
    pub fn merge_weight(&self) -> usize {
        match self {
            MetricState::Distinct(distinct) => distinct.merge_weight(),
            MetricState::Quantile(quantiles) => quantiles.merge_weight(),
            _ => 0,
        }
    }

    /// About the bytes these states take, themselves and what they hold on
    /// the heap.
    pub fn bytes(states: &[MetricState]) -> usize {
        std::mem::size_of_val(states)
            + states
                .iter()
                .map(|state| match state {
                    MetricState::Distinct(distinct) => distinct.heap_bytes(),
                    MetricState::Quantile(quantiles) => quantiles.heap_bytes(),
                    _ => 0,
                })
                .sum::<usize>()
    }

    /// Reads the metric's value.
    pub fn value(&self, agg: &Agg) -> MetricValue {
        match self {
            MetricState::Count(count) => MetricValue::Int(*count),
            MetricState::Sum(sum) => MetricValue::Number(Some(sum.to_f64())),
            MetricState::Min(min) => MetricValue::Number(min.is_finite().then_some(*min)),
            MetricState::Max(max) => MetricValue::Number(max.is_finite().then_some(*max)),
            MetricState::Mean { sum, count } => MetricValue::Number(
                (*count > 0).then(|| (sum.as_i128() as f64 / 1e6) / *count as f64),
            ),
            MetricState::Distinct(distinct) => MetricValue::Int(distinct.count()),
            MetricState::Quantile(quantiles) => match agg {
                Agg::Quantile { q } => MetricValue::Number(quantiles.quantile(*q)),
                _ => MetricValue::Number(None),
            },
        }
    }
}

/// Adds one event's inputs to a group's states, metric by metric.
#[inline]
pub fn update_states(states: &mut [MetricState], inputs: &[Input]) {
    for (state, input) in states.iter_mut().zip(inputs) {
        state.update(*input);
    }
}

/// A metric's value as answered: counts are integers, the rest numbers or null.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MetricValue {
    /// count and distinct.
    Int(u64),
    /// sum, min, max, mean and quantile; `None` where undefined (no values).
    Number(Option<f64>),
}

impl MetricValue {
    /// As a float, for ordering (`None` sorts lowest).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            MetricValue::Int(n) => Some(*n as f64),
            MetricValue::Number(n) => *n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_are_exact_for_cents() {
        let mut sum = Micros::default();
        for _ in 0..10 {
            sum.add(Micros::from_f64(0.1));
        }
        assert_eq!(sum.as_i128(), 1_000_000);
        assert_eq!(Micros::from_f64(23.45).as_i128(), 23_450_000);
        assert_eq!(Micros::from_f64(-2.5).as_i128(), -2_500_000);
        assert_eq!(Micros::from_i128(-1).as_i128(), -1);
    }

    #[test]
    fn a_state_stays_small() {
        assert!(
            std::mem::size_of::<MetricState>() <= 32,
            "{}",
            std::mem::size_of::<MetricState>()
        );
    }

    #[test]
    fn empty_values_are_null_or_zero() {
        for (agg, expected) in [
            (Agg::Count, MetricValue::Int(0)),
            (Agg::Sum, MetricValue::Number(Some(0.0))),
            (Agg::Min, MetricValue::Number(None)),
            (Agg::Max, MetricValue::Number(None)),
            (Agg::Mean, MetricValue::Number(None)),
            (Agg::Distinct, MetricValue::Int(0)),
            (Agg::Quantile { q: 0.5 }, MetricValue::Number(None)),
        ] {
            assert_eq!(MetricState::empty(&agg).value(&agg), expected, "{agg:?}");
        }
    }
}
