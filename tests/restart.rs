//! Restart is invisible to readers: after a restart every query answers what
//! it answered before (snapshot loaded, records after it replayed into the
//! speed layer), epochs keep rising, and a lost or damaged snapshot changes
//! nothing a reader sees.

mod common;

use tandem::actors::serving::{Layer, QueryError};
use tandem::aggregate::{Body, MetricValue};
use tandem::event::Epoch;
use tandem::store::DataPaths;
use tandem::{Options, Query, Question};

const CONFIG: &str = r#"
data_dir = "unused"
[event]
id = "order_id"
time = "ts"
[[view]]
name = "by_product"
key = ["product_id"]
bucket = "1m"
metrics = [
  { name = "orders", agg = "count" },
  { name = "revenue", agg = "sum", field = "amount" },
  { name = "buyers", agg = "distinct", field = "user_id" },
  { name = "p95", agg = "quantile", field = "amount", q = 0.95 },
]
[[view]]
name = "by_country"
key = ["country"]
bucket = "1h"
metrics = [{ name = "orders", agg = "count" }, { name = "revenue", agg = "sum", field = "amount" }]
"#;

fn questions() -> Vec<Query> {
    vec![
        Query::new("by_product", Question::Totals),
        Query::new(
            "by_product",
            Question::Top {
                metric: "revenue".into(),
                n: 20,
            },
        ),
        Query::new("by_product", Question::Series(None)),
        Query::new(
            "by_country",
            Question::Top {
                metric: "orders".into(),
                n: 12,
            },
        ),
        Query::new("by_country", Question::Series(Some("DE".into()))),
    ]
}

async fn read_all(handle: &tandem::Handle) -> Vec<Body> {
    let mut out = Vec::new();
    for query in questions() {
        out.push(handle.query(query).await.expect("query").body);
    }
    out
}

/// Ingests lines, with a batch run after the first `recompute_after` and a
/// sealed-but-not-recomputed epoch after that; answers what readers see.
fn first_run(dir: &std::path::Path, lines: &[&[u8]], recompute_after: usize) -> (Vec<Body>, u64) {
    let config = common::config(CONFIG, dir);
    actix::System::new().block_on(async move {
        let handle = tandem::start(config, Options::manual_epochs())
            .await
            .expect("start");
        for (i, line) in lines.iter().enumerate() {
            handle.ingest(line.to_vec()).await.expect("ingest");
            if i + 1 == recompute_after {
                handle.recompute_now().await.expect("batch run");
            }
            if i + 1 == recompute_after + 100 {
                handle
                    .start_epoch(tandem::actors::RunMode::Incremental)
                    .await
                    .expect("epoch");
            }
        }
        let seen = read_all(&handle).await;
        let epoch = handle.runs().await.expect("runs").epoch.0;
        handle.stop().await;
        (seen, epoch)
    })
}

fn second_run(dir: &std::path::Path) -> (Vec<Body>, tandem::actors::Startup) {
    let config = common::config(CONFIG, dir);
    actix::System::new().block_on(async move {
        let handle = tandem::start(config, Options::manual_epochs())
            .await
            .expect("restart");
        let seen = read_all(&handle).await;
        let startup = handle.startup();
        handle.stop().await;
        (seen, startup)
    })
}

fn workload() -> Vec<u8> {
    common::workload::generate(&[
        "--events",
        "1500",
        "--seed",
        "5",
        "--products",
        "50",
        "--dup-frac",
        "0.02",
    ])
}

#[test]
fn readers_see_what_they_saw_before() {
    let jsonl = workload();
    let lines = common::workload::lines(&jsonl);
    let dir = tempfile::tempdir().expect("tempdir");
    let (before, epoch_before) = first_run(dir.path(), &lines, 600);
    let (after, startup) = second_run(dir.path());
    assert_eq!(after, before);
    assert!(startup.snapshot.is_some(), "the snapshot is loaded");
    assert!(
        startup.replayed >= 800,
        "the records after the snapshot are replayed: {}",
        startup.replayed
    );
    assert!(
        startup.epoch.0 >= epoch_before,
        "epochs keep rising: {} then {}",
        epoch_before,
        startup.epoch
    );
}

