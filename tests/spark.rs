//! The batch layer on Apache Spark: `tandem export`, the job `tandem
//! spark-job` writes, run by `spark-submit` in `local[2]` (PySpark from
//! `scripts/services`), and `tandem import`, against tandem's own batch run
//! of the same epoch over the same master dataset: the same view states
//! byte for byte (counts, exact sums, min, max, means, distinct sets and
//! HLL registers, quantile values and DDSketch bins), the same counts and
//! the same ids; then served: merged answers = the Spark batch + the speed
//! layer, equal to the oracle while events keep coming.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use tandem::actors::recompute::{SnapshotData, StoredIds};
use tandem::aggregate::{Body, MetricState, Quantiles};
use tandem::event::{Epoch, Seq};
use tandem::store::{self, DataPaths};
use tandem::{Config, Layer, Options, Query, Question};

/// Every aggregation, in a view of small groups (exact forms) and in views
/// of few large groups (sketches: HLL coupon sets and register arrays,
/// DDSketch bins).
const CONFIG: &str = r#"
data_dir = "unused"
[event]
id = "order_id"
time = "ts"
[[view]]
name = "by_product"
key = ["product_id"]
bucket = "1h"
metrics = [
  { name = "orders", agg = "count" },
  { name = "revenue", agg = "sum", field = "amount" },
  { name = "low", agg = "min", field = "amount" },
  { name = "high", agg = "max", field = "amount" },
  { name = "avg", agg = "mean", field = "amount" },
  { name = "buyers", agg = "distinct", field = "user_id" },
  { name = "p90", agg = "quantile", field = "amount", q = 0.9 },
]
[[view]]
name = "by_country_category"
key = ["country", "category"]
bucket = "1d"
metrics = [
  { name = "orders", agg = "count" },
  { name = "buyers", agg = "distinct", field = "user_id" },
  { name = "median", agg = "quantile", field = "amount", q = 0.5 },
]
[[view]]
name = "by_country"
key = ["country"]
bucket = "1d"
metrics = [
  { name = "buyers", agg = "distinct", field = "user_id" },
  { name = "products", agg = "distinct", field = "product_id" },
  { name = "p99", agg = "quantile", field = "amount", q = 0.99 },
  { name = "revenue", agg = "sum", field = "amount" },
]
"#;

