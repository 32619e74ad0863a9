//! `tandem export`: the sealed epochs of the master dataset as Parquet, one
//! file per epoch, read back here with the parquet crate's own reader and
//! checked against the stream's oracle (computed from the lines with
//! serde_json): every record once, in its epoch's file, typed as tandem
//! reads it, enough to recompute the batch layer's answer (first copy of an
//! id by `seq`); incremental (whole files skipped, missing or damaged ones
//! written again); records the config's rules refuse named in `rejected`.

mod common;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::RowAccessor;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use tandem::event::{Epoch, hash_text};
use tandem::export::{ExportError, Exported, epoch_file, export};
use tandem::{Config, Options};

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
]
"#;

/// One exported row, as read back.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    seq: i64,
    epoch: i64,
    stamped: i64,
    id_hash: i64,
    raw: String,
    rejected: Option<String>,
    product: Option<String>,
    amount: Option<f64>,
    user: Option<String>,
    user_hash: Option<i64>,
}

/// Every row of `out`'s files for epochs `1..=epochs`, by epoch.
fn read_back(out: &Path, epochs: u64) -> BTreeMap<u64, Vec<Row>> {
    (1..=epochs)
        .map(|epoch| (epoch, read_epoch(out, epoch)))
        .collect()
}

/// Every row of `out`'s file for `epoch`.
fn read_epoch(out: &Path, epoch: u64) -> Vec<Row> {
    let path = epoch_file(out, Epoch(epoch));
    let reader = SerializedFileReader::try_from(path.as_path())
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let column = |name: &str| {
        (0..schema.num_columns())
            .find(|&at| schema.column(at).name() == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    };
    let (seq, ep, stamped, id_hash, raw, rejected) = (
        column("seq"),
        column("epoch"),
        column("stamped_epoch"),
        column("id_hash"),
        column("raw"),
        column("rejected"),
    );
    let (product, amount, user, user_hash) = (
        column("product_id"),
        column("amount"),
        column("user_id"),
        column("user_id__xxh3"),
    );
    reader
        .get_row_iter(None)
        .expect("rows")
        .map(|row| {
            let row = row.expect("a row reads");
            Row {
                seq: row.get_long(seq).expect("seq"),
                epoch: row.get_long(ep).expect("epoch"),
                stamped: row.get_long(stamped).expect("stamped_epoch"),
                id_hash: row.get_long(id_hash).expect("id_hash"),
                raw: row.get_string(raw).expect("raw").clone(),
                rejected: row.get_string(rejected).ok().cloned(),
                product: row.get_string(product).ok().cloned(),
                amount: row.get_double(amount).ok(),
                user: row.get_string(user).ok().cloned(),
                user_hash: row.get_long(user_hash).ok(),
            }
        })
        .collect()
}

/// A data_dir holding a dirty order stream (`events` events over
/// `products` products) ingested through the in-process source in `epochs`
/// parts, each part its own epoch, sealed and recomputed; an empty directory
/// to export to; the config; the stream.
struct Recorded {
    dir: tempfile::TempDir,
    out: tempfile::TempDir,
    config: Config,
    stream: Vec<u8>,
}

fn recorded(events: u64, seed: u64, products: u64, epochs: usize) -> Recorded {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let config = common::config(CONFIG, dir.path());
    let stream = common::workload::dirty(events, seed, products, &[]);
    let lines = common::workload::lines(&stream);
    let started = config.clone();
    actix::System::new().block_on(async move {
        let handle = tandem::start(started, Options::manual_epochs())
            .await
            .expect("start");
        for part in lines.chunks(lines.len().div_ceil(epochs)) {
            handle
                .ingest_many(part.iter().map(|line| line.to_vec()).collect())
                .await
                .expect("ingest");
            handle.recompute_now().await.expect("a batch run");
        }
        handle.stop().await;
    });
    Recorded {
        dir,
        out,
        config,
        stream,
    }
}

#[test]
fn the_master_dataset_exports_by_epoch_and_recomputes_the_batch_answer() {
    let Recorded {
        dir: _data,
        out,
        config,
        stream,
    } = recorded(3_000, 11, 40, 3);
    let lines = common::workload::lines(&stream);

    let exported = export(&config, out.path(), None).expect("export");
    assert!(exported.skipped.is_empty(), "{exported:?}");
    let epochs: Vec<u64> = exported.written.iter().map(|(epoch, _)| epoch.0).collect();
    assert_eq!(epochs, vec![1, 2, 3]);
    let by_epoch = read_back(out.path(), 3);
    for (epoch, rows) in &exported.written {
        assert_eq!(by_epoch[&epoch.0].len() as u64, *rows, "epoch {epoch}");
        assert!(
            by_epoch[&epoch.0]
                .iter()
                .all(|row| row.epoch == epoch.0 as i64)
        );
    }

    // Every line tandem accepted is one row, in log order, once.
    let rows: Vec<&Row> = by_epoch.values().flatten().collect();
    let oracle = common::expected(&lines);
    let dead: HashSet<&[u8]> = oracle
        .dead
        .iter()
        .map(|(line, _)| line.as_slice())
        .collect();
    let accepted: Vec<&[u8]> = lines
        .iter()
        .copied()
        .filter(|line| !dead.contains(line))
        .collect();
    assert_eq!(rows.len(), accepted.len());
    for (at, (row, line)) in rows.iter().zip(&accepted).enumerate() {
        assert_eq!(row.seq, at as i64, "rows in log order");
        assert_eq!(row.raw.as_bytes(), *line);
        // Typed as the line says, read with serde_json here.
        let json: serde_json::Value = serde_json::from_slice(line).expect("an accepted line");
        assert_eq!(row.rejected, None);
        assert_eq!(row.product.as_deref(), json["product_id"].as_str());
        assert_eq!(row.amount, json["amount"].as_f64());
        assert_eq!(row.user.as_deref(), json["user_id"].as_str());
        let user = json["user_id"].as_str().expect("a user");
        assert_eq!(row.user_hash, Some(hash_text(user) as i64));
        let id = json["order_id"].as_str().expect("an id");
        assert_eq!(row.id_hash, hash_text(id) as i64);
    }

    assert_eq!(first_copies(&rows), oracle.products);
}

/// The batch layer's rule on exported rows: the first copy of an id by
/// seq counts, unless the rules refuse it; per product orders and revenue
/// in cents.
fn first_copies(rows: &[&Row]) -> BTreeMap<String, (u64, i64)> {
    let mut seen = HashSet::new();
    let mut products: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    let mut rows = rows.to_vec();
    rows.sort_by_key(|row| row.seq);
    for row in rows {
        if seen.insert(row.id_hash) && row.rejected.is_none() {
            let entry = products
                .entry(row.product.clone().expect("a product"))
                .or_default();
            entry.0 += 1;
            entry.1 += (row.amount.expect("an amount") * 100.0).round() as i64;
        }
    }
    products
}

/// Records of the epoch open when the daemon stopped are never sealed as
/// that epoch: the next seal after the restart covers them, and the export
/// puts them in that epoch's file, as the batch layer counts them.
#[test]
fn records_of_an_epoch_never_sealed_go_to_the_seal_that_covers_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let config = common::config(CONFIG, dir.path());
    let stream = common::workload::dirty(900, 15, 12, &[]);
    let lines = common::workload::lines(&stream);
    let parts: Vec<&[&[u8]]> = lines.chunks(lines.len().div_ceil(3)).collect();
    let run = |parts: Vec<Vec<Vec<u8>>>, seal_last: bool| {
        let config = config.clone();
        actix::System::new().block_on(async move {
            let handle = tandem::start(config, Options::manual_epochs())
                .await
                .expect("start");
            let n = parts.len();
            for (i, part) in parts.into_iter().enumerate() {
                handle.ingest_many(part).await.expect("ingest");
                if i + 1 < n || seal_last {
                    handle.recompute_now().await.expect("a batch run");
                }
            }
            handle.stop().await;
        });
    };
    let owned = |part: &[&[u8]]| part.iter().map(|line| line.to_vec()).collect::<Vec<_>>();
    // Epoch 1 sealed, epoch 2 left open at the stop; after the restart the
    // open epoch is 3, and its seal covers epoch 2's records.
    run(vec![owned(parts[0]), owned(parts[1])], false);
    run(vec![owned(parts[2])], true);

    let exported = export(&config, out.path(), None).expect("export");
    let written: Vec<u64> = exported.written.iter().map(|(epoch, _)| epoch.0).collect();
    assert_eq!(written, [1, 3]);
    assert!(!epoch_file(out.path(), Epoch(2)).exists());
    let mut by_epoch = BTreeMap::new();
    for epoch in [1, 3] {
        by_epoch.insert(epoch, read_epoch(out.path(), epoch));
    }
    let stamped: std::collections::BTreeSet<i64> =
        by_epoch[&3].iter().map(|row| row.stamped).collect();
    assert_eq!(
        stamped,
        [2, 3].into(),
        "epoch 3's file holds epoch 2's records"
    );
    let rows: Vec<&Row> = by_epoch.values().flatten().collect();
    let oracle = common::expected(&lines);
    assert_eq!(rows.len(), lines.len() - oracle.dead.len());
    assert_eq!(first_copies(&rows), oracle.products);
}

