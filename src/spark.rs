//! The batch layer on Apache Spark: `tandem spark-job` writes a PySpark
//! program from the config, and `tandem import` turns what it wrote into a
//! batch snapshot, checked before it is served.
//!
//! The program is one template (`src/spark_job.py`) and a description of
//! the views that this module writes from the config (their key columns,
//! buckets and metrics, named as `tandem export` names the columns), so the
//! logic is written once. It reads the exported master dataset up to a
//! sealed epoch, applies the batch layer's rules, and writes per view one
//! row per (key, bucket) holding each metric's state in the form tandem
//! holds it (see the template), per quantile metric the DDSketch bins of
//! the groups past the exact limit, the first copy of every id, and last a
//! manifest of what it read and counted.
//!
//! The import checks the manifest against the master dataset (the epoch is
//! sealed, the run read every record the seal covers, the config's
//! fingerprint is the one served, the counts add up, per view and in all)
//! and writes the snapshot a native run of that epoch writes: the same
//! views, counts and ids (`tests/spark.rs` compares them byte for byte).

use crate::Config;
use crate::actors::recompute::{
    Batch, BatchStats, SealedEpochData, SnapshotData, SnapshotView, StoredIds, build_indexes,
    open_ids, prune_snapshots, remove_unused_levels, spec_fingerprint, view_fingerprint,
};
use crate::aggregate::{
    Agg, DISTINCT_EXACT_LIMIT, Distinct, MetricState, Micros, QUANTILE_EXACT_LIMIT, Quantiles,
    ViewSpec, ViewState,
};
use crate::event::{Epoch, Need, Seq};
use crate::export;
use crate::store::{self, DataPaths, IdIndex, SealedEpoch, SnapshotMeta};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row, RowAccessor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The job's template; `@JOB@` stands for the description of the views.
const TEMPLATE: &str = include_str!("spark_job.py");

/// Why a Spark batch cannot be imported (nothing is served then).
#[derive(Debug, thiserror::Error)]
pub enum SparkError {
    /// The master dataset or the snapshot directory cannot be read or written.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A field the views use cannot be exported (see `tandem export`).
    #[error(transparent)]
    Export(#[from] export::ExportError),
    /// A file of the job's output cannot be read as Parquet.
    #[error("{}: {source}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// The job's manifest is missing: the run did not finish.
    #[error(
        "{}: no manifest: the Spark run did not finish (it writes its manifest last)",
        dir.display()
    )]
    Unfinished {
        /// The job's output folder.
        dir: PathBuf,
    },
    /// The submit command could not be started.
    #[error("cannot run {program:?} (batch.submit): {source}")]
    Submit {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The Spark run failed.
    #[error("the Spark run of epoch {epoch} {how}; its log is {}: {tail}", log.display())]
    Run {
        /// The epoch.
        epoch: Epoch,
        /// How it ended: the exit status, or killed after the timeout.
        how: String,
        /// The file holding its output.
        log: PathBuf,
        /// The last lines of the log.
        tail: String,
    },
    /// The job's output does not hold what it must, or its counts disagree
    /// with the master dataset or with each other.
    #[error("{}: {problem}", path.display())]
    Invalid {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong, with the view, key and bucket where there is one.
        problem: String,
    },
}

/// The job's manifest: what it read and counted.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    epoch: u64,
    /// The export it read.
    master: PathBuf,
    /// Rows of `ids/`: the first copy of every id.
    ids: u64,
    fingerprint: String,
    /// Rows read (every record of the files up to `epoch`).
    rows: u64,
    max_seq: i64,
    records: u64,
    duplicates: u64,
    invalid: u64,
    counted: u64,
    /// The views computed, by name, in config order.
    views: Vec<String>,
    took_ms: u64,
}

/// The description of the views the job is generated with.
#[derive(Debug, Serialize)]
struct JobSpec {
    tandem: &'static str,
    fingerprint: String,
    hll_lg_k: u8,
    distinct_exact_limit: usize,
    quantile_exact_limit: usize,
    ddsketch_min_value: f64,
    views: Vec<JobView>,
}

#[derive(Debug, Serialize)]
struct JobView {
    name: String,
    key_columns: Vec<String>,
    bucket_ms: i64,
    /// Every column the metrics read.
    columns: Vec<String>,
    metrics: Vec<JobMetric>,
}

#[derive(Debug, Serialize)]
struct JobMetric {
    agg: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    column: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bin: Option<String>,
}

