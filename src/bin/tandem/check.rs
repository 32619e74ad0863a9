//! `tandem check --config FILE`: validate and print the plan, or every error.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use tandem::Config;
use tandem::aggregate::Agg;
use tandem::config::{SourceKind, format_duration};
use tandem::event::Need;

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    match Config::load(path) {
        Ok(config) => {
            print!("{}", plan(&config, path));
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("error: {error}");
            }
            let n = errors.0.len();
            eprintln!("{}: {n} problem{}", path.display(), if n == 1 { "" } else { "s" });
            Ok(ExitCode::from(super::EXIT_USAGE))
        }
    }
}

/// The plan a config describes, as the operator reads it.
fn plan(config: &Config, path: &Path) -> String {
    let mut out = String::new();
    let duration = |ms: i64| format_duration(std::time::Duration::from_millis(ms as u64));
    let _ = writeln!(out, "{}: ok", path.display());
    let _ = writeln!(out, "data_dir  {}", config.data_dir.display());
    let _ = writeln!(
        out,
        "event     id={} time={} max_bytes={}",
        config.event.id.as_deref().unwrap_or("(none: no dedup)"),
        config.event.time.as_deref().unwrap_or("(none: ingest time)"),
        config.event.max_bytes
    );
    let _ = writeln!(out, "sources   {}", config.sources.len());
    for source in &config.sources {
        match &source.kind {
            SourceKind::Rabbitmq(rabbit) => {
                let _ = writeln!(
                    out,
                    "  {}  rabbitmq  queue={} prefetch={} dead_letter_queue={}",
                    source.name, rabbit.queue, rabbit.prefetch, rabbit.dead_letter_queue
                );
            }
        }
    }
    let _ = writeln!(out, "speed     {} partitions", config.speed.partitions);
    let _ = writeln!(out, "batch     every {}", format_duration(config.batch.interval));
    let _ = writeln!(
        out,
        "http      {}{}",
        config.http.listen,
        config.http.auth_token_env.as_ref().map(|var| format!(" (bearer token from ${var})")).unwrap_or_default()
    );
    let _ = writeln!(out, "master    segments of {} bytes", config.master.segment_max_bytes);
    let _ = writeln!(out, "views     {}", config.views.len());
    for view in &config.views {
        let retention = view.retention_ms.map(|ms| format!("  retention={}", duration(ms))).unwrap_or_default();
        let _ = writeln!(out, "  {}  key=[{}]  bucket={}{retention}", view.name, view.key.join(", "), duration(view.bucket_ms));
        for metric in &view.metrics {
            let what = match (&metric.agg, &metric.field) {
                (Agg::Quantile { q }, Some(field)) => format!("quantile({field}, q={q})"),
                (agg, Some(field)) => format!("{}({field})", agg.name()),
                (agg, None) => agg.name().to_owned(),
            };
            let _ = writeln!(out, "    {:<16} {what}", metric.name);
        }
    }
    let fields: Vec<String> = config
        .schema
        .fields()
        .iter()
        .map(|field| match field.need {
            Need::Number => format!("{} (number)", field.name),
            Need::Scalar => field.name.clone(),
        })
        .collect();
    let _ = writeln!(out, "fields    {}", fields.join(", "));
    out
}