/// Orders whose amounts test the arithmetic both sides must agree on:
/// millionths exactly half way (rounded away from zero), negative amounts
/// (DDSketch's negative store), zeros and values too small to bin, values
/// at DDSketch bin edges, large ones; enough in one country and day to make
/// its quantile a sketch, and some under one product, where they stay exact.
fn edge_values() -> Vec<Vec<u8>> {
    let gamma_ln = (2.0f64 * 0.01 / 0.99).ln_1p();
    let mut amounts = vec![
        0.0,
        -0.0,
        1e-10,
        -1e-10,
        0.0000005,
        -0.0000005,
        2.5000005,
        -2.5000005,
        1234567.0000005,
        -9876543.2100015,
        4503599627.370496,
        1e15,
        -3.0e14,
    ];
    // Small negative amounts whose millionths lie just short of a half:
    // rounded as their magnitude is, not as the sum with 2^32 would be.
    amounts.extend([-0.0012344999999999, -3.4999999e-6, -4.999999999999999e-7]);
    for k in 1..40 {
        amounts.push(-(f64::from(k) * 0.0013 + 0.0000004999999));
    }
    for k in -40..160 {
        let edge = (f64::from(k) * gamma_ln).exp();
        amounts.extend([edge, -edge, edge.next_up(), edge.next_down()]);
    }
    amounts
        .iter()
        .enumerate()
        .map(|(at, amount)| {
            let product = if at % 16 == 0 { "p-edge" } else { "p-edge-many" };
            // Every fifth without a quantity: refused once a view sums it.
            let qty = if at % 5 == 4 { "" } else { r#","qty":1"# };
            format!(
                r#"{{"order_id":"e-{at}","ts":"2026-11-24T12:{:02}:00.000Z","product_id":"{product}","category":"c-edge","user_id":"u-e{}","amount":{amount:?}{qty},"country":"ZZ"}}"#,
                at % 60,
                at % 700
            )
            .into_bytes()
        })
        .collect()
}

/// Runs the job for `epoch` in `local[2]`; false when PySpark is missing
/// (and the test may skip).
fn run_job(config: &Config, master: &Path, epoch: u64, out: &Path) -> bool {
    let Some((submit, python)) = common::pyspark::venv() else {
        common::missing(
            "PySpark",
            "no spark-submit in TANDEM_PYSPARK_VENV or ~/.cache/tandem/pyspark",
        );
        return false;
    };
    let job = out.with_extension("py");
    std::fs::write(&job, tandem::spark::job_source(config).expect("a job")).expect("write job");
    let ran = Command::new(submit)
        .args(["--master", "local[2]", "--conf", "spark.ui.enabled=false"])
        .arg(&job)
        .arg("--master")
        .arg(master)
        .args(["--epoch", &epoch.to_string()])
        .arg("--out")
        .arg(out)
        .env("PYSPARK_PYTHON", &python)
        .output()
        .expect("spark-submit runs");
    assert!(
        ran.status.success(),
        "the Spark job failed: {}",
        String::from_utf8_lossy(&ran.stderr)
    );
    true
}

/// The metrics of the view whose stored spec is `spec`.
fn states_per_group(config: &Config, spec: &str) -> usize {
    config
        .views
        .iter()
        .find(|view| tandem::actors::recompute::spec_fingerprint(view) == spec)
        .map_or(0, |view| view.metrics.len())
}

/// The epochs the records of an exported file were stamped with.
fn stamped_epochs(path: &Path) -> std::collections::BTreeSet<i64> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;
    let reader = SerializedFileReader::try_from(path).expect("an exported file");
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let column = (0..schema.num_columns())
        .find(|&at| schema.column(at).name() == "stamped_epoch")
        .expect("a stamped_epoch column");
    reader
        .get_row_iter(None)
        .expect("rows")
        .map(|row| row.expect("a row").get_long(column).expect("an epoch"))
        .collect()
}

/// The newest snapshot's payload.
fn newest(config: &Config) -> (Epoch, SnapshotData<'static>) {
    let loaded = store::load_newest::<SnapshotData<'static>>(&DataPaths::new(&config.data_dir))
        .expect("snapshots read")
        .expect("a snapshot");
    (loaded.meta.epoch, loaded.data)
}

/// The ids before the seal a snapshot holds or names, sorted.
fn sorted_ids(config: &Config, data: &SnapshotData<'_>) -> Vec<u64> {
    match &data.ids {
        StoredIds::Inline(ids) => ids.to_vec(),
        StoredIds::Levels(names) => {
            let upto = Seq(data.sealed.map_or(0, |sealed| sealed.later_from));
            store::IdIndex::open(&DataPaths::new(&config.data_dir), upto, names)
                .expect("the id levels open")
                .sorted()
                .expect("the id levels read")
        }
    }
}

/// Each view's state as the snapshot stores it.
fn view_bytes(data: &SnapshotData<'_>) -> Vec<(String, Vec<u8>)> {
    data.views
        .iter()
        .map(|(name, view)| {
            (
                name.clone(),
                postcard::to_allocvec(&view.state).expect("a state encodes"),
            )
        })
        .collect()
}

