//! The end-to-end benchmark: every path of tandem on this machine, each figure
//! next to the reference it can be compared with, measured in the same run.
//!
//!     cargo build --release && cargo run --release --example bench
//!     cargo run --release --example bench -- --runs 3 --only recompute,restart
//!     cargo run --example bench -- --quick        # small sizes, under a minute
//!     cargo run --release --example bench -- --only recompute --recompute-events 20000000
//!
//! Uses the three views of `config/tandem.toml`, events from
//! `tandem generate` (seed 7), its own temporary data_dirs (under
//! `$TANDEM_BENCH_DIR` or the system temp dir) and its own RabbitMQ queues
//! (`$TANDEM_BENCH_AMQP_URI`, default the local broker), deleted afterwards.
//! `rabbitmq` (to fill its queues) and `http_ingest` run `tandem publish`,
//! from the `tandem` binary built next to this example.
//!
//! Prints `bench: NAME VALUE UNIT` for every figure of every run, then a table
//! of the medians. Figures (`--only` takes the group names):
//! - `ingest`: `inprocess_ingest_eps`, events/s through the actor API into
//!   both layers, durable;
//! - `rabbitmq`: `rabbitmq_ingest_eps` (consumed, durable, acked from a
//!   pre-filled durable queue), `rabbitmq_bare_eps` (a bare lapin consumer
//!   that only acks, on an equally filled queue), `rabbitmq_ratio`;
//! - `http_ingest`: `http_ingest_eps`, posted in batches of 1,000 through
//!   `tandem publish --http`;
//! - `query`: p50/p99 of key, top-10 (all time, the last hour, an unaligned
//!   range), totals (all time, the last hour) and a hot key's series, in
//!   process, over HTTP, and as the scan of the snapshot's groups that
//!   answered them before the indexes, with 5 M events in the batch layer and
//!   0.5 M in the speed layer while 20 k events/s stream in; then, with
//!   ingest stopped, `dashboard_cpu_pct`: the process's CPU while a headless
//!   Chromium has the dashboard open, less its idle CPU, in % of a core (and
//!   `dashboard_refreshes_per_s`, the top-N queries it asked a second);
//! - `freshness`: from the publish of a marked event to RabbitMQ to the first
//!   query that sees it;
//! - `recompute`: `recompute_eps` and `recompute_peak_rss_mb` of a full batch
//!   run (in a child process, so the peak is the run's own), what its views
//!   and their indexes take (`recompute_views_rss_mb`: its snapshot decoded
//!   and indexed in a process of its own) and the peak beyond them
//!   (`recompute_peak_beyond_views_mb`), and
//!   `duckdb_recompute_eps` for the by-product view when `duckdb` is installed
//!   (`bench/duckdb_reference.py`, by the python of the virtualenv
//!   `scripts/services` installs, else by python3);
//! - `restart`: `restart_s`, from process start to ready on a data_dir whose
//!   snapshot covers all but the last tenth of the events; and
//!   `restart_snapshot_s` (when the snapshot was loaded, from the start of
//!   recovery) and `restart_replay_s` (the replay of the tenth after it,
//!   beside the decoding of the snapshot's states);
//! - `spark` (not in `--quick`): on a master dataset of its own (2 M events),
//!   `export_eps` and `export_mib_s` (`tandem export`, in process),
//!   `spark_batch_s` (the job of `tandem spark-job` by `spark-submit` in
//!   `local[2]`, 6 GiB for the driver), `spark_import_s` (reading and
//!   checking its output), `native_batch_s` (a full native run, in a child)
//!   and `duckdb_batch_s` (DuckDB's first-copy query of the three views'
//!   counts and sums over the same Parquet files), all in the same run;
//!   PySpark and DuckDB from the virtualenv `scripts/services` installs.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/common/proc_status.rs"]
mod proc_status;
#[path = "../tests/common/pyspark.rs"]
mod pyspark;
#[path = "../tests/common/workload.rs"]
mod workload;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tandem::aggregate::{QueryKind, TimeRange};
use tandem::event::Epoch;
use tandem::store::{DataPaths, EpochIndex, MasterLog, NewRecord, SealedEpoch};
use tandem::{Config, Handle, Options, Query, Question};

type BoxError = Box<dyn std::error::Error>;

/// How many of everything.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    ingest: usize,
    rabbitmq: usize,
    http: usize,
    queries: usize,
    /// Events in the batch layer, in the speed layer, and streaming in
    /// meanwhile, for the query phase.
    query_batch: usize,
    query_speed: usize,
    query_feed: usize,
    freshness: usize,
    recompute: usize,
    /// Events of the Spark comparison's master dataset (0: not run).
    spark: usize,
}

const FULL: Sizes = Sizes {
    ingest: 2_000_000,
    rabbitmq: 300_000,
    http: 1_000_000,
    queries: 300,
    query_batch: 5_000_000,
    query_speed: 500_000,
    query_feed: 1_500_000,
    freshness: 200,
    recompute: 10_000_000,
    spark: 2_000_000,
};

const QUICK: Sizes = Sizes {
    ingest: 10_000,
    rabbitmq: 5_000,
    http: 5_000,
    queries: 30,
    query_batch: 20_000,
    query_speed: 2_000,
    query_feed: 2_000,
    freshness: 10,
    recompute: 30_000,
    spark: 0,
};

const GROUPS: [&str; 8] = [
    "ingest",
    "rabbitmq",
    "http_ingest",
    "query",
    "freshness",
    "recompute",
    "restart",
    "spark",
];

/// Events per push in process, and per HTTP request.
const CHUNK: usize = 1_000;
/// Pushes in flight at once in process.
const IN_FLIGHT: usize = 32;

