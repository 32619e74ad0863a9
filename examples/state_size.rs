//! Measures the memory a view's state takes per (key, bucket) group.
//!
//!     cargo run --release -- generate --events 5000000 --seed 7 > /tmp/ev5m.jsonl
//!     cargo run --release --example state_size -- /tmp/ev5m.jsonl [VIEW]
//!
//! Streams the file line by line (the events are not kept), applies every valid
//! event to one view of `config/tandem.toml` (default `sales_by_product`), and
//! prints the groups and the growth of the resident set size per group; then
//! builds the view's index (`ViewIndex`, what serving answers from) and
//! prints its build time and its growth of the resident set size, also as a
//! share of the state's.

#[path = "../tests/common/proc_status.rs"]
mod proc_status;

use std::io::BufRead;
use std::path::Path;
use tandem::Config;
use tandem::aggregate::{ViewIndex, ViewState};

/// The daemon's allocator, so that the memory measured is what the daemon holds.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_bytes() -> u64 {
    proc_status::status_kib(None, "VmRSS:") * 1024
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let events = args.next().ok_or("usage: state_size EVENTS.jsonl [VIEW]")?;
    let view_name = args.next().unwrap_or_else(|| "sales_by_product".to_owned());
    let config = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tandem.toml"))?;
    let spec = config
        .view(&view_name)
        .ok_or_else(|| format!("no view {view_name:?}"))?
        .clone();

    let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&events)?);
    let before = rss_bytes();
    let started = std::time::Instant::now();
    let mut state = ViewState::new();
    let (mut applied, mut rejected) = (0u64, 0u64);
    for line in reader.split(b'\n') {
        let line = line?;
        match config.schema.parse(&line, 0) {
            Ok(event) => {
                state.apply(&spec, &event);
                applied += 1;
            }
            Err(_) => rejected += 1,
        }
    }
    let took = started.elapsed();
    let grown = rss_bytes().saturating_sub(before);
    println!("view {view_name}: {} metrics", spec.metrics.len());
    println!(
        "events applied {applied}, rejected {rejected}, in {:.2} s",
        took.as_secs_f64()
    );
    println!("keys {}, groups {}", state.key_count(), state.len());
    println!(
        "rss growth {:.1} MiB, {:.0} bytes per group",
        grown as f64 / (1 << 20) as f64,
        grown as f64 / state.len().max(1) as f64
    );
    let before = rss_bytes();
    let started = std::time::Instant::now();
    let index = ViewIndex::build(&spec, &state);
    let took = started.elapsed();
    let index_grown = rss_bytes().saturating_sub(before);
    std::hint::black_box(&index);
    println!(
        "index built in {:.2} s, rss growth {:.1} MiB, {:.1}% of the state's",
        took.as_secs_f64(),
        index_grown as f64 / (1 << 20) as f64,
        100.0 * index_grown as f64 / grown.max(1) as f64
    );
    Ok(())
}
