//! The `tandem` command line: one file per subcommand, each a thin call into
//! the library. Errors print as one line with their causes; the exit code is 2
//! for a bad config or bad arguments, 1 for a runtime failure.
#![warn(clippy::unwrap_used)]

mod check;
mod inspect;

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

/// Exit code for a bad config or bad arguments.
const EXIT_USAGE: u8 = 2;
/// Exit code for a failure at run time (including corruption found by inspect).
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
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