#[test]
fn a_spark_batch_is_the_native_batch_byte_for_byte_and_serves_with_the_speed_layer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exported = tempfile::tempdir().expect("tempdir");
    // Ingested under CONFIG; computed and served under a config whose
    // by-product view also sums `qty`, which some recorded orders lack: the
    // batch layer refuses those now (as after a config change).
    let ingesting = common::config(CONFIG, dir.path());
    let config = common::config(
        &CONFIG.replace(
            r#"{ name = "p90", agg = "quantile", field = "amount", q = 0.9 },"#,
            r#"{ name = "p90", agg = "quantile", field = "amount", q = 0.9 },
  { name = "items", agg = "sum", field = "qty" },"#,
        ),
        dir.path(),
    );
    // Few countries and categories: large groups. Duplicates (some sent
    // again two epochs later), late and malformed events.
    let stream = common::workload::dirty(12_000, 21, 60, &["--categories", "4", "--users", "3000"]);
    let lines = common::workload::lines(&stream);
    let thirds: Vec<Vec<Vec<u8>>> = lines
        .chunks(lines.len().div_ceil(3))
        .map(|part| part.iter().map(|line| line.to_vec()).collect())
        .collect();
    let mut parts = thirds.clone();
    parts[2].extend(thirds[0].iter().step_by(40).cloned());
    parts[1].extend(edge_values());
    // An order that one feed sends after passing epoch 4's barrier, while
    // the other, held in epoch 4, sends it again: its first copy is of
    // epoch 5 and lies before epoch 4's seal, and the copy of epoch 4 after
    // it is a duplicate. Batch 4 counts neither.
    let raced = br#"{"order_id":"x-race","ts":"2026-11-24T12:00:00.000Z","product_id":"p-race","category":"c-edge","user_id":"u-race","amount":1.5,"qty":1,"country":"ZZ"}"#.to_vec();
    let mut ingested: Vec<Vec<u8>> = parts.iter().flatten().cloned().collect();
    ingested.extend([raced.clone(), raced.clone()]);

    let started = ingesting.clone();
    let first_parts = parts.clone();
    actix::System::new().block_on(async move {
        let options = Options {
            epoch_timer: false,
            feeds: 2,
        };
        let handle = tandem::start(started, options).await.expect("start");
        for part in first_parts {
            handle.ingest_many(part).await.expect("ingest");
            handle.recompute_now().await.expect("a native batch run");
        }
        let (first, held) = (
            handle.feed(0).expect("feed 0"),
            handle.feed(1).expect("feed 1"),
        );
        let hold = held.hold_epoch();
        let finished = handle
            .start_epoch(tandem::actors::RunMode::Incremental)
            .await
            .expect("a new epoch");
        assert_eq!(finished, Epoch(4));
        first.push(vec![raced.clone()]).await.expect("push");
        held.push(vec![raced]).await.expect("push");
        drop(hold);
        handle
            .wait_served(Epoch(4))
            .await
            .expect("a native batch run");
        handle.stop().await;
    });
    let paths = DataPaths::new(dir.path());
    let sealed = *store::read_epochs(&paths)
        .expect("the seals")
        .last()
        .expect("a seal");
    let serving = std::sync::Arc::new(config.clone());
    tandem::actors::recompute_worker::with_pool(2, |pool| {
        tandem::actors::recompute::recompute(
            &paths,
            &serving,
            sealed,
            tandem::actors::RunMode::Full,
            &Default::default(),
            pool,
        )
    })
    .expect("a native batch run under the serving config");
    let (epoch, native) = newest(&config);
    assert_eq!(epoch, Epoch(4));

    tandem::export::export(&config, exported.path(), None).expect("export");
    let stamped = stamped_epochs(&tandem::export::epoch_file(exported.path(), Epoch(4)));
    assert_eq!(
        stamped,
        [4, 5].into(),
        "epoch 4's file holds the order of epoch 5"
    );
    let out = tempfile::tempdir().expect("tempdir");
    let out = out.path().join("batch");
    if !run_job(&config, exported.path(), 4, &out) {
        return;
    }
    let (spark, groups) = tandem::spark::read_output(&config, Epoch(4), &out).expect("import");

    assert_eq!(
        spark.stats, native.stats,
        "records, counted, duplicates, invalid"
    );
    assert!(
        native.stats.duplicates > 0 && native.stats.invalid > 0,
        "{:?}",
        native.stats
    );
    assert_eq!(spark.sealed, native.sealed);
    assert_eq!(
        sorted_ids(&config, &spark),
        sorted_ids(&config, &native),
        "the ids before the seal"
    );
    let native_groups: Vec<usize> = native
        .views
        .iter()
        .map(|(_, view)| view.state.len())
        .collect();
    assert_eq!(groups, native_groups, "groups per view");
    for ((name, native), (_, spark)) in view_bytes(&native).iter().zip(view_bytes(&spark)) {
        assert!(*native == spark, "view {name}: the Spark state differs");
    }
    // Every form took part: exact sets and values, HLL coupon sets and
    // register arrays, DDSketch bins.
    let (mut exact, mut coupons, mut registers, mut bins) = (0, 0, 0, 0);
    for (_, view) in &native.views {
        for (_, groups) in view.state.keys() {
            for (_, states) in groups.iter(states_per_group(&config, &view.spec)) {
                for state in states {
                    match state {
                        MetricState::Distinct(distinct) => match distinct.datasketches_image() {
                            Some(image) if image[0] == 10 => registers += 1,
                            Some(_) => coupons += 1,
                            None => exact += 1,
                        },
                        MetricState::Quantile(Quantiles::Sketch(_)) => bins += 1,
                        MetricState::Quantile(_) => exact += 1,
                        _ => {}
                    }
                }
            }
        }
    }
    assert!(
        exact > 0 && coupons > 0 && registers > 0 && bins > 0,
        "exact {exact}, coupon sets {coupons}, register arrays {registers}, DDSketches {bins}"
    );

    refuses_what_does_not_check_out(&config, exported.path(), &out);

    // Served: the Spark batch replaces the native one, then the speed layer
    // counts what comes after; merged answers equal the oracle throughout.
    tandem::spark::import(&config, Epoch(4), &out).expect("import");
    let more = common::workload::dirty(
        3_000,
        22,
        60,
        &["--categories", "4", "--users", "3000", "--id-prefix", "q-"],
    );
    let more: Vec<Vec<u8>> = common::workload::lines(&more)
        .iter()
        .map(|line| line.to_vec())
        .collect();
    let all: Vec<&[u8]> = ingested.iter().chain(&more).map(Vec::as_slice).collect();
    let before: Vec<&[u8]> = ingested.iter().map(Vec::as_slice).collect();
    // The oracle sums cents; the edge products' sub-cent amounts were
    // compared above, state for state.
    let oracle = |lines: &[&[u8]]| {
        let mut expected = common::expected(lines);
        expected
            .products
            .retain(|product, _| !product.starts_with("p-edge"));
        expected
    };
    let oracle_before = oracle(&before);
    let oracle_all = oracle(&all);
    let started = config.clone();
    actix::System::new().block_on(async move {
        let handle = tandem::start(started, Options::manual_epochs())
            .await
            .expect("start");
        let (batch, seen) = products(&handle, &oracle_all).await;
        assert_eq!(batch, Some(Epoch(4)), "the imported snapshot is served");
        assert_eq!(seen, oracle_before.products, "the Spark batch alone");
        for part in more.chunks(more.len().div_ceil(3)) {
            handle.ingest_many(part.to_vec()).await.expect("ingest");
            // Every event of the part is merged in once it is applied.
        }
        common::eventually(
            std::time::Duration::from_secs(30),
            "Spark batch + speed layer = the oracle",
            async || {
                let (_, seen) = products(&handle, &oracle_all).await;
                if seen == oracle_all.products {
                    Ok(())
                } else {
                    Err(seen.len())
                }
            },
        )
        .await;
        handle.stop().await;
    });
}

