//! Files written by an earlier build stay readable: `tests/fixtures/data-vN`
//! is a data_dir (a segment, the epochs file, a snapshot with its id index)
//! written by tandem when snapshots were at format version N. This build must
//! serve the current version's as it is, from its snapshot (no view
//! recomputed or replayed from the start), with answers equal to an oracle
//! over the events written, and must recognise a redelivery of an id stored
//! there. So must it serve version 3's (its payload in another order), the
//! oldest it reads. An older version's snapshot is refused, and the same
//! answers come from the master dataset, which every version reads.
//!
//! If a change makes this fail, stored data_dirs no longer read the same:
//! either keep reading the old form, or bump the snapshot format version
//! (an old snapshot is then refused by name and recomputed) and write a new
//! fixture with `TANDEM_WRITE_FIXTURE=1 cargo test --test golden`, keeping
//! the old one's test as a refused snapshot.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tandem::aggregate::{Body, MetricValue};
use tandem::{Layer, Options, Query, Question};

const CONFIG: &str = r#"
data_dir = "unused"
[event]
id = "id"
time = "ts"
[[view]]
name = "by_product"
key = ["product"]
bucket = "1h"
metrics = [
  { name = "orders", agg = "count" },
  { name = "revenue", agg = "sum", field = "amount" },
  { name = "buyers", agg = "distinct", field = "user" },
  { name = "median", agg = "quantile", field = "amount", q = 0.5 },
  { name = "largest", agg = "max", field = "amount" },
]
[[view]]
name = "by_country"
key = ["country"]
bucket = "1d"
metrics = [{ name = "orders", agg = "count" }]
"#;

/// The fixture's snapshot covers epoch 1: the first 16 events and a repeat.
const SNAPSHOT_EPOCH: u64 = 1;

/// Event `i`: product, country, user, amount in cents, hour.
fn event(i: u32) -> (String, String, String, i64, i64) {
    (
        format!("p{}", i % 3),
        ["DE", "FR"][(i % 2) as usize].to_owned(),
        format!("u{}", i % 5),
        i64::from(i) * 100 + 50,
        i64::from(i % 4),
    )
}

fn line(i: u32) -> Vec<u8> {
    let (product, country, user, cents, hour) = event(i);
    format!(
        r#"{{"id":"e-{i}","ts":{},"product":"{product}","country":"{country}","user":"{user}","amount":{}.{:02}}}"#,
        1_795_500_000_000 + hour * 3_600_000,
        cents / 100,
        cents % 100
    )
    .into_bytes()
}

fn fixture(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/data-v{version}"))
}

/// Writes the fixture with this build: events 0..16 and a repeat of 3, a
/// batch run, then events 16..24 and a repeat of 7 (the speed layer's part).
fn write_fixture() {
    let dir = fixture(tandem::store::FORMAT_VERSION);
    std::fs::remove_dir_all(&dir).ok();
    let config = common::config(CONFIG, &dir);
    actix::System::new().block_on(async move {
        let options = Options::manual_epochs();
        let handle = tandem::start(config, options).await.expect("start");
        let mut first: Vec<Vec<u8>> = (0..16).map(line).collect();
        first.push(line(3));
        handle.ingest_many(first).await.expect("ingest");
        let covered = handle.recompute_now().await.expect("batch run");
        assert_eq!(covered.0, SNAPSHOT_EPOCH);
        let mut then: Vec<Vec<u8>> = (16..24).map(line).collect();
        then.push(line(7));
        handle.ingest_many(then).await.expect("ingest");
        handle.stop().await;
    });
    std::fs::remove_file(dir.join("LOCK")).ok();
    // The batch cache only saves a run work: not part of what a start reads.
    std::fs::remove_dir_all(dir.join("cache")).ok();
}

fn metric(body: &Body, name: &str) -> Option<MetricValue> {
    match body {
        Body::Metrics(metrics) => metrics.get(name),
        other => panic!("metrics, not {other:?}"),
    }
}

#[test]
fn a_data_dir_written_at_format_5_is_served_from_its_snapshot() {
    if std::env::var("TANDEM_WRITE_FIXTURE").as_deref() == Ok("1") {
        write_fixture();
    }
    // Its id level opens as it is (were it refused, a start would read the
    // ids again from the log and still answer the same).
    let paths = tandem::store::DataPaths::new(fixture(5));
    let levels = tandem::store::list_levels(&paths).expect("ids/");
    assert_eq!(levels.len(), 1, "{levels:?}");
    let level = tandem::store::Level::open(&paths, &levels[0]).expect("the fixture's id level");
    assert_eq!(level.len(), 16, "events 0..16");
    serve_fixture(5, served_from_snapshot);
}

