//! The metric monoid laws, for every aggregation: merge is associative and
//! commutative, the empty state is its identity, and the state of a whole
//! stream reads the same as the merge of the states of any split of it.
//! Streams are long enough to push distinct and quantile past their exact
//! forms into their sketches.

use datasketches::hll::{HllSketch, HllType, HllUnion};
use proptest::prelude::*;
use std::collections::BTreeMap;
use tandem::aggregate::{
    Agg, Distinct, Input, MetricState, MetricValue, QUANTILE_EXACT_LIMIT, Quantiles, quantile_bin,
};
use tandem::event::hash_text;

const AGGS: [Agg; 8] = [
    Agg::Count,
    Agg::Sum,
    Agg::Min,
    Agg::Max,
    Agg::Mean,
    Agg::Distinct,
    Agg::Quantile { q: 0.5 },
    Agg::Quantile { q: 0.95 },
];

/// What a user can observe of a state: its value, and for quantiles the whole distribution.
fn observe(state: &MetricState, agg: &Agg) -> Vec<MetricValue> {
    match agg {
        Agg::Quantile { .. } => [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0]
            .iter()
            .map(|q| state.value(&Agg::Quantile { q: *q }))
            .collect(),
        agg => vec![state.value(agg)],
    }
}

/// Reads a state's value as a query would.
fn state_read(state: &MetricState, agg: &Agg) {
    std::hint::black_box(state.value(agg));
}

fn input(agg: &Agg, value: u32) -> Input {
    match agg {
        Agg::Count => Input::Event,
        // Few enough distinct texts that streams repeat values.
        Agg::Distinct => Input::Hash(hash_text(&format!("u-{}", value % 3000))),
        // Amounts in cents, positive and negative, some zero.
        _ => Input::Number((i64::from(value % 2_000_001) - 1_000_000) as f64 / 100.0),
    }
}

fn build(agg: &Agg, values: &[u32]) -> MetricState {
    let mut state = MetricState::empty(agg);
    for value in values {
        state.update(input(agg, *value));
    }
    state
}

fn merged(_agg: &Agg, a: &MetricState, b: &MetricState) -> MetricState {
    let mut out = a.clone();
    out.merge(b);
    out
}