/// The merged orders and revenue (cents) of every product the oracle
/// knows, and the batch epoch the answers rest on.
async fn products(
    handle: &tandem::Handle,
    oracle: &common::Expected,
) -> (Option<Epoch>, BTreeMap<String, (u64, i64)>) {
    layer_products(handle, oracle, Layer::Merged).await
}

/// As [`products`], from one layer.
async fn layer_products(
    handle: &tandem::Handle,
    oracle: &common::Expected,
    layer: Layer,
) -> (Option<Epoch>, BTreeMap<String, (u64, i64)>) {
    let mut seen = BTreeMap::new();
    let mut batch = None;
    for product in oracle.products.keys() {
        let mut query = Query::new("by_product", Question::Key(product.clone()));
        query.layer = layer;
        let answer = handle.query(query).await.expect("a key query");
        batch = answer.as_of.batch_epoch;
        let Body::Metrics(metrics) = answer.body else {
            panic!("a key's answer is metrics")
        };
        let value = |name: &str| metrics.get(name).and_then(|value| value.as_f64());
        if let (Some(orders), Some(revenue)) = (value("orders"), value("revenue"))
            && orders > 0.0
        {
            seen.insert(
                product.clone(),
                (orders as u64, (revenue * 100.0).round() as i64),
            );
        }
    }
    (batch, seen)
}

