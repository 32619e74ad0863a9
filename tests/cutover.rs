//! The exact cutover, as a property of the actor API: for random interleavings
//! of ingest through several feeds (sources with their own epochs, whose
//! barriers can be held back so that one feed is in epoch e while another is
//! already in e + 1), redeliveries of any earlier id through any feed,
//! malformed messages, epoch barriers, batch runs and queries, every query
//! (key, totals, top, series) after every step equals an oracle that counts
//! each id once and drops the malformed.
//!
//! Queries run over fixed and random ranges, aligned to buckets or not, and
//! top-N ranks by every metric, so every indexed path (the batch snapshot's
//! segment tree, roll-ups and rankings, the speed layer's roll-ups and
//! totals) is checked, and while a batch run swaps its snapshot in, queries
//! race it and must still be exact.
//!
//! The oracle is written here, naively, over plain maps. Groups stay small, so
//! distinct and quantile are exact and compared exactly.

mod common;

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tandem::aggregate::{Body, MetricValue, TimeRange};
use tandem::{Layer, Options, Query, Question};

const CONFIG: &str = r#"
data_dir = "unused"
[event]
id = "id"
time = "ts"
[[view]]
name = "by_product"
key = ["product"]
bucket = "1m"
metrics = [
  { name = "orders", agg = "count" },
  { name = "revenue", agg = "sum", field = "amount" },
  { name = "buyers", agg = "distinct", field = "user" },
  { name = "median", agg = "quantile", field = "amount", q = 0.5 },
  { name = "largest", agg = "max", field = "amount" },
  { name = "smallest", agg = "min", field = "amount" },
  { name = "average", agg = "mean", field = "amount" },
]
[[view]]
name = "by_pair"
key = ["country", "product"]
bucket = "5m"
metrics = [
  { name = "orders", agg = "count" },
  { name = "revenue", agg = "sum", field = "amount" },
]
"#;

const PRODUCTS: [&str; 4] = ["p0", "p1", "p2", "p3"];
const COUNTRIES: [&str; 2] = ["DE", "FR"];

/// One generated order.
#[derive(Debug, Clone)]
struct Order {
    id: u32,
    product: usize,
    country: usize,
    user: u32,
    cents: i64,
    /// Minutes after the start of the stream (0..20: late events are simply early ones).
    minute: i64,
}

impl Order {
    fn json(&self) -> String {
        format!(
            r#"{{"id":"o-{}","ts":{},"product":"{}","country":"{}","user":"u-{}","amount":{}.{:02}}}"#,
            self.id,
            1_795_500_000_000 + self.minute * 60_000 + i64::from(self.id % 60) * 1000,
            PRODUCTS[self.product],
            COUNTRIES[self.country],
            self.user,
            self.cents / 100,
            self.cents % 100
        )
    }

    fn ts(&self) -> i64 {
        1_795_500_000_000 + self.minute * 60_000 + i64::from(self.id % 60) * 1000
    }
}

/// Feeds of the system under test.
const FEEDS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// A new order through a feed.
    Ingest(usize, Order),
    /// An earlier order again (same id) through a feed.
    Duplicate(usize, usize),
    Malformed(usize, u8),
    /// A feed keeps its epoch open: its barriers wait.
    Hold(usize),
    /// A feed passes the barriers it held back.
    Release(usize),
    StartEpoch,
    Recompute,
}

fn order() -> impl Strategy<Value = Order> {
    (0..4usize, 0..2usize, 0..6u32, 1..50_000i64, 0..20i64).prop_map(
        |(product, country, user, cents, minute)| Order {
            id: 0,
            product,
            country,
            user,
            cents,
            minute,
        },
    )
}

