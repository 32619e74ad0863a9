//! `tandem generate`: the reference e-commerce workload as JSON lines on
//! standard output, the same bytes for the same flags on every machine.

use std::io::Write as _;
use std::process::ExitCode;
use tandem::workload::Workload;

/// The flags, as clap parsed them.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events to generate (duplicates come on top).
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Seed: the same seed and flags give the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Distinct products; popularity is Zipf-like.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    products: u32,
    /// Distinct categories.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    categories: u32,
    /// Distinct users.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    users: u32,
    /// Zipf exponent of product popularity.
    #[arg(long, default_value_t = 1.1, value_parser = non_negative)]
    zipf: f64,
    /// Event time of the first event: RFC 3339, or `now`.
    #[arg(long, default_value = "2026-11-24T00:00:00Z", value_parser = start)]
    start: i64,
    /// Seconds of event time the stream covers.
    #[arg(long, default_value_t = 86_400.0, value_parser = non_negative)]
    span: f64,
    /// Share of events whose time lies up to --late-max seconds in the past.
    #[arg(long, default_value_t = 0.02, value_parser = fraction)]
    late_frac: f64,
    /// How late a late event is at most, seconds.
    #[arg(long, default_value_t = 600.0, value_parser = non_negative)]
    late_max: f64,
    /// Share of events sent twice (the same line again).
    #[arg(long, default_value_t = 0.005, value_parser = fraction)]
    dup_frac: f64,
    /// Share of events replaced by a malformed line (cut short, not UTF-8,
    /// not an object, product_id missing, amount or ts not readable).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    bad_frac: f64,
    /// Prefix of every order id.
    #[arg(long, default_value = "o-")]
    id_prefix: String,
}

fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("{text:?} is not a share within 0..=1")),
    }
}

fn non_negative(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
        _ => Err(format!("{text:?} is not a number of at least 0")),
    }
}

fn start(text: &str) -> Result<i64, String> {
    if text == "now" {
        return Ok(tandem::now_ms());
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|at| at.timestamp_millis())
        .map_err(|_| format!("{text:?} is not an RFC 3339 time (e.g. 2026-11-24T00:00:00Z) or now"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let workload = Workload {
        seed: args.seed,
        products: args.products,
        categories: args.categories,
        users: args.users,
        zipf: args.zipf,
        start_ms: args.start,
        step_ms: args.span * 1000.0 / args.events.max(1) as f64,
        late_frac: args.late_frac,
        late_max_ms: args.late_max * 1000.0,
        dup_frac: args.dup_frac,
        bad_frac: args.bad_frac,
        id_prefix: args.id_prefix,
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    workload.write(args.events, &mut out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