/// `batch.engine = "spark"`: the daemon exports each sealed epoch to
/// `master.parquet_dir`, runs the job on it with `batch.submit`, and
/// serves the imported snapshot; events keep coming during each run, and
/// merged answers (Spark batch of epochs <= E + speed layer of the later
/// ones) equal the oracle after each swap.
#[test]
fn the_daemon_runs_its_batch_on_spark_while_events_keep_coming() {
    let Some((submit, python)) = common::pyspark::venv() else {
        common::missing(
            "PySpark",
            "no spark-submit in TANDEM_PYSPARK_VENV or ~/.cache/tandem/pyspark",
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let exported = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "{CONFIG}\n[batch]\nengine = \"spark\"\nsubmit = [\"env\", \"PYSPARK_PYTHON={}\", \"{}\", \"--master\", \"local[2]\", \"--conf\", \"spark.ui.enabled=false\"]\nspark_timeout = \"10m\"\n[master]\nparquet_dir = \"{}\"\n",
        python.display(),
        submit.display(),
        exported.path().display()
    );
    let config = common::config(&text, dir.path());
    let stream = common::workload::dirty(8_000, 31, 40, &["--categories", "4"]);
    let lines = common::workload::lines(&stream);
    let parts: Vec<Vec<Vec<u8>>> = lines
        .chunks(lines.len().div_ceil(4))
        .map(|part| part.iter().map(|line| line.to_vec()).collect())
        .collect();
    let upto = |n: usize| {
        let lines: Vec<&[u8]> = parts[..n].iter().flatten().map(Vec::as_slice).collect();
        common::expected(&lines)
    };
    let (after_two, after_four) = (upto(2), upto(4));
    actix::System::new().block_on(async move {
        let handle = tandem::start(config, Options::manual_epochs())
            .await
            .expect("start");
        // Each run goes on while the next part comes in (after the epoch's
        // barrier: in the next epoch).
        for (run, expected) in [(1, &after_two), (2, &after_four)] {
            handle
                .ingest_many(parts[2 * run - 2].clone())
                .await
                .expect("ingest");
            let finished = handle
                .start_epoch(tandem::actors::RunMode::Incremental)
                .await
                .expect("a new epoch");
            let (served, ingested) = tokio::join!(
                handle.wait_served(finished),
                handle.ingest_many(parts[2 * run - 1].clone())
            );
            ingested.expect("ingest");
            assert_eq!(served.expect("a Spark batch run"), Epoch(run as u64));
            let (batch, seen) = products(&handle, &after_four).await;
            assert_eq!(batch, Some(Epoch(run as u64)));
            assert_eq!(seen, expected.products, "Spark batch {run} + speed");
            assert_parts_add_up(&handle, &after_four).await;
        }
        handle.stop().await;
    });
    // The runs' outputs are removed once imported.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("spark"))
        .expect("the Spark folder")
        .map(|entry| entry.expect("an entry").file_name())
        .collect();
    assert_eq!(left, ["job.py"], "only the job stays");
}

/// The import refuses, by name, an output that does not check out against
/// the master dataset and the config; the output itself is left as it was.
fn refuses_what_does_not_check_out(config: &Config, exported: &Path, out: &Path) {
    let refused = |config: &Config, epoch: u64, out: &Path| match tandem::spark::read_output(
        config,
        Epoch(epoch),
        out,
    ) {
        Ok(_) => panic!("imported"),
        Err(err) => err.to_string(),
    };
    let err = refused(config, 2, out);
    assert!(err.contains("the run covers epoch 4, not 2"), "{err}");
    let err = refused(config, 9, out);
    assert!(err.contains("epoch 9 is not sealed"), "{err}");
    let changed = common::config(&CONFIG.replace("q = 0.9", "q = 0.95"), &config.data_dir);
    let err = refused(&changed, 4, out);
    assert!(err.contains("its fingerprint differs"), "{err}");

    let broken = tempfile::tempdir().expect("tempdir");
    let copy = broken.path().join("batch");
    common::copy_dir(out, &copy);
    let manifest = common::files_ending(&copy.join("manifest"), "txt");
    let text = std::fs::read_to_string(&manifest[0]).expect("the manifest");
    let rows: serde_json::Value = serde_json::from_str(&text).expect("a manifest");
    let fewer = text.replace(
        &format!("\"rows\": {}", rows["rows"]),
        &format!("\"rows\": {}", rows["rows"].as_u64().expect("rows") - 1),
    );
    assert_ne!(fewer, text);
    std::fs::write(&manifest[0], &fewer).expect("write");
    let err = refused(config, 4, &copy);
    assert!(err.contains("the export it read is incomplete"), "{err}");
    std::fs::write(&manifest[0], &text).expect("write");

    // The export the run read, written again under other event rules (a
    // file of it cut short here): the run's states cannot be trusted.
    let export_copy = broken.path().join("export");
    common::copy_dir(exported, &export_copy);
    let file = tandem::export::epoch_file(&export_copy, Epoch(2));
    let bytes = std::fs::read(&file).expect("an exported file");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).expect("cut it");
    let elsewhere = text.replace(
        &format!("\"master\": {}", rows["master"]),
        &format!("\"master\": {:?}", export_copy.display().to_string()),
    );
    assert_ne!(elsewhere, text);
    std::fs::write(&manifest[0], &elsewhere).expect("write");
    let err = refused(config, 4, &copy);
    assert!(
        err.contains("the export the run read cannot be served")
            && err.contains("not the whole export of its epoch"),
        "{err}"
    );
    std::fs::write(&manifest[0], &text).expect("write");

    let largest = common::files_ending(&copy.join("ids"), "parquet")
        .into_iter()
        .max_by_key(|part| std::fs::metadata(part).map_or(0, |meta| meta.len()))
        .expect("an ids part");
    let moved = broken.path().join("an ids part");
    std::fs::rename(&largest, &moved).expect("move an ids part");
    let err = refused(config, 4, &copy);
    assert!(err.contains("a part is missing"), "{err}");
    std::fs::rename(&moved, &largest).expect("put it back");

    let part = common::files_ending(&copy.join("views/0"), "parquet");
    std::fs::remove_file(&part[0]).expect("remove a part");
    let err = refused(config, 4, &copy);
    assert!(
        err.contains("view by_product: its groups hold") && err.contains("the run counted"),
        "{err}"
    );

    std::fs::remove_dir_all(copy.join("manifest")).expect("remove the manifest");
    let err = refused(config, 4, &copy);
    assert!(
        err.contains("no manifest: the Spark run did not finish"),
        "{err}"
    );
}