fn ops(with_bad: bool) -> impl Strategy<Value = Vec<Op>> {
    let feed = || 0..FEEDS;
    let op = prop_oneof![
        6 => (feed(), order()).prop_map(|(feed, order)| Op::Ingest(feed, order)),
        2 => Just(Op::StartEpoch),
        1 => Just(Op::Recompute),
        2 => feed().prop_map(Op::Hold),
        2 => feed().prop_map(Op::Release),
        (if with_bad { 3 } else { 0 }) => (feed(), any::<usize>()).prop_map(|(feed, which)| Op::Duplicate(feed, which)),
        (if with_bad { 1 } else { 0 }) => (feed(), any::<u8>()).prop_map(|(feed, kind)| Op::Malformed(feed, kind)),
    ];
    proptest::collection::vec(op, 1..48)
}

/// The oracle: every accepted order, each id once.
#[derive(Default, Clone)]
struct Oracle {
    orders: Vec<Order>,
}

impl Oracle {
    fn key_of(&self, view: &str, order: &Order) -> String {
        match view {
            "by_product" => PRODUCTS[order.product].to_owned(),
            _ => format!("{}|{}", COUNTRIES[order.country], PRODUCTS[order.product]),
        }
    }

    fn bucket_ms(view: &str) -> i64 {
        if view == "by_product" {
            60_000
        } else {
            300_000
        }
    }

    /// Metrics of a set of orders, as the view names them.
    fn metrics(view: &str, orders: &[&Order]) -> BTreeMap<String, MetricValue> {
        let mut out = BTreeMap::new();
        out.insert("orders".to_owned(), MetricValue::Int(orders.len() as u64));
        let cents: i64 = orders.iter().map(|order| order.cents).sum();
        out.insert(
            "revenue".to_owned(),
            MetricValue::Number(Some(cents as f64 / 100.0)),
        );
        if view == "by_product" {
            let users: BTreeSet<u32> = orders.iter().map(|order| order.user).collect();
            out.insert("buyers".to_owned(), MetricValue::Int(users.len() as u64));
            let mut amounts: Vec<i64> = orders.iter().map(|order| order.cents).collect();
            amounts.sort_unstable();
            let median = amounts
                .get(((amounts.len().max(1) - 1) as f64 * 0.5) as usize)
                .map(|cents| *cents as f64 / 100.0);
            out.insert("median".to_owned(), MetricValue::Number(median));
            out.insert(
                "largest".to_owned(),
                MetricValue::Number(amounts.last().map(|cents| *cents as f64 / 100.0)),
            );
            out.insert(
                "smallest".to_owned(),
                MetricValue::Number(amounts.first().map(|cents| *cents as f64 / 100.0)),
            );
            let mean = (!amounts.is_empty()).then(|| (cents as f64 / 100.0) / amounts.len() as f64);
            out.insert("average".to_owned(), MetricValue::Number(mean));
        }
        out
    }

    fn answer(&self, view: &str, question: &Question, range: TimeRange) -> Body {
        let width = Self::bucket_ms(view);
        let all: Vec<&Order> = self
            .orders
            .iter()
            .filter(|order| {
                let start = order.ts().div_euclid(width) * width;
                range.from.is_none_or(|from| start >= from) && range.to.is_none_or(|to| start < to)
            })
            .collect();
        let of_key = |key: &str| {
            all.iter()
                .copied()
                .filter(|order| self.key_of(view, order) == key)
                .collect::<Vec<_>>()
        };
        let to_metrics = |metrics: BTreeMap<String, MetricValue>| {
            metrics.into_iter().collect::<tandem::aggregate::Metrics>()
        };
        match question {
            Question::Key(key) => Body::Metrics(to_metrics(Self::metrics(view, &of_key(key)))),
            Question::Totals => Body::Metrics(to_metrics(Self::metrics(view, &all))),
            Question::Top { metric, n } => {
                let keys: BTreeSet<String> =
                    all.iter().map(|order| self.key_of(view, order)).collect();
                let mut items: Vec<(String, BTreeMap<String, MetricValue>)> = keys
                    .into_iter()
                    .map(|key| (key.clone(), Self::metrics(view, &of_key(&key))))
                    .collect();
                items.sort_by(|a, b| {
                    let (x, y) = (a.1[metric].as_f64(), b.1[metric].as_f64());
                    y.partial_cmp(&x)
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then_with(|| a.0.cmp(&b.0))
                });
                items.truncate(*n);
                Body::Top(
                    items
                        .into_iter()
                        .map(|(key, metrics)| tandem::aggregate::Item {
                            key,
                            metrics: to_metrics(metrics),
                        })
                        .collect(),
                )
            }
            Question::Series(key) => {
                let orders = match key {
                    Some(key) => of_key(key),
                    None => all.clone(),
                };
                let mut buckets: BTreeMap<i64, Vec<&Order>> = BTreeMap::new();
                for order in orders {
                    buckets
                        .entry(order.ts().div_euclid(width) * width)
                        .or_default()
                        .push(order);
                }
                Body::Series(
                    buckets
                        .into_iter()
                        .map(|(start, orders)| tandem::aggregate::Bucket {
                            start,
                            metrics: to_metrics(Self::metrics(view, &orders)),
                        })
                        .collect(),
                )
            }
        }
    }
}