fn stream() -> impl Strategy<Value = Vec<u32>> {
    prop_oneof![
        proptest::collection::vec(any::<u32>(), 0..40),
        proptest::collection::vec(any::<u32>(), 100..1400),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn merge_is_commutative(a in stream(), b in stream()) {
        for agg in &AGGS {
            let (sa, sb) = (build(agg, &a), build(agg, &b));
            prop_assert_eq!(observe(&merged(agg, &sa, &sb), agg), observe(&merged(agg, &sb, &sa), agg), "{:?}", agg);
        }
    }

    #[test]
    fn merge_is_associative(a in stream(), b in stream(), c in stream()) {
        for agg in &AGGS {
            let (sa, sb, sc) = (build(agg, &a), build(agg, &b), build(agg, &c));
            let left = merged(agg, &merged(agg, &sa, &sb), &sc);
            let right = merged(agg, &sa, &merged(agg, &sb, &sc));
            prop_assert_eq!(observe(&left, agg), observe(&right, agg), "{:?}", agg);
        }
    }

    /// A state stored (as a snapshot stores it) and loaded reads the same,
    /// alone and merged with another: a restart changes no answer.
    #[test]
    fn a_stored_state_reads_and_merges_the_same(a in stream(), b in stream()) {
        for agg in &AGGS {
            let (sa, sb) = (build(agg, &a), build(agg, &b));
            let bytes = postcard::to_allocvec(&sa).expect("encode");
            let loaded: MetricState = postcard::from_bytes(&bytes).expect("decode");
            prop_assert_eq!(observe(&loaded, agg), observe(&sa, agg), "{:?}", agg);
            prop_assert_eq!(observe(&merged(agg, &loaded, &sb), agg), observe(&merged(agg, &sa, &sb), agg), "{:?}", agg);
        }
    }

    /// A state read between its updates and merges reads as one built
    /// whole: whatever a read keeps is dropped when the state changes.
    #[test]
    fn reads_between_changes_change_nothing(a in stream(), b in stream()) {
        for agg in &AGGS {
            let mut grown = build(agg, &a);
            for value in &b {
                state_read(&grown, agg);
                grown.update(input(agg, *value));
            }
            let whole: Vec<u32> = a.iter().chain(&b).copied().collect();
            prop_assert_eq!(observe(&grown, agg), observe(&build(agg, &whole), agg), "{:?} updated", agg);
            let mut merged_into = build(agg, &a);
            state_read(&merged_into, agg);
            merged_into.merge(&build(agg, &b));
            prop_assert_eq!(observe(&merged_into, agg), observe(&build(agg, &whole), agg), "{:?} merged", agg);
        }
    }

    /// A state merged into another between its own changes (as a query
    /// merges a live bucket into its answer, then the bucket takes more
    /// events) merges as one built whole: whatever a merge keeps of it is
    /// dropped when it changes. `big` makes the distinct state merged into
    /// a register array, which takes a coupon set's coupons.
    #[test]
    fn merges_between_changes_change_nothing(
        a in stream(),
        b in stream(),
        big in proptest::collection::vec(any::<u32>(), 2000..6000),
    ) {
        let bytes = |state: &MetricState| postcard::to_allocvec(state).expect("a state encodes");
        for agg in &AGGS {
            let into = build(agg, &big);
            let mut grown = build(agg, &a);
            for (at, chunk) in b.chunks(97).enumerate() {
                std::hint::black_box(merged(agg, &into, &grown));
                if at % 2 == 0 {
                    chunk.iter().for_each(|value| grown.update(input(agg, *value)));
                } else {
                    grown.merge(&build(agg, chunk));
                }
            }
            let whole: Vec<u32> = a.iter().chain(&b).copied().collect();
            prop_assert_eq!(
                bytes(&merged(agg, &into, &grown)),
                bytes(&merged(agg, &into, &build(agg, &whole))),
                "{:?}",
                agg
            );
        }
    }

    #[test]
    fn empty_is_the_identity(a in stream()) {
        for agg in &AGGS {
            let state = build(agg, &a);
            let empty = MetricState::empty(agg);
            prop_assert_eq!(observe(&merged(agg, &state, &empty), agg), observe(&state, agg), "{:?}", agg);
            prop_assert_eq!(observe(&merged(agg, &empty, &state), agg), observe(&state, agg), "{:?}", agg);
        }
    }

    #[test]
    fn a_whole_stream_equals_the_merge_of_any_split(values in stream(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(values.len() + 1)).collect();
        cuts.sort_unstable();
        for agg in &AGGS {
            let whole = build(agg, &values);
            let mut parts = MetricState::empty(agg);
            let mut start = 0;
            for end in cuts.iter().copied().chain([values.len()]) {
                parts.merge(&build(agg, &values[start..end]));
                start = end;
            }
            prop_assert_eq!(observe(&parts, agg), observe(&whole, agg), "{:?}", agg);
            if values.len() >= 1000 {
                // Long streams exercise the sketches, not only the exact forms.
                let sketched = match &whole {
                    MetricState::Distinct(distinct) => matches!(distinct, Distinct::Sketch(_)),
                    MetricState::Quantile(quantiles) => matches!(quantiles, Quantiles::Sketch(_)),
                    _ => true,
                };
                prop_assert!(sketched, "{:?} stayed exact over {} values", agg, values.len());
            }
        }
    }

    /// A batch run merges states built from parts of the log (the workers'
    /// shares, the cached states of earlier runs): what it stores must be the
    /// bytes of the state built in log order, or an incremental run and a
    /// full one would store different truths. Streams run up to 6,000 values
    /// so that distinct sketches pass from coupon sets to register arrays.
    #[test]
    fn a_stored_state_is_the_same_bytes_however_it_was_merged(
        values in prop_oneof![stream(), proptest::collection::vec(any::<u32>(), 2000..6000)],
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        backwards in any::<bool>(),
    ) {
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(values.len() + 1)).collect();
        cuts.sort_unstable();
        for agg in &AGGS {
            let whole = build(agg, &values);
            let mut parts: Vec<MetricState> = Vec::new();
            let mut start = 0;
            for end in cuts.iter().copied().chain([values.len()]) {
                parts.push(build(agg, &values[start..end]));
                start = end;
            }
            if backwards {
                parts.reverse();
            }
            let mut merged = MetricState::empty(agg);
            for part in &parts {
                merged.merge(part);
            }
            let bytes = |state: &MetricState| postcard::to_allocvec(state).expect("a state encodes");
            prop_assert_eq!(bytes(&merged), bytes(&whole), "{:?} over {} values cut at {:?}", agg, values.len(), cuts);
        }
    }
}

