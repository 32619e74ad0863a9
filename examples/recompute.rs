//! Measures a full batch run (which writes the batch cache too): the rate at which a recompute rebuilds the three
//! views of `config/tandem.toml` from the master dataset, and its peak memory.
//!
//!     cargo run --release -- generate --events 5000000 --seed 7 > /tmp/ev5m.jsonl
//!     cargo run --release --example recompute -- /tmp/ev5m.jsonl [RUNS] [VIEW]
//!
//! With VIEW, only that view is rebuilt (`sales_by_product` is the view that
//! `bench/duckdb_reference.py` computes, for a like-for-like comparison).
//!
//! Loads the file into a master dataset in a temporary data_dir (not timed),
//! seals it, then runs the batch run RUNS times (default 3) and prints each
//! run's rate, the median, and the peak resident memory of each run.
//!
//! With `--append-percent P` (after the positional arguments), the last P% of
//! the file is held back: a full run covers the rest, the held-back records
//! are appended as the next epoch, and each of RUNS rounds times an
//! incremental run (from the full run's batch cache, restored before each)
//! against a full run over the same records.

/// The daemon's allocator (`src/bin/tandem/main.rs`): a batch run's
/// workers free events another worker parsed, which glibc's allocator
/// serialises on its arena locks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/common/proc_status.rs"]
mod proc_status;

use std::io::BufRead;
use std::path::Path;
use tandem::Config;
use tandem::actors::recompute_worker::Pool;
use tandem::event::Epoch;
use tandem::store::{DataPaths, EpochIndex, MasterLog, NewRecord, SealedEpoch};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The runs log their phases ("batch run built its views"); RUST_LOG=warn hides them.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let (flags, positional): (Vec<String>, Vec<String>) = std::env::args()
        .skip(1)
        .partition(|arg| arg.starts_with("--"));
    let append_percent: Option<f64> = match flags.as_slice() {
        [] => None,
        [flag] => Some(
            flag.strip_prefix("--append-percent=")
                .ok_or("the one flag is --append-percent=P")?
                .parse()?,
        ),
        _ => return Err("the one flag is --append-percent=P".into()),
    };
    let mut args = positional.into_iter();
    let events = args
        .next()
        .ok_or("usage: recompute EVENTS.jsonl [RUNS] [VIEW] [--append-percent=P]")?;
    let runs: usize = args.next().map_or(Ok(3), |runs| runs.parse())?;
    let mut config =
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tandem.toml"))?;
    if let Some(view) = args.next() {
        config.views.retain(|spec| spec.name == view);
        if config.views.is_empty() {
            return Err(format!("no view {view:?} in config/tandem.toml").into());
        }
    }
    let dir = tempfile::tempdir_in(
        std::env::var_os("TANDEM_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into),
    )?;
    config.data_dir = dir.path().to_path_buf();
    let paths = DataPaths::new(dir.path());

    let (mut log, _) = MasterLog::open(&paths, config.master.segment_max_bytes)?;
    let lines = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&events)?)
        .split(b'\n')
        .count();
    let held_back = append_percent.map_or(0, |percent| (lines as f64 * percent / 100.0) as usize);
    let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&events)?);
    let mut batch: Vec<(Vec<u8>, i64, u64)> = Vec::with_capacity(10_000);
    let mut epoch = Epoch(1);
    let flush = |log: &mut MasterLog,
                 batch: &mut Vec<(Vec<u8>, i64, u64)>,
                 epoch: Epoch|
     -> Result<(), Box<dyn std::error::Error>> {
        log.append(batch.iter().map(|(raw, event_ms, id_hash)| NewRecord {
            epoch,
            ingest_ms: 0,
            event_ms: *event_ms,
            id_hash: *id_hash,
            raw,
        }))?;
        batch.clear();
        Ok(())
    };
    let mut epochs = EpochIndex::open(&paths)?;
    let seal = |log: &MasterLog, epoch: Epoch| SealedEpoch {
        epoch,
        end: log.end(),
        next_seq: log.next_seq(),
        later_from: log.next_seq(),
        sealed_at_ms: tandem::now_ms(),
    };
    let mut first = None;
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        if held_back > 0 && i == lines - held_back {
            flush(&mut log, &mut batch, epoch)?;
            let sealed = seal(&log, epoch);
            epochs.seal(sealed)?;
            first = Some(sealed);
            epoch = Epoch(2);
        }
        let Ok(event) = config.schema.parse(&line, 0) else {
            continue;
        };
        batch.push((line, event.event_ms, event.id_hash.map_or(0, |id| id.get())));
        if batch.len() == 10_000 {
            flush(&mut log, &mut batch, epoch)?;
        }
    }
    flush(&mut log, &mut batch, epoch)?;
    let sealed = seal(&log, epoch);
    epochs.seal(sealed)?;
    let bytes: u64 = tandem::store::list_segments(&paths)?
        .iter()
        .map(|segment| segment.len)
        .sum();
    println!(
        "master dataset: {} records, {:.0} MiB in {} segments",
        sealed.next_seq.0,
        bytes as f64 / (1 << 20) as f64,
        tandem::store::list_segments(&paths)?.len()
    );
    drop(log);
    let config = std::sync::Arc::new(config);
    let workers = tandem::actors::recompute_worker::cores();
    tandem::actors::recompute_worker::with_pool(workers, |pool| match first {
        Some(first) => incremental(&paths, &config, first, sealed, runs, pool),
        None => full(&paths, &config, sealed, runs, pool),
    })
}