/// What a Spark batch must match to be served: every view's fingerprint
/// (its spec, the sketches' parameters, the event rules, this build).
pub fn fingerprint(config: &Config) -> String {
    let all: Vec<String> = config
        .views
        .iter()
        .map(|spec| view_fingerprint(config, spec))
        .collect();
    format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(all.join("\n").as_bytes())
    )
}

/// The PySpark program computing `config`'s views.
///
/// # Errors
/// A field the views use cannot be exported under its own name.
pub fn job_source(config: &Config) -> Result<String, SparkError> {
    export::check_columns(&config.schema, &config.views)?;
    let fields = config.schema.fields();
    let number = |slot: Option<usize>| {
        slot.and_then(|slot| fields.get(slot))
            .map(|field| field.name.clone())
    };
    let views = config
        .views
        .iter()
        .map(|spec| {
            let key_columns = spec
                .key_slots
                .iter()
                .filter_map(|slot| fields.get(*slot))
                .map(|field| export::text_column(&field.name, field.need == Need::Number))
                .collect();
            let metrics: Vec<JobMetric> = spec
                .metrics
                .iter()
                .map(|metric| {
                    let field = number(metric.slot);
                    let (column, bin) = match metric.agg {
                        Agg::Count => (None, None),
                        Agg::Distinct => (field.map(|name| format!("{name}__xxh3")), None),
                        Agg::Quantile { .. } => {
                            (field.clone(), field.map(|name| format!("{name}__bin")))
                        }
                        _ => (field, None),
                    };
                    JobMetric {
                        agg: metric.agg.name(),
                        column,
                        bin,
                    }
                })
                .collect();
            let mut columns: Vec<String> = metrics
                .iter()
                .flat_map(|metric| metric.column.iter().chain(&metric.bin))
                .cloned()
                .collect();
            columns.sort();
            columns.dedup();
            JobView {
                name: spec.name.clone(),
                key_columns,
                bucket_ms: spec.bucket_ms,
                columns,
                metrics,
            }
        })
        .collect();
    let spec = JobSpec {
        tandem: env!("CARGO_PKG_VERSION"),
        fingerprint: fingerprint(config),
        hll_lg_k: crate::aggregate::HLL_LG_K,
        distinct_exact_limit: DISTINCT_EXACT_LIMIT,
        quantile_exact_limit: QUANTILE_EXACT_LIMIT,
        ddsketch_min_value: crate::aggregate::DDSKETCH_MIN_VALUE,
        views,
    };
    let json = serde_json::to_string_pretty(&spec).map_err(|err| SparkError::Invalid {
        path: PathBuf::from("<job>"),
        problem: err.to_string(),
    })?;
    Ok(TEMPLATE.replace("@JOB@", &json))
}

/// What an import served.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The snapshot written.
    pub meta: SnapshotMeta,
    /// The counts of the run.
    pub stats: BatchStats,
    /// Groups per view, in config order.
    pub groups: Vec<usize>,
}

/// Reads the output of the job for `epoch` in `from`, checks it against
/// `config`'s master dataset and writes it as the batch snapshot of
/// `epoch`. The caller holds the data_dir (the daemon, or the offline
/// command with its lock).
///
/// # Errors
/// See [`SparkError`]; no snapshot is written then (an id level may be,
/// which the next batch run or import removes).
pub fn import(config: &Config, epoch: Epoch, from: &Path) -> Result<Imported, SparkError> {
    let (meta, data, groups, _) = read_and_write(config, epoch, from)?;
    Ok(Imported {
        meta,
        stats: data.stats,
        groups,
    })
}

/// The checked output of the job for `epoch` in `from`, written as the
/// snapshot of `epoch`; the snapshot's header, its payload and the groups
/// of each view.
fn read_and_write(
    config: &Config,
    epoch: Epoch,
    from: &Path,
) -> Result<(SnapshotMeta, SnapshotData<'static>, Vec<usize>, IdIndex), SparkError> {
    let (mut data, groups) = read_output(config, epoch, from)?;
    let records = data.sealed.map_or(0, |sealed| sealed.next_seq);
    let paths = DataPaths::new(&config.data_dir);
    // The ids go to a level file, which the snapshot names.
    let upto = Seq(data.sealed.map_or(0, |sealed| sealed.later_from));
    let ids = open_ids(&paths, upto, &data.ids)?;
    let levels = ids.names();
    data.ids = StoredIds::Levels(levels.clone());
    let meta = store::write_snapshot(&paths, epoch, records, crate::now_ms(), &data, usize::MAX)?;
    prune_snapshots(&paths, config)?;
    remove_unused_levels(&paths, &levels);
    Ok((meta, data, groups, ids))
}