#[test]
fn a_lost_snapshot_changes_nothing_a_reader_sees() {
    let jsonl = workload();
    let lines = common::workload::lines(&jsonl);
    let dir = tempfile::tempdir().expect("tempdir");
    let (before, _) = first_run(dir.path(), &lines, 700);
    for (_, path) in tandem::store::list_snapshots(&DataPaths::new(dir.path())).expect("list") {
        std::fs::remove_file(path).expect("remove snapshot");
    }
    let (after, startup) = second_run(dir.path());
    assert_eq!(startup.snapshot, None);
    assert_eq!(after, before);
}

#[test]
fn a_damaged_snapshot_is_refused_and_an_older_one_used() {
    newest_snapshot_refused(|_, newest| {
        let last = std::fs::metadata(newest).expect("stat").len() - 1;
        common::xor_byte(newest, last, 0xff);
    });
}

/// A snapshot whose checksum holds but whose states do not fit their views
/// (written by a bug) is found only once its states are decoded, beside the
/// replay: the start then replays again over the older one.
#[test]
fn a_snapshot_whose_states_do_not_fit_its_views_is_refused_and_an_older_one_used() {
    newest_snapshot_refused(|dir, newest| {
        let (meta, mut data) =
            tandem::store::read_snapshot::<tandem::actors::recompute::SnapshotData>(newest)
                .expect("read the newest snapshot");
        let [(_, product), (_, country)] = &mut data.views[..] else {
            panic!("two views");
        };
        std::mem::swap(&mut product.state, &mut country.state);
        std::fs::remove_file(newest).expect("remove the snapshot");
        tandem::store::write_snapshot(
            &DataPaths::new(dir),
            meta.epoch,
            meta.records,
            meta.created_ms,
            &data,
            2,
        )
        .expect("write it back");
    });
}

/// Two batch runs, then `damage` (given the data_dir and the newest
/// snapshot's path) to the newest snapshot: a restart uses the older one,
/// and every answer is as before.
fn newest_snapshot_refused(damage: impl FnOnce(&std::path::Path, &std::path::Path)) {
    let jsonl = workload();
    let lines = common::workload::lines(&jsonl);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::config(CONFIG, dir.path());
    let before = actix::System::new().block_on(async move {
        let handle = tandem::start(config, Options::manual_epochs())
            .await
            .expect("start");
        for (i, line) in lines.iter().enumerate() {
            handle.ingest(line.to_vec()).await.expect("ingest");
            if i == 500 || i == 1000 {
                handle.recompute_now().await.expect("batch run");
            }
        }
        let seen = read_all(&handle).await;
        handle.stop().await;
        seen
    });
    let snapshots = tandem::store::list_snapshots(&DataPaths::new(dir.path())).expect("list");
    assert_eq!(snapshots.len(), 2);
    damage(dir.path(), &snapshots[0].1);
    let (after, startup) = second_run(dir.path());
    assert_eq!(
        startup.snapshot,
        Some(snapshots[1].0),
        "the older snapshot is used"
    );
    assert_eq!(after, before);
}

/// A redelivery whose first copy is under the snapshot was dropped by the
/// speed layer while the daemon ran; replayed after a restart, it is dropped
/// again (the snapshot's id index holds the first copy).
#[test]
fn a_redelivery_across_the_snapshot_is_not_counted_again_after_a_restart() {
    redelivered_across_the_snapshot(|_| {});
}

