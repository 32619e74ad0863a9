//! Benchmarks of the small paths: event parsing, record encoding, group commit
//! with fsync, metric updates per aggregation, merging distinct states, and
//! applying events to views.
//! Events come from the reference generator (seed 7).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;
use tandem::Config;
use tandem::aggregate::{Agg, Input, MetricState, ViewState};
use tandem::event::{Epoch, ParsedEvent, hash_text};
use tandem::store::{DataPaths, MasterLog, NewRecord};

#[path = "../tests/common/workload.rs"]
mod workload;

const EVENTS: usize = 10_000;

fn config() -> Config {
    Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tandem.toml"))
        .expect("shipped config")
}

fn events() -> Vec<Vec<u8>> {
    let jsonl = workload::generate(&["--events", &EVENTS.to_string(), "--seed", "7"]);
    workload::lines(&jsonl)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect()
}

fn parse(c: &mut Criterion) {
    let config = config();
    let events = events();
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("event", |b| {
        b.iter(|| {
            for raw in &events {
                black_box(config.schema.parse(black_box(raw), 0).expect("valid event"));
            }
        })
    });
    group.finish();
}

fn append(c: &mut Criterion) {
    let events = events();
    let batch: Vec<&[u8]> = events.iter().take(1_000).map(Vec::as_slice).collect();
    let bytes: usize = batch.iter().map(|raw| raw.len()).sum();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (mut log, _) = MasterLog::open(&DataPaths::new(dir.path()), 64 << 20).expect("open log");
    let records = || {
        batch.iter().map(|raw| NewRecord {
            epoch: Epoch(1),
            ingest_ms: 1,
            event_ms: 2,
            id_hash: 3,
            raw,
        })
    };
    // One measurement; MB/s follows from the bytes a batch writes (raw events plus 52 bytes of framing each).
    println!(
        "append: a batch of {} events writes {} bytes",
        batch.len(),
        bytes + 52 * batch.len()
    );
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("batch_1000_fsync", |b| {
        b.iter(|| log.append(records()).expect("append"))
    });
    group.finish();
}

fn metrics(c: &mut Criterion) {
    let mut group = c.benchmark_group("metric_update");
    group.throughput(Throughput::Elements(1));
    let hashes: Vec<u64> = (0..4096).map(|i| hash_text(&format!("u-{i:07}"))).collect();
    for agg in [
        Agg::Count,
        Agg::Sum,
        Agg::Min,
        Agg::Max,
        Agg::Mean,
        Agg::Quantile { q: 0.95 },
        Agg::Distinct,
    ] {
        let input = |i: usize| match agg {
            Agg::Count => Input::Event,
            Agg::Distinct => Input::Hash(hashes[i % hashes.len()]),
            _ => Input::Number((i % 9973) as f64 / 100.0 + 1.0),
        };
        // A group seeing few values (exact forms) and a hot group (sketches).
        for (label, size) in [("small", 8usize), ("large", 4096)] {
            group.bench_function(format!("{}/{label}", agg.name()), |b| {
                b.iter_batched_ref(
                    || {
                        let mut state = MetricState::empty(&agg);
                        for i in 0..size {
                            state.update(input(i));
                        }
                        state
                    },
                    |state| state.update(black_box(input(size + 1))),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

fn views(c: &mut Criterion) {
    let config = config();
    let parsed: Vec<ParsedEvent> = events()
        .iter()
        .map(|raw| config.schema.parse(raw, 0).expect("valid"))
        .collect();
    let mut group = c.benchmark_group("view_apply");
    group.throughput(Throughput::Elements(parsed.len() as u64));
    group.bench_function("three_views", |b| {
        b.iter_batched_ref(
            || vec![ViewState::new(); config.views.len()],
            |states| {
                for event in &parsed {
                    for (state, spec) in states.iter_mut().zip(&config.views) {
                        state.apply(spec, event);
                    }
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// Sixty distinct states of `per_state` values each, half of each state's
/// values also in the next.
fn states_of(per_state: u64) -> Vec<MetricState> {
    (0..60u64)
        .map(|bucket| {
            let mut state = MetricState::empty(&Agg::Distinct);
            for value in 0..per_state {
                let value = bucket * per_state / 2 + value;
                state.update(Input::Hash(hash_text(&format!("u-{value:07}"))));
            }
            state
        })
        .collect()
}

/// What a range query pays per bucket for a distinct metric: merging one
/// state into the answer, then reading the answer once. Sixty states: an
/// hour of one-minute buckets, each past its exact form, as coupon sets
/// (700 values each) and as register arrays (3,000 values each).
fn distinct_merge(c: &mut Criterion) {
    let mut group = c.benchmark_group("distinct_merge");
    group.throughput(Throughput::Elements(60));
    for (label, per_state) in [("coupons", 700u64), ("registers", 3_000)] {
        let states = states_of(per_state);
        group.bench_function(format!("60_states/{label}"), |b| {
            b.iter(|| {
                let mut merged = MetricState::empty(&Agg::Distinct);
                for state in &states {
                    merged.merge(black_box(state));
                }
                black_box(merged.value(&Agg::Distinct))
            })
        });
    }
    // A key over part of its buckets: its blocks (a register array of 3,000
    // values and a coupon set of 700, merged into registers), then sixty
    // buckets at the edges, exact sets of 40 values each, inserted into
    // those registers.
    let hashes = |from: u64, count: u64| {
        (from..from + count).map(|value| hash_text(&format!("u-{value:07}")))
    };
    let mut blocks = [
        MetricState::empty(&Agg::Distinct),
        MetricState::empty(&Agg::Distinct),
    ];
    for (block, (from, count)) in blocks.iter_mut().zip([(0, 3_000), (3_000, 700)]) {
        hashes(from, count).for_each(|hash| block.update(Input::Hash(hash)));
    }
    let edges: Vec<MetricState> = (0..60u64)
        .map(|bucket| {
            let mut state = MetricState::empty(&Agg::Distinct);
            hashes(4_000 + bucket * 40, 40).for_each(|hash| state.update(Input::Hash(hash)));
            state
        })
        .collect();
    group.bench_function("60_states/exact_into_registers", |b| {
        b.iter(|| {
            let mut merged = MetricState::empty(&Agg::Distinct);
            for state in blocks.iter().chain(&edges) {
                merged.merge(black_box(state));
            }
            black_box(merged.value(&Agg::Distinct))
        })
    });
    // The estimate of a register array merged from others, read once (a
    // top-N reads it for each key it answers): the estimator's sums over
    // its 16,384 registers, then DataSketches' composite estimate.
    let mut unread = MetricState::empty(&Agg::Distinct);
    for state in &states_of(3_000) {
        unread.merge(state);
    }
    group.throughput(Throughput::Elements(1));
    group.bench_function("registers_estimate", |b| {
        b.iter_batched_ref(
            || unread.clone(),
            |state| black_box(state.value(&Agg::Distinct)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, parse, append, metrics, views, distinct_merge);
criterion_main!(benches, floor_group);

fn floor(c: &mut Criterion) {
    let events = events();
    let mut group = c.benchmark_group("parse_floor");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("serde_json_ignored_any", |b| {
        b.iter(|| {
            for raw in &events {
                let text = std::str::from_utf8(raw).expect("utf8");
                black_box(serde_json::from_str::<serde::de::IgnoredAny>(text).expect("json"));
            }
        })
    });
    group.finish();
}
criterion_group!(floor_group, floor);
