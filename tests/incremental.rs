//! Incremental batch runs: a run that starts from the batch cache (the
//! views' states over the records before the last run's `later_from`, and
//! their ids) stores the very bytes of a run that reads the whole master
//! dataset, and both equal an oracle computed here from the records, across
//! many runs with duplicates whose copies lie segments apart, late events in
//! old buckets, records of the next epoch logged before the seal, malformed
//! records, a view added and a view changed mid-history, cache files
//! deleted or damaged, and a cache that cannot be written.
//!
//! Two data_dirs get the same records: one only ever runs incrementally, the
//! other only ever runs in full, so a wrong cache cannot be repaired by a
//! full run in between.

mod common;

use common::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use tandem::Config;
use tandem::actors::RunMode;
use tandem::actors::recompute::{Batch, Progress, recompute, snapshot_holding};
use tandem::actors::recompute_worker::with_pool;
use tandem::aggregate::{Distinct, MetricState, MetricValue, Quantiles, ViewState};
use tandem::event::Epoch;
use tandem::store::{DataPaths, MasterLog, NewRecord, SealedEpoch};

const BASE: &str = r#"
data_dir = "unused"
[event]
id = "id"
time = "ts"
"#;

const BY_PRODUCT: &str = r#"
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
"#;

const BY_COUNTRY: &str = r#"
[[view]]
name = "by_country"
key = ["country"]
bucket = "1d"
metrics = [
  { name = "orders", agg = "count" },
  { name = "smallest", agg = "min", field = "amount" },
  { name = "buyers", agg = "distinct", field = "user" },
]
"#;