/// The snapshot's id level damaged while the daemon was down: the start
/// reads the ids again from the master dataset, and copies are still
/// counted once, replayed and arriving after the restart.
#[test]
fn a_damaged_id_level_is_read_again_from_the_master_dataset() {
    redelivered_across_the_snapshot(|dir| {
        let levels: Vec<_> = std::fs::read_dir(dir.join("ids"))
            .expect("ids/")
            .map(|entry| entry.expect("entry").path())
            .collect();
        assert_eq!(levels.len(), 1, "{levels:?}");
        let len = std::fs::metadata(&levels[0]).expect("stat").len();
        common::xor_byte(&levels[0], len - 3, 0x10);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["inspect", "--data"])
            .arg(dir)
            .output()
            .expect("run inspect");
        let report = String::from_utf8_lossy(&out.stdout);
        let name = levels[0].file_name().expect("name").to_string_lossy();
        assert!(
            report.contains(&format!("{name}  unusable"))
                && report.contains("trailer crc mismatch"),
            "{report}"
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "recoverable, not damage: {report}"
        );
    });
}

/// One order, a batch run, the same order again; then `damage` to the
/// stopped data_dir, a restart, and the same order a third time.
fn redelivered_across_the_snapshot(damage: impl FnOnce(&std::path::Path)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::config(CONFIG, dir.path());
    let order = br#"{"order_id":"o-x","ts":"2026-11-24T00:00:00Z","product_id":"p-x","amount":5,"user_id":"u-1","country":"DE"}"#;
    let before = actix::System::new().block_on(async move {
        let handle = tandem::start(config, Options::manual_epochs())
            .await
            .expect("start");
        let durable = tandem::actors::source::Ingested::Durable;
        assert_eq!(
            handle.ingest(order.to_vec()).await.expect("ingest"),
            durable
        );
        handle.recompute_now().await.expect("batch run");
        // The same order again, in the next epoch: durable, not counted.
        assert_eq!(
            handle.ingest(order.to_vec()).await.expect("ingest"),
            durable
        );
        let seen = read_all(&handle).await;
        handle.stop().await;
        seen
    });
    damage(dir.path());
    let config = common::config(CONFIG, dir.path());
    let (after, startup, again) = actix::System::new().block_on(async move {
        let handle = tandem::start(config, Options::manual_epochs())
            .await
            .expect("restart");
        let after = read_all(&handle).await;
        // A third copy, decided by the Recorder against the index the start opened.
        let durable = tandem::actors::source::Ingested::Durable;
        assert_eq!(
            handle.ingest(order.to_vec()).await.expect("ingest"),
            durable
        );
        let again = read_all(&handle).await;
        let startup = handle.startup();
        handle.stop().await;
        (after, startup, again)
    });
    assert!(startup.snapshot.is_some(), "served from the snapshot");
    assert_eq!(startup.replayed, 1, "the second copy is replayed");
    assert_eq!(after, before);
    assert_eq!(again, before, "the third copy is not counted either");
    // The order counts once, in the batch layer.
    let orders = match &after[0] {
        Body::Metrics(totals) => totals.get("orders"),
        other => panic!("totals answered {other:?}"),
    };
    assert_eq!(orders, Some(MetricValue::Int(1)), "{:?}", after[0]);
}

/// `n` orders with ids `f-{from}..`, spread over 50 products, as one push each 2,000.
fn numbered_orders(from: usize, n: usize) -> Vec<Vec<u8>> {
    (from..from + n)
        .map(|i| {
            format!(
                r#"{{"order_id":"f-{i}","ts":"2026-11-24T10:00:00Z","product_id":"p-{}","amount":1,"user_id":"u-{}","country":"DE"}}"#,
                i % 50,
                i % 1000
            )
            .into_bytes()
        })
        .collect()
}

async fn push(handle: &tandem::Handle, messages: Vec<Vec<u8>>) {
    for chunk in messages.chunks(2_000) {
        let outcome = handle.ingest_many(chunk.to_vec()).await.expect("push");
        assert_eq!(outcome.accepted, chunk.len(), "{:?}", outcome.rejected);
    }
}