/// A Spark run that fails is named, with its log's last lines; the
/// snapshot served before stays served, and answers stay exact.
#[test]
fn a_failed_spark_run_is_named_and_the_last_snapshot_stays_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exported = tempfile::tempdir().expect("tempdir");
    let native = common::config(CONFIG, dir.path());
    let failing = common::config(
        &format!(
            "{CONFIG}\n[batch]\nengine = \"spark\"\nsubmit = [\"sh\", \"-c\", \"echo no cluster here >&2; exit 3\", \"submit\"]\n[master]\nparquet_dir = \"{}\"\n",
            exported.path().display()
        ),
        dir.path(),
    );
    let pid_file = dir.path().join("child.pid");
    let slow = common::config(
        &format!(
            "{CONFIG}\n[batch]\nengine = \"spark\"\nspark_timeout = \"1s\"\nsubmit = [\"sh\", \"-c\", \"sleep 600 & echo $! > {}; wait\", \"submit\"]\n[master]\nparquet_dir = \"{}\"\n",
            pid_file.display(),
            exported.path().display()
        ),
        dir.path(),
    );
    let stream = common::workload::dirty(2_000, 41, 20, &[]);
    let lines = common::workload::lines(&stream);
    let (first, second) = lines.split_at(lines.len() / 2);
    let owned = |part: &[&[u8]]| part.iter().map(|line| line.to_vec()).collect::<Vec<_>>();
    let (first, second) = (owned(first), owned(second));
    let oracle = common::expected(&lines);
    actix::System::new().block_on(async move {
        let handle = tandem::start(native, Options::manual_epochs())
            .await
            .expect("start");
        handle.ingest_many(first).await.expect("ingest");
        handle.recompute_now().await.expect("a native batch run");
        handle.stop().await;

        let handle = tandem::start(failing, Options::manual_epochs())
            .await
            .expect("start");
        handle.ingest_many(second).await.expect("ingest");
        let failed = handle
            .recompute_now()
            .await
            .expect_err("the Spark run fails");
        assert!(
            failed
                .reason
                .contains("the Spark run of epoch 2 failed (exit status: 3)")
                && failed.reason.contains("no cluster here"),
            "{failed}"
        );
        let (batch, seen) = products(&handle, &oracle).await;
        assert_eq!(batch, Some(Epoch(1)), "the native snapshot stays served");
        assert_eq!(seen, oracle.products);
        handle.stop().await;

        // A run past batch.spark_timeout is killed with everything it
        // started (here a child of the submit command).
        let handle = tandem::start(slow, Options::manual_epochs())
            .await
            .expect("start");
        let failed = handle
            .recompute_now()
            .await
            .expect_err("the Spark run is killed");
        assert!(
            failed
                .reason
                .contains("took longer than batch.spark_timeout (1s) and was killed"),
            "{failed}"
        );
        let pid = std::fs::read_to_string(&pid_file).expect("the child's pid");
        let stat = format!("/proc/{}/stat", pid.trim());
        common::eventually(
            std::time::Duration::from_secs(10),
            "the run's child is killed",
            async || match std::fs::read_to_string(&stat) {
                // Gone, or dead and not yet reaped by its new parent.
                Err(_) => Ok(()),
                Ok(text)
                    if text
                        .rsplit(')')
                        .next()
                        .is_some_and(|rest| rest.trim_start().starts_with('Z')) =>
                {
                    Ok(())
                }
                Ok(text) => Err(text),
            },
        )
        .await;
        let (batch, seen) = products(&handle, &oracle).await;
        assert_eq!(batch, Some(Epoch(1)), "the native snapshot stays served");
        assert_eq!(seen, oracle.products);
        handle.stop().await;
    });
}

/// Per product, the batch layer's part plus the speed layer's is the
/// merged answer.
async fn assert_parts_add_up(handle: &tandem::Handle, oracle: &common::Expected) {
    let (_, merged) = layer_products(handle, oracle, Layer::Merged).await;
    let (_, batch) = layer_products(handle, oracle, Layer::Batch).await;
    let (_, speed) = layer_products(handle, oracle, Layer::Speed).await;
    assert!(!batch.is_empty() && !speed.is_empty());
    let mut added = batch;
    for (product, (orders, cents)) in speed {
        let entry = added.entry(product).or_default();
        entry.0 += orders;
        entry.1 += cents;
    }
    assert_eq!(added, merged, "batch part + speed part = merged");
}