struct Args {
    sizes: Sizes,
    runs: usize,
    only: Vec<String>,
    /// Where data_dirs go; with `$TANDEM_BENCH_DIR` set, the generated events
    /// and the master dataset are also kept there for the next run.
    dir: PathBuf,
    keep: bool,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        sizes: FULL,
        runs: 3,
        only: GROUPS.iter().map(|group| (*group).to_owned()).collect(),
        dir: std::env::var_os("TANDEM_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into),
        keep: std::env::var_os("TANDEM_BENCH_DIR").is_some(),
    };
    let (mut runs, mut recompute) = (None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => parsed.sizes = QUICK,
            "--runs" => runs = Some(args.next().ok_or("--runs needs a number")?.parse()?),
            "--recompute-events" => {
                recompute = Some(
                    args.next()
                        .ok_or("--recompute-events needs a number")?
                        .parse()?,
                )
            }
            "--only" => {
                let only = args.next().ok_or("--only needs group names")?;
                parsed.only = only.split(',').map(str::to_owned).collect();
                if let Some(unknown) = parsed
                    .only
                    .iter()
                    .find(|group| !GROUPS.contains(&group.as_str()))
                {
                    return Err(format!(
                        "unknown group {unknown:?}: expected some of {}",
                        GROUPS.join(",")
                    )
                    .into());
                }
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}: usage: bench [--quick] [--runs N] [--recompute-events N] [--only {}]",
                    GROUPS.join(",")
                )
                .into());
            }
        }
    }
    if let Some(events) = recompute {
        parsed.sizes.recompute = events;
    }
    parsed.runs = runs.unwrap_or(if parsed.sizes.ingest == QUICK.ingest {
        1
    } else {
        3
    });
    Ok(parsed)
}

/// The figures of every run.
#[derive(Default)]
struct Results {
    figures: BTreeMap<String, (Vec<f64>, &'static str)>,
    order: Vec<String>,
}

impl Results {
    fn record(&mut self, name: &str, value: f64, unit: &'static str) {
        println!("bench: {name} {value:.3} {unit}");
        if !self.figures.contains_key(name) {
            self.order.push(name.to_owned());
        }
        self.figures
            .entry(name.to_owned())
            .or_insert_with(|| (Vec::new(), unit))
            .0
            .push(value);
    }