/// The daemon's batch run of `sealed` on Spark: writes the job under `dir`
/// (`batch.spark_dir`), runs `submit` on it (its output to
/// `dir/epoch-E`, its log to `dir/epoch-E.log`), kills it after `timeout`,
/// and imports its output as the snapshot, answering the batch to serve (its indexes
/// built). The outputs and logs of this epoch and earlier ones are removed
/// once it is imported; a failed run's stay until a later run succeeds.
///
/// # Errors
/// The run could not start, failed or timed out (named with its log's last
/// lines), or its output does not check out ([`import`]).
pub async fn run_batch(
    config: Arc<Config>,
    sealed: SealedEpoch,
    (submit, dir): (&[String], &Path),
    timeout: Duration,
) -> Result<Batch, SparkError> {
    let dir = dir.to_owned();
    let io = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| SparkError::Store(store::Error::io(op, &path, source))
    };
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(io("create", &dir))?;
    let job = dir.join("job.py");
    tokio::fs::write(&job, job_source(&config)?)
        .await
        .map_err(io("write", &job))?;
    let epoch = sealed.epoch;
    let out = dir.join(format!("epoch-{}", epoch.0));
    let log = dir.join(format!("epoch-{}.log", epoch.0));
    let log_file = tokio::fs::File::create(&log)
        .await
        .map_err(io("create", &log))?
        .into_std()
        .await;
    let errors = log_file.try_clone().map_err(io("open", &log))?;
    let (program, leading) = submit.split_first().ok_or_else(|| SparkError::Submit {
        program: String::new(),
        source: std::io::Error::other("batch.submit is empty"),
    })?;
    let master = config.master.parquet_dir.clone().unwrap_or_default();
    let mut child = tokio::process::Command::new(program)
        .args(leading)
        .arg(&job)
        .arg("--master")
        .arg(&master)
        .args(["--epoch", &epoch.0.to_string()])
        .arg("--out")
        .arg(&out)
        .stdin(std::process::Stdio::null())
        .stdout(log_file)
        .stderr(errors)
        // A group of its own, so that a timeout stops everything the run
        // started (spark-submit's JVM, the Python driver it starts).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SparkError::Submit {
            program: program.clone(),
            source,
        })?;
    tracing::info!(%epoch, log = %log.display(), "Spark batch run started");
    let how = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => None,
        Ok(Ok(status)) => Some(format!("failed ({status})")),
        Ok(Err(err)) => Some(format!("could not be waited for ({err})")),
        Err(_) => {
            let group = child
                .id()
                .and_then(|pid| rustix::process::Pid::from_raw(pid.cast_signed()));
            if let Some(group) = group
                && let Err(err) =
                    rustix::process::kill_process_group(group, rustix::process::Signal::KILL)
            {
                tracing::warn!(error = %err, "cannot kill the Spark run's process group");
            }
            child.kill().await.ok();
            Some(format!(
                "took longer than batch.spark_timeout ({}) and was killed",
                crate::config::format_duration(timeout)
            ))
        }
    };
    if let Some(how) = how {
        // Spark's own INFO and WARN lines (its shutdown's last) say nothing
        // of why: the last lines besides them do (a Python traceback's end).
        let tail = match tokio::fs::read_to_string(&log).await {
            Ok(text) => {
                let said: Vec<&str> = text
                    .lines()
                    .filter(|line| {
                        !line.trim().is_empty()
                            && !line.contains(" INFO ")
                            && !line.contains(" WARN ")
                    })
                    .collect();
                said[said.len().saturating_sub(3)..].join(" | ")
            }
            Err(err) => format!("(the log cannot be read: {err})"),
        };
        return Err(SparkError::Run {
            epoch,
            how,
            log,
            tail,
        });
    }
    let spark_dir = dir.clone();
    let imported = tokio::task::spawn_blocking(move || {
        let batch = import_batch(&config, epoch, &out);
        if batch.is_ok() {
            remove_outputs(&spark_dir, epoch);
        }
        batch
    })
    .await;
    imported.unwrap_or_else(|join| {
        Err(SparkError::Invalid {
            path: dir,
            problem: format!("importing the run's output panicked: {join}"),
        })
    })
}