async fn total_orders(handle: &tandem::Handle, layer: tandem::Layer) -> u64 {
    let answer = handle
        .query(Query {
            layer,
            ..Query::new("by_country", Question::Totals)
        })
        .await
        .expect("totals");
    let Body::Metrics(metrics) = answer.body else {
        panic!("totals are metrics")
    };
    metrics
        .get("orders")
        .and_then(|value| value.as_f64())
        .expect("orders") as u64
}

/// Redeliveries of ids 150,000 and 300,000 records old (one first copy under
/// the snapshot, one after it) count once: in the merged answer at once, after
/// a restart, and in the batch layer after a batch run.
#[test]
fn redeliveries_300000_records_later_count_once_before_and_after_a_restart() {
    const HALF: usize = 150_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::config(CONFIG, dir.path());
    let merged = tandem::Layer::Merged;
    actix::System::new().block_on(async move {
        let options = Options::manual_epochs();
        let handle = tandem::start(config, options).await.expect("start");
        push(&handle, numbered_orders(0, HALF)).await;
        handle.recompute_now().await.expect("batch run");
        push(&handle, numbered_orders(HALF, HALF)).await;
        assert_eq!(total_orders(&handle, merged).await, 2 * HALF as u64);
        // The first 1,000 orders of each half again, through a second epoch.
        handle
            .start_epoch(tandem::actors::RunMode::Incremental)
            .await
            .expect("epoch");
        let mut again = numbered_orders(0, 1_000);
        again.extend(numbered_orders(HALF, 1_000));
        push(&handle, again).await;
        assert_eq!(
            total_orders(&handle, merged).await,
            2 * HALF as u64,
            "redeliveries are not counted by the speed layer"
        );
        handle.stop().await;
    });
    let config = common::config(CONFIG, dir.path());
    actix::System::new().block_on(async move {
        let options = Options::manual_epochs();
        let handle = tandem::start(config, options).await.expect("restart");
        assert_eq!(
            total_orders(&handle, merged).await,
            2 * HALF as u64,
            "nor by the replay"
        );
        handle.recompute_now().await.expect("batch run");
        assert_eq!(
            total_orders(&handle, tandem::Layer::Batch).await,
            2 * HALF as u64,
            "nor by the batch layer"
        );
        handle.stop().await;
    });
}

/// The first run's config, without `by_country` and with fewer metrics.
const BEFORE_CHANGE: &str = r#"
data_dir = "unused"
[event]
id = "order_id"
time = "ts"
[[view]]
name = "by_product"
key = ["product_id"]
bucket = "1m"
metrics = [{ name = "orders", agg = "count" }, { name = "revenue", agg = "sum", field = "amount" }]
"#;

/// After the change: `by_product` gains a metric, `by_country` is new.
const AFTER_CHANGE: &str = r#"
data_dir = "unused"
[event]
id = "order_id"
time = "ts"
[[view]]
name = "by_product"
key = ["product_id"]
bucket = "1m"
metrics = [
  { name = "orders", agg = "count" },
  { name = "revenue", agg = "sum", field = "amount" },
  { name = "largest", agg = "max", field = "amount" },
]
[[view]]
name = "by_country"
key = ["country"]
bucket = "1h"
metrics = [{ name = "orders", agg = "count" }]
"#;

/// Per product (orders, revenue in cents, largest amount in cents) and per
/// country orders, each order id once.
type ChangedOracle = (
    std::collections::BTreeMap<String, (u64, i64, i64)>,
    std::collections::BTreeMap<String, u64>,
);

fn changed_oracle(lines: &[&[u8]]) -> ChangedOracle {
    let (mut products, mut countries) = ChangedOracle::default();
    let mut ids = std::collections::HashSet::new();
    for line in lines {
        let order: serde_json::Value = serde_json::from_slice(line).expect("the lines are valid");
        if !ids.insert(order["order_id"].as_str().expect("id").to_owned()) {
            continue;
        }
        let cents = (order["amount"].as_f64().expect("amount") * 100.0).round() as i64;
        let product = products
            .entry(order["product_id"].as_str().expect("product").to_owned())
            .or_insert((0, 0, i64::MIN));
        product.0 += 1;
        product.1 += cents;
        product.2 = product.2.max(cents);
        *countries
            .entry(order["country"].as_str().expect("country").to_owned())
            .or_default() += 1;
    }
    (products, countries)
}