/// Sorts an answer's metrics by name, so answers compare independently of metric order.
fn normalise(body: Body) -> Body {
    let sort = |metrics: tandem::aggregate::Metrics| {
        let mut pairs: Vec<(&str, MetricValue)> = metrics.iter().collect();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        pairs.into_iter().collect::<tandem::aggregate::Metrics>()
    };
    match body {
        Body::Metrics(metrics) => Body::Metrics(sort(metrics)),
        Body::Top(items) => Body::Top(
            items
                .into_iter()
                .map(|item| tandem::aggregate::Item {
                    key: item.key,
                    metrics: sort(item.metrics),
                })
                .collect(),
        ),
        Body::Series(buckets) => Body::Series(
            buckets
                .into_iter()
                .map(|bucket| tandem::aggregate::Bucket {
                    start: bucket.start,
                    metrics: sort(bucket.metrics),
                })
                .collect(),
        ),
    }
}

/// Minute `m` of the stream, as a time-range bound.
fn minute(m: i64) -> Option<i64> {
    Some(1_795_500_000_000 + m * 60_000)
}

/// The fixed ranges, and `extra` (random per case: bucket edges or not).
fn ranges(extra: &[TimeRange]) -> Vec<TimeRange> {
    let mut ranges = vec![
        TimeRange::ALL,
        TimeRange {
            from: minute(5),
            to: minute(12),
        },
        TimeRange {
            from: None,
            to: minute(3),
        },
    ];
    ranges.extend_from_slice(extra);
    ranges
}

/// A range of whole minutes or not, either end open, within the stream or past it.
fn range() -> impl Strategy<Value = TimeRange> {
    let bound = proptest::option::of((-1..22i64, 0..4i64));
    (bound.clone(), bound).prop_map(|(from, to)| {
        let at = |(m, quarter): (i64, i64)| 1_795_500_000_000 + m * 60_000 + quarter * 15_000;
        let (from, to) = (from.map(at), to.map(at));
        match (from, to) {
            (Some(from), Some(to)) if from >= to => TimeRange {
                from: Some(to),
                to: Some(from + 1),
            },
            _ => TimeRange { from, to },
        }
    })
}

fn questions() -> Vec<(&'static str, Question)> {
    let mut out = vec![
        ("by_product", Question::Totals),
        ("by_product", Question::Series(None)),
        ("by_product", Question::Series(Some("p1".into()))),
        ("by_pair", Question::Totals),
        (
            "by_pair",
            Question::Top {
                metric: "orders".into(),
                n: 2,
            },
        ),
        ("by_pair", Question::Key("DE|p0".into())),
    ];
    out.extend(
        PRODUCTS
            .iter()
            .map(|product| ("by_product", Question::Key((*product).to_owned()))),
    );
    for (metric, n) in [
        ("orders", 2),
        ("revenue", 3),
        ("buyers", 2),
        ("median", 1),
        ("largest", 3),
        ("smallest", 2),
        ("average", 1),
    ] {
        out.push((
            "by_product",
            Question::Top {
                metric: metric.into(),
                n,
            },
        ));
    }
    out
}

