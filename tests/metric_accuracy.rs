//! The error bounds the metrics promise, against exact answers computed here:
//! distinct is exact up to 512 values and within 2% beyond; quantiles are
//! exact up to 128 values and within 1% relative error beyond, up to a
//! million values.

use tandem::aggregate::{
    Agg, DISTINCT_EXACT_LIMIT, Input, MetricState, MetricValue, QUANTILE_EXACT_LIMIT,
};
use tandem::event::hash_text;

fn distinct_of(n: usize) -> u64 {
    let mut state = MetricState::empty(&Agg::Distinct);
    for i in 0..n {
        // Every value twice: duplicates must not count.
        for _ in 0..2 {
            state.update(Input::Hash(hash_text(&format!("u-{i:07}"))));
        }
    }
    match state.value(&Agg::Distinct) {
        MetricValue::Int(n) => n,
        other => panic!("distinct reads as an integer, got {other:?}"),
    }
}

#[test]
fn distinct_is_exact_while_small() {
    for n in [0, 1, 2, 17, 300, DISTINCT_EXACT_LIMIT] {
        assert_eq!(distinct_of(n), n as u64, "n = {n}");
    }
}

#[test]
fn distinct_is_within_two_percent_beyond() {
    for n in [DISTINCT_EXACT_LIMIT + 1, 2_000, 20_000, 200_000, 1_000_000] {
        let estimate = distinct_of(n) as f64;
        let error = (estimate - n as f64).abs() / n as f64;
        assert!(
            error <= 0.02,
            "n = {n}: estimate {estimate}, error {:.3}%",
            error * 100.0
        );
    }
}

/// Deterministic, skewed amounts (a log-normal-like spread over four decades).
fn amounts(n: usize) -> Vec<f64> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
            (10f64.powf(unit * 4.0) * 100.0).round() / 100.0
        })
        .collect()
}

fn check_quantiles(values: &[f64], tolerance: f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
        let agg = Agg::Quantile { q };
        let mut state = MetricState::empty(&agg);
        for value in values {
            state.update(Input::Number(*value));
        }
        let exact = sorted[(q * (sorted.len() - 1) as f64) as usize];
        let MetricValue::Number(Some(estimate)) = state.value(&agg) else {
            panic!("no quantile")
        };
        let error = (estimate - exact).abs() / exact.abs();
        assert!(
            error <= tolerance,
            "n = {}, q = {q}: exact {exact}, estimate {estimate}",
            values.len()
        );
    }
}

#[test]
fn quantiles_are_exact_while_small() {
    for n in [1, 2, 5, QUANTILE_EXACT_LIMIT] {
        check_quantiles(&amounts(n), 0.0);
    }
}

#[test]
fn quantiles_are_within_one_percent_beyond() {
    for n in [QUANTILE_EXACT_LIMIT + 1, 10_000, 1_000_000] {
        check_quantiles(&amounts(n), 0.01);
    }
}