/// Every answer of the changed config equals the oracle; answers what each
/// was based on.
async fn check_changed(
    handle: &tandem::Handle,
    oracle: &ChangedOracle,
) -> Vec<tandem::actors::serving::AsOf> {
    let mut batch_parts = Vec::new();
    let cents = |value: Option<tandem::aggregate::MetricValue>| {
        (value.and_then(|value| value.as_f64()).expect("a number") * 100.0).round() as i64
    };
    for (product, (orders, revenue, largest)) in &oracle.0 {
        let answer = handle
            .query(Query::new("by_product", Question::Key(product.clone())))
            .await
            .expect("query");
        let Body::Metrics(metrics) = &answer.body else {
            panic!("a key answers metrics")
        };
        let got = (
            metrics
                .get("orders")
                .and_then(|value| value.as_f64())
                .expect("orders") as u64,
            cents(metrics.get("revenue")),
            cents(metrics.get("largest")),
        );
        assert_eq!(got, (*orders, *revenue, *largest), "{product}: {answer:?}");
        batch_parts.push(answer.as_of);
    }
    for (country, orders) in &oracle.1 {
        let answer = handle
            .query(Query::new("by_country", Question::Key(country.clone())))
            .await
            .expect("query");
        let Body::Metrics(metrics) = &answer.body else {
            panic!("a key answers metrics")
        };
        let got = metrics.get("orders").and_then(|value| value.as_f64());
        assert_eq!(got, Some(*orders as f64), "{country}: {answer:?}");
        batch_parts.push(answer.as_of);
    }
    batch_parts
}

/// A restart with a view added and a metric added to another: queried at
/// once, every answer is complete (the changed views are replayed from the
/// start of the log) and says it has no batch part until a batch run covers
/// the new views; then it has one, and is still complete.
#[test]
fn a_restart_with_an_added_view_and_a_changed_metric_answers_completely_at_once() {
    let jsonl = workload();
    let lines = common::workload::lines(&jsonl);
    let oracle = changed_oracle(&lines);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::config(BEFORE_CHANGE, dir.path());
    let options = Options::manual_epochs();
    actix::System::new().block_on(async move {
        let handle = tandem::start(config, options).await.expect("start");
        for (i, line) in lines.iter().enumerate() {
            handle.ingest(line.to_vec()).await.expect("ingest");
            if i == 900 {
                handle.recompute_now().await.expect("batch run");
            }
            if i == 1200 {
                handle
                    .start_epoch(tandem::actors::RunMode::Incremental)
                    .await
                    .expect("epoch");
            }
        }
        handle.stop().await;
    });
    let config = common::config(AFTER_CHANGE, dir.path());
    let restarted_ms = tandem::now_ms();
    actix::System::new().block_on(async move {
        let handle = tandem::start(config, options).await.expect("restart");
        let served_at_start = handle.batch().await.expect("batch").epoch;
        assert!(served_at_start.is_some(), "the old snapshot is served");
        let at_once = check_changed(&handle, &oracle).await;
        // Before the start-up batch run covers the changed views, an answer
        // has no batch part: it never claims the old snapshot, which has no
        // state for them (a snapshot written before this start).
        let of_this_start = |as_of: &tandem::actors::serving::AsOf| {
            as_of
                .batch_at
                .is_some_and(|created| created >= restarted_ms)
        };
        assert!(
            at_once
                .iter()
                .all(|as_of| as_of.batch_epoch.is_none() || of_this_start(as_of)),
            "{at_once:?}"
        );
        let sealed = handle.runs().await.expect("runs").sealed.expect("sealed");
        handle.wait_served(sealed).await.expect("batch run");
        let after_run = check_changed(&handle, &oracle).await;
        assert!(
            after_run
                .iter()
                .all(|as_of| as_of.batch_epoch == Some(sealed) && of_this_start(as_of)),
            "{after_run:?}"
        );
        eprintln!(
            "answers without a batch part at once: {} of {}",
            at_once
                .iter()
                .filter(|as_of| as_of.batch_epoch.is_none())
                .count(),
            at_once.len()
        );
        handle.stop().await;
    });
}