/// Removes the outputs and logs of the runs of `epoch` and earlier from
/// `dir` (a failed run's are kept until a later run succeeds).
fn remove_outputs(dir: &Path, epoch: Epoch) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let of = name
            .strip_prefix("epoch-")
            .map(|rest| rest.trim_end_matches(".log"))
            .and_then(|number| number.parse::<u64>().ok());
        if of.is_none_or(|of| of > epoch.0) {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(err) = removed {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove a Spark run's output");
        }
    }
}

/// [`import`], answering the batch to serve, its indexes built.
fn import_batch(config: &Config, epoch: Epoch, from: &Path) -> Result<Batch, SparkError> {
    let (meta, data, _, ids) = read_and_write(config, epoch, from)?;
    let batch =
        Batch::from_snapshot(&config.views, meta, data, Arc::new(ids)).map_err(|problem| {
            SparkError::Invalid {
                path: from.to_owned(),
                problem,
            }
        })?;
    let states: Vec<&ViewState> = batch.views.iter().collect();
    if let Some(indexes) = build_indexes(&config.views, &states) {
        batch.indexes.set(indexes).ok();
    }
    Ok(batch)
}

/// The snapshot the job's output in `from` gives for `epoch`, checked, and
/// the groups of each view.
///
/// # Errors
/// See [`SparkError`].
pub fn read_output(
    config: &Config,
    epoch: Epoch,
    from: &Path,
) -> Result<(SnapshotData<'static>, Vec<usize>), SparkError> {
    let paths = DataPaths::new(&config.data_dir);
    let manifest = read_manifest(from)?;
    let invalid = |path: &Path, problem: String| SparkError::Invalid {
        path: path.to_owned(),
        problem,
    };
    let sealed = store::read_epochs(&paths)?
        .into_iter()
        .find(|sealed| sealed.epoch == epoch)
        .ok_or_else(|| {
            invalid(
                &config.data_dir,
                format!("epoch {epoch} is not sealed in this master dataset"),
            )
        })?;
    let manifest_path = from.join("manifest");
    if manifest.epoch != epoch.0 {
        return Err(invalid(
            &manifest_path,
            format!("the run covers epoch {}, not {epoch}", manifest.epoch),
        ));
    }
    if manifest.fingerprint != fingerprint(config) {
        return Err(invalid(
            &manifest_path,
            "the job was generated from another config or tandem version (its fingerprint differs): write it again with `tandem spark-job`".to_owned(),
        ));
    }
    export::check_export(config, &manifest.master, epoch).map_err(|err| {
        invalid(
            &manifest_path,
            format!(
                "the export the run read cannot be served as this config's: {}",
                crate::error_chain(&err)
            ),
        )
    })?;
    let expected_max = i64::try_from(sealed.next_seq.0).unwrap_or(i64::MAX) - 1;
    if manifest.rows != sealed.next_seq.0 || manifest.max_seq != expected_max {
        return Err(invalid(
            &manifest_path,
            format!(
                "the run read {} records (up to seq {}), and epoch {epoch}'s seal covers {}: the export it read is incomplete",
                manifest.rows, manifest.max_seq, sealed.next_seq.0
            ),
        ));
    }
    if manifest.records != manifest.counted + manifest.duplicates + manifest.invalid {
        return Err(invalid(
            &manifest_path,
            format!(
                "{} records are not {} counted + {} duplicates + {} invalid",
                manifest.records, manifest.counted, manifest.duplicates, manifest.invalid
            ),
        ));
    }
    let names = &manifest.views;
    let configured: Vec<&str> = config.views.iter().map(|view| view.name.as_str()).collect();
    if *names != configured {
        return Err(invalid(
            &manifest_path,
            format!("the run computed views {names:?}, the config has {configured:?}"),
        ));
    }
    let now = crate::now_ms();
    let mut stats = BatchStats {
        records: manifest.records,
        counted: manifest.counted,
        duplicates: manifest.duplicates,
        invalid: manifest.invalid,
        expired: 0,
    };
    let mut views = Vec::with_capacity(config.views.len());
    let mut groups = Vec::with_capacity(config.views.len());
    for (at, spec) in config.views.iter().enumerate() {
        let (state, expired) = read_view(
            spec,
            (from, at),
            manifest.counted,
            spec.retention_cutoff(now),
        )?;
        stats.expired += expired;
        groups.push(state.len());
        views.push((
            spec.name.clone(),
            SnapshotView {
                spec: spec_fingerprint(spec),
                state,
            },
        ));
    }
    let ids = read_ids(&from.join("ids"), sealed.later_from.0, manifest.ids)?;
    let data = SnapshotData {
        views,
        stats,
        sealed: Some(SealedEpochData {
            epoch: sealed.epoch.0,
            next_seq: sealed.next_seq.0,
            later_from: sealed.later_from.0,
        }),
        took_ms: manifest.took_ms,
        ids: StoredIds::Inline(ids.into()),
    };
    Ok((data, groups))
}