async fn check_all(
    handle: &tandem::Handle,
    oracle: &Oracle,
    extra: &[TimeRange],
    context: &str,
) -> Result<(), TestCaseError> {
    let fail =
        |err: tandem::actors::serving::QueryError| TestCaseError::fail(format!("{context}: {err}"));
    check_merged(handle, oracle, extra, context).await?;
    for range in ranges(extra) {
        // The two layers' parts add up to the merged answer. They are two
        // queries: a batch run finishing in between moves events from one part
        // to the other, so only parts read against the same snapshot are added.
        let count = |body: Body| match body {
            Body::Metrics(metrics) => metrics
                .get("orders")
                .and_then(|value| value.as_f64())
                .unwrap_or(-1.0),
            other => panic!("totals answer metrics, not {other:?}"),
        };
        let expected = count(oracle.answer("by_product", &Question::Totals, range));
        let mut compared = false;
        for _ in 0..10 {
            let ask = |layer| Query {
                view: "by_product".into(),
                question: Question::Totals,
                range,
                layer,
            };
            let batch = handle.query(ask(Layer::Batch)).await.map_err(fail)?;
            let speed = handle.query(ask(Layer::Speed)).await.map_err(fail)?;
            if batch.as_of.batch_epoch == speed.as_of.batch_epoch {
                prop_assert_eq!(
                    count(batch.body) + count(speed.body),
                    expected,
                    "{}: batch + speed over {:?}",
                    context,
                    range
                );
                compared = true;
                break;
            }
        }
        prop_assert!(
            compared,
            "{}: a new snapshot between every pair of queries",
            context
        );
    }
    Ok(())
}

/// Every question over every range, merged, equals the oracle.
async fn check_merged(
    handle: &tandem::Handle,
    oracle: &Oracle,
    extra: &[TimeRange],
    context: &str,
) -> Result<(), TestCaseError> {
    for range in ranges(extra) {
        for (view, question) in questions() {
            let query = Query {
                view: view.into(),
                question: question.clone(),
                range,
                layer: Layer::Merged,
            };
            let answer = handle
                .query(query)
                .await
                .map_err(|err| TestCaseError::fail(format!("{context}: {err}")))?;
            prop_assert_eq!(
                normalise(answer.body),
                normalise(oracle.answer(view, &question, range)),
                "{}: {} {:?} {:?}",
                context,
                view,
                question,
                range
            );
        }
    }
    Ok(())
}

