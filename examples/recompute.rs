//! Measures a full batch run: the rate at which a recompute rebuilds the three
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

#[path = "../tests/common/proc_status.rs"]
mod proc_status;

use std::io::BufRead;
use std::path::Path;
use tandem::Config;
use tandem::event::Epoch;
use tandem::store::{DataPaths, EpochIndex, MasterLog, NewRecord, SealedEpoch};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let events = args
        .next()
        .ok_or("usage: recompute EVENTS.jsonl [RUNS] [VIEW]")?;
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
    let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&events)?);
    let mut batch: Vec<(Vec<u8>, i64, u64)> = Vec::with_capacity(10_000);
    let flush = |log: &mut MasterLog,
                 batch: &mut Vec<(Vec<u8>, i64, u64)>|
     -> Result<(), Box<dyn std::error::Error>> {
        log.append(batch.iter().map(|(raw, event_ms, id_hash)| NewRecord {
            epoch: Epoch(1),
            ingest_ms: 0,
            event_ms: *event_ms,
            id_hash: *id_hash,
            raw,
        }))?;
        batch.clear();
        Ok(())
    };
    for line in reader.split(b'\n') {
        let line = line?;
        let Ok(event) = config.schema.parse(&line, 0) else {
            continue;
        };
        batch.push((line, event.event_ms, event.id_hash.map_or(0, |id| id.get())));
        if batch.len() == 10_000 {
            flush(&mut log, &mut batch)?;
        }
    }
    flush(&mut log, &mut batch)?;
    let sealed = SealedEpoch {
        epoch: Epoch(1),
        end: log.end(),
        next_seq: log.next_seq(),
        later_from: log.next_seq(),
        sealed_at_ms: tandem::now_ms(),
    };
    EpochIndex::open(&paths)?.seal(sealed)?;
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

    let mut rates = Vec::with_capacity(runs);
    for run in 1..=runs {
        // Reset the peak so each run reports its own.
        std::fs::write("/proc/self/clear_refs", "5").ok();
        let started = std::time::Instant::now();
        let workers = std::thread::available_parallelism().map_or(2, usize::from);
        let (views, _, _) = tandem::actors::recompute::build_views(
            &paths,
            &config,
            sealed,
            workers,
            tandem::now_ms(),
            &Default::default(),
        )?;
        let build = started.elapsed().as_secs_f64();
        drop(views);
        println!(
            "run {run}: views alone {build:.2} s, {:.0} events/s, peak rss {} MiB",
            sealed.next_seq.0 as f64 / build,
            proc_status::status_kib(None, "VmHWM:") / 1024
        );
        std::fs::write("/proc/self/clear_refs", "5").ok();
        let started = std::time::Instant::now();
        let batch =
            tandem::actors::recompute::recompute(&paths, &config, sealed, &Default::default())?;
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