fn read_manifest(from: &Path) -> Result<Manifest, SparkError> {
    let dir = from.join("manifest");
    let unfinished = || SparkError::Unfinished {
        dir: from.to_owned(),
    };
    match std::fs::metadata(&dir) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(unfinished()),
        Err(err) => return Err(store::Error::io("read", &dir, err).into()),
        Ok(_) => {}
    }
    let files = output_files(&dir, "")?;
    let mut text = String::new();
    for file in files {
        text.push_str(
            &std::fs::read_to_string(&file)
                .map_err(|source| store::Error::io("read", &file, source))?,
        );
    }
    let line = text.lines().find(|line| !line.trim().is_empty());
    let line = line.ok_or_else(unfinished)?;
    serde_json::from_str(line).map_err(|err| SparkError::Invalid {
        path: dir,
        problem: format!("the manifest does not read: {err}"),
    })
}

/// The data files of one output folder (Spark's `part-*` files; its
/// markers and checksums left out), in name order.
fn output_files(dir: &Path, extension: &str) -> Result<Vec<PathBuf>, SparkError> {
    let entries = std::fs::read_dir(dir).map_err(|source| store::Error::io("read", dir, source))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| store::Error::io("read", dir, source))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("part-") && name.ends_with(extension) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Every row of the Parquet files of `dir`, with the positions of the named
/// columns (in `names`' order) in each.
fn for_each_row(
    dir: &Path,
    names: &[&str],
    mut each: impl FnMut(&Path, &Row, &[usize]) -> Result<(), SparkError>,
) -> Result<(), SparkError> {
    for path in output_files(dir, ".parquet")? {
        let parquet = |source| SparkError::Parquet {
            path: path.clone(),
            source,
        };
        let reader = SerializedFileReader::try_from(path.as_path()).map_err(parquet)?;
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let top = schema.root_schema().get_fields();
        let at = names
            .iter()
            .map(|name| {
                top.iter()
                    .position(|field| field.name() == *name)
                    .ok_or_else(|| SparkError::Invalid {
                        path: path.clone(),
                        problem: format!("no column {name}"),
                    })
            })
            .collect::<Result<Vec<usize>, _>>()?;
        for row in reader.get_row_iter(None).map_err(parquet)? {
            each(&path, &row.map_err(parquet)?, &at)?;
        }
    }
    Ok(())
}

/// The distinct ids of the first copies before `later_from`, sorted, of
/// the `written` rows of `dir`.
fn read_ids(dir: &Path, later_from: u64, written: u64) -> Result<Vec<u64>, SparkError> {
    let mut ids = Vec::new();
    let mut rows = 0u64;
    for_each_row(dir, &["id_hash", "seq"], |path, row, at| {
        let field = |at: usize, name: &str| {
            row.get_long(at).map_err(|err| SparkError::Invalid {
                path: path.to_owned(),
                problem: format!("{name}: {err}"),
            })
        };
        let (id, seq) = (field(at[0], "id_hash")?, field(at[1], "seq")?);
        rows += 1;
        if u64::try_from(seq).is_ok_and(|seq| seq < later_from) {
            ids.push(id as u64);
        }
        Ok(())
    })?;
    if rows != written {
        return Err(SparkError::Invalid {
            path: dir.to_owned(),
            problem: format!(
                "{rows} first copies of ids, the run wrote {written}: a part is missing"
            ),
        });
    }
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    if ids.len() != before {
        return Err(SparkError::Invalid {
            path: dir.to_owned(),
            problem: format!("{} ids given twice", before - ids.len()),
        });
    }
    Ok(ids)
}