#[test]
fn an_export_skips_whole_epochs_and_writes_missing_or_damaged_ones_again() {
    let Recorded {
        dir: data,
        out,
        config,
        ..
    } = recorded(1_500, 12, 20, 3);

    let first = export(&config, out.path(), Some(Epoch(2))).expect("export up to 2");
    let rows = |exported: &Exported| -> BTreeMap<u64, u64> {
        exported
            .written
            .iter()
            .chain(&exported.skipped)
            .map(|(epoch, rows)| (epoch.0, *rows))
            .collect()
    };
    assert_eq!(first.written.len(), 2, "{first:?}");
    assert!(!epoch_file(out.path(), Epoch(3)).exists());
    let before = read_back(out.path(), 2);

    let all = export(&config, out.path(), None).expect("export all");
    assert_eq!(all.skipped, first.written, "whole files are skipped");
    assert_eq!(
        all.written.iter().map(|(e, _)| e.0).collect::<Vec<_>>(),
        [3]
    );
    let totals = rows(&all);

    // A missing file, and one cut short (as by a crash of a copy), are
    // written again with the same rows; the others are skipped.
    std::fs::remove_file(epoch_file(out.path(), Epoch(1))).expect("remove");
    let damaged = epoch_file(out.path(), Epoch(3));
    let len = std::fs::metadata(&damaged).expect("a file").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&damaged)
        .and_then(|file| file.set_len(len / 2))
        .expect("cut");
    let again = export(&config, out.path(), None).expect("export again");
    assert_eq!(
        again.written.iter().map(|(e, _)| e.0).collect::<Vec<_>>(),
        [1, 3]
    );
    assert_eq!(
        again.skipped.iter().map(|(e, _)| e.0).collect::<Vec<_>>(),
        [2]
    );
    assert_eq!(rows(&again), totals);
    let after = read_back(out.path(), 3);
    assert_eq!(after[&1], before[&1]);
    assert_eq!(after[&2], before[&2]);
    let leftovers = common::files_ending(out.path(), "tmp");
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Files of other columns (a view added since) are written again.
    let wider = common::config(
        &format!(
            "{CONFIG}[[view]]\nname = \"by_country\"\nkey = [\"country\"]\nbucket = \"1h\"\nmetrics = [{{ name = \"orders\", agg = \"count\" }}]\n"
        ),
        data.path(),
    );
    let rewritten = export(&wider, out.path(), None).expect("export with a view added");
    assert!(rewritten.skipped.is_empty(), "{rewritten:?}");
    assert_eq!(rows(&rewritten), totals);

    // An epoch that is not sealed is refused by name.
    let refused = export(&config, out.path(), Some(Epoch(9)));
    assert!(
        matches!(
            refused,
            Err(ExportError::NotSealed {
                asked: Epoch(9),
                ..
            })
        ),
        "{refused:?}"
    );
    let message = refused.err().map(|err| err.to_string()).unwrap_or_default();
    assert_eq!(
        message,
        "epoch 9 is not sealed (the newest sealed epoch is 3)"
    );
}