/// Times full runs over `sealed`: the views alone, then the whole run.
fn full(
    paths: &DataPaths,
    config: &std::sync::Arc<Config>,
    sealed: SealedEpoch,
    runs: usize,
    pool: &Pool,
) -> Result<(), Box<dyn std::error::Error>> {
    let (paths, config) = (paths, config);

    let mut rates = Vec::with_capacity(runs);
    for run in 1..=runs {
        // Reset the peak so each run reports its own.
        std::fs::write("/proc/self/clear_refs", "5").ok();
        let started = std::time::Instant::now();
        let built = tandem::actors::recompute::build_views(
            paths,
            config,
            sealed,
            tandem::actors::RunMode::Full,
            pool,
            tandem::now_ms(),
            &Default::default(),
        )?;
        let build = started.elapsed().as_secs_f64();
        drop(built);
        println!(
            "run {run}: views alone {build:.2} s, {:.0} events/s, peak rss {} MiB",
            sealed.next_seq.0 as f64 / build,
            proc_status::status_kib(None, "VmHWM:") / 1024
        );
        std::fs::write("/proc/self/clear_refs", "5").ok();
        let started = std::time::Instant::now();
        let batch = tandem::actors::recompute::recompute(
            paths,
            config,
            sealed,
            tandem::actors::RunMode::Full,
            &Default::default(),
            pool,
        )?;
        let took = started.elapsed().as_secs_f64();
        let rate = sealed.next_seq.0 as f64 / took;
        rates.push(rate);
        println!(
            "run {run}: {took:.2} s, {rate:.0} events/s, counted {} duplicates {}, peak rss {} MiB, snapshot {} MiB",
            batch.stats.counted,
            batch.stats.duplicates,
            proc_status::status_kib(None, "VmHWM:") / 1024,
            batch.meta.map_or(0, |meta| meta.payload_bytes >> 20)
        );
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "bench: recompute_eps {:.0} events/s (median of {runs})",
        rates[rates.len() / 2]
    );
    Ok(())
}

/// Times incremental runs over `sealed` from the batch cache of a full run
/// over `first`, each against a full run over `sealed`.
fn incremental(
    paths: &DataPaths,
    config: &std::sync::Arc<Config>,
    first: SealedEpoch,
    sealed: SealedEpoch,
    runs: usize,
    pool: &Pool,
) -> Result<(), Box<dyn std::error::Error>> {
    use tandem::actors::RunMode;
    use tandem::actors::recompute::{Progress, recompute};
    let started = std::time::Instant::now();
    recompute(
        paths,
        config,
        first,
        RunMode::Full,
        &Progress::default(),
        pool,
    )?;
    println!(
        "full run over the first {} records: {:.2} s",
        first.next_seq.0,
        started.elapsed().as_secs_f64()
    );
    // The cache, the id levels and the snapshot it names (a full run
    // replaces them).
    let dirs = [
        (paths.cache_dir(), paths.root().join("cache.saved")),
        (paths.ids_dir(), paths.root().join("ids.saved")),
        (paths.snapshots_dir(), paths.root().join("snapshots.saved")),
    ];
    let copy = |from: &Path, to: &Path| -> std::io::Result<()> {
        std::fs::remove_dir_all(to).ok();
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
        Ok(())
    };
    let mut bytes = 0;
    for (dir, saved) in &dirs {
        copy(dir, saved)?;
        bytes += std::fs::read_dir(saved)?
            .filter_map(|entry| entry.ok()?.metadata().ok())
            .map(|meta| meta.len())
            .sum::<u64>();
    }
    println!(
        "batch cache with its id levels and the snapshot it names: {} MiB",
        bytes >> 20
    );
    let mut ratios = Vec::with_capacity(runs);
    for run in 1..=runs {
        for (dir, saved) in &dirs {
            copy(saved, dir)?;
        }
        std::fs::write("/proc/self/clear_refs", "5").ok();
        let progress = Progress::default();
        let started = std::time::Instant::now();
        recompute(paths, config, sealed, RunMode::Incremental, &progress, pool)?;
        let took = started.elapsed().as_secs_f64();
        let (read, _) = progress.get();
        let (from_cache, from_master) = progress.views();
        let rss = proc_status::status_kib(None, "VmHWM:") / 1024;
        std::fs::write("/proc/self/clear_refs", "5").ok();
        let started = std::time::Instant::now();
        recompute(
            paths,
            config,
            sealed,
            RunMode::Full,
            &Progress::default(),
            pool,
        )?;
        let full = started.elapsed().as_secs_f64();
        ratios.push(took / full);
        println!(
            "run {run}: incremental {took:.2} s ({read} records read, {from_cache} views from the cache, \
             {from_master} from the master dataset, peak rss {rss} MiB), full {full:.2} s (peak rss {} MiB): {:.3}",
            proc_status::status_kib(None, "VmHWM:") / 1024,
            took / full
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "bench: incremental_over_full {:.3} (median of {runs})",
        ratios[ratios.len() / 2]
    );
    Ok(())
}