/// `by_country` with another bucket: a changed view.
fn by_country_hourly() -> String {
    BY_COUNTRY.replace(r#"bucket = "1d""#, r#"bucket = "1h""#)
}

/// A view added later, over fields the others use already.
const BY_USER: &str = r#"
[[view]]
name = "by_user"
key = ["user"]
bucket = "1d"
metrics = [
  { name = "orders", agg = "count" },
  { name = "spent", agg = "sum", field = "amount" },
]
"#;

/// Segments this small put a run's records in several of them.
const SEGMENT_BYTES: u64 = 64 * 1024;
/// 2026-01-01T00:00:00Z.
const T0_MS: i64 = 1_767_225_600_000;

/// One record as logged.
#[derive(Clone)]
struct Logged {
    epoch: u64,
    raw: Vec<u8>,
}

/// The stream: orders with ids, 8% copies of an earlier id (any earlier
/// one, often segments back), 10% late by up to three days, 3% malformed, and
/// one product whose orders fall in one hour with thousands of buyers (its
/// distinct and quantile states become sketches).
struct Stream {
    rng: Rng,
    ids: Vec<String>,
    n: u64,
}

impl Stream {
    fn new(seed: u64) -> Stream {
        Stream {
            rng: Rng::new(seed),
            ids: Vec::new(),
            n: 0,
        }
    }

    fn record(&mut self, epoch: u64) -> Logged {
        self.n += 1;
        let rng = &mut self.rng;
        if rng.below(100) < 3 {
            let raw = match rng.below(3) {
                0 => b"{not json".to_vec(),
                1 => {
                    format!(r#"{{"id":"bad-{}","ts":"2026-01-01T00:00:00Z"}}"#, self.n).into_bytes()
                }
                _ => b"[1,2,3]".to_vec(),
            };
            return Logged { epoch, raw };
        }
        let id = if !self.ids.is_empty() && rng.below(100) < 8 {
            self.ids[rng.below(self.ids.len() as u64) as usize].clone()
        } else {
            let id = format!("o-{}", self.n);
            self.ids.push(id.clone());
            id
        };
        let hot = rng.below(100) < 15;
        let (product, ts_ms) = if hot {
            ("p-hot".to_owned(), T0_MS + 3_600_000 + 1_000)
        } else {
            let mut ts = T0_MS + self.n as i64 * 20_000;
            if rng.below(100) < 10 {
                ts -= rng.below(3 * 86_400_000) as i64;
            }
            (format!("p-{}", rng.below(25)), ts)
        };
        let ts = chrono::DateTime::from_timestamp_millis(ts_ms)
            .expect("in range")
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let user = format!("u-{}", rng.below(if hot { 100_000 } else { 300 }));
        let country = ["DE", "FR", "US", "JP", "BR"][rng.below(5) as usize];
        let amount = rng.below(100_000) as f64 / 100.0;
        let raw = format!(
            r#"{{"id":"{id}","ts":"{ts}","product":"{product}","user":"{user}","country":"{country}","amount":{amount}}}"#
        );
        Logged {
            epoch,
            raw: raw.into_bytes(),
        }
    }
}

/// One data_dir and its log.
struct Store {
    dir: tempfile::TempDir,
    log: MasterLog,
}

impl Store {
    fn new() -> Store {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = MasterLog::open(&DataPaths::new(dir.path()), SEGMENT_BYTES).expect("log");
        Store { dir, log }
    }

    fn paths(&self) -> DataPaths {
        DataPaths::new(self.dir.path())
    }

    fn append(&mut self, config: &Config, records: &[Logged]) {
        self.log
            .append(records.iter().map(|record| {
                let event = config.schema.parse(&record.raw, 0);
                NewRecord {
                    epoch: Epoch(record.epoch),
                    ingest_ms: 0,
                    event_ms: event.as_ref().map_or(0, |event| event.event_ms),
                    id_hash: event
                        .ok()
                        .and_then(|event| event.id_hash)
                        .map_or(0, |hash| hash.get()),
                    raw: &record.raw,
                }
            }))
            .expect("append");
    }

    /// The seal of `epoch`: the log's end, and `later_from` where the first
    /// record of a later epoch lies.
    fn seal(&self, epoch: u64, later_from: u64) -> SealedEpoch {
        SealedEpoch {
            epoch: Epoch(epoch),
            end: self.log.end(),
            later_from: tandem::event::Seq(later_from),
            next_seq: self.log.next_seq(),
            sealed_at_ms: 0,
        }
    }
}

fn config(views: &[&str], dir: &Path) -> Config {
    common::config(&format!("{BASE}{}", views.concat()), dir)
}

/// A run, and which views it took from the cache and from the master dataset.
fn run(config: &Config, store: &Store, sealed: SealedEpoch, mode: RunMode) -> (Batch, (u64, u64)) {
    let progress = Progress::default();
    let config = std::sync::Arc::new(config.clone());
    // Three workers: most events are routed to the owners of their keys.
    let batch = with_pool(3, |pool| {
        recompute(&store.paths(), &config, sealed, mode, &progress, pool)
    })
    .expect("batch run");
    (batch, progress.views())
}

fn bytes(state: &ViewState) -> Vec<u8> {
    postcard::to_allocvec(state).expect("a state encodes")
}

/// What the views must hold: every record of the log in order, the first
/// copy of an id claiming it whatever its epoch, counted when its epoch is
/// covered and it parses.
fn assert_oracle(config: &Config, log: &[Logged], upto_epoch: u64, batch: &Batch) {
    let mut claimed = BTreeSet::new();
    // (view, key, bucket) -> (count, cents, users, smallest, largest)
    type Group = (u64, i64, BTreeSet<String>, f64, f64);
    let mut groups: BTreeMap<(usize, String, i64), Group> = BTreeMap::new();
    for record in log {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&record.raw) else {
            continue;
        };
        let Some(id) = value.get("id").and_then(|id| id.as_str()) else {
            continue;
        };
        if !claimed.insert(id.to_owned()) || record.epoch > upto_epoch {
            continue;
        }
        let Ok(event) = config.schema.parse(&record.raw, 0) else {
            continue;
        };
        let amount = value["amount"].as_f64().expect("valid orders have amounts");
        let user = value["user"].as_str().expect("and users").to_owned();
        for (v, spec) in config.views.iter().enumerate() {
            let key = value[&spec.key[0]].as_str().expect("key").to_owned();
            let group = groups
                .entry((v, key, spec.bucket_of(event.event_ms)))
                .or_insert((0, 0, BTreeSet::new(), f64::MAX, f64::MIN));
            group.0 += 1;
            group.1 += (amount * 100.0).round() as i64;
            group.2.insert(user.clone());
            group.3 = group.3.min(amount);
            group.4 = group.4.max(amount);
        }
    }
    let mut seen = 0;
    for (v, (spec, state)) in config.views.iter().zip(&batch.views).enumerate() {
        let n = spec.metrics.len();
        for (key, key_groups) in state.keys() {
            for (bucket, states) in key_groups.iter(n) {
                let (count, cents, users, smallest, largest) = groups
                    .get(&(v, key.to_owned(), bucket))
                    .unwrap_or_else(|| panic!("{} {key} {bucket}: not in the oracle", spec.name));
                seen += 1;
                for (metric, state) in spec.metrics.iter().zip(states) {
                    let value = state.value(&metric.agg);
                    let name = format!("{} {key} {bucket} {}", spec.name, metric.name);
                    match &*metric.name {
                        "orders" => assert_eq!(value, MetricValue::Int(*count), "{name}"),
                        "revenue" | "spent" => {
                            let got = value.as_f64().expect("a sum");
                            assert!(
                                (got * 100.0 - *cents as f64).abs() < 1e-3,
                                "{name}: {got} vs {cents} cents"
                            );
                        }
                        "largest" => {
                            assert_eq!(value, MetricValue::Number(Some(*largest)), "{name}")
                        }
                        "smallest" => {
                            assert_eq!(value, MetricValue::Number(Some(*smallest)), "{name}")
                        }
                        // Exact while small; the sketches are held to the full run's bytes.
                        "buyers" if users.len() < 500 => {
                            assert_eq!(value, MetricValue::Int(users.len() as u64), "{name}");
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    assert_eq!(seen, groups.len(), "groups in the views vs in the oracle");
}

/// The incremental run's views, stats and ids equal the full run's.
fn assert_same(config: &Config, incremental: &Batch, full: &Batch) {
    for ((spec, a), b) in config.views.iter().zip(&incremental.views).zip(&full.views) {
        assert!(
            bytes(a) == bytes(b),
            "view {}: incremental and full runs stored different bytes",
            spec.name
        );
    }
    let (a, b) = (incremental.stats, full.stats);
    assert_eq!(
        (a.records, a.counted, a.duplicates, a.invalid),
        (b.records, b.counted, b.duplicates, b.invalid),
        "run counts"
    );
    assert_eq!(incremental.ids.upto(), full.ids.upto(), "id index");
    assert_eq!(
        incremental.ids.sorted().expect("ids"),
        full.ids.sorted().expect("ids"),
        "id index"
    );
}

/// Both data_dirs, the records logged so far, and the stream.
struct Twin {
    incremental: Store,
    full: Store,
    log: Vec<Logged>,
    stream: Stream,
}

impl Twin {
    fn new(seed: u64) -> Twin {
        Twin {
            incremental: Store::new(),
            full: Store::new(),
            log: Vec::new(),
            stream: Stream::new(seed),
        }
    }

    /// Logs epoch `epoch`: some of its records, in even epochs some of the
    /// next epoch's (a source that saw the barrier first), then the rest of
    /// its own (one that had not); seals it and runs both data_dirs. Answers
    /// the incremental run's view sources. (After an odd epoch the snapshot
    /// holds the states the batch cache holds, and the cache names it; after
    /// an even one the cache holds its states itself.)
    fn epoch(&mut self, config: &Config, epoch: u64, records: usize) -> (Batch, (u64, u64)) {
        let mut batch: Vec<Logged> = (0..records * 2 / 3)
            .map(|_| self.stream.record(epoch))
            .collect();
        let ahead = if epoch.is_multiple_of(2) {
            records / 10
        } else {
            0
        };
        let mut later_from = self.log.len() as u64 + batch.len() as u64;
        batch.extend((0..ahead).map(|_| self.stream.record(epoch + 1)));
        batch.extend((0..records / 3).map(|_| self.stream.record(epoch)));
        if ahead == 0 {
            later_from = self.log.len() as u64 + batch.len() as u64;
        }
        for store in [&mut self.incremental, &mut self.full] {
            store.append(config, &batch);
        }
        self.log.extend(batch);
        // Every record before `later_from` has an epoch <= this one, and the
        // first record of the next epoch lies at it.
        let sealed = self.incremental.seal(epoch, later_from);
        assert_eq!(sealed, self.full.seal(epoch, later_from));
        let (incremental, sources) = run(config, &self.incremental, sealed, RunMode::Incremental);
        let (full, _) = run(config, &self.full, sealed, RunMode::Full);
        assert_same(config, &incremental, &full);
        assert_oracle(config, &self.log, epoch, &incremental);
        (incremental, sources)
    }
}

#[test]
fn incremental_runs_store_the_bytes_of_full_runs_and_match_the_oracle() {
    let mut twin = Twin::new(7);
    let config = config(&[BY_PRODUCT, BY_COUNTRY], twin.incremental.dir.path());
    let (_, first) = twin.epoch(&config, 1, 3_000);
    assert_eq!(first, (0, 2), "the first run has no cache");
    let mut last = None;
    let mut most_levels = 0;
    for epoch in 2..=9 {
        let (batch, sources) = twin.epoch(&config, epoch, 1_500);
        assert_eq!(sources, (2, 0), "epoch {epoch}: both views from the cache");
        // A snapshot over the cache's records holds the cached states: they
        // are stored once, in it.
        let holding = snapshot_holding(&twin.incremental.paths().cache_view("by_product"))
            .expect("the view's cache file")
            .map(|named| named.epoch());
        let over_the_same_records = !epoch.is_multiple_of(2);
        assert_eq!(
            holding,
            over_the_same_records.then_some(Epoch(epoch)),
            "epoch {epoch}"
        );
        most_levels = most_levels.max(batch.ids.levels());
        last = Some(batch);
    }
    let last = last.expect("runs");
    assert!(
        most_levels > 1,
        "the id index was extended, not rebuilt, at least once: at most {most_levels} level"
    );
    assert!(
        last.stats.duplicates > 500 && last.stats.invalid > 100,
        "{:?}",
        last.stats
    );
    let segments = tandem::store::list_segments(&twin.incremental.paths()).expect("segments");
    assert!(
        segments.len() >= 4,
        "{} segments: copies must lie segments apart",
        segments.len()
    );
    // The hot product's states are sketches, merged from the cached and the new parts.
    let (_, hot) = last.views[0]
        .keys()
        .find(|(key, _)| *key == "p-hot")
        .expect("the hot product");
    let (_, states) = hot.iter(5).next().expect("its hour");
    assert!(
        matches!(&states[2], MetricState::Distinct(Distinct::Sketch(_))),
        "{:?}",
        states[2].value(&config.views[0].metrics[2].agg)
    );
    assert!(matches!(
        &states[3],
        MetricState::Quantile(Quantiles::Sketch(_))
    ));
}

#[test]
fn a_view_added_or_changed_is_computed_from_the_master_dataset_and_the_others_stay_cached() {
    let mut twin = Twin::new(11);
    let before = config(&[BY_PRODUCT, BY_COUNTRY], twin.incremental.dir.path());
    for epoch in 1..=4 {
        twin.epoch(&before, epoch, 1_500);
    }
    // by_country now buckets by the hour; by_user is new.
    let after = config(
        &[BY_PRODUCT, &by_country_hourly(), BY_USER],
        twin.incremental.dir.path(),
    );
    let (_, sources) = twin.epoch(&after, 5, 1_500);
    assert_eq!(
        sources,
        (1, 2),
        "by_product from the cache, by_country and by_user backfilled"
    );
    let (_, sources) = twin.epoch(&after, 6, 1_500);
    assert_eq!(
        sources,
        (3, 0),
        "after the backfill every view is incremental"
    );
    // A view removed from the config leaves no cache behind (by_user uses
    // no field the others do not, so the event rules stay as they were).
    let fewer = config(
        &[BY_PRODUCT, &by_country_hourly()],
        twin.incremental.dir.path(),
    );
    let (_, sources) = twin.epoch(&fewer, 7, 1_500);
    assert_eq!(sources, (2, 0));
    let cached = tandem::store::list_cache(&twin.incremental.paths()).expect("cache");
    let names: Vec<String> = cached
        .iter()
        .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
        .collect();
    assert_eq!(
        names,
        ["ids.bin", "view-by_country.bin", "view-by_product.bin"]
    );
    // A field no view needs any more changes the event rules (an event
    // without it is no longer malformed): every view is recomputed.
    let no_country = config(&[BY_PRODUCT, BY_USER], twin.incremental.dir.path());
    let (_, sources) = twin.epoch(&no_country, 8, 1_500);
    assert_eq!(sources, (0, 2));
}

#[test]
fn a_deleted_or_damaged_cache_file_is_recomputed_never_read_wrongly() {
    let mut twin = Twin::new(13);
    let config = config(&[BY_PRODUCT, BY_COUNTRY], twin.incremental.dir.path());
    for epoch in 1..=3 {
        twin.epoch(&config, epoch, 1_500);
    }
    let paths = twin.incremental.paths();

    std::fs::remove_file(paths.cache_view("by_country")).expect("delete");
    let (_, sources) = twin.epoch(&config, 4, 1_500);
    assert_eq!(sources, (1, 1), "the deleted view from the master dataset");

    // One byte flipped in the middle of the payload: the crc refuses it.
    let path = paths.cache_view("by_product");
    flip_middle_byte(&path);
    let refused = tandem::store::verify_cache(&path).expect_err("a damaged file is refused");
    assert!(refused.to_string().contains("crc"), "{refused}");
    let (_, sources) = twin.epoch(&config, 5, 1_500);
    assert_eq!(sources, (1, 1), "the damaged view from the master dataset");

    // An id level the cache names, damaged: the run cannot dedup against
    // it, so every view is recomputed (and a level written anew).
    let (_, sources) = twin.epoch(&config, 6, 1_500);
    assert_eq!(sources, (2, 0));
    let levels: Vec<_> = std::fs::read_dir(paths.ids_dir())
        .expect("ids/")
        .map(|entry| entry.expect("entry").path())
        .collect();
    assert!(!levels.is_empty());
    for level in &levels {
        flip_middle_byte(level);
    }
    let (_, sources) = twin.epoch(&config, 7, 1_500);
    assert_eq!(
        sources,
        (0, 2),
        "without the id levels every view from the master dataset"
    );
    let (_, sources) = twin.epoch(&config, 8, 1_500);
    assert_eq!(sources, (2, 0), "the levels are whole again");

    // A cut id file: nothing can be deduplicated against it, so every view is recomputed.
    let ids = paths.cache_ids();
    let file = std::fs::read(&ids).expect("read");
    std::fs::write(&ids, &file[..file.len() - 7]).expect("write");
    let (_, sources) = twin.epoch(&config, 9, 1_500);
    assert_eq!(
        sources,
        (0, 2),
        "without the ids every view from the master dataset"
    );

    let (_, sources) = twin.epoch(&config, 10, 1_500);
    assert_eq!(sources, (2, 0), "the cache is whole again");
    // After an even epoch the cache holds its states itself.
    inspect_reports(&paths, |line| {
        line.starts_with("view-by_product.bin  covers seq ..")
            && line.ends_with(", its state in it  ok")
    });

    // After an odd epoch the cache names the snapshot that holds its
    // states: gone, damaged, or written again since, it is not read.
    let (_, sources) = twin.epoch(&config, 11, 1_500);
    assert_eq!(sources, (2, 0));
    let in_snapshot = |line: &str| {
        line.starts_with("view-by_product.bin  covers seq ..")
            && line.ends_with("its state in the snapshot of epoch 11  ok")
    };
    inspect_reports(&paths, in_snapshot);
    let snapshot = paths.snapshot(Epoch(11));
    std::fs::remove_file(&snapshot).expect("delete");
    inspect_reports(&paths, |line| {
        line == "view-by_product.bin  unusable, recomputed by the next batch run: the snapshot of epoch 11 that held its state is gone, damaged or written again since"
    });
    let (_, sources) = twin.epoch(&config, 13, 1_500);
    assert_eq!(sources, (0, 2), "the snapshot holding the states is gone");

    flip_middle_byte(&paths.snapshot(Epoch(13)));
    let (_, sources) = twin.epoch(&config, 15, 1_500);
    assert_eq!(
        sources,
        (0, 2),
        "the snapshot holding the states is damaged"
    );

    // The same epoch's snapshot written again (by an import, say): with
    // other contents at the same time, or the same contents later, it is
    // another file all the same.
    let rewrite = |epoch: u64, later_ms: i64, took_ms: u64| {
        let snapshot = paths.snapshot(Epoch(epoch));
        let (meta, mut data) =
            tandem::actors::recompute::read_snapshot_data(&snapshot).expect("read");
        data.took_ms += took_ms;
        let created_ms = meta.created_ms + later_ms;
        tandem::store::write_snapshot(&paths, meta.epoch, meta.records, created_ms, &data, 2)
            .expect("write");
    };
    rewrite(15, 0, 1);
    inspect_reports(&paths, |line| {
        line.starts_with("view-by_product.bin  unusable") && line.contains("epoch 15")
    });
    let (_, sources) = twin.epoch(&config, 17, 1_500);
    assert_eq!(
        sources,
        (0, 2),
        "the snapshot was written again, its contents other"
    );
    rewrite(17, 1, 0);
    let (_, sources) = twin.epoch(&config, 19, 1_500);
    assert_eq!(sources, (0, 2), "the snapshot was written again, later");
    let (_, sources) = twin.epoch(&config, 21, 1_500);
    assert_eq!(sources, (2, 0), "the cache names the new snapshot");
}

#[test]
fn a_cache_that_cannot_be_written_keeps_the_snapshot_it_names_and_no_other_old_one() {
    let mut twin = Twin::new(29);
    let config = config(&[BY_PRODUCT, BY_COUNTRY], twin.incremental.dir.path());
    twin.epoch(&config, 1, 1_500);
    let paths = twin.incremental.paths();
    let snapshots = || -> Vec<u64> {
        let mut epochs: Vec<u64> = tandem::store::list_snapshots(&paths)
            .expect("snapshots")
            .into_iter()
            .map(|(epoch, _)| epoch.0)
            .collect();
        epochs.sort_unstable();
        epochs
    };
    // The id file cannot be written: its temporary name is a directory.
    let mut blocked = paths.cache_ids().into_os_string();
    blocked.push(".tmp");
    let blocked = std::path::PathBuf::from(blocked);
    std::fs::create_dir_all(blocked.join("taken")).expect("block");
    for epoch in 2..=6 {
        let (_, sources) = twin.epoch(&config, epoch, 900);
        assert_eq!(
            sources,
            (2, 0),
            "epoch {epoch}: both views from the cache epoch 1's run left"
        );
        let holding =
            snapshot_holding(&paths.cache_view("by_product")).expect("the view's cache file");
        assert_eq!(
            holding.map(|named| named.epoch()),
            Some(Epoch(1)),
            "epoch {epoch}"
        );
        let kept: Vec<u64> = [1, epoch - 1, epoch]
            .into_iter()
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .collect();
        assert_eq!(
            snapshots(),
            kept,
            "epoch {epoch}: the newest two, and the one the cache names"
        );
    }
    std::fs::remove_dir_all(&blocked).expect("unblock");
    let (_, sources) = twin.epoch(&config, 7, 900);
    assert_eq!(sources, (2, 0));
    assert_eq!(snapshots(), vec![6, 7], "the cache names the newest again");
}

/// Asserts that `tandem inspect` reports, of the data_dir, a line (its
/// indent trimmed) that `expected` accepts.
fn inspect_reports(paths: &DataPaths, expected: impl Fn(&str) -> bool) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["inspect", "--data"])
        .arg(paths.root())
        .output()
        .expect("run inspect");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.lines().any(|line| expected(line.trim_start())),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Flips a bit of the byte in the middle of the file at `path`.
fn flip_middle_byte(path: &Path) {
    let middle = std::fs::metadata(path).expect("stat").len() / 2;
    common::xor_byte(path, middle, 0x40);
}

/// A master dataset restored from a backup (or replaced) under a cache that
/// was built on another log: the record before the cache's end differs, the
/// run sees it and computes every view from the master dataset.
#[test]
fn a_cache_left_over_from_another_log_is_not_used() {
    let mut ours = Twin::new(23);
    let config = config(&[BY_PRODUCT, BY_COUNTRY], ours.incremental.dir.path());
    for epoch in 1..=2 {
        ours.epoch(&config, epoch, 1_500);
    }
    let mut theirs = Twin::new(29);
    for epoch in 1..=2 {
        theirs.epoch(&config, epoch, 1_500);
    }
    let (from, to) = (
        ours.incremental.paths().cache_dir(),
        theirs.incremental.paths().cache_dir(),
    );
    for entry in std::fs::read_dir(&from).expect("cache") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
    let (_, sources) = theirs.epoch(&config, 3, 1_500);
    assert_eq!(sources, (0, 2), "another log's cache is refused");
    let (_, sources) = theirs.epoch(&config, 4, 1_500);
    assert_eq!(sources, (2, 0), "the cache rebuilt on this log is used");
}

/// Incremental runs do not read the records under the cache again, so a run
/// that reads every record (and checks its crc) comes every
/// `batch.full_run_every`, whatever the cache holds.
#[test]
fn a_full_run_comes_every_full_run_every() {
    let mut twin = Twin::new(19);
    let daily = config(&[BY_PRODUCT, BY_COUNTRY], twin.incremental.dir.path());
    twin.epoch(&daily, 1, 1_000);
    let (_, sources) = twin.epoch(&daily, 2, 1_000);
    assert_eq!(sources, (2, 0), "the default is a day");
    let text = format!("{BASE}\n[batch]\nfull_run_every = \"1ms\"\n{BY_PRODUCT}{BY_COUNTRY}");
    let often = common::config(&text, twin.incremental.dir.path());
    let (_, sources) = twin.epoch(&often, 3, 1_000);
    assert_eq!(sources, (0, 2), "the last full run is older than 1ms");
}

/// `tandem recompute --full` and `tandem recompute` offline: each writes
/// the snapshot of the newest sealed epoch, with the same view bytes; with
/// nothing sealed, one line says so and the exit code is 1.
#[test]
fn the_offline_command_runs_full_and_incremental_runs_to_the_same_snapshot() {
    let mut store = Store::new();
    let data = store.dir.path().to_path_buf();
    let text = format!(
        "{}{BY_PRODUCT}{BY_COUNTRY}",
        BASE.replace("\"unused\"", &format!("{:?}", data.display().to_string()))
    );
    let config_path = data.join("tandem.toml");
    std::fs::write(&config_path, &text).expect("config");
    let config = config(&[BY_PRODUCT, BY_COUNTRY], &data);
    let tandem = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("recompute")
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .output()
            .expect("tandem recompute")
    };

    let nothing = tandem(&[]);
    assert_eq!(nothing.status.code(), Some(1));
    let error = String::from_utf8_lossy(&nothing.stderr);
    assert!(error.contains("no epoch is sealed yet"), "{error}");
    assert_eq!(error.lines().count(), 1, "{error}");

    let mut stream = Stream::new(17);
    let mut index = tandem::store::EpochIndex::open(&store.paths()).expect("epochs");
    let mut newest = |store: &mut Store, epoch: u64, index: &mut tandem::store::EpochIndex| {
        let records: Vec<Logged> = (0..2_000).map(|_| stream.record(epoch)).collect();
        store.append(&config, &records);
        let sealed = store.seal(epoch, store.log.next_seq().0);
        index.seal(sealed).expect("seal");
    };
    newest(&mut store, 1, &mut index);
    let paths = store.paths();
    let snapshot_views = || {
        let loaded = tandem::store::load_newest::<tandem::actors::recompute::SnapshotData>(&paths)
            .expect("snapshots")
            .expect("a snapshot");
        let views: Vec<Vec<u8>> = loaded
            .data
            .views
            .iter()
            .map(|(_, view)| bytes(&view.state))
            .collect();
        (loaded.meta.epoch, views)
    };
    let first = tandem(&[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    newest(&mut store, 2, &mut index);
    let incremental = tandem(&[]);
    assert!(
        incremental.status.success(),
        "{}",
        String::from_utf8_lossy(&incremental.stderr)
    );
    let out = String::from_utf8_lossy(&incremental.stdout);
    assert!(out.starts_with("epoch 2: 4000 records"), "{out}");
    assert!(
        out.contains("2 views from the batch cache, 0 from the master dataset"),
        "{out}"
    );
    let (epoch, from_cache) = snapshot_views();
    assert_eq!(epoch, Epoch(2));
    let full = tandem(&["--full"]);
    assert!(
        full.status.success(),
        "{}",
        String::from_utf8_lossy(&full.stderr)
    );
    let out = String::from_utf8_lossy(&full.stdout);
    assert!(
        out.contains("(full: 0 views from the batch cache, 2 from"),
        "{out}"
    );
    let (epoch, from_master) = snapshot_views();
    assert_eq!(epoch, Epoch(2));
    assert!(
        from_cache == from_master,
        "the offline runs stored different views"
    );
}