/// A config whose rules refuse the recorded events (a view over a field
/// they do not have) exports them with the reason and no field values; the
/// CLI prints one line per epoch.
#[test]
fn records_the_rules_refuse_are_exported_with_the_reason() {
    let Recorded { dir, out, .. } = recorded(300, 13, 10, 1);

    let stricter = CONFIG.replace(
        r#"{ name = "orders", agg = "count" },"#,
        r#"{ name = "orders", agg = "count" }, { name = "saved", agg = "sum", field = "discount" },"#,
    );
    let file = dir.path().join("stricter.toml");
    std::fs::write(
        &file,
        stricter.replace(
            r#"data_dir = "unused""#,
            &format!("data_dir = {:?}", dir.path()),
        ),
    )
    .expect("write config");
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["export", "--config"])
        .arg(&file)
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("tandem export");
    let printed = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "{cli:?}");
    let rows = read_back(out.path(), 1).remove(&1).unwrap_or_default();
    assert!(!rows.is_empty());
    assert_eq!(
        printed.trim(),
        format!(
            "epoch 1: {} rows written to {}",
            rows.len(),
            epoch_file(out.path(), Epoch(1)).display()
        )
    );
    for row in rows {
        assert_eq!(row.rejected.as_deref(), Some("missing_field: discount"));
        assert_eq!((row.product, row.amount, row.user), (None, None, None));
    }
}

