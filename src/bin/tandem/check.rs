//! `tandem check --config FILE`: validate and print the plan, or every error.

use std::path::Path;
use std::process::ExitCode;
use tandem::Config;
use tandem::aggregate::Agg;
use tandem::config::{BatchEngine, SourceKind, TokenFrom, format_duration};
use tandem::event::Need;

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    match Config::load(path) {
        // A config that would open the API to the network by mistake is
        // taken by the commands that do not listen, and reported here.
        Ok(config) => match config.http.exposure() {
            Some(problem) => {
                let error = tandem::config::ConfigError {
                    file: path.display().to_string(),
                    key: "http.listen".to_owned(),
                    problem,
                    line: None,
                };
                Ok(report(path, &tandem::config::ConfigErrors(vec![error])))
            }
            None => {
                print_plan(&config, path)?;
                Ok(ExitCode::SUCCESS)
            }
        },
        Err(errors) => Ok(report(path, &errors)),
    }
}

/// Prints every config error, one a line, and answers the exit code for a bad config.
pub fn report(path: &Path, errors: &tandem::config::ConfigErrors) -> ExitCode {
    for error in &errors.0 {
        eprintln!("error: {error}");
    }
    let n = errors.0.len();
    eprintln!(
        "{}: {n} problem{}",
        path.display(),
        if n == 1 { "" } else { "s" }
    );
    ExitCode::from(super::EXIT_USAGE)
}

/// Prints the plan a config describes, as the operator reads it.
fn print_plan(config: &Config, path: &Path) -> std::io::Result<()> {
    let duration = |ms: i64| format_duration(std::time::Duration::from_millis(ms as u64));
    say!("{}: ok", path.display());
    say!("data_dir  {}", config.data_dir.display());
    say!(
        "event     id={} time={} max_bytes={}",
        config.event.id.as_deref().unwrap_or("(none: no dedup)"),
        config
            .event
            .time
            .as_deref()
            .unwrap_or("(none: ingest time)"),
        config.event.max_bytes
    );
    say!("sources   {}", config.sources.len());
    for source in &config.sources {
        match &source.kind {
            SourceKind::Rabbitmq(rabbit) => {
                say!(
                    "  {}  rabbitmq  queue={} prefetch={} dead_letter_queue={}",
                    source.name,
                    rabbit.queue,
                    rabbit.prefetch,
                    rabbit.dead_letter_queue
                );
            }
            SourceKind::Http(http) => {
                say!(
                    "  {}  http  POST /v1/events  max_body_bytes={} max_events={}",
                    source.name,
                    http.max_body_bytes,
                    http.max_events
                );
            }
            SourceKind::Demo(demo) => {
                say!(
                    "  {}  demo  {} events/s seed={}{} late_frac={} late_max={} dup_frac={} bad_frac={}",
                    source.name,
                    demo.rate,
                    demo.seed,
                    demo.events
                        .map(|events| format!(" events={events}"))
                        .unwrap_or_default(),
                    demo.late_frac,
                    format_duration(demo.late_max),
                    demo.dup_frac,
                    demo.bad_frac
                );
            }
        }
    }
    say!("speed     {} partitions", config.speed.partitions);
    say!(
        "batch     every {}, {} snapshot(s) kept, a full run every {}",
        format_duration(config.batch.interval),
        config.batch.keep_snapshots,
        format_duration(config.batch.full_run_every)
    );
    if let BatchEngine::Spark {
        submit, timeout, ..
    } = &config.batch.engine
    {
        say!(
            "  on Spark: {} JOB (in {}), killed after {}",
            submit.join(" "),
            (config.batch.engine)
                .spark_dir(&config.data_dir)
                .unwrap_or_default()
                .display(),
            format_duration(*timeout)
        );
    }
    let tokens: Vec<String> = config
        .http
        .tokens
        .iter()
        .map(|token| {
            let from = match &token.from {
                TokenFrom::Env(var) => format!("${var}"),
                TokenFrom::File(path) => path.display().to_string(),
            };
            format!("{} from {from}", token.role.as_str())
        })
        .collect();
    say!(
        "http      {}{}{}",
        config.http.listen,
        config
            .http
            .tls
            .as_ref()
            .map(|tls| format!(
                " https (cert {}, key {})",
                tls.cert.display(),
                tls.key.display()
            ))
            .unwrap_or_default(),
        if tokens.is_empty() {
            " (no token: open to anyone who can reach it)".to_owned()
        } else {
            format!(" (bearer tokens: {})", tokens.join(", "))
        }
    );
    say!(
        "master    segments of {} bytes",
        config.master.segment_max_bytes
    );
    say!("views     {}", config.views.len());
    for view in &config.views {
        let retention = view
            .retention_ms
            .map(|ms| format!("  retention={}", duration(ms)))
            .unwrap_or_default();
        say!(
            "  {}  key=[{}]  bucket={}{retention}",
            view.name,
            view.key.join(", "),
            duration(view.bucket_ms)
        );
        for metric in &view.metrics {
            let what = match (&metric.agg, &metric.field) {
                (Agg::Quantile { q }, Some(field)) => format!("quantile({field}, q={q})"),
                (agg, Some(field)) => format!("{}({field})", agg.name()),
                (agg, None) => agg.name().to_owned(),
            };
            say!("    {:<16} {what}", metric.name);
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
    say!("fields    {}", fields.join(", "));
    Ok(())
}
