//! `tandem spark-job --config FILE [--out JOB.py]` writes the PySpark
//! program of the config's views; `tandem import --config FILE --epoch E
//! --from DIR` serves what it computed as the batch snapshot of epoch E,
//! offline (the data_dir's lock is taken). See `tandem::spark`.

use std::path::Path;
use std::process::ExitCode;
use tandem::Config;
use tandem::event::Epoch;
use tandem::store::{DataDirLock, DataPaths};

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| super::check::report(path, &errors))
}

pub fn job(path: &Path, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let source = tandem::spark::job_source(&config)?;
    match out {
        Some(out) => {
            std::fs::write(out, source)
                .map_err(|err| anyhow::anyhow!("cannot write {}: {err}", out.display()))?;
            say!(
                "wrote {}: run it with spark-submit {} --master EXPORT_DIR --epoch E --out OUT_DIR",
                out.display(),
                out.display()
            );
        }
        None => {
            use std::io::Write as _;
            std::io::stdout().lock().write_all(source.as_bytes())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn import(path: &Path, epoch: u64, from: &Path) -> anyhow::Result<ExitCode> {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let paths = DataPaths::new(&config.data_dir);
    let _lock = DataDirLock::acquire(&paths)?;
    let imported = tandem::spark::import(&config, Epoch(epoch), from)?;
    let stats = imported.stats;
    say!(
        "epoch {epoch}: {} records, {} counted, {} duplicates, {} invalid; {} groups in {} views; snapshot written",
        stats.records,
        stats.counted,
        stats.duplicates,
        stats.invalid,
        imported.groups.iter().sum::<usize>(),
        imported.groups.len()
    );
    Ok(ExitCode::SUCCESS)
}