/// With `master.parquet_dir`, the daemon exports each epoch as it is
/// sealed, off the async threads, and counts them for `/metrics`.
#[test]
fn the_daemon_exports_each_sealed_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let text = CONFIG.replace(
        "[event]",
        &format!("[master]\nparquet_dir = {:?}\n[event]", out.path()),
    );
    let config = common::config(&text, dir.path());
    let stream = common::workload::dirty(600, 14, 10, &[]);
    let lines = common::workload::lines(&stream);
    let accepted = lines.len() - common::expected(&lines).dead.len();
    let shared = actix::System::new().block_on(async move {
        let handle = tandem::start(config, Options::manual_epochs())
            .await
            .expect("start");
        for part in lines.chunks(lines.len().div_ceil(2)) {
            handle
                .ingest_many(part.iter().map(|line| line.to_vec()).collect())
                .await
                .expect("ingest");
            handle.recompute_now().await.expect("a batch run");
        }
        let shared = std::sync::Arc::clone(handle.shared());
        common::eventually(
            std::time::Duration::from_secs(30),
            "both epochs exported",
            async || {
                let exported = shared
                    .exported_epochs
                    .load(std::sync::atomic::Ordering::Relaxed);
                if exported == 2 { Ok(()) } else { Err(exported) }
            },
        )
        .await;
        handle.stop().await;
        shared
    });
    assert_eq!(
        shared
            .export_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let rows: usize = read_back(out.path(), 2).values().map(Vec::len).sum();
    assert_eq!(rows, accepted, "every accepted line exported once");
}

#[test]
fn a_parquet_dir_with_a_field_named_like_a_record_column_is_refused() {
    let text = CONFIG
        .replace("[event]", "[master]\nparquet_dir = \"out\"\n[event]")
        .replace("\"order_id\"", "\"seq\"");
    let errors = Config::parse(&text, "test.toml").expect_err("refused");
    let text = errors.to_string();
    assert!(
        text.contains("master.parquet_dir")
            && text
                .contains("the field \"seq\" would be exported under the name of another column"),
        "{text}"
    );
    assert!(Config::parse(&CONFIG.replace("\"order_id\"", "\"seq\""), "test.toml").is_ok());
}

/// Another engine reads tandem's truth from the export alone: DuckDB, with
/// the batch layer's rules written in SQL as the README writes them (the
/// files up to the epoch, the first copy of an id by `seq`, records the
/// rules refuse left out, then the epochs <= E), gives the oracle's
/// orders and revenue for every product.
#[test]
fn duckdb_over_the_export_gives_the_batch_layer_answer() {
    let Some((_, python)) = common::pyspark::venv() else {
        common::missing(
            "DuckDB",
            "no Python in TANDEM_PYSPARK_VENV or ~/.cache/tandem/pyspark",
        );
        return;
    };
    let Recorded {
        dir: _data,
        out,
        config,
        stream,
    } = recorded(3_000, 16, 30, 3);
    export(&config, out.path(), None).expect("export");
    let query = format!(
        r#"
import duckdb, json
rows = duckdb.sql("""
WITH first AS (
  SELECT * FROM read_parquet('{}/*/*.parquet', hive_partitioning = true)
  WHERE epoch <= 3
  QUALIFY row_number() OVER (PARTITION BY id_hash ORDER BY seq) = 1
)
SELECT product_id, count(*), sum(round(amount * 100))::BIGINT
FROM first WHERE rejected IS NULL AND stamped_epoch <= 3
GROUP BY product_id
""").fetchall()
print(json.dumps(rows))
"#,
        out.path().display()
    );
    let ran = std::process::Command::new(python)
        .args(["-c", &query])
        .output()
        .expect("python runs");
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let rows: Vec<(String, u64, i64)> =
        serde_json::from_slice(&ran.stdout).expect("DuckDB's rows as JSON");
    let products: BTreeMap<String, (u64, i64)> = rows
        .into_iter()
        .map(|(product, orders, cents)| (product, (orders, cents)))
        .collect();
    let lines = common::workload::lines(&stream);
    assert_eq!(products, common::expected(&lines).products);
}

/// A file is whole only for the event rules it was read under: exported
/// again under others (here a smaller size limit, which could refuse
/// records), every epoch is written again, and the files no longer pass
/// for the first config's export.
#[test]
fn an_export_under_other_event_rules_is_written_again() {
    let Recorded {
        dir: _data,
        out,
        config,
        ..
    } = recorded(900, 17, 10, 2);
    let first = export(&config, out.path(), None).expect("export");
    assert_eq!(first.written.len(), 2, "{first:?}");
    tandem::export::check_export(&config, out.path(), Epoch(2)).expect("whole");

    let other = common::config(
        &CONFIG.replace("time = \"ts\"", "time = \"ts\"\nmax_bytes = 4096"),
        &config.data_dir,
    );
    let again = export(&other, out.path(), None).expect("export");
    assert!(again.skipped.is_empty(), "{again:?}");
    assert_eq!(again.written, first.written);
    let err = tandem::export::check_export(&config, out.path(), Epoch(2))
        .expect_err("not the first config's export");
    assert!(matches!(err, ExportError::NotWhole { .. }), "{err}");
    let whole = export(&other, out.path(), None).expect("export");
    assert_eq!(whole.skipped, first.written, "whole under its own rules");
}
