//! `tandem inspect --data DIR`: segments, sealed epochs, snapshots, the
//! batch cache and the id levels, with a CRC check of every record and file. Exits 1 when anything is damaged.

use anyhow::Context as _;
use std::path::Path;
use std::process::ExitCode;
use tandem::actors::recompute;
use tandem::store::{self, DataPaths};

pub fn run(data: &Path) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(data.is_dir(), "{} is not a directory", data.display());
    let paths = DataPaths::new(data);
    let mut damaged = 0usize;
    say!("data_dir {}", data.display());

    let segments = store::list_segments(&paths).context("cannot list segments")?;
    let mut records_total = 0u64;
    let mut log_end = None;
    say!("segments {}", segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let newest = i + 1 == segments.len();
        let mut epochs = (u64::MAX, 0u64);
        let scanned = store::scan_segment(segment, None, |header, _| {
            epochs = (epochs.0.min(header.epoch.0), epochs.1.max(header.epoch.0));
        });
        let name = file_name(&segment.path);
        match scanned {
            Ok(outcome) => {
                records_total += outcome.records;
                let epochs = if outcome.records == 0 {
                    "-".to_owned()
                } else {
                    format!("{}..={}", epochs.0, epochs.1)
                };
                let status = match outcome.torn {
                    None => "ok".to_owned(),
                    Some(offset) if newest => format!(
                        "torn tail at offset {offset} ({} bytes, cut at next start)",
                        segment.len - offset
                    ),
                    Some(offset) => {
                        damaged += 1;
                        format!("DAMAGED: ends inside a record at offset {offset}")
                    }
                };
                say!(
                    "  {name}  {} bytes  {} records  seq {}..{}  epochs {epochs}  {status}",
                    segment.len,
                    outcome.records,
                    segment.first_seq,
                    segment.first_seq.0 + outcome.records
                );
                if newest {
                    log_end = Some(store::LogPosition {
                        segment: segment.index,
                        offset: outcome.end,
                    });
                }
            }
            Err(err) => {
                damaged += 1;
                say!("  {name}  {} bytes  DAMAGED: {err}", segment.len);
            }
        }
    }
    say!("records  {records_total}");

    match store::read_epochs(&paths) {
        Ok(epochs) => {
            say!("sealed epochs {}", epochs.len());
            if let Some(last) = epochs.last() {
                say!(
                    "  newest: epoch {} at {} (seq {}), sealed at {}",
                    last.epoch,
                    last.end,
                    last.next_seq,
                    format_ms(last.sealed_at_ms)
                );
                if let Some(end) = log_end
                    && last.end > end
                {
                    damaged += 1;
                    say!(
                        "  DAMAGED: epoch {} is sealed at {} but the log ends at {end}",
                        last.epoch,
                        last.end
                    );
                }
            }
        }
        Err(err) => {
            damaged += 1;
            say!("sealed epochs DAMAGED: {err}");
        }
    }

    let snapshots = store::list_snapshots(&paths).context("cannot list snapshots")?;
    say!("snapshots {}", snapshots.len());
    let mut whole = Vec::new();
    for (i, (_, path)) in snapshots.iter().enumerate() {
        let name = file_name(path);
        match store::verify_snapshot(path) {
            Ok(meta) => {
                say!(
                    "  {name}  epoch {}  {} records  {} bytes  created {}  ok{}",
                    meta.epoch,
                    meta.records,
                    meta.payload_bytes,
                    format_ms(meta.created_ms),
                    if i == 0 { "  (newest)" } else { "" }
                );
                whole.push(meta);
            }
            Err(err) => {
                damaged += 1;
                say!("  {name}  DAMAGED: {err}");
            }
        }
    }

    // The batch cache only saves work: a damaged file is recomputed by the
    // next batch run, never read wrongly, so it is reported, not counted.
    let cache = store::list_cache(&paths).context("cannot list the batch cache")?;
    say!("batch cache {} files", cache.len());
    for path in &cache {
        let name = file_name(path);
        let unusable = "unusable, recomputed by the next batch run";
        if path == &paths.cache_ids() {
            match store::verify_cache(path) {
                Ok(info) => say!(
                    "  {name}  covers seq ..{}  {} bytes  ok",
                    info.upto,
                    info.payload_bytes
                ),
                Err(err) => say!("  {name}  {unusable}: {err}"),
            }
            continue;
        }
        // A view's state is in the file, or in a snapshot it names.
        match recompute::verify_view_cache(path) {
            Ok((info, None)) => say!(
                "  {name}  covers seq ..{}  {} bytes, its state in it  ok",
                info.upto,
                info.payload_bytes
            ),
            Ok((info, Some(named))) if whole.iter().any(|meta| named.names(meta)) => say!(
                "  {name}  covers seq ..{}  its state in the snapshot of epoch {}  ok",
                info.upto,
                named.epoch()
            ),
            Ok((_, Some(named))) => say!(
                "  {name}  {unusable}: the snapshot of epoch {} that held its state is gone, damaged or written again since",
                named.epoch()
            ),
            Err(err) => say!("  {name}  {unusable}: {err}"),
        }
    }

    // Id levels are read again from the master dataset when they do not
    // check out: reported, not counted, as the cache.
    let levels = store::list_levels(&paths).context("cannot list the id levels")?;
    say!("id levels {}", levels.len());
    for name in &levels {
        match store::Level::open(&paths, name) {
            Ok(level) => say!(
                "  {name}  {} ids  {} bytes in memory  ok",
                level.len(),
                level.memory_bytes()
            ),
            Err(err) => say!("  {name}  unusable, read again from the master dataset: {err}"),
        }
    }

    if damaged > 0 {
        say!(
            "result: {damaged} damaged item{}",
            if damaged == 1 { "" } else { "s" }
        );
        return Ok(ExitCode::from(super::EXIT_FAILURE));
    }
    say!("result: ok");
    Ok(ExitCode::SUCCESS)
}

/// The last part of `path`, for a report line.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}