/// Every question's answer and the batch epoch it is based on.
type Seen = Vec<(Body, Option<Epoch>)>;

async fn read_layer(handle: &tandem::Handle, layer: Layer) -> Seen {
    let mut out = Vec::new();
    for query in questions() {
        let answer = handle.query(Query { layer, ..query }).await.expect("query");
        out.push((answer.body, answer.as_of.batch_epoch));
    }
    out
}

/// Every snapshot kept (`batch.keep_snapshots`, 2 by default) answers with
/// `at_epoch` what the batch layer answered while it was served, before a
/// restart and after; an older one is refused with the epochs kept.
#[test]
fn at_epoch_answers_what_was_served_at_that_epoch() {
    let jsonl = workload();
    let lines = common::workload::lines(&jsonl);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::config(CONFIG, dir.path());
    let parts: Vec<&[&[u8]]> = lines.chunks(lines.len().div_ceil(3)).collect();
    let served = actix::System::new().block_on(async move {
        let handle = tandem::start(config, Options::manual_epochs())
            .await
            .expect("start");
        let mut served: Vec<(Epoch, Seen)> = Vec::new();
        for part in parts {
            for line in part {
                handle.ingest(line.to_vec()).await.expect("ingest");
            }
            let epoch = handle.recompute_now().await.expect("batch run");
            served.push((epoch, read_layer(&handle, Layer::Batch).await));
            for (epoch, seen) in served.iter().rev().take(2) {
                assert_eq!(
                    &read_layer(&handle, Layer::Snapshot(*epoch)).await,
                    seen,
                    "at_epoch {epoch}"
                );
                assert!(seen.iter().all(|(_, as_of)| *as_of == Some(*epoch)));
            }
        }
        let kept: Vec<Epoch> = served[1..].iter().map(|(epoch, _)| *epoch).collect();
        let gone = served[0].0;
        let refused = handle
            .query(Query {
                layer: Layer::Snapshot(gone),
                ..Query::new("by_product", Question::Totals)
            })
            .await;
        assert_eq!(
            refused.map(|answer| answer.body),
            Err(QueryError::NotRetained {
                epoch: gone,
                retained: kept
            })
        );
        handle.stop().await;
        served
    });
    // Restarted with by_country changed: by_product's kept snapshots answer
    // as before, by_country's are refused by name.
    let changed = CONFIG.replace(
        r#"{ name = "revenue", agg = "sum", field = "amount" }]"#,
        r#"{ name = "revenue", agg = "sum", field = "amount" }, { name = "items", agg = "count" }]"#,
    );
    assert_ne!(changed, CONFIG);
    let config = common::config(&changed, dir.path());
    actix::System::new().block_on(async move {
        let handle = tandem::start(config, Options::manual_epochs())
            .await
            .expect("restart");
        for (epoch, seen) in &served[1..] {
            for (query, seen) in questions().into_iter().zip(seen) {
                let layer = Layer::Snapshot(*epoch);
                let view = query.view.clone();
                let answer = handle.query(Query { layer, ..query }).await;
                if view == "by_product" {
                    let answer = answer.expect("query");
                    assert_eq!(
                        &(answer.body, answer.as_of.batch_epoch),
                        seen,
                        "at_epoch {epoch} after a restart"
                    );
                } else {
                    assert_eq!(
                        answer,
                        Err(QueryError::NotInSnapshot {
                            epoch: *epoch,
                            view
                        })
                    );
                }
            }
        }
        handle.stop().await;
    });
}