/// The bins of one quantile metric's large groups: per (key, bucket), the
/// positive and negative bins and the values counted as zero.
type Bins = BTreeMap<(String, i64), (Vec<(i32, u64)>, Vec<(i32, u64)>, u64)>;

fn read_bins(dir: &Path) -> Result<Bins, SparkError> {
    let mut bins = Bins::new();
    for_each_row(
        dir,
        &["key", "bucket", "sign", "bin", "n"],
        |path, row, at| {
            let bad = |problem: String| SparkError::Invalid {
                path: path.to_owned(),
                problem,
            };
            let key = row.get_string(at[0]).map_err(|err| bad(err.to_string()))?;
            let bucket = row.get_long(at[1]).map_err(|err| bad(err.to_string()))?;
            let sign = row.get_int(at[2]).map_err(|err| bad(err.to_string()))?;
            let bin = row.get_int(at[3]).map_err(|err| bad(err.to_string()))?;
            let n = row.get_long(at[4]).map_err(|err| bad(err.to_string()))?;
            let n = u64::try_from(n)
                .map_err(|_| bad(format!("key {key:?} bucket {bucket}: {n} values")))?;
            let entry = bins.entry((key.clone(), bucket)).or_default();
            match sign {
                1 => entry.0.push((bin, n)),
                -1 => entry.1.push((bin, n)),
                _ => entry.2 += n,
            }
            Ok(())
        },
    )?;
    Ok(bins)
}