/// Format 4 held the ids in the snapshot's head (format 5 names the id
/// level files under `ids/` that hold them): a start writes them as a level
/// file, and the copy of event 7 after the snapshot is still not counted.
#[test]
fn a_data_dir_written_at_format_4_is_served_from_its_snapshot() {
    serve_fixture(4, served_from_snapshot);
}

/// Format 3 stored the views' states before the ids and the sealed epoch
/// (format 4 stores them last, so a start replays while they decode): read
/// by a decoder of its own.
#[test]
fn a_data_dir_written_at_format_3_is_served_from_its_snapshot() {
    serve_fixture(3, served_from_snapshot);
}

fn served_from_snapshot(startup: &tandem::actors::Startup) -> Option<u64> {
    assert_eq!(startup.snapshot.map(|epoch| epoch.0), Some(SNAPSHOT_EPOCH));
    assert_eq!(startup.replayed, 9, "the records after the snapshot");
    Some(SNAPSHOT_EPOCH)
}

/// Format 2 stored distinct counts past 512 values as HyperLogLog++
/// registers, which this build does not read: its snapshot is refused, and
/// every record is replayed from the master dataset instead.
#[test]
fn a_data_dir_written_at_format_2_is_served_from_its_master_dataset() {
    serve_fixture(2, |startup| {
        assert_eq!(startup.snapshot, None, "the format 2 snapshot is refused");
        assert_eq!(startup.replayed, 26, "every record");
        None
    });
}

/// Starts on a copy of the fixture of format `version`, checks the start
/// with `started` (which says the batch epoch answers then carry), and
/// checks every answer against the oracle.
fn serve_fixture(version: u32, started: impl FnOnce(&tandem::actors::Startup) -> Option<u64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    common::copy_dir(&fixture(version), dir.path());
    let config = common::config(CONFIG, dir.path());
    actix::System::new().block_on(async move {
        let options = Options::manual_epochs();
        let handle = tandem::start(config, options).await.expect("start");
        let startup = handle.startup();
        assert_eq!(startup.records.0, 26, "24 events and two repeats");
        let batch_epoch = started(&startup);

        // The oracle: events 0..24, each once.
        let mut products: BTreeMap<String, (u64, i64, BTreeSet<String>, Vec<i64>)> =
            BTreeMap::new();
        let mut countries: BTreeMap<String, u64> = BTreeMap::new();
        for i in 0..24 {
            let (product, country, user, cents, _) = event(i);
            let entry = products.entry(product).or_default();
            entry.0 += 1;
            entry.1 += cents;
            entry.2.insert(user);
            entry.3.push(cents);
            *countries.entry(country).or_default() += 1;
        }
        for layer in [Layer::Batch, Layer::Merged] {
            for (product, (orders, revenue, buyers, mut amounts)) in products.clone() {
                let answer = handle
                    .query(Query {
                        layer,
                        ..Query::new("by_product", Question::Key(product.clone()))
                    })
                    .await
                    .expect("query");
                assert_eq!(
                    answer.as_of.batch_epoch.map(|epoch| epoch.0),
                    batch_epoch,
                    "the stored view is used, if any"
                );
                if layer == Layer::Batch {
                    continue;
                }
                amounts.sort_unstable();
                let median = amounts[(amounts.len() - 1) / 2] as f64 / 100.0;
                let largest = amounts[amounts.len() - 1] as f64 / 100.0;
                let body = &answer.body;
                assert_eq!(
                    metric(body, "orders"),
                    Some(MetricValue::Int(orders)),
                    "{product}"
                );
                assert_eq!(
                    metric(body, "revenue"),
                    Some(MetricValue::Number(Some(revenue as f64 / 100.0))),
                    "{product}"
                );
                assert_eq!(
                    metric(body, "buyers"),
                    Some(MetricValue::Int(buyers.len() as u64)),
                    "{product}"
                );
                assert_eq!(
                    metric(body, "median"),
                    Some(MetricValue::Number(Some(median))),
                    "{product}"
                );
                assert_eq!(
                    metric(body, "largest"),
                    Some(MetricValue::Number(Some(largest))),
                    "{product}"
                );
            }
        }
        for (country, orders) in &countries {
            let answer = handle
                .query(Query::new("by_country", Question::Key(country.clone())))
                .await
                .expect("query");
            assert_eq!(
                metric(&answer.body, "orders"),
                Some(MetricValue::Int(*orders))
            );
        }

        // Ids stored by the earlier build are recognised: a redelivery of one
        // under the snapshot and of one after it counts nothing.
        let outcome = handle
            .ingest_many(vec![line(1), line(20)])
            .await
            .expect("ingest");
        assert_eq!(outcome.accepted, 2);
        let totals = handle
            .query(Query::new("by_country", Question::Totals))
            .await
            .expect("totals");
        assert_eq!(metric(&totals.body, "orders"), Some(MetricValue::Int(24)));
        handle.stop().await;
    });
}
