//! The `tandem` command line: one file per subcommand, each a thin call into
//! the library. Errors print as one line with their causes; the exit code is 2
//! for a bad config or bad arguments, 1 for a runtime failure.
#![warn(clippy::unwrap_used)]

mod check;
mod inspect;
mod publish;
mod run;

use clap::{Parser, Subcommand};
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
    /// Publish a JSONL file to a RabbitMQ queue, one persistent message a line, with confirms.
    Publish {
        /// AMQP URI of the broker.
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        uri: String,
        /// The queue (declared durable if missing).
        #[arg(long)]
        queue: String,
        /// The file, or - for standard input.
        file: PathBuf,
    },
    /// Validate a config file and print the plan it describes.
    Check {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Describe a data_dir: segments, sealed epochs, snapshots, and a CRC check of everything.
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
        _ => (LogFormat::Text, "warn"),
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
        Command::Publish { uri, queue, file } => publish::run(&uri, &queue, &file),
        Command::Check { config } => check::run(&config),
        Command::Inspect { data } => inspect::run(&data),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
