//! `tandem export --config FILE --out DIR [--upto-epoch E]`: the sealed
//! epochs of the master dataset as Parquet (see `tandem::export`), one line
//! per epoch: written, or found whole and skipped.

use std::path::Path;
use std::process::ExitCode;
use tandem::Config;
use tandem::event::Epoch;

pub fn run(path: &Path, out: &Path, upto: Option<u64>) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => return Ok(super::check::report(path, &errors)),
    };
    let exported = tandem::export::export(&config, out, upto.map(Epoch))?;
    for (epoch, rows) in &exported.skipped {
        say!("epoch {epoch}: {rows} rows, exported already");
    }
    for (epoch, rows) in &exported.written {
        say!(
            "epoch {epoch}: {rows} rows written to {}",
            tandem::export::epoch_file(out, *epoch).display()
        );
    }
    if exported.skipped.is_empty() && exported.written.is_empty() {
        say!(
            "{}: no epoch is sealed yet, so there is nothing to export",
            config.data_dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
