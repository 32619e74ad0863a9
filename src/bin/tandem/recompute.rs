//! `tandem recompute --config FILE [--full]`: the batch run of the newest
//! sealed epoch, offline (the daemon must be stopped: the data_dir's lock is
//! taken). Incremental by default, like the daemon's runs; `--full` computes
//! every view from the whole master dataset and rewrites the batch cache.

use anyhow::Context as _;
use std::path::Path;
use std::process::ExitCode;
use tandem::Config;
use tandem::actors::RunMode;
use tandem::actors::recompute::{Progress, recompute};
use tandem::actors::recompute_worker::with_pool;
use tandem::store::{self, DataDirLock, DataPaths};

pub fn run(path: &Path, full: bool) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => return Ok(super::check::report(path, &errors)),
    };
    let paths = DataPaths::new(&config.data_dir);
    let _lock = DataDirLock::acquire(&paths)?;
    let epochs = store::read_epochs(&paths).context("cannot read the sealed epochs")?;
    let Some(sealed) = epochs.last().copied() else {
        anyhow::bail!(
            "{}: no epoch is sealed yet, so there is nothing for a batch run to cover",
            config.data_dir.display()
        );
    };
    let mode = if full {
        RunMode::Full
    } else {
        RunMode::Incremental
    };
    let progress = Progress::default();
    let config = std::sync::Arc::new(config);
    let workers = tandem::actors::recompute_worker::cores();
    let batch = with_pool(workers, |pool| {
        recompute(&paths, &config, sealed, mode, &progress, pool)
    })?;
    let (from_cache, from_master) = progress.views();
    say!(
        "epoch {}: {} records, {} counted, {} duplicates, {} invalid, in {} ms ({}: \
         {from_cache} views from the batch cache, {from_master} from the master dataset)",
        sealed.epoch,
        batch.stats.records,
        batch.stats.counted,
        batch.stats.duplicates,
        batch.stats.invalid,
        batch.took_ms,
        if full { "full" } else { "incremental" }
    );
    Ok(ExitCode::SUCCESS)
}