fn run(ops: Vec<Op>, extra: Vec<TimeRange>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|err| TestCaseError::fail(err.to_string()))?;
    let config = common::config(CONFIG, dir.path());
    let fail = |err: String| TestCaseError::fail(err);
    actix::System::new().block_on(async move {
        let options = Options { epoch_timer: false, feeds: FEEDS };
        let handle = Arc::new(tandem::start(config, options).await.map_err(|err| fail(err.to_string()))?);
        let feed = |index: usize| handle.feed(index).ok_or_else(|| fail(format!("no feed {index}")));
        let mut holds: Vec<Vec<tandem::actors::source::EpochHold>> = (0..FEEDS).map(|_| Vec::new()).collect();
        let mut oracle = Oracle::default();
        let mut sent: Vec<String> = Vec::new();
        let mut next_id = 0;
        for (step, op) in ops.into_iter().enumerate() {
            let context = format!("step {step} ({op:?})");
            match op {
                Op::Ingest(index, mut order) => {
                    order.id = next_id;
                    next_id += 1;
                    let json = order.json();
                    let outcome = feed(index)?.push(vec![json.clone().into_bytes()]).await.map_err(|err| fail(err.to_string()))?;
                    prop_assert_eq!(outcome.accepted, 1);
                    oracle.orders.push(order);
                    sent.push(json);
                }
                Op::Duplicate(index, which) if !sent.is_empty() => {
                    // Half of them repeat one of the last few orders, which
                    // may sit in another feed's later epoch.
                    let at = if which % 2 == 0 {
                        sent.len() - 1 - (which / 2) % sent.len().min(3)
                    } else {
                        which % sent.len()
                    };
                    let json = sent[at].clone();
                    let outcome = feed(index)?.push(vec![json.into_bytes()]).await.map_err(|err| fail(err.to_string()))?;
                    prop_assert_eq!(outcome.accepted, 1, "a redelivery is durable again");
                }
                Op::Duplicate(..) => {}
                Op::Malformed(index, kind) => {
                    let bad = match kind % 4 {
                        0 => r#"{"id":"x","ts":1,"product":"p0","country":"DE","user":"u"}"#.to_owned(),
                        1 => r#"{"id":"x","ts":"yesterday","product":"p0","country":"DE","user":"u","amount":1}"#.to_owned(),
                        2 => "[1,2,3]".to_owned(),
                        _ => r#"{"id":"x","ts":1,"product":"#.to_owned(),
                    };
                    let outcome = feed(index)?.push(vec![bad.into_bytes()]).await.map_err(|err| fail(err.to_string()))?;
                    prop_assert_eq!(outcome.rejected.len(), 1, "{:?}", outcome);
                }
                Op::Hold(index) => holds[index].push(feed(index)?.hold_epoch()),
                Op::Release(index) => {
                    holds[index].pop();
                }
                Op::StartEpoch => {
                    handle.start_epoch(tandem::actors::RunMode::Incremental).await.map_err(|err| fail(err.to_string()))?;
                }
                Op::Recompute => {
                    // An epoch seals only once every feed has passed it.
                    holds.iter_mut().for_each(Vec::clear);
                    // Queries race the batch run and the swap, from another
                    // thread as an HTTP worker's would: the oracle does not
                    // change meanwhile, so each must equal it.
                    let done = Arc::new(AtomicBool::new(false));
                    let racing = {
                        let (handle, oracle, extra, done) = (Arc::clone(&handle), oracle.clone(), extra.clone(), Arc::clone(&done));
                        let context = format!("{context}, racing the swap");
                        std::thread::spawn(move || -> Result<usize, TestCaseError> {
                            let runtime = tokio::runtime::Builder::new_current_thread().build().map_err(|err| TestCaseError::fail(err.to_string()))?;
                            let mut rounds = 0;
                            while !done.load(Ordering::SeqCst) || rounds == 0 {
                                runtime.block_on(check_merged(&handle, &oracle, &extra, &context))?;
                                rounds += 1;
                            }
                            Ok(rounds)
                        })
                    };
                    let outcome = handle.recompute_now().await;
                    done.store(true, Ordering::SeqCst);
                    let raced = racing.join().map_err(|_| fail("the racing queries panicked".into()))?;
                    outcome.map_err(|err| fail(err.to_string()))?;
                    raced?;
                }
            }
            check_all(&handle, &oracle, &extra, &context).await?;
        }
        holds.iter_mut().for_each(Vec::clear);
        handle.recompute_now().await.map_err(|err| fail(err.to_string()))?;
        check_all(&handle, &oracle, &extra, "after the last batch run").await?;
        // Once a batch run has covered everything, the batch layer alone is the whole answer.
        let totals = handle.query(Query { layer: Layer::Batch, ..Query::new("by_product", Question::Totals) }).await;
        let expected = normalise(oracle.answer("by_product", &Question::Totals, TimeRange::ALL));
        prop_assert_eq!(totals.map(|answer| normalise(answer.body)).map_err(|err| err.to_string()), Ok(expected));
        handle.shutdown().await;
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn every_query_equals_the_oracle_after_every_step(
        ops in ops(false),
        extra in proptest::collection::vec(range(), 2),
    ) {
        run(ops, extra)?;
    }

    #[test]
    fn duplicates_across_feeds_and_epochs_count_once_and_malformed_never(
        ops in ops(true),
        extra in proptest::collection::vec(range(), 2),
    ) {
        run(ops, extra)?;
    }
}