    fn table(&self) {
        println!();
        println!("{:<34} {:>14} {:<9} runs", "figure", "median", "unit");
        for name in &self.order {
            let (values, unit) = &self.figures[name];
            let shown: Vec<String> = values.iter().map(|value| format!("{value:.1}")).collect();
            println!(
                "{name:<34} {:>14.1} {unit:<9} {}",
                median(values),
                shown.join(", ")
            );
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples.get(index).copied().unwrap_or(f64::NAN)
}

/// The shipped config text with its `[[source]]` replaced by `source`.
fn config_text(source: &str) -> Result<String, BoxError> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tandem.toml"))?;
    let start = text
        .find("[[source]]")
        .ok_or("config/tandem.toml has no [[source]]")?;
    let end = text
        .find("[speed]")
        .ok_or("config/tandem.toml has no [speed]")?;
    Ok(format!("{}{source}\n{}", &text[..start], &text[end..]))
}

fn config(source: &str, data_dir: &Path) -> Result<Config, BoxError> {
    let mut config = Config::parse(&config_text(source)?, "bench.toml")?;
    config.data_dir = data_dir.to_path_buf();
    Ok(config)
}

fn amqp_uri() -> String {
    std::env::var("TANDEM_BENCH_AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn rabbitmq_source(queue: &str) -> String {
    format!(
        "[[source]]\nname = \"orders\"\ntype = \"rabbitmq\"\nuri = \"{}\"\nqueue = \"{queue}\"\nprefetch = 2000\n",
        amqp_uri()
    )
}

/// The generated stream's day: from midnight UTC yesterday for 24 hours, so
/// that it lies within every view's retention (the shortest is 7 days) and a
/// day's runs share their cached files. Answers (start, end) in epoch
/// milliseconds, and the start as RFC 3339.
fn stream_day() -> (i64, i64, String) {
    const DAY: i64 = 86_400_000;
    let start = tandem::now_ms().div_euclid(DAY) * DAY - DAY;
    let text = chrono::DateTime::from_timestamp_millis(start)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    (start, start + DAY, text)
}

/// The arguments of `tandem generate` for `n` events of the stream's day, seed 7.
fn generate_args(n: usize) -> Vec<String> {
    let (_, _, start) = stream_day();
    ["--events", &n.to_string(), "--seed", "7", "--start", &start]
        .map(str::to_owned)
        .to_vec()
}

/// Events from the reference generator (see `generate_args`), kept in `dir`
/// for the next run when `keep` (the generator is deterministic).
fn events(dir: &Path, keep: bool, n: usize) -> Result<Vec<Vec<u8>>, BoxError> {
    let (_, _, start) = stream_day();
    let cached = dir.join(format!(
        "tandem-bench-generate-{n}-seed7-{}.jsonl",
        &start[..10]
    ));
    let jsonl = match std::fs::read(&cached) {
        Ok(jsonl) if keep => jsonl,
        _ => {
            let args = generate_args(n);
            let jsonl = workload::generate(&args.iter().map(String::as_str).collect::<Vec<_>>());
            if keep {
                std::fs::write(&cached, &jsonl)?;
            }
            jsonl
        }
    };
    Ok(workload::lines(&jsonl)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect())
}

fn accepted(handle: &Handle) -> u64 {
    handle
        .sources()
        .iter()
        .map(|source| source.stats.accepted.load(Ordering::Relaxed))
        .sum()
}

async fn wait_accepted(handle: &Handle, n: u64, what: &str) -> Result<(), BoxError> {
    let started = Instant::now();
    while accepted(handle) < n {
        if started.elapsed() > Duration::from_secs(600) {
            return Err(
                format!("{what}: {} of {n} accepted after 10 min", accepted(handle)).into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Pushes every event through the in-process source, `CHUNK` a push,
/// `IN_FLIGHT` pushes in flight; answers events/s. The clock starts once the pushes'
/// buffers are copied from `events`: a caller hands over buffers it holds.
async fn push_all(handle: &Arc<Handle>, events: &[Vec<u8>]) -> Result<f64, BoxError> {
    let chunks: Vec<Vec<Vec<u8>>> = events.chunks(CHUNK).map(<[Vec<u8>]>::to_vec).collect();
    let started = Instant::now();
    let mut pushes = futures_util::stream::iter(chunks.into_iter().map(|chunk| {
        let handle = Arc::clone(handle);
        async move { handle.ingest_many(chunk).await }
    }))
    .buffer_unordered(IN_FLIGHT);
    while let Some(outcome) = pushes.next().await {
        outcome?;
    }
    Ok(events.len() as f64 / started.elapsed().as_secs_f64())
}

async fn bench_ingest(
    results: &mut Results,
    dir: &Path,
    events: &[Vec<u8>],
) -> Result<(), BoxError> {
    let data = tempfile::tempdir_in(dir)?;
    let handle = Arc::new(tandem::start(config("", data.path())?, Options::manual_epochs()).await?);
    let eps = push_all(&handle, events).await?;
    results.record("inprocess_ingest_eps", eps, "events/s");
    handle.shutdown().await;
    Ok(())
}

/// Writes the events to `dir/events.jsonl`, off the async threads.
async fn write_events(dir: &Path, events: &[Vec<u8>]) -> Result<PathBuf, BoxError> {
    let (file, jsonl) = (dir.join("events.jsonl"), events.join(&b'\n'));
    let path = file.clone();
    tokio::task::spawn_blocking(move || std::fs::write(path, jsonl)).await??;
    Ok(file)
}

/// Runs `tandem publish ARGS FILE` (the binary built next to this example)
/// off the async threads, and fails with its error output if it fails.
async fn tandem_publish(args: Vec<String>, file: &Path) -> Result<(), BoxError> {
    let (binary, file, given) = (tandem_binary()?, file.to_path_buf(), args.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(binary)
            .arg("publish")
            .args(&given)
            .arg(&file)
            .output()
    })
    .await??;
    if !out.status.success() {
        return Err(format!(
            "tandem publish {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// Fills `queue` with every event: durable, persistent messages, with confirms.
async fn fill(queue: &str, file: &Path) -> Result<(), BoxError> {
    let args = ["--uri", &amqp_uri(), "--queue", queue].map(str::to_owned);
    tandem_publish(args.to_vec(), file).await
}

async fn delete(queues: &[&str]) {
    if let Ok(connection) = Connection::connect(&amqp_uri(), ConnectionProperties::default()).await
    {
        if let Ok(channel) = connection.create_channel().await {
            for queue in queues {
                channel
                    .queue_delete((*queue).into(), QueueDeleteOptions::default())
                    .await
                    .ok();
            }
        }
        connection.close(200, "done".into()).await.ok();
    }
}

/// A bare consumer: prefetch 2000, acks (multiple) every 1000 deliveries;
/// answers messages/s once `n` are acked.
async fn bare_consume(queue: &str, n: usize) -> Result<f64, BoxError> {
    let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(2_000, BasicQosOptions::default()).await?;
    let started = Instant::now();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "bare".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut seen = 0usize;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        seen += 1;
        if seen.is_multiple_of(1_000) || seen == n {
            delivery.ack(BasicAckOptions { multiple: true }).await?;
        }
        if seen == n {
            break;
        }
    }
    let eps = n as f64 / started.elapsed().as_secs_f64();
    connection.close(200, "done".into()).await.ok();
    Ok(eps)
}

fn unique(prefix: &str) -> String {
    format!(
        "tandem-bench.{prefix}.{}.{}",
        std::process::id(),
        tandem::now_ms()
    )
}

async fn bench_rabbitmq(
    results: &mut Results,
    dir: &Path,
    events: &[Vec<u8>],
) -> Result<(), BoxError> {
    let (queue, bare) = (unique("ingest"), unique("bare"));
    let dead = format!("{queue}.dead");
    let files = tempfile::tempdir_in(dir)?;
    let outcome = async {
        let file = write_events(files.path(), events).await?;
        fill(&queue, &file).await?;
        fill(&bare, &file).await?;
        let bare_eps = bare_consume(&bare, events.len()).await?;
        let data = tempfile::tempdir_in(dir)?;
        let started = Instant::now();
        let handle = tandem::start(
            config(&rabbitmq_source(&queue), data.path())?,
            Options::manual_epochs(),
        )
        .await?;
        wait_accepted(&handle, events.len() as u64, "rabbitmq ingest").await?;
        let eps = events.len() as f64 / started.elapsed().as_secs_f64();
        handle.shutdown().await;
        results.record("rabbitmq_ingest_eps", eps, "events/s");
        results.record("rabbitmq_bare_eps", bare_eps, "events/s");
        results.record("rabbitmq_ratio", eps / bare_eps, "ratio");
        Ok::<_, BoxError>(())
    }
    .await;
    delete(&[&queue, &bare, &dead]).await;
    outcome
}

/// The `tandem` binary built next to this example.
fn tandem_binary() -> Result<PathBuf, BoxError> {
    let binary = workload::tandem_binary();
    if binary.exists() {
        Ok(binary)
    } else {
        Err(format!(
            "{} is missing: build it first (cargo build, with --release for a release run)",
            binary.display()
        )
        .into())
    }
}

fn free_addr() -> Result<std::net::SocketAddr, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Starts the HTTP API for `handle` on a free port; answers its base URL.
fn serve(handle: &Arc<Handle>) -> Result<(String, actix_web::dev::ServerHandle), BoxError> {
    let addr = free_addr()?;
    let state = tandem::http::ApiState {
        handle: Arc::clone(handle),
        tokens: tandem::http::Tokens::open(),
        ready: Arc::new(AtomicBool::new(true)),
    };
    let server = tandem::http::serve(state, addr)?;
    let stop = server.handle();
    actix::spawn(server);
    Ok((format!("http://{addr}"), stop))
}

async fn bench_http_ingest(
    results: &mut Results,
    dir: &Path,
    events: &[Vec<u8>],
) -> Result<(), BoxError> {
    let data = tempfile::tempdir_in(dir)?;
    let file = write_events(data.path(), events).await?;
    let source = "[[source]]\nname = \"push\"\ntype = \"http\"\n";
    let handle = Arc::new(
        tandem::start(
            config(source, &data.path().join("data"))?,
            Options::manual_epochs(),
        )
        .await?,
    );
    let (base, server) = serve(&handle)?;
    let started = Instant::now();
    let args = ["--batch", &CHUNK.to_string(), "--http", &base].map(str::to_owned);
    tandem_publish(args.to_vec(), &file).await?;
    let took = started.elapsed().as_secs_f64();
    let posted = accepted(&handle);
    if posted != events.len() as u64 {
        return Err(format!("{posted} of {} events accepted", events.len()).into());
    }
    results.record("http_ingest_eps", events.len() as f64 / took, "events/s");
    server.stop(true).await;
    handle.shutdown().await;
    Ok(())
}

/// Events per second pushed while the queries run.
const QUERY_INGEST_EPS: f64 = 20_000.0;
/// The hottest product of the generator (Zipf rank 1).
const HOT_KEY: &str = "p-00000";

/// One kind of query of the query phase: a name, what is asked, and the same
/// question as an HTTP path.
struct QueryShape {
    name: &'static str,
    question: fn(usize) -> Question,
    range: TimeRange,
    path: String,
}

/// The dashboard's questions over data from `start` to `end` (where the
/// events held when the queries start end): the last hour is the hour before
/// `end`, the unaligned range lies within the data.
fn query_shapes(start: i64, end: i64) -> Vec<QueryShape> {
    let hour = TimeRange {
        from: Some(end - 3_600_000),
        to: Some(end),
    };
    // Neither end on a bucket edge of any view (1 min, 5 min, 1 h).
    let unaligned = TimeRange {
        from: Some(start + 3 * 3_600_000 + 17 * 60_000 + 23_000),
        to: Some(start + 11 * 3_600_000 + 41 * 60_000 + 7_000),
    };
    let top = |_: usize| Question::Top {
        metric: "revenue".into(),
        n: 10,
    };
    let range_query = |range: TimeRange| match (range.from, range.to) {
        (Some(from), Some(to)) => format!("from={from}&to={to}"),
        _ => String::new(),
    };
    let view = "/v1/views/sales_by_product";
    vec![
        QueryShape {
            name: "key",
            question: |i| Question::Key(product(i)),
            range: TimeRange::ALL,
            path: format!("{view}/keys/"),
        },
        QueryShape {
            name: "top10",
            question: top,
            range: TimeRange::ALL,
            path: format!("{view}/top?metric=revenue&n=10"),
        },
        QueryShape {
            name: "top10_hour",
            question: top,
            range: hour,
            path: format!("{view}/top?metric=revenue&n=10&{}", range_query(hour)),
        },
        QueryShape {
            name: "top10_unaligned",
            question: top,
            range: unaligned,
            path: format!("{view}/top?metric=revenue&n=10&{}", range_query(unaligned)),
        },
        QueryShape {
            name: "totals",
            question: |_| Question::Totals,
            range: TimeRange::ALL,
            path: format!("{view}/totals"),
        },
        QueryShape {
            name: "totals_hour",
            question: |_| Question::Totals,
            range: hour,
            path: format!("{view}/totals?{}", range_query(hour)),
        },
        QueryShape {
            name: "series_hot",
            question: |_| Question::Series(Some(HOT_KEY.to_owned())),
            range: TimeRange::ALL,
            path: format!("{view}/series?key={HOT_KEY}"),
        },
    ]
}

fn product(i: usize) -> String {
    // The generator's products are p-00000..; the first thousand are the hot ones.
    format!("p-{:05}", (i * 7919) % 1_000)
}

/// The query phase: `batch` events in the batch layer, `speed` more in the
/// speed layer, and more streaming in at `QUERY_INGEST_EPS` while every
/// query shape is timed in process, over HTTP, and, for reference in the
/// same run, as the scan of the batch snapshot's groups that answered every
/// query before the indexes.
async fn bench_query(
    results: &mut Results,
    dir: &Path,
    events: &[Vec<u8>],
    sizes: Sizes,
    (start, end): (i64, i64),
) -> Result<(), BoxError> {
    let data = tempfile::tempdir_in(dir)?;
    let handle = Arc::new(tandem::start(config("", data.path())?, Options::manual_epochs()).await?);
    let (old, rest) = events.split_at(sizes.query_batch.min(events.len()));
    let (live, later) = rest.split_at(sizes.query_speed.min(rest.len()));
    push_all(&handle, old).await?;
    handle.recompute_now().await?;
    push_all(&handle, live).await?;
    let batch = handle.batch().await?;
    let spec = handle
        .config()
        .view("sales_by_product")
        .ok_or("no view sales_by_product")?
        .clone();
    let view = handle
        .config()
        .views
        .iter()
        .position(|view| view.name == spec.name)
        .ok_or("no view sales_by_product")?;
    let groups = batch.views[view].len();
    let speed_groups: u64 = handle
        .partitions()
        .iter()
        .enumerate()
        .map(|(i, _)| handle.shared().speed_groups[i].load(Ordering::Relaxed))
        .sum();
    println!(
        "query phase: {groups} groups of sales_by_product in the batch layer, {speed_groups} groups of all views in the speed layer"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (handle, stop) = (Arc::clone(&handle), Arc::clone(&stop));
        let chunks: Vec<Vec<Vec<u8>>> = later.chunks(CHUNK).map(<[Vec<u8>]>::to_vec).collect();
        let every = Duration::from_secs_f64(CHUNK as f64 / QUERY_INGEST_EPS);
        actix::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            for chunk in chunks {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                ticks.tick().await;
                let handle = Arc::clone(&handle);
                actix::spawn(async move { handle.ingest_many(chunk).await.ok() });
            }
        })
    };
    let (base, server) = serve(&handle)?;
    for shape in query_shapes(start, end) {
        let n = sizes.queries;
        let mut inprocess = Vec::with_capacity(n);
        for i in 0..n {
            let query = Query {
                range: shape.range,
                ..Query::new("sales_by_product", (shape.question)(i))
            };
            let started = Instant::now();
            handle.query(query).await?;
            inprocess.push(started.elapsed().as_secs_f64() * 1e6);
        }
        let (base, path, name) = (base.clone(), shape.path.clone(), shape.name);
        let mut over_http = tokio::task::spawn_blocking(move || -> Result<Vec<f64>, String> {
            let agent = ureq::AgentBuilder::new().build();
            let mut samples = Vec::with_capacity(n);
            for i in 0..n {
                let url = match name {
                    "key" => format!("{base}{path}{}", product(i)),
                    _ => format!("{base}{path}"),
                };
                // Timed until the body's last byte is read, as `wrk` and
                // `hey` time a request.
                let started = Instant::now();
                let mut body = Vec::new();
                agent
                    .get(&url)
                    .call()
                    .map_err(|err| err.to_string())?
                    .into_reader()
                    .read_to_end(&mut body)
                    .map_err(|err| err.to_string())?;
                samples.push(started.elapsed().as_secs_f64() * 1e6);
                std::hint::black_box(body);
            }
            Ok(samples)
        })
        .await??;
        // The scan reads every group of the snapshot: a few samples, off the
        // async threads like the old path.
        let scans = (n / 100).clamp(3, 10);
        let (batch, spec, question, range) = (
            Arc::clone(&batch),
            spec.clone(),
            (shape.question)(0),
            shape.range,
        );
        let mut scan = tokio::task::spawn_blocking(move || {
            let kind = match question {
                Question::Key(key) => QueryKind::Key(key),
                Question::Totals => QueryKind::Totals,
                Question::Series(key) => QueryKind::Series(key),
                Question::Top { metric, n } => QueryKind::Top {
                    metric: spec
                        .metrics
                        .iter()
                        .position(|m| *m.name == *metric)
                        .unwrap_or(0),
                    n,
                },
            };
            (0..scans)
                .map(|_| {
                    let started = Instant::now();
                    let answer = batch.views[view]
                        .partial(&spec, &kind, range)
                        .finish(&spec, &kind);
                    std::hint::black_box(answer);
                    started.elapsed().as_secs_f64() * 1e6
                })
                .collect::<Vec<f64>>()
        })
        .await?;
        for (path, samples) in [
            ("inprocess", &mut inprocess),
            ("http", &mut over_http),
            ("scan", &mut scan),
        ] {
            results.record(
                &format!("query_{}_{path}_p50_us", shape.name),
                percentile(samples, 0.5),
                "us",
            );
            results.record(
                &format!("query_{}_{path}_p99_us", shape.name),
                percentile(samples, 0.99),
                "us",
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    feeder.await.ok();
    // Quick runs only check that the path works.
    let window = Duration::from_secs(if sizes.queries == QUICK.queries {
        3
    } else {
        30
    });
    bench_dashboard(results, &base, window).await?;
    server.stop(true).await;
    handle.shutdown().await;
    Ok(())
}

/// How many top-N queries `/metrics` has counted so far.
fn top_queries(base: &str) -> Result<f64, BoxError> {
    let text = ureq::get(&format!("{base}/metrics"))
        .call()?
        .into_string()?;
    Ok(text
        .lines()
        .find(|line| line.starts_with("tandem_query_seconds_count{kind=\"top\"}"))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|count| count.parse().ok())
        .unwrap_or(0.0))
}

/// This process's CPU while one dashboard (headless Chromium on `base`, the
/// page refreshing every second) is open, less its CPU while idle, as a
/// percentage of one core; skipped without `/usr/bin/chromium`.
async fn bench_dashboard(
    results: &mut Results,
    base: &str,
    window: Duration,
) -> Result<(), BoxError> {
    const CHROMIUM: &str = "/usr/bin/chromium";
    if !Path::new(CHROMIUM).exists() {
        println!("dashboard: skipped, {CHROMIUM} is missing");
        return Ok(());
    }
    // The two windows are the measurement: CPU used over a fixed time.
    let idle_before = proc_status::cpu_seconds(None);
    tokio::time::sleep(window).await;
    let idle = proc_status::cpu_seconds(None) - idle_before;
    let profile = tempfile::tempdir()?;
    let mut chromium = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("{base}/"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Measured from the page's first refresh on.
    let loaded_before = top_queries(base)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while top_queries(base)? <= loaded_before {
        if Instant::now() > deadline {
            chromium.kill().ok();
            return Err("dashboard: the page asked for nothing within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (base_at, queries_before) = (base.to_owned(), top_queries(base)?);
    let open_before = proc_status::cpu_seconds(None);
    tokio::time::sleep(window).await;
    let open = proc_status::cpu_seconds(None) - open_before;
    let refreshes = top_queries(&base_at)? - queries_before;
    chromium.kill().ok();
    chromium.wait().ok();
    let window = window.as_secs_f64();
    results.record("dashboard_refreshes_per_s", refreshes / window, "1/s");
    results.record(
        "dashboard_cpu_pct",
        100.0 * (open - idle).max(0.0) / window,
        "% core",
    );
    Ok(())
}

async fn bench_freshness(results: &mut Results, dir: &Path, n: usize) -> Result<(), BoxError> {
    let queue = unique("fresh");
    let dead = format!("{queue}.dead");
    let outcome = async {
        let data = tempfile::tempdir_in(dir)?;
        let handle = tandem::start(config(&rabbitmq_source(&queue), data.path())?, Options::manual_epochs()).await?;
        let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), FieldTable::default()).await?;
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            let key = format!("fresh-{i}");
            let event = format!(
                r#"{{"order_id":"fresh-{i}","ts":{},"product_id":"{key}","category":"c-000","user_id":"u-1","amount":1.5,"qty":1,"country":"DE"}}"#,
                tandem::now_ms()
            );
            let started = Instant::now();
            channel
                .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), event.as_bytes(), BasicProperties::default().with_delivery_mode(2))
                .await?;
            loop {
                let answer = handle.query(Query::new("sales_by_product", Question::Key(key.clone()))).await?;
                if let tandem::aggregate::Body::Metrics(metrics) = &answer.body
                    && metrics.get("orders") == Some(tandem::aggregate::MetricValue::Int(1))
                {
                    break;
                }
                if started.elapsed() > Duration::from_secs(30) {
                    return Err(format!("event {key} not seen after 30 s").into());
                }
                tokio::task::yield_now().await;
            }
            samples.push(started.elapsed().as_secs_f64() * 1e3);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        results.record("freshness_p50_ms", percentile(&mut samples, 0.5), "ms");
        results.record("freshness_p99_ms", percentile(&mut samples, 0.99), "ms");
        connection.close(200, "done".into()).await.ok();
        handle.shutdown().await;
        Ok::<_, BoxError>(())
    }
    .await;
    delete(&[&queue, &dead]).await;
    outcome
}

/// A master dataset of `n` generated events in `dir` (and their JSONL file,
/// `events.jsonl`): the first nine tenths in epoch 1, the rest in epoch 2, both sealed.
fn build_master(dir: &Path, n: usize) -> Result<(), BoxError> {
    let config = config("", dir)?;
    let paths = DataPaths::new(dir);
    let file = dir.join("events.jsonl");
    let out = std::fs::File::create(&file)?;
    let status = Command::new(tandem_binary()?)
        .arg("generate")
        .args(generate_args(n))
        .stdout(out)
        .status()?;
    if !status.success() {
        return Err("tandem generate failed".into());
    }
    let (mut log, _) = MasterLog::open(&paths, config.master.segment_max_bytes)?;
    let mut epochs = EpochIndex::open(&paths)?;
    let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&file)?);
    let mut batch: Vec<(Vec<u8>, i64, u64)> = Vec::with_capacity(10_000);
    let mut epoch = Epoch(1);
    let mut seals = Vec::new();
    let first_part = n * 9 / 10;
    let flush = |log: &mut MasterLog, batch: &mut Vec<(Vec<u8>, i64, u64)>, epoch: Epoch| {
        let appended = log.append(batch.iter().map(|(raw, event_ms, id_hash)| NewRecord {
            epoch,
            ingest_ms: *event_ms,
            event_ms: *event_ms,
            id_hash: *id_hash,
            raw,
        }));
        batch.clear();
        appended
    };
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        if i == first_part {
            flush(&mut log, &mut batch, epoch)?;
            seals.push(SealedEpoch {
                epoch,
                end: log.end(),
                next_seq: log.next_seq(),
                later_from: log.next_seq(),
                sealed_at_ms: tandem::now_ms(),
            });
            epochs.seal(seals[0])?;
            epoch = epoch.next();
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
    seals.push(SealedEpoch {
        epoch,
        end: log.end(),
        next_seq: log.next_seq(),
        later_from: log.next_seq(),
        sealed_at_ms: tandem::now_ms(),
    });
    epochs.seal(seals[1])?;
    Ok(())
}

/// Runs this program as a child (`--child KIND DIR`): answers its first line
/// of output and the seconds from its start to that line. The child is then
/// waited for, or killed when `kill` (a started system may have begun a batch
/// run that would hold the process until it ends).
fn child(kind: &str, dir: &Path, kill: bool) -> Result<(String, f64), BoxError> {
    let started = Instant::now();
    let mut process = Command::new(std::env::current_exe()?)
        .args(["--child", kind])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    if let Some(stdout) = process.stdout.take() {
        std::io::BufReader::new(stdout).read_line(&mut line)?;
    }
    let took = started.elapsed().as_secs_f64();
    if kill {
        process.kill().ok();
        process.wait()?;
    } else if !process.wait()?.success() {
        return Err(format!("the {kind} child failed").into());
    }
    if line.is_empty() {
        return Err(format!("the {kind} child printed nothing").into());
    }
    Ok((line, took))
}

/// Removes every snapshot but epoch 1's, so that the restart figure always
/// starts from a snapshot that covers all but the last tenth.
fn keep_first_snapshot(master: &Path) -> Result<(), BoxError> {
    let paths = DataPaths::new(master);
    for (epoch, path) in tandem::store::list_snapshots(&paths)? {
        if epoch > Epoch(1) {
            std::fs::remove_file(path)?;
        }
    }
    // A later run removes the id levels the first snapshot names: they are
    // put back from the links kept when it was written.
    link_levels(&DataPaths::new(master.join(FIRST_LEVELS)), &paths)
}

/// Where the first snapshot's id levels are kept (hard links, as `ids/`).
const FIRST_LEVELS: &str = "first-snapshot";

/// Links the first snapshot's id levels into [`FIRST_LEVELS`].
fn keep_first_levels(master: &Path) -> Result<(), BoxError> {
    link_levels(
        &DataPaths::new(master),
        &DataPaths::new(master.join(FIRST_LEVELS)),
    )
}

/// Hard-links the id levels of `from` that `to` lacks into `to`'s `ids/`.
fn link_levels(from: &DataPaths, to: &DataPaths) -> Result<(), BoxError> {
    std::fs::create_dir_all(to.ids_dir())?;
    for name in tandem::store::list_levels(from)? {
        let link = to.ids_dir().join(&name);
        if !link.exists() {
            std::fs::hard_link(from.ids_dir().join(&name), link)?;
        }
    }
    Ok(())
}

/// The children: a full batch run over epoch 2 (prints seconds and peak RSS),
/// a snapshot over epoch 1 only, the newest snapshot's views decoded and
/// indexed (prints RSS), or a start that prints once ready.
fn run_child(kind: &str, dir: &Path) -> Result<(), BoxError> {
    let config = config("", dir)?;
    let paths = DataPaths::new(dir);
    let epochs = EpochIndex::open(&paths)?;
    match kind {
        "views" => {
            // The newest snapshot's views and their indexes, as a batch run
            // leaves them to be served: what a run holds that is the views'
            // own, measured apart from the run.
            let (_, path) = tandem::store::list_snapshots(&paths)?
                .into_iter()
                .next()
                .ok_or("no snapshot")?;
            let (meta, data) = tandem::actors::recompute::read_snapshot_data(&path)?;
            let batch = tandem::actors::recompute::Batch::from_snapshot(
                &config.views,
                meta,
                data,
                Default::default(),
            )?;
            let states: Vec<&tandem::aggregate::ViewState> = batch.views.iter().collect();
            let indexes = tandem::actors::recompute::build_indexes(&config.views, &states);
            println!(
                "{} {}",
                proc_status::status_kib(None, "VmRSS:"),
                indexes.map_or(0, |indexes| indexes.len())
            );
        }
        "recompute" | "snapshot" => {
            let sealed = *(if kind == "recompute" {
                epochs.last()
            } else {
                epochs.entries().first()
            })
            .ok_or("no sealed epoch")?;
            let started = Instant::now();
            let config = std::sync::Arc::new(config);
            let batch = tandem::actors::recompute_worker::with_pool(2, |pool| {
                tandem::actors::recompute::recompute(
                    &paths,
                    &config,
                    sealed,
                    tandem::actors::RunMode::Full,
                    &Default::default(),
                    pool,
                )
            })?;
            println!(
                "{} {} {}",
                started.elapsed().as_secs_f64(),
                proc_status::status_kib(None, "VmHWM:"),
                batch.stats.counted
            );
        }
        _ => {
            actix::System::new().block_on(async {
                let handle = tandem::start(config, Options::manual_epochs()).await?;
                let startup = handle.startup();
                println!(
                    "ready {} {} {}",
                    startup.replayed, startup.snapshot_ms, startup.replay_ms
                );
                std::io::Write::flush(&mut std::io::stdout())?;
                handle.shutdown().await;
                Ok::<_, BoxError>(())
            })?;
        }
    }
    Ok(())
}

fn bench_recompute(
    results: &mut Results,
    master: &Path,
    file: &Path,
    records: u64,
) -> Result<(), BoxError> {
    let (out, _) = child("recompute", master, false)?;
    let fields: Vec<f64> = out
        .split_whitespace()
        .filter_map(|field| field.parse().ok())
        .collect();
    let [seconds, peak_kb, _] = fields[..] else {
        return Err(format!("unexpected recompute output {out:?}").into());
    };
    // The views' own memory: the run's snapshot decoded and indexed in a
    // process of its own. The rest of the run's peak is what it needs
    // beyond its views.
    let (views, _) = child("views", master, false)?;
    keep_first_snapshot(master)?;
    let views_kb: f64 = views
        .split_whitespace()
        .next()
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| format!("unexpected views output {views:?}"))?;
    results.record("recompute_eps", records as f64 / seconds, "events/s");
    results.record("recompute_peak_rss_mb", peak_kb / 1024.0, "MiB");
    results.record("recompute_views_rss_mb", views_kb / 1024.0, "MiB");
    results.record(
        "recompute_peak_beyond_views_mb",
        (peak_kb - views_kb) / 1024.0,
        "MiB",
    );
    // The virtualenv `scripts/services` installs has DuckDB; else the system's python3.
    let python = pyspark::venv().map_or_else(|| PathBuf::from("python3"), |(_, python)| python);
    match Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/duckdb_reference.py"))
        .arg(file)
        .arg("1")
        .output()
    {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let eps = text
                .lines()
                .find_map(|line| line.strip_prefix("anchor: duckdb_recompute_eps "))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|value| value.parse::<f64>().ok());
            match eps {
                Some(eps) => results.record("duckdb_recompute_eps", eps, "events/s"),
                None => println!("duckdb: unexpected output {text:?}"),
            }
        }
        _ => println!(
            "duckdb: not run ({} -c 'import duckdb' fails; bash scripts/services installs it)",
            python.display()
        ),
    }
    Ok(())
}

fn bench_restart(results: &mut Results, master: &Path, tail: u64) -> Result<(), BoxError> {
    let (out, took) = child("start", master, true)?;
    keep_first_snapshot(master)?;
    let fields: Vec<u64> = out
        .trim()
        .strip_prefix("ready ")
        .map(|rest| rest.split(' ').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    let [replayed, snapshot_ms, replay_ms] = fields[..] else {
        return Err(format!("unexpected start output {out:?}").into());
    };
    if replayed != tail {
        return Err(format!(
            "the restart replayed {replayed} records, not the {tail} after the snapshot"
        )
        .into());
    }
    results.record("restart_s", took, "s");
    results.record("restart_snapshot_s", snapshot_ms as f64 / 1e3, "s");
    results.record("restart_replay_s", replay_ms as f64 / 1e3, "s");
    Ok(())
}

/// A sealed master dataset for the batch figures.
struct Master {
    dir: PathBuf,
    /// The first seal (a snapshot covers it) and the last.
    first: SealedEpoch,
    sealed: SealedEpoch,
    /// The generated events, as JSON lines.
    file: PathBuf,
    /// Removed at the end, unless the dataset is kept.
    _scratch: tempfile::TempDir,
}

/// The master dataset of `n` events, built (or, when kept under
/// `$TANDEM_BENCH_DIR`, found from an earlier run) with a snapshot of its
/// first epoch.
fn prepare_master(args: &Args, n: usize) -> Result<Master, BoxError> {
    let scratch = tempfile::tempdir_in(&args.dir)?;
    let dir = if args.keep {
        args.dir
            .join(format!("tandem-bench-master-{n}-{}", &stream_day().2[..10]))
    } else {
        scratch.path().to_path_buf()
    };
    let built = dir.join("built");
    let started = Instant::now();
    let file = dir.join("events.jsonl");
    if !built.exists() {
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir)?;
        build_master(&dir, n)?;
        child("snapshot", &dir, false)?;
        keep_first_levels(&dir)?;
        std::fs::write(&built, "")?;
    }
    keep_first_snapshot(&dir)?;
    let seals = EpochIndex::open(&DataPaths::new(&dir))?;
    let (Some(first), Some(sealed)) = (seals.entries().first().copied(), seals.last().copied())
    else {
        return Err(format!("{} has no sealed epochs: remove it", dir.display()).into());
    };
    println!(
        "master dataset: {} records ({} after the snapshot), ready in {:.1} s",
        sealed.next_seq.0,
        sealed.next_seq.0 - first.next_seq.0,
        started.elapsed().as_secs_f64()
    );
    Ok(Master {
        dir,
        first,
        sealed,
        file,
        _scratch: scratch,
    })
}

/// The Spark figures and their references, on one master dataset in one run.
fn bench_spark(results: &mut Results, master: &Master) -> Result<(), BoxError> {
    let Some((submit, python)) = pyspark::venv() else {
        println!(
            "spark: not run (no PySpark in TANDEM_PYSPARK_VENV or ~/.cache/tandem/pyspark; bash scripts/services installs it)"
        );
        return Ok(());
    };
    let config = config("", &master.dir)?;
    let records = master.sealed.next_seq.0 as f64;
    let scratch = tempfile::tempdir_in(master.dir.parent().unwrap_or(&master.dir))?;
    let exported = scratch.path().join("export");

    let started = Instant::now();
    tandem::export::export(&config, &exported, Some(master.sealed.epoch))?;
    let seconds = started.elapsed().as_secs_f64();
    let bytes: u64 = walk_bytes(&exported)?;
    results.record("export_eps", records / seconds, "events/s");
    results.record(
        "export_mib_s",
        bytes as f64 / (1 << 20) as f64 / seconds,
        "MiB/s",
    );

    let job = scratch.path().join("job.py");
    std::fs::write(&job, tandem::spark::job_source(&config)?)?;
    let out = scratch.path().join("batch");
    let started = Instant::now();
    let ran = Command::new(&submit)
        .args([
            "--master",
            "local[2]",
            "--driver-memory",
            "6g",
            "--conf",
            "spark.ui.enabled=false",
        ])
        .arg(&job)
        .arg("--master")
        .arg(&exported)
        .args(["--epoch", &master.sealed.epoch.0.to_string()])
        .arg("--out")
        .arg(&out)
        .env("PYSPARK_PYTHON", &python)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !ran.success() {
        return Err("the Spark job failed (run it by hand to see its log)".into());
    }
    results.record("spark_batch_s", started.elapsed().as_secs_f64(), "s");
    let started = Instant::now();
    let (imported, _) = tandem::spark::read_output(&config, master.sealed.epoch, &out)?;
    results.record("spark_import_s", started.elapsed().as_secs_f64(), "s");

    let (line, _) = child("recompute", &master.dir, false)?;
    keep_first_snapshot(&master.dir)?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .filter_map(|field| field.parse().ok())
        .collect();
    let [seconds, _, counted] = fields[..] else {
        return Err(format!("unexpected recompute output {line:?}").into());
    };
    if counted as u64 != imported.stats.counted {
        return Err(format!(
            "Spark counted {}, the native run {counted}",
            imported.stats.counted
        )
        .into());
    }
    results.record("native_batch_s", seconds, "s");

    let query = format!(
        r#"
import duckdb, time
started = time.perf_counter()
con = duckdb.connect()
con.sql("""CREATE TEMP TABLE counted AS
  SELECT * FROM read_parquet('{}/*/*.parquet', hive_partitioning = true)
  QUALIFY row_number() OVER (PARTITION BY id_hash ORDER BY seq) = 1""")
for key, width in (("product_id", 60000), ("category", 300000), ("country", 3600000)):
    con.sql(f"""SELECT {{key}}, event_ms - event_ms % {{width}} AS bucket, count(*), sum(amount)
      FROM counted WHERE rejected IS NULL GROUP BY ALL""").fetchall()
print(time.perf_counter() - started)
"#,
        exported.display()
    );
    let ran = Command::new(&python).args(["-c", &query]).output()?;
    let seconds: f64 = String::from_utf8_lossy(&ran.stdout)
        .trim()
        .parse()
        .map_err(|_| format!("DuckDB: {}", String::from_utf8_lossy(&ran.stderr)))?;
    results.record("duckdb_batch_s", seconds, "s");
    Ok(())
}

/// The bytes of every file under `dir`.
fn walk_bytes(dir: &Path) -> Result<u64, BoxError> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        bytes += if entry.file_type()?.is_dir() {
            walk_bytes(&entry.path())?
        } else {
            entry.metadata()?.len()
        };
    }
    Ok(bytes)
}

fn main() -> Result<(), BoxError> {
    let mut raw = std::env::args().skip(1);
    if raw.next().as_deref() == Some("--child") {
        let kind = raw.next().ok_or("--child needs a kind")?;
        let dir = raw.next().ok_or("--child needs a dir")?;
        return run_child(&kind, Path::new(&dir));
    }
    let args = parse_args()?;
    let sizes = args.sizes;
    let wants = |group: &str| args.only.iter().any(|want| want == group);
    println!("sizes: {sizes:?}; {} run(s)", args.runs);
    let mut results = Results::default();
    let needs_events = ["ingest", "rabbitmq", "http_ingest", "query"]
        .iter()
        .any(|group| wants(group));
    let events = if needs_events {
        events(
            &args.dir,
            args.keep,
            sizes
                .ingest
                .max(sizes.rabbitmq)
                .max(sizes.http)
                .max(sizes.query_batch + sizes.query_speed + sizes.query_feed),
        )?
    } else {
        Vec::new()
    };
    let master = if wants("recompute") || wants("restart") {
        Some(prepare_master(&args, sizes.recompute)?)
    } else {
        None
    };
    let spark_master = if wants("spark") && sizes.spark > 0 {
        Some(prepare_master(&args, sizes.spark)?)
    } else {
        None
    };
    let system = actix::System::new();
    for run in 1..=args.runs {
        println!("run {run} of {}", args.runs);
        if wants("ingest") {
            system.block_on(bench_ingest(
                &mut results,
                &args.dir,
                &events[..sizes.ingest],
            ))?;
        }
        if wants("rabbitmq") {
            system.block_on(bench_rabbitmq(
                &mut results,
                &args.dir,
                &events[..sizes.rabbitmq],
            ))?;
        }
        if wants("http_ingest") {
            system.block_on(bench_http_ingest(
                &mut results,
                &args.dir,
                &events[..sizes.http],
            ))?;
        }
        if wants("query") {
            // The stream's events are evenly spread over its day: the query
            // phase's data ends where the events in the speed layer end.
            let (start, end, _) = stream_day();
            let held = (sizes.query_batch + sizes.query_speed) as f64 / events.len().max(1) as f64;
            let data_end = start + ((end - start) as f64 * held) as i64;
            system.block_on(bench_query(
                &mut results,
                &args.dir,
                &events,
                sizes,
                (start, data_end),
            ))?;
        }
        if wants("freshness") {
            system.block_on(bench_freshness(&mut results, &args.dir, sizes.freshness))?;
        }
        if let Some(master) = &master {
            let records = master.sealed.next_seq.0;
            if wants("recompute") {
                bench_recompute(&mut results, &master.dir, &master.file, records)?;
            }
            if wants("restart") {
                let tail = records - master.first.next_seq.0;
                bench_restart(&mut results, &master.dir, tail)?;
            }
        }
        if let Some(master) = &spark_master {
            bench_spark(&mut results, master)?;
        }
    }
    results.table();
    Ok(())
}
