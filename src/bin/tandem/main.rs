//! The `tandem` command line: one file per subcommand, each a thin call into
//! the library. Errors print as one line with their causes; the exit code is 2
//! for a bad config or bad arguments, 1 for a runtime failure.
#![warn(clippy::unwrap_used)]

/// `println!` that hands a write error (a closed pipe: `tandem inspect | head`)
/// to the caller instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod check;
mod export;
mod generate;
mod inspect;
mod publish;
mod recompute;
mod run;
mod spark;

use clap::{Parser, Subcommand};

/// mimalloc: the speed layer allocates and frees many small states; glibc's
/// allocator cost 20% more time per event in the end-to-end benchmark.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;
use std::process::ExitCode;

/// tandem: a Lambda Architecture stream processor.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: consume the configured sources, serve the HTTP API.
    Run {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Log format: human-readable text, or JSON lines for machines. `RUST_LOG` filters.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Publish a JSONL file, one event a line: to a RabbitMQ queue as persistent
    /// messages with confirms, or with --http to a daemon's HTTP source in batches.
    Publish {
        /// AMQP URI of the broker.
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        uri: String,
        /// The queue (declared durable if missing).
        #[arg(long, required_unless_present = "http", conflicts_with = "http")]
        queue: Option<String>,
        /// Post to a daemon's HTTP source instead: its base URL (e.g. http://127.0.0.1:8080).
        #[arg(long, value_name = "URL")]
        http: Option<String>,
        /// Events per HTTP request.
        #[arg(long, default_value_t = 1000, requires = "http", value_parser = clap::value_parser!(u32).range(1..))]
        batch: u32,
        /// HTTP requests in flight at once.
        #[arg(long, default_value_t = 4, requires = "http", value_parser = clap::value_parser!(u32).range(1..=64))]
        concurrency: u32,
        /// Environment variable holding the bearer token, sent when set.
        #[arg(long, default_value = "TANDEM_TOKEN", requires = "http")]
        token_env: String,
        /// For an https URL: a PEM file of the certificates to trust (the
        /// daemon's own, or its CA) instead of the public roots.
        #[arg(long, value_name = "FILE", requires = "http")]
        ca_cert: Option<PathBuf>,
        /// The file, or - for standard input.
        file: PathBuf,
    },
    /// Validate a config file and print the plan it describes.
    Check {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the reference e-commerce workload as JSON lines: order events with
    /// late, duplicate and malformed ones on request, the same bytes for the same flags.
    Generate(generate::Args),
    /// Run the batch run of the newest sealed epoch offline (the daemon stopped):
    /// write its snapshot and the batch cache.
    Recompute {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Compute every view from the whole master dataset, not from the batch cache.
        #[arg(long)]
        full: bool,
    },
    /// Write the sealed epochs of the master dataset as Parquet, one file per
    /// epoch (OUT/epoch=E/part-00000.parquet), skipping epochs exported whole
    /// already; reads only sealed records, so the daemon may be running.
    Export {
        /// The TOML config file: its data_dir, and the fields its views use,
        /// which become typed columns.
        #[arg(long, short)]
        config: PathBuf,
        /// The directory to write to.
        #[arg(long)]
        out: PathBuf,
        /// Export only the sealed epochs up to this one.
        #[arg(long, value_name = "E")]
        upto_epoch: Option<u64>,
    },
    /// Write the PySpark program that computes the config's views over the
    /// Parquet master dataset (`tandem export`) up to a sealed epoch, for
    /// `spark-submit JOB --master EXPORT_DIR --epoch E --out OUT`.
    SparkJob {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Where to write the program (standard output when absent).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Serve what the Spark job computed for a sealed epoch as the batch
    /// snapshot of that epoch, after checking it against the master dataset
    /// (offline: the daemon stopped).
    Import {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The sealed epoch the job covered.
        #[arg(long, value_name = "E")]
        epoch: u64,
        /// The job's output folder (its --out).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
    },
    /// Describe a data_dir: segments, sealed epochs, snapshots, the batch cache, and a CRC check of everything.
    Inspect {
        /// The data_dir.
        #[arg(long)]
        data: PathBuf,
    },
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// Exit code for a bad config or bad arguments.
const EXIT_USAGE: u8 = 2;
/// Exit code for a failure at run time (including corruption found by inspect).
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (format, default_level) = match &cli.command {
        Command::Run { log_format, .. } => (*log_format, "info"),
        // lapin logs a failed connection itself, at error level; the one
        // error line that ends the command says it all.
        _ => (LogFormat::Text, "warn,lapin=off"),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_level.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let result = match cli.command {
        Command::Run { config, .. } => run::run(&config),
        Command::Publish {
            uri,
            queue,
            http,
            batch,
            concurrency,
            token_env,
            ca_cert,
            file,
        } => match (http, queue) {
            (Some(url), _) => publish::run_http(
                &url,
                &publish::HttpOptions {
                    batch: batch as usize,
                    concurrency: concurrency as usize,
                    token: std::env::var(&token_env).ok(),
                    ca_cert,
                },
                &file,
            ),
            (None, Some(queue)) => publish::run(&uri, &queue, &file),
            (None, None) => Err(anyhow::anyhow!("give --queue, or --http")),
        },
        Command::Check { config } => check::run(&config),
        Command::Inspect { data } => inspect::run(&data),
        Command::Recompute { config, full } => recompute::run(&config, full),
        Command::Export {
            config,
            out,
            upto_epoch,
        } => export::run(&config, &out, upto_epoch),
        Command::Generate(args) => generate::run(args),
        Command::SparkJob { config, out } => spark::job(&config, out.as_deref()),
        Command::Import {
            config,
            epoch,
            from,
        } => spark::import(&config, epoch, &from),
    };
    match result {
        Ok(code) => code,
        // The reader went away (`| head`): nothing is wrong.
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|err| err.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            // One line; a cause that an error already repeats is said once.
            eprintln!("error: {}", tandem::error_chain(err.as_ref()));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