/// One view's state from the rows of view `view` in `from` (groups before
/// `cutoff` dropped, as retention drops them), and the events dropped;
/// its groups must hold the `counted` events.
fn read_view(
    spec: &ViewSpec,
    (from, view): (&Path, usize),
    counted: u64,
    cutoff: Option<i64>,
) -> Result<(ViewState, u64), SparkError> {
    let dir = &from.join("views").join(view.to_string());
    let mut bins: BTreeMap<usize, Bins> = BTreeMap::new();
    for (at, metric) in spec.metrics.iter().enumerate() {
        if matches!(metric.agg, Agg::Quantile { .. }) {
            let dir = from
                .join("bins")
                .join(view.to_string())
                .join(at.to_string());
            bins.insert(at, read_bins(&dir)?);
        }
    }
    let mut names: Vec<String> = vec!["key".into(), "bucket".into(), "count".into()];
    for (at, metric) in spec.metrics.iter().enumerate() {
        match metric.agg {
            Agg::Count => {}
            Agg::Sum | Agg::Mean => names.push(format!("m{at}_sum")),
            Agg::Min | Agg::Max => names.push(format!("m{at}")),
            Agg::Distinct => {
                names.push(format!("m{at}_exact"));
                names.push(format!("m{at}_hll"));
            }
            Agg::Quantile { .. } => {
                names.push(format!("m{at}_values"));
                names.push(format!("m{at}_min"));
                names.push(format!("m{at}_max"));
            }
        }
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut state = ViewState::new();
    let (mut events, mut expired) = (0u64, 0u64);
    let mut states = Vec::with_capacity(spec.metrics.len());
    for_each_row(dir, &names, |path, row, at| {
        let fields = row
            .get_column_iter()
            .map(|(_, field)| field)
            .collect::<Vec<_>>();
        let key = row.get_string(at[0]).ok();
        let bucket = row.get_long(at[1]).ok();
        let (Some(key), Some(bucket)) = (key, bucket) else {
            return Err(SparkError::Invalid {
                path: path.to_owned(),
                problem: format!("view {}: a row without its key or bucket", spec.name),
            });
        };
        let bad = |problem: String| SparkError::Invalid {
            path: path.to_owned(),
            problem: format!("view {} key {key:?} bucket {bucket}: {problem}", spec.name),
        };
        let count = row
            .get_long(at[2])
            .ok()
            .and_then(|count| u64::try_from(count).ok())
            .filter(|count| *count > 0)
            .ok_or_else(|| bad("no events".to_owned()))?;
        events += count;
        if cutoff.is_some_and(|cutoff| bucket < cutoff) {
            expired += count;
            for bins in bins.values_mut() {
                bins.remove(&(key.clone(), bucket));
            }
            return Ok(());
        }
        if spec.bucket_of(bucket) != bucket {
            return Err(bad(format!(
                "not a start of a {} ms bucket",
                spec.bucket_ms
            )));
        }
        states.clear();
        let mut next = 3;
        let mut take = || {
            let field = fields[at[next]];
            next += 1;
            field
        };
        for (metric_at, metric) in spec.metrics.iter().enumerate() {
            let state = match metric.agg {
                Agg::Count => MetricState::Count(count),
                Agg::Sum | Agg::Mean => {
                    let sum = match take() {
                        Field::Str(text) => text.parse::<i128>().ok(),
                        _ => None,
                    }
                    .map(Micros::from_i128)
                    .ok_or_else(|| bad(format!("metric {}: no sum", metric.name)))?;
                    if matches!(metric.agg, Agg::Sum) {
                        MetricState::Sum(sum)
                    } else {
                        MetricState::Mean { sum, count }
                    }
                }
                Agg::Min | Agg::Max => {
                    let Field::Double(value) = take() else {
                        return Err(bad(format!("metric {}: no value", metric.name)));
                    };
                    if matches!(metric.agg, Agg::Min) {
                        MetricState::Min(*value)
                    } else {
                        MetricState::Max(*value)
                    }
                }
                Agg::Distinct => {
                    let (exact, hll) = (take(), take());
                    let distinct = match (exact, hll) {
                        (Field::ListInternal(list), _) => Distinct::from_hashes(
                            list.elements()
                                .iter()
                                .map(|element| match element {
                                    Field::Long(hash) => Ok(*hash as u64),
                                    other => Err(bad(format!(
                                        "metric {}: a hash {other:?}",
                                        metric.name
                                    ))),
                                })
                                .collect::<Result<_, _>>()?,
                        ),
                        (_, Field::Bytes(bytes)) => Distinct::from_datasketches_image(bytes.data())
                            .map_err(|problem| bad(format!("metric {}: {problem}", metric.name)))?,
                        _ => return Err(bad(format!("metric {}: no distinct state", metric.name))),
                    };
                    MetricState::Distinct(distinct)
                }
                Agg::Quantile { .. } => {
                    let (values, min, max) = (take(), take(), take());
                    let quantiles = match values {
                        Field::ListInternal(list) => Quantiles::from_values(
                            list.elements()
                                .iter()
                                .map(|element| match element {
                                    Field::Double(value) => Ok(*value),
                                    other => Err(bad(format!(
                                        "metric {}: a value {other:?}",
                                        metric.name
                                    ))),
                                })
                                .collect::<Result<_, _>>()?,
                        ),
                        _ => {
                            let (Field::Double(min), Field::Double(max)) = (min, max) else {
                                return Err(bad(format!("metric {}: no min or max", metric.name)));
                            };
                            let (positive, negative, zero) = bins
                                .get_mut(&metric_at)
                                .and_then(|bins| bins.remove(&(key.clone(), bucket)))
                                .ok_or_else(|| {
                                    bad(format!("metric {}: no values and no bins", metric.name))
                                })?;
                            let binned: u64 = positive
                                .iter()
                                .chain(&negative)
                                .map(|(_, values)| values)
                                .sum::<u64>()
                                + zero;
                            if binned != count {
                                return Err(bad(format!(
                                    "metric {}: {binned} values in its bins, {count} events",
                                    metric.name
                                )));
                            }
                            Quantiles::from_bins(&positive, &negative, zero, (*min, *max)).map_err(
                                |problem| bad(format!("metric {}: {problem}", metric.name)),
                            )?
                        }
                    };
                    MetricState::Quantile(quantiles)
                }
            };
            states.push(state);
        }
        if !state.merge_group(spec, key, bucket, &states) {
            return Err(bad("given twice".to_owned()));
        }
        Ok(())
    })?;
    if events != counted {
        return Err(SparkError::Invalid {
            path: dir.to_owned(),
            problem: format!(
                "view {}: its groups hold {events} events, the run counted {counted}",
                spec.name
            ),
        });
    }
    if let Some((metric, (key, bucket))) = bins
        .iter()
        .find_map(|(metric, bins)| Some((metric, bins.keys().next()?)))
    {
        return Err(SparkError::Invalid {
            path: from
                .join("bins")
                .join(view.to_string())
                .join(metric.to_string()),
            problem: format!(
                "view {} key {key:?} bucket {bucket}: bins of a group that is not past the exact limit",
                spec.name
            ),
        });
    }
    state.check(spec).map_err(|problem| SparkError::Invalid {
        path: dir.to_owned(),
        problem: format!("view {}: {problem}", spec.name),
    })?;
    Ok((state, expired))
}