proptest! {
    /// A batch computed elsewhere (Spark, from `tandem export`'s columns)
    /// hands over each group's distinct and quantile state in parts: the
    /// value hashes or the values while few, beyond that the DDSketch bin
    /// of every value (`quantile_bin`, the export's `<field>__bin`) with
    /// the smallest and largest value. Those parts give the bytes inserting
    /// the values one by one gives, in any order. Values include negatives,
    /// zeros, values too small to bin and values at bin edges.
    #[test]
    fn states_from_hashes_values_and_bins_are_the_states_of_inserts(
        values in proptest::collection::vec(any::<u32>(), 0..1500),
        edges in proptest::collection::vec((-300i32..300, any::<bool>(), 0u8..3), 0..200),
    ) {
        let gamma_ln = (2.0f64 * 0.01 / 0.99).ln_1p();
        let numbers: Vec<f64> = values
            .iter()
            .map(|value| match input(&Agg::Sum, *value) {
                Input::Number(number) => number,
                _ => 0.0,
            })
            .chain(edges.iter().map(|(k, negative, nudge)| {
                let edge = (f64::from(*k) * gamma_ln).exp();
                let edge = match nudge {
                    0 => edge,
                    1 => edge.next_up(),
                    _ => edge.next_down(),
                };
                if *negative { -edge } else { edge }
            }))
            .chain([0.0, 1e-12, -1e-12])
            .collect();
        let bytes = |state: &MetricState| postcard::to_allocvec(state).expect("a state encodes");

        let mut inserted = MetricState::empty(&Agg::Quantile { q: 0.5 });
        for number in &numbers {
            inserted.update(Input::Number(*number));
        }
        let handed = if numbers.len() <= QUANTILE_EXACT_LIMIT {
            Quantiles::from_values(numbers.iter().rev().copied().collect())
        } else {
            let (mut positive, mut negative, mut zero) = (BTreeMap::new(), BTreeMap::new(), 0);
            for number in &numbers {
                match quantile_bin(*number) {
                    Some(bin) if *number > 0.0 => *positive.entry(bin).or_insert(0u64) += 1,
                    Some(bin) => *negative.entry(bin).or_insert(0u64) += 1,
                    None => zero += 1,
                }
            }
            let min = numbers.iter().copied().fold(f64::INFINITY, f64::min);
            let max = numbers.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let positive: Vec<(i32, u64)> = positive.into_iter().collect();
            let negative: Vec<(i32, u64)> = negative.into_iter().collect();
            Quantiles::from_bins(&positive, &negative, zero, (min, max)).expect("bins")
        };
        prop_assert_eq!(bytes(&MetricState::Quantile(handed)), bytes(&inserted));

        let distinct = build(&Agg::Distinct, &values);
        let hashes: Vec<u64> = values
            .iter()
            .rev()
            .map(|value| match input(&Agg::Distinct, *value) {
                Input::Hash(hash) => hash,
                _ => 0,
            })
            .collect();
        // Past the exact limit, the image DataSketches itself builds of the
        // same hashes, as another engine hands it over.
        let handed = match &distinct {
            MetricState::Distinct(Distinct::Sketch(_)) => {
                let mut sketch = HllSketch::new(14, HllType::Hll8).expect("lgK 14");
                for hash in &hashes {
                    sketch.update(*hash);
                }
                Distinct::from_datasketches_image(&sketch.serialize()).expect("an image reads")
            }
            _ => Distinct::from_hashes(hashes),
        };
        prop_assert_eq!(bytes(&MetricState::Distinct(handed)), bytes(&distinct));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Merging distinct sketches is DataSketches' own union, register for
    /// register: a state merged from parts (coupon sets and register arrays,
    /// some parts read between merges, some small enough to be exact)
    /// estimates what DataSketches' `HllUnion` of the same values estimates,
    /// and stores the same bytes as the state of all the values at once.
    #[test]
    fn merged_distinct_states_estimate_as_the_datasketches_union(
        parts in proptest::collection::vec((0u64..5_000, 0u64..40_000, any::<bool>()), 2..8),
    ) {
        let hash = |value: u64| hash_text(&format!("u-{value:07}"));
        let mut merged = MetricState::empty(&Agg::Distinct);
        let mut union = HllUnion::new(14).expect("lgK 14");
        let mut all = MetricState::empty(&Agg::Distinct);
        let mut seen = 0u64;
        for (len, from, read) in &parts {
            let mut part = MetricState::empty(&Agg::Distinct);
            let mut sketch = HllSketch::new(14, HllType::Hll8).expect("lgK 14");
            for value in *from..from + len {
                part.update(Input::Hash(hash(value)));
                all.update(Input::Hash(hash(value)));
                sketch.update(hash(value));
            }
            merged.merge(&part);
            union.update(&sketch);
            seen += len;
            if *read {
                state_read(&merged, &Agg::Distinct);
            }
        }
        let distinct = |state: &MetricState| match state.value(&Agg::Distinct) {
            MetricValue::Int(count) => count,
            other => panic!("a distinct state reads {other:?}"),
        };
        if matches!(&merged, MetricState::Distinct(Distinct::Sketch(_))) {
            prop_assert_eq!(distinct(&merged), union.composite_estimate().round() as u64, "{} values in {} parts", seen, parts.len());
        }
        let bytes = |state: &MetricState| postcard::to_allocvec(state).expect("a state encodes");
        prop_assert_eq!(bytes(&merged), bytes(&all));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A distinct state merged from a register array raises its registers
    /// itself for each value inserted afterwards (by the value's DataSketches
    /// coupon): it stores the bytes, and reads the estimate, of the state
    /// that was sent every value one by one.
    #[test]
    fn values_inserted_into_merged_registers_raise_the_registers_datasketches_would(
        array in 2_000u64..4_000,
        set in 600u64..1_500,
        later in proptest::collection::vec(any::<u64>(), 1..3_000),
        reads in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let hash = |value: u64| hash_text(&format!("u-{value}"));
        let build = |values: &mut dyn Iterator<Item = u64>| {
            let mut state = MetricState::empty(&Agg::Distinct);
            values.for_each(|value| state.update(Input::Hash(hash(value))));
            state
        };
        let mut merged = build(&mut (0..array));
        merged.merge(&build(&mut (array..array + set)));
        let reads: Vec<usize> = reads.iter().map(|read| read.index(later.len())).collect();
        for (at, value) in later.iter().enumerate() {
            merged.update(Input::Hash(hash(*value)));
            if reads.contains(&at) {
                state_read(&merged, &Agg::Distinct);
            }
        }
        let all = build(&mut (0..array + set).chain(later.iter().copied()));
        let bytes = |state: &MetricState| postcard::to_allocvec(state).expect("a state encodes");
        prop_assert_eq!(bytes(&merged), bytes(&all));
        prop_assert_eq!(merged.value(&Agg::Distinct), all.value(&Agg::Distinct));
    }
}

#[test]
fn update_equals_merge_with_a_singleton() {
    for agg in &AGGS {
        let values: Vec<u32> = (0..700).map(|i| i * 7919).collect();
        let mut by_update = MetricState::empty(agg);
        let mut by_merge = MetricState::empty(agg);
        for value in &values {
            by_update.update(input(agg, *value));
            by_merge.merge(&build(agg, &[*value]));
        }
        assert_eq!(observe(&by_update, agg), observe(&by_merge, agg), "{agg:?}");
    }
}

#[test]
fn sums_are_exact_in_cents() {
    let values: Vec<f64> = (0..100_000)
        .map(|i| f64::from(i % 9973) / 100.0 + 0.01)
        .collect();
    let mut state = MetricState::empty(&Agg::Sum);
    for value in &values {
        state.update(Input::Number(*value));
    }
    let cents: i64 = (0..100_000).map(|i| i64::from(i % 9973) + 1).sum();
    assert_eq!(
        state.value(&Agg::Sum),
        MetricValue::Number(Some(cents as f64 / 100.0))
    );
}
